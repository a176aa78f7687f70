"""download-bundle: a bundle from S3 into a directory, each part checked before it is kept."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..concurrency import run_parallel
from ..errors import ManifestError, OutputError, UsageError
from ..manifest import ParsedManifest, PartEntry, is_encrypted, parse_manifest
from ..newfiles import write_new_file
from ..transfer import DEFAULT_TRANSFER, TransferConfig
from .location import S3Location
from .objects import fetch_manifest, fetch_part

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass
class DownloadResult:
    directory: Path
    manifest_path: Path
    plaintext_path: Path | None
    name: str
    parts: int
    parts_downloaded: int
    parts_skipped: int
    bytes_downloaded: int
    verified_signature: bool
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        return {
            "directory": str(self.directory), "manifest": str(self.manifest_path),
            "plaintext_manifest": str(self.plaintext_path) if self.plaintext_path else None,
            "name": self.name, "parts": self.parts, "parts_downloaded": self.parts_downloaded,
            "parts_skipped": self.parts_skipped, "bytes_downloaded": self.bytes_downloaded,
            "signature_verified": self.verified_signature, "seconds": round(self.seconds, 3),
        }


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        write_new_file(path, data, 0o666, replace=True, umask=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None


def _local_part_ok(path: Path, entry: PartEntry) -> bool:
    sha1 = hashlib.sha1()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                sha1.update(chunk)
    except OSError:
        return False
    return sha1.hexdigest() == entry.digest.lower()


def load_remote_manifest(client: S3Client, location: S3Location, manifest_name: str, *,
                         private_key: Any = None) -> tuple[ParsedManifest, bytes, bytes | None]:
    """Fetch and parse ``manifest_name``; legacy encrypted manifests are decrypted with
    ``private_key``. Returns (parsed, raw object bytes, plaintext if it was encrypted)."""
    key = location.key(manifest_name)
    raw = fetch_manifest(client, location.bucket, key)
    plaintext = None
    data = raw
    if is_encrypted(raw):
        if private_key is None:
            raise UsageError(f"{location.url(manifest_name)} is a legacy encrypted manifest: pass "
                             "-k PRIVATEKEY")
        from ..keys import decrypt_legacy_manifest

        plaintext = data = decrypt_legacy_manifest(raw, private_key)
    return parse_manifest(data, source=location.url(manifest_name)), raw, plaintext


def download_bundle(
    client: S3Client,
    location: S3Location,
    manifest_name: str,
    directory: Path,
    *,
    private_key: Any = None,
    verify_key: Any = None,
    verify_name: str | None = None,
    transfer: TransferConfig = DEFAULT_TRANSFER,
) -> DownloadResult:
    """Download a bundle to ``directory``: manifest checked (signature when a key is given),
    parts fetched in parallel, each written under a temporary name and renamed into place only
    after its SHA-1 matched. Parts already present and intact are kept. Manifest written last."""
    started = time.monotonic()
    jobs, attempts, progress = transfer.jobs, transfer.attempts, transfer.progress
    directory = Path(directory)
    if not directory.is_dir():
        raise OutputError(f"download directory {directory} does not exist")
    parsed, raw, plaintext = load_remote_manifest(client, location, manifest_name,
                                                  private_key=private_key)
    verified = False
    if verify_key is not None:
        from ..keys import verify_manifest

        verify_manifest(parsed, verify_key, cert_name=verify_name)
        verified = True
    manifest = parsed.manifest
    entries = sorted(manifest.parts, key=lambda e: e.index)
    for entry in entries:
        if "/" in entry.filename or entry.filename in (".", ".."):
            raise ManifestError(f"{parsed.source}: part name {entry.filename!r} is not a plain "
                                "file name")
    todo = [e for e in entries if not _local_part_ok(directory / e.filename, e)]
    progress.start("download", manifest.bundled_size if len(todo) == len(entries) else None)

    def fetch(entry: PartEntry) -> int:
        data = fetch_part(client, location.bucket, location.key(entry.filename), entry, attempts)
        _write_atomic(directory / entry.filename, data)
        progress.advance("download", len(data))
        return len(data)

    try:
        sizes = run_parallel([partial(fetch, e) for e in todo], jobs)
    finally:
        progress.finish("download")
    manifest_path = directory / manifest_name
    _write_atomic(manifest_path, raw)
    plaintext_path = None
    if plaintext is not None:
        plaintext_path = directory / f"{manifest_name}.plaintext"
        _write_atomic(plaintext_path, plaintext)
    return DownloadResult(directory, manifest_path, plaintext_path, manifest.name, len(entries),
                          len(todo),
                          len(entries) - len(todo), sum(sizes), verified,
                          time.monotonic() - started)
