"""The one reader of a manifest file on this machine: bounded read, a clear error for a
missing or unreadable file, and a legacy encrypted manifest recognised by
``manifest.is_encrypted`` (so a UTF-8 byte order mark means XML everywhere) and decrypted
with the user's private key."""

from __future__ import annotations

from pathlib import Path

from . import keys as keylib
from .errors import BundlerError, ManifestError
from .manifest import MAX_MANIFEST_BYTES, ParsedManifest, is_encrypted, parse_manifest


def read_manifest_bytes(path: Path | str, *, error: type[BundlerError] = ManifestError) -> bytes:
    """The file's bytes, at most one more than ``MAX_MANIFEST_BYTES`` (the parser refuses
    more); ``error`` is what a missing or unreadable file raises (a usage error for commands
    that take the path as their main argument)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise error(f"manifest {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"manifest {path} is a directory") from None
    except OSError as exc:
        raise error(f"cannot read manifest {path}: {exc.strerror or exc}") from None


def parse_manifest_bytes(
    data: bytes, source: str, private_key: Path | str | None = None
) -> ParsedManifest:
    """Parse a manifest's bytes, decrypting a legacy encrypted one with ``private_key``
    (``parse_manifest`` owns the size limit and every other check)."""
    if is_encrypted(data):
        if private_key is None:
            raise ManifestError(
                f"manifest {source} is encrypted (legacy format): pass -k to decrypt it"
            )
        data = keylib.decrypt_legacy_manifest(data, keylib.load_private_key(Path(private_key)))
    return parse_manifest(data, source=source)


def read_manifest(
    path: Path | str,
    private_key: Path | str | None = None,
    *,
    error: type[BundlerError] = ManifestError,
) -> ParsedManifest:
    """Read and parse a local manifest (``read_manifest_bytes``, ``parse_manifest_bytes``)."""
    return parse_manifest_bytes(read_manifest_bytes(path, error=error), str(path), private_key)
