"""The BundlerError hierarchy: every failure a user can act on is one of these.

The CLI prints ``ami-bundler: error: <message>`` (and ``hint: <hint>`` when there is one) and
exits with ``exit_code``; ``code`` is the stable name ``--json`` reports. Exit codes go by
category (the README's table): 1 input/output, 2 usage, 3 S3, 4 EC2, 5 integrity, 128+N a
signal. Anything else escaping the library is a bug and gets a traceback.
"""

from __future__ import annotations

import signal

EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_S3 = 3
EXIT_EC2 = 4
EXIT_INTEGRITY = 5


class BundlerError(Exception):
    """A failure with a message a user can act on (what failed, where, what to do).

    ``hint`` is the optional second line: what to do, when the message itself cannot say it.
    """

    exit_code = EXIT_INPUT
    code = "input"

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = hint
        # What a command had found when it failed (verify's problems): --json prints it
        # beside the error.
        self.result: dict[str, object] | None = None


class UsageError(BundlerError):
    """Bad or inconsistent command-line arguments or API parameters."""

    exit_code = EXIT_USAGE
    code = "usage"


class KeyFileError(BundlerError):
    """A key or certificate file is missing, unreadable or not the expected kind."""

    code = "key"


class ManifestError(BundlerError):
    """A manifest cannot be parsed, is malformed, hostile or inconsistent."""

    code = "manifest"


class SignatureError(ManifestError):
    """The manifest signature does not verify against the given certificate/key."""

    exit_code = EXIT_INTEGRITY
    code = "signature"


class IntegrityError(BundlerError):
    """Data does not match what the (verified) manifest promises: a digest or size mismatch."""

    exit_code = EXIT_INTEGRITY
    code = "integrity"


class PartMissingError(IntegrityError):
    """A part named by the manifest is not where it should be."""

    code = "part-missing"


class ArchiveError(BundlerError):
    """The decrypted/decompressed stream is not the archive a bundle must contain."""

    exit_code = EXIT_INTEGRITY
    code = "archive"


class DecryptionError(ArchiveError):
    """AES decryption failed: wrong key or corrupted ciphertext."""

    code = "decryption"


class ImageError(BundlerError):
    """The source image cannot be read or is not acceptable (missing, empty, too large)."""

    code = "image"


class ImageFormatError(ImageError):
    """A virtual-disk or compressed image is malformed, hostile or uses an unsupported feature;
    the message names the format, the structure and its offset in the file."""

    code = "image-format"


class OutputError(BundlerError):
    """The destination cannot be written (missing directory, disk full, exists already)."""

    code = "output"


class S3Error(BundlerError):
    """An S3 operation failed after retries; the message names the object and the fix."""

    exit_code = EXIT_S3
    code = "s3"


class EC2Error(BundlerError):
    """An EC2 API call (register, describe, deregister) failed."""

    exit_code = EXIT_EC2
    code = "ec2"


class AccountError(EC2Error):
    """An account cannot be reached as itself: AssumeRole refused, or the credentials (or the
    role) belong to another account than the one named. Exit 4 with the other AWS API errors."""

    code = "account"


class VolumeError(BundlerError):
    """Building a disk image from a root filesystem failed."""

    code = "volume"


class MetadataError(BundlerError):
    """Instance metadata (IMDS) is unavailable or unusable."""

    exit_code = 12
    code = "metadata"


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived: everything rolls back as for Ctrl-C.

    A KeyboardInterrupt, so every clean-up path that handles Ctrl-C handles the others too.
    """

    code = "interrupted"
    hint = None

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class ReplaceRefusedError(BundlerError):
    """The target already holds a different bundle of that name and --force was not given."""

    code = "bundle-exists"


class BundleInUseError(ReplaceRefusedError):
    """A registered AMI uses the bundle that would be replaced or deleted."""

    code = "bundle-in-use"
