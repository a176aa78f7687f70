"""upload-bundle: a local bundle into S3, resumable, parts before the manifest."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..concurrency import run_parallel
from ..errors import IntegrityError, PartMissingError, UsageError
from ..localmanifest import read_manifest_bytes
from ..manifest import ParsedManifest, PartEntry, parse_manifest, part_mismatch
from ..transfer import DEFAULT_JOBS, DEFAULT_TRANSFER, TransferConfig
from .etags import holds
from .location import S3Location
from .objects import list_objects, put_bytes
from .publish import InUseLookup, Publication

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.s3")


@dataclass
class LocalPart:
    entry: PartEntry
    path: Path
    size: int
    md5: bytes


@dataclass
class UploadResult:
    bucket: str
    prefix: str
    manifest_key: str | None
    image_location: str
    parts_total: int
    parts_uploaded: int
    parts_skipped: int
    bytes_uploaded: int
    bucket_created: bool = False
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        return {
            "bucket": self.bucket, "prefix": self.prefix, "manifest_key": self.manifest_key,
            "image_location": self.image_location, "parts": self.parts_total,
            "parts_uploaded": self.parts_uploaded, "parts_skipped": self.parts_skipped,
            "bytes_uploaded": self.bytes_uploaded, "bucket_created": self.bucket_created,
            "seconds": round(self.seconds, 3),
        }


def read_local_manifest(path: Path) -> ParsedManifest:
    """The manifest to upload (as it is: a legacy encrypted one is refused by the parser);
    a missing -m file is a usage error."""
    return parse_manifest(read_manifest_bytes(path, error=UsageError), source=str(path))


def verify_local_parts(parsed: ParsedManifest, directory: Path, *,
                       jobs: int = DEFAULT_JOBS) -> list[LocalPart]:
    """Every part file exists and its SHA-1 is the manifest's — checked before anything goes up."""
    manifest = parsed.manifest
    entries = sorted(manifest.parts, key=lambda e: e.index)

    def check(entry: PartEntry) -> LocalPart:
        path = directory / entry.filename
        sha1, md5, size = hashlib.sha1(), hashlib.md5(), 0
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    sha1.update(chunk)
                    md5.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise PartMissingError(f"part {entry.filename} (index {entry.index}) is missing from "
                                   f"{directory}: "
                                   "pass -d with the bundle directory") from None
        except OSError as exc:
            raise IntegrityError(f"cannot read part {path}: {exc.strerror}") from None
        if sha1.hexdigest() != entry.digest.lower():
            raise IntegrityError(
                f"{part_mismatch(entry, sha1.hexdigest(), entries, str(path))} ({parsed.source}); "
                "nothing was uploaded",
                hint="re-bundle, or point -d/-m at the bundle these parts belong to")
        return LocalPart(entry, path, size, md5.digest())

    parts = run_parallel([partial(check, e) for e in entries], jobs)
    total = sum(p.size for p in parts)
    if total != manifest.bundled_size:
        raise IntegrityError(f"local parts hold {total} bytes but {parsed.source} says "
                             f"bundled_size {manifest.bundled_size}: re-bundle")
    return parts


def prepare_upload(manifest_path: Path, directory: Path | None = None, *,
                   jobs: int = DEFAULT_JOBS) -> tuple[ParsedManifest, list[LocalPart]]:
    """The local half of an upload, before anything remote: the manifest parsed, every part
    present with the manifest's SHA-1."""
    manifest_path = Path(manifest_path)
    parsed = read_local_manifest(manifest_path)
    directory = Path(directory) if directory is not None else manifest_path.parent
    return parsed, verify_local_parts(parsed, directory, jobs=jobs)


