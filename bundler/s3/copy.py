"""copy-bundle: a bundle from one S3 location to another (server-side or streamed)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from ..concurrency import run_parallel
from ..errors import IntegrityError, PartMissingError
from ..manifest import ParsedManifest, PartEntry
from ..transfer import DEFAULT_TRANSFER, TransferConfig
from .etags import is_md5, is_pieces
from .location import S3Location
from .multipart import recorded_md5
from .objects import copy_object, fetch_part, list_objects, put_bytes
from .publish import InUseLookup, Publication

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.s3")


@dataclass
class CopyResult:
    source: str
    destination: S3Location
    manifest_name: str
    mode: str  # "server" (CopyObject) or "stream" (GET → PUT through this process)
    parts_total: int
    parts_copied: int
    parts_skipped: int
    bytes_copied: int
    seconds: float = 0.0

    @property
    def image_location(self) -> str:
        return self.destination.image_location(self.manifest_name)

    def summary(self) -> dict[str, object]:
        return {"source": self.source, "destination": self.destination.url(),
                "image_location": self.image_location, "mode": self.mode, "parts": self.parts_total,
                "parts_copied": self.parts_copied, "parts_skipped": self.parts_skipped,
                "bytes_copied": self.bytes_copied, "seconds": round(self.seconds, 3)}


def copy_bundle(
    src_client: S3Client,
    source: S3Location,
    manifest_name: str,
    dst_client: S3Client,
    destination: S3Location,
    *,
    manifest: bytes,
    parsed: ParsedManifest,
    server_side: bool = True,
    transfer: TransferConfig = DEFAULT_TRANSFER,
    force: bool = False,
    in_use: InUseLookup | None = None,
) -> CopyResult:
    """Copy the parts ``parsed`` names from ``source`` to ``destination``, then put ``manifest``
    (the migrated one) there last, through the publish protocol (publish.py): lease, a different
    bundle at the destination refused unless ``force`` (never while ``in_use`` names an AMI) and
    its manifest retired before the first part, every part re-checked before the manifest.

    Resumable: a part of the same bundle already at the destination with the source's size and
    ETag is skipped. ``server_side`` uses CopyObject (no bytes through this machine; the buckets
    must be reachable from one endpoint, i.e. the same partition); otherwise each part is streamed
    GET → SHA-1 check → PUT, at most ``jobs`` parts in memory at a time.
    """
    started = time.monotonic()
    acl, jobs, attempts = transfer.acl, transfer.jobs, transfer.attempts
    progress = transfer.progress
    entries = sorted(parsed.manifest.parts, key=lambda e: e.index)
    src_keys = [source.key(e.filename) for e in entries]
    dst_keys = [destination.key(e.filename) for e in entries]
    have_src = list_objects(src_client, source.bucket, os.path.commonprefix(src_keys))
    missing = [e.filename for e, k in zip(entries, src_keys, strict=True) if k not in have_src]
    if missing:
        raise PartMissingError(f"cannot copy {parsed.source}: part {missing[0]} is missing from "
                               f"{source.url()} ({len(entries) - len(missing)} of {len(entries)} "
                               "present)")
    total = sum(have_src[k][0] for k in src_keys)
    if total != parsed.manifest.bundled_size:
        raise IntegrityError(f"parts in {source.url()} hold {total} bytes but {parsed.source} says "
                             f"bundled_size {parsed.manifest.bundled_size}: they are not this "
                             "bundle's parts")
    publication = Publication(dst_client, destination, manifest_name, acl=acl, attempts=attempts,
                              force=force, in_use=in_use)
    target = publication.open(parsed)
    try:
        unproved = [(e, s, d) for e, s, d in zip(entries, src_keys, dst_keys, strict=True)
                    if not target.has(d, *have_src[s])]
        # A source part sent in two pieces has no MD5 ETag, its earlier copy has: proved by the
        # MD5 the upload recorded (a HEAD each, only for these).
        ask = [(s, d) for _, s, d in unproved
               if is_pieces(have_src[s][1]) and d in target.listing
               and is_md5(target.listing[d][1])]
        recorded = run_parallel([partial(recorded_md5, src_client, source.bucket, s)
                                 for s, _ in ask], jobs)
        proved = {d for (s, d), md5 in zip(ask, recorded, strict=True)
                  if md5 and target.has(d, *have_src[s], md5=md5)}
        todo = [t for t in unproved if t[2] not in proved]
        skipped = len(entries) - len(todo)
        if skipped:
            log.info("resuming: %d of %d parts are already in %s", skipped, len(entries),
                     destination.url())
        progress.start("copy", sum(have_src[s][0] for _, s, _ in todo))

        def server(entry: PartEntry, src_key: str, dst_key: str) -> tuple[int, str]:
            size, etag = have_src[src_key]
            got = copy_object(dst_client, (source.bucket, src_key), destination.bucket, dst_key,
                              etag=etag, acl=acl, attempts=attempts)
            progress.advance("copy", size)
            return size, got or etag

        def stream(entry: PartEntry, src_key: str, dst_key: str) -> tuple[int, str]:
            data = fetch_part(src_client, source.bucket, src_key, entry, attempts)  # SHA-1 checked
            etag = put_bytes(dst_client, destination.bucket, dst_key, data, acl=acl,
                             attempts=attempts)
            progress.advance("copy", len(data))
            return len(data), etag

        copy = server if server_side else stream
        try:
            copied = run_parallel([partial(copy, *t) for t in todo], jobs)
            # What is at the destination now (what we copied, or what matched the source),
            # re-checked with the lease right before the manifest goes up last.
            expected = {d: target.listing[d] if d in proved else have_src[s]
                        for s, d in zip(src_keys, dst_keys, strict=True)}
            expected.update({d: got for (_, _, d), got in zip(todo, copied, strict=True)})
            publication.publish(manifest, expected)
        finally:
            progress.finish("copy")
    finally:
        publication.close()
    return CopyResult(source.url(manifest_name), destination, manifest_name,
                      "server" if server_side else "stream",
                      len(entries), len(todo), skipped, sum(size for size, _ in copied),
                      time.monotonic() - started)
