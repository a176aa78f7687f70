"""Publishing a bundle: parts re-checked before the manifest goes up, orphans removed after."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .location import S3Location
from .lock import ConcurrentUploadError
from .objects import delete_keys, list_objects

log = logging.getLogger("bundler.s3")


PART_SUFFIX = re.compile(r"^\.part\.[0-9]+$")
MANIFEST_SUFFIX = re.compile(r"^\.manifest(\.xml)?$")


def check_uploaded(client: Any, location: S3Location, expected: dict[str, tuple[int, str]]) -> None:
    """Every key in ``expected`` is in S3 with that (size, MD5): called right before the manifest
    PUT, so a part replaced or removed by someone else while we uploaded is never published."""
    if not expected:
        return
    found = list_objects(client, location.bucket, os.path.commonprefix(list(expected)))
    for key, (size, md5) in sorted(expected.items()):
        have = found.get(key)
        name = key[len(location.prefix):]
        if have is None:
            raise ConcurrentUploadError(f"{name} disappeared from {location.url()} while uploading (deleted by "
                                        "another run?): the manifest was not uploaded; re-run")
        if have != (size, md5):
            raise ConcurrentUploadError(f"another upload replaced {name} in {location.url()} while uploading "
                                        f"(it is now {have[0]} bytes, MD5 {have[1]}; ours: {size} bytes, MD5 {md5}): "
                                        "the manifest was not uploaded; run one upload of a name at a time")


def _orphan_parts(found: Iterable[str], location: S3Location, name: str, keep: Iterable[str]) -> list[str]:
    """Keys NAME.part.N under the prefix that the new manifest does not name: provisional parts
    of runs that died, or the tail of an older, longer bundle of the same name."""
    base = location.key(name)
    wanted = set(keep)
    return sorted(k for k in found if k.startswith(base) and k not in wanted
                  and PART_SUFFIX.match(k[len(base):]))


def remove_orphans(client: Any, location: S3Location, name: str, keep: Sequence[str], attempts: int) -> int:
    base = location.key(name) + ".part."
    if not all(k.startswith(base) for k in keep):
        return 0  # a manifest with unusual part names: what NAME.part.N belongs to is unclear
    orphans = _orphan_parts(list_objects(client, location.bucket, location.key(name) + ".part."), location,
                            name, keep)
    if orphans:
        log.info("removing %d stale part(s) of %s no manifest names, e.g. %s", len(orphans), name, orphans[0])
        delete_keys(client, location.bucket, orphans, attempts=attempts)
    return len(orphans)


def bundle_name(manifest_name: str) -> str:
    for suffix in (".manifest.xml", ".manifest"):
        if manifest_name.endswith(suffix):
            return manifest_name[: -len(suffix)]
    return manifest_name