def upload_bundle(
    client: S3Client,
    location: S3Location,
    manifest_path: Path,
    *,
    transfer: TransferConfig = DEFAULT_TRANSFER,
    directory: Path | None = None,
    start_part: int | None = None,
    skip_manifest: bool = False,
    resume: bool = True,
    force: bool = False,
    in_use: InUseLookup | None = None,
    prepared: tuple[ParsedManifest, list[LocalPart]] | None = None,
) -> UploadResult:
    """Upload a local bundle: verify parts, skip intact ones already in S3, PUT the rest in
    parallel, then the manifest last (spec §6.6), through the publish protocol (publish.py): a
    different bundle of that name is replaced only with ``force`` and never while ``in_use``
    names an AMI using it. The bucket must exist (see ensure_bucket).
    ``prepared`` is ``prepare_upload``'s result when the caller checked the local side first
    (before creating the bucket, so a bad bundle leaves nothing behind in S3)."""
    started = time.monotonic()
    acl, jobs, attempts = transfer.acl, transfer.jobs, transfer.attempts
    progress = transfer.progress
    manifest_path = Path(manifest_path)
    parsed, parts = prepared or prepare_upload(manifest_path, directory, jobs=jobs)
    if start_part is not None and not 0 <= start_part < len(parts):
        raise UsageError(f"--part {start_part}: {manifest_path.name} has parts 0 to "
                         f"{len(parts) - 1}")

    wanted = [p for p in parts if start_part is None or p.entry.index >= start_part]
    skipped_by_flag = len(parts) - len(wanted)
    part_keys = {location.key(p.entry.filename): p for p in parts}
    # key → (size, ETag) of what is there once the parts are up: the listing's ETag for a
    # part already there (in whichever form, see etags), the upload's answer otherwise.
    there: dict[str, tuple[int, str]] = {}
    if start_part and not skip_manifest:
        # Checked before the publication opens: a refusal here must leave S3 as it was.
        existing = list_objects(client, location.bucket, os.path.commonprefix(list(part_keys)))
        absent = []
        for k, p in part_keys.items():
            if p.entry.index < start_part:
                if holds(existing.get(k), p.size, p.md5.hex(), data=p.path.read_bytes):
                    there[k] = existing[k]
                else:
                    absent.append(p.entry.filename)
        if absent:
            more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
            raise UsageError(
                f"--part {start_part} skips {absent[0]}{more}, but {location.url()} does not hold "
                "them as they are here: nothing was uploaded",
                hint="drop --part: a re-run skips by itself the parts already in S3")
    publication = Publication(client, location, manifest_path.name, acl=acl, attempts=attempts,
                              force=force, in_use=in_use)
    target = publication.open(parsed)
    try:
        todo: list[LocalPart] = []
        for part in wanted:
            key = location.key(part.entry.filename)
            if resume and target.has(key, part.size, part.md5.hex(), data=part.path.read_bytes):
                log.info("skipping %s: already in S3 with the same size and bytes",
                         part.entry.filename)
                there[key] = target.listing[key]
            else:
                todo.append(part)
        resumed = len(wanted) - len(todo)
        if resumed:
            log.info("resuming: %d of %d parts are already in %s", resumed, len(wanted),
                     location.url())

        total = sum(p.size for p in todo)
        progress.start("upload", total)

        def send(part: LocalPart) -> int:
            data = part.path.read_bytes()
            md5 = hashlib.md5(data).digest()
            if md5 != part.md5:
                raise IntegrityError(f"part {part.path} changed while uploading: re-bundle and "
                                     "re-run")
            key = location.key(part.entry.filename)
            there[key] = (len(data), put_bytes(client, location.bucket, key, data, md5=md5,
                                               acl=acl, attempts=attempts))
            progress.advance("upload", len(data))
            return len(data)

        try:
            run_parallel([partial(send, p) for p in todo], jobs)
            published = None
            if not skip_manifest:
                sizes = {k: there[k] for k in part_keys}
                published = publication.publish(parsed.raw, sizes)
            else:
                publication.check_parts({k: there[k] for k in (location.key(p.entry.filename)
                                                               for p in wanted)})
        finally:
            progress.finish("upload")
    finally:
        publication.close()
    return UploadResult(
        bucket=location.bucket,
        prefix=location.prefix,
        manifest_key=published,
        image_location=location.image_location(manifest_path.name),
        parts_total=len(parts),
        parts_uploaded=len(todo),
        parts_skipped=resumed + skipped_by_flag,
        bytes_uploaded=total,
        seconds=time.monotonic() - started,
    )
