"""The plan's bundles that no AMI uses any more: what a prune (or anything else) stopped between
DeregisterImage and the bundle's deletion left in S3, found by the plan's naming.

A plan's bundles live at ``BUCKET/PREFIX/GENERATION/NAME.manifest.xml`` (``plan.Target``). A
generation folder there is an orphan when (``orphan_folders``, pure):

- no registered AMI of the plan in that target names its manifest (the caller asks EC2 again,
  for any AMI of the account, before deleting: ``inuse``), and it is not the folder of a
  generation the retention keeps;
- every object of the bundle there is older than the oldest generation the retention keeps
  (and than ``--older-than``): so it is an older generation's, never the newest one's, and
  never a bundle a publish is still uploading or has yet to register;
- no upload lock is there (a publish holds it while it writes).

Whole bundles (the manifest is there) are deleted exactly as their manifest lists them;
leftover parts of a bundle whose manifest is gone already (a stop between the two deletes)
are deleted by their part names.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ..aws import error_code
from ..s3.lock import LOCK_SUFFIX
from ..s3.objects import s3_errors, with_attempts
from ..s3.publish import bundle_name
from ..transfer import DEFAULT_ATTEMPTS

_PART = re.compile(r"\.part\.[0-9]+$")


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified: datetime.datetime


@dataclass(frozen=True)
class Orphan:
    image_location: str  # BUCKET/PREFIX/GENERATION/NAME.manifest.xml (gone, for leftover parts)
    generation: str
    manifest: bool  # the manifest is there: a whole bundle (else only parts are left)
    keys: tuple[str, ...]  # the leftover parts (a whole bundle's keys come from its manifest)
    bytes: int
    modified: datetime.datetime  # the newest of its objects


def list_with_times(s3: Any, bucket: str, prefix: str,
                    attempts: int = DEFAULT_ATTEMPTS) -> list[Listed]:
    """Every key under ``prefix`` with its size and LastModified; none when there is no bucket."""
    def attempt() -> list[Listed]:
        found = []
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        try:
            listed = [obj for page in pages for obj in page.get("Contents", [])]
        except ClientError as exc:
            if error_code(exc) == "NoSuchBucket":
                return []
            raise
        for obj in listed:
            when = obj["LastModified"]
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.timezone.utc)
            found.append(Listed(obj["Key"], int(obj["Size"]), when))
        return found

    with s3_errors("list", bucket, prefix or None):
        return with_attempts(attempt, attempts, f"list s3://{bucket}/{prefix}")


def orphan_folders(listing: Iterable[Listed], *, bucket: str, prefix: str, manifest_name: str,
                   used: Collection[str], kept: Collection[str],
                   older_than: datetime.datetime) -> list[Orphan]:
    """The orphans among ``listing`` (keys under ``prefix``); ``used``: the image locations
    registered AMIs name; ``kept``: the generations the retention keeps (module doc)."""
    name = bundle_name(manifest_name)
    folders: dict[str, list[Listed]] = {}
    for item in listing:
        rest = item.key[len(prefix):] if item.key.startswith(prefix) else None
        if rest is None or rest.count("/") != 1:
            continue
        generation, _, leaf = rest.partition("/")
        if generation and (leaf == manifest_name or leaf == name + LOCK_SUFFIX
                           or (leaf.startswith(name) and _PART.fullmatch(leaf[len(name):]))):
            folders.setdefault(generation, []).append(item)
    out = []
    for generation, items in sorted(folders.items()):
        location = f"{bucket}/{prefix}{generation}/{manifest_name}"
        leaves = {i.key.rpartition("/")[2] for i in items}
        if (generation in kept or location in used or name + LOCK_SUFFIX in leaves
                or any(i.modified >= older_than for i in items)):
            continue
        whole = manifest_name in leaves
        parts = () if whole else tuple(sorted(i.key for i in items))
        out.append(Orphan(location, generation, whole, parts, sum(i.size for i in items),
                          max(i.modified for i in items)))
    return out


__all__ = ["Listed", "Orphan", "list_with_times", "orphan_folders"]
