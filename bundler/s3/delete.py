"""delete-bundle: which keys a bundle, or an interrupted upload of it, consists of."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..manifest import ParsedManifest
from .location import S3Location
from .lock import LOCK_SUFFIX
from .objects import list_objects
from .publish import MANIFEST_SUFFIX, PART_SUFFIX

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def keys_from_manifest(location: S3Location, manifest_name: str,
                       parsed: ParsedManifest) -> list[str]:
    """Exactly the manifest object and the parts it names (document order), spec §6.8."""
    keys = [location.key(e.filename) for e in parsed.manifest.parts]
    keys.append(location.key(manifest_name))
    return keys


def keys_by_prefix(client: S3Client, location: S3Location, name: str) -> list[str]:
    """Keys ``keyprefix+NAME`` followed by ``.part.N``, ``.manifest[.xml]`` or the upload lock
    suffix (all pages): everything a bundle of that name, or an interrupted upload of it, left."""
    base = location.key(name)
    selected = []
    for key in sorted(list_objects(client, location.bucket, base)):
        rest = key[len(base):]
        if PART_SUFFIX.match(rest) or MANIFEST_SUFFIX.match(rest) or rest == LOCK_SUFFIX:
            selected.append(key)
    return selected


def existing_keys(client: S3Client, bucket: str, keys: Sequence[str]) -> list[str]:
    if not keys:
        return []
    found = list_objects(client, bucket, os.path.commonprefix(list(keys)))
    return [k for k in keys if k in found]


@dataclass
class DeletePlan:
    bucket: str
    keys: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def plan_delete(client: S3Client, location: S3Location, *,
                manifest: tuple[str, ParsedManifest] | None = None,
                name: str | None = None) -> DeletePlan:
    """Which keys a delete-bundle removes: from a manifest (name, parsed) or by NAME listing."""
    if manifest is not None:
        wanted = keys_from_manifest(location, manifest[0], manifest[1])
        present = set(existing_keys(client, location.bucket, wanted))
        return DeletePlan(location.bucket, [k for k in wanted if k in present],
                          [k for k in wanted if k not in present])
    if not name:
        raise UsageError("delete-bundle needs -m MANIFEST or -p PREFIX")
    return DeletePlan(location.bucket, keys_by_prefix(client, location, name))
