"""The BundlerError hierarchy: every failure a user can act on is one of these.

The CLI prints ``ami-bundler: error: <message>`` and exits with ``exit_code``;
anything else escaping the library is a bug and gets a traceback.
"""

from __future__ import annotations


class BundlerError(Exception):
    """A failure with a message a user can act on (what failed, where, what to do)."""

    exit_code = 1


class UsageError(BundlerError):
    """Bad or inconsistent command-line arguments or API parameters."""

    exit_code = 2


class KeyFileError(BundlerError):
    """A key or certificate file is missing, unreadable or not the expected kind."""


class ManifestError(BundlerError):
    """A manifest cannot be parsed, is malformed, hostile or inconsistent."""


class SignatureError(ManifestError):
    """The manifest signature does not verify against the given certificate/key."""


class IntegrityError(BundlerError):
    """Data does not match what the (verified) manifest promises: a digest or size mismatch."""


class PartMissingError(IntegrityError):
    """A part named by the manifest is not where it should be."""


class ArchiveError(BundlerError):
    """The decrypted/decompressed stream is not the archive a bundle must contain."""


class DecryptionError(ArchiveError):
    """AES decryption failed: wrong key or corrupted ciphertext."""


class ImageError(BundlerError):
    """The source image cannot be read or is not acceptable (missing, empty, too large)."""


class OutputError(BundlerError):
    """The destination cannot be written (missing directory, disk full, exists already)."""


class S3Error(BundlerError):
    """An S3 operation failed after retries; the message names the object and the fix."""

    exit_code = 3


class EC2Error(BundlerError):
    """An EC2 API call (register, describe, deregister) failed."""

    exit_code = 3


class VolumeError(BundlerError):
    """Building a disk image from a root filesystem failed."""


class MetadataError(BundlerError):
    """Instance metadata (IMDS) is unavailable or unusable."""

    exit_code = 12
