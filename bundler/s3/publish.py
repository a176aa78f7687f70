"""The one publish protocol every writer of a bundle follows (upload, streaming install, copy,
multi-region fan-out, migrate-bundle).

S3 has no transactions, and an instance-store AMI *is* its bundle: EC2 reads the parts at every
launch. So a writer, through :class:`Publication`:

1. takes the lease on the bundle name (``lock.UploadLock``);
2. looks at what is at the target: nothing, the same bundle (same parts: resume, keep what is
   intact) or a different bundle — refused unless ``force``, and refused even then while a
   registered AMI uses it (``in_use``, asked of EC2 by the caller's lookup);
3. retires a different bundle's manifest before its first part is written, so a visible
   manifest never names parts of another bundle, not even after a crash;
4. re-checks every part and the lease right before the manifest, which goes up last — the
   commit point: a signal held until then stops the run before it, and once the manifest PUT
   has started nothing of the bundle is ever retracted (an AMI may already use it): a signal
   waits until the publication ends and the run then says what it left;
5. after publishing, removes parts no manifest names — a failure there only warns: the bundle
   is published and whole.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, cast

from .. import interrupts, signalsafe
from ..concurrency import run_all
from ..errors import BundleInUseError, BundlerError, PartMissingError, ReplaceRefusedError
from ..interrupts import critical, stop_if_signalled
from ..manifest import ParsedManifest, parse_manifest
from .etags import BytesReader, holds
from .location import S3Location
from .lock import ConcurrentUploadError, UploadLock
from .multipart import abort_upload, open_uploads
from .objects import (
    DEFAULT_ACL,
    DEFAULT_ATTEMPTS,
    MANIFEST_SIZE_CAP,
    delete_keys,
    get_bytes,
    list_objects,
    put_bytes,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.s3")


PART_SUFFIX = re.compile(r"^\.part\.[0-9]+$")
MANIFEST_SUFFIX = re.compile(r"^\.manifest(\.xml)?$")

# image location (BUCKET/PREFIX/NAME.manifest.xml) → ids of the registered AMIs that use it, or
# None when that could not be asked (the lookup has warned): see bundler.inuse.
InUseLookup = Callable[[str], "Sequence[str] | None"]

NOTHING, SAME, DIFFERENT = "nothing", "same", "different"


def bundle_identity(parsed: ParsedManifest) -> tuple[int, tuple[tuple[str, str], ...]]:
    """What makes two manifests the same bundle: the same parts with the same digests. The
    wrapping of the key and the signature may differ (a migrated copy), the bytes may not."""
    entries = sorted(parsed.manifest.parts, key=lambda e: e.index)
    return parsed.manifest.bundled_size, tuple((e.filename, e.digest.lower()) for e in entries)


@dataclass
class Target:
    """What a writer found at its target when it opened its publication."""

    state: str  # NOTHING | SAME | DIFFERENT (already retired when the writer gets it)
    # key → (size, ETag) under NAME
    listing: dict[str, tuple[int, str]] = field(default_factory=dict)

    def has(self, key: str, size: int, etag: str, *, data: BytesReader | None = None,
            md5: str | None = None) -> bool:
        """Whether ``key`` is already there intact (only ever true of the same bundle's parts):
        ``etag`` is that of the bytes wanted there, in either form ``etags`` knows; ``data``
        reads them, or ``md5`` is their recorded MD5, for a listing in the other form."""
        return self.state != DIFFERENT and holds(self.listing.get(key), size, etag, data=data,
                                                 md5=md5)


class Publication:
    """One bundle being written to one location, in the order the module docstring gives.

    ``open`` (lease, target, retire), then the writer's parts, then ``publish`` (re-check,
    manifest last, orphans); ``close`` on every path (idempotent, never raises).
    """

    def __init__(self, client: S3Client, location: S3Location, manifest_name: str, *,
                 acl: str = DEFAULT_ACL,
                 attempts: int = DEFAULT_ATTEMPTS, force: bool = False,
                 in_use: InUseLookup | None = None) -> None:
        self.client = client
        self.location = location
        self.manifest_name = manifest_name
        self.manifest_key = location.key(manifest_name)
        self.name = bundle_name(manifest_name)
        self.acl = acl
        self.attempts = attempts
        self.force = force
        self.in_use = in_use
        self.lock = UploadLock(client, location, self.name, acl=acl, attempts=attempts)
        self.target: Target | None = None
        self.published = False
        self.manifest_sent = False  # a manifest PUT was started: it may be visible
        self._stale: list[tuple[str, str]] = []  # (key, upload id) left open by a killed writer

    def open(self, new: ParsedManifest | None = None) -> Target:
        """Lease, decide, retire. ``new`` is the bundle to be published when it is known (upload,
        copy); a streaming writer passes None: its fresh AES key makes any bundle there another
        one."""
        self.lock.acquire()
        try:
            listing = list_objects(self.client, self.location.bucket, self.location.key(self.name))
            state = self._compare(new) if self.manifest_key in listing else NOTHING
            if state == DIFFERENT:
                self._may_replace()
                # Its parts are about to be overwritten: its manifest goes first, so that no
                # visible manifest ever names parts of another bundle, whenever we die.
                log.info("removing %s: the different bundle of that name is being replaced",
                         self.location.url(self.manifest_name))
                delete_keys(self.client, self.location.bucket, [self.manifest_key],
                            attempts=self.attempts)
                listing.pop(self.manifest_key, None)
        except BaseException:
            self.lock.release()
            raise
        self.target = Target(state, listing)
        return self.target

    def _compare(self, new: ParsedManifest | None) -> str:
        if new is None:
            return DIFFERENT
        try:
            raw = get_bytes(self.client, self.location.bucket, self.manifest_key,
                            limit=MANIFEST_SIZE_CAP, what="manifest", attempts=self.attempts)
        except PartMissingError:
            return NOTHING  # removed since the listing
        if raw == new.raw:
            return SAME
        try:
            old = parse_manifest(raw, source=self.location.url(self.manifest_name))
        except BundlerError:
            return DIFFERENT  # a legacy encrypted or damaged manifest: not provably the same
        return SAME if bundle_identity(old) == bundle_identity(new) else DIFFERENT

    def _may_replace(self) -> None:
        check_replaceable(self.location, self.manifest_name, force=self.force, in_use=self.in_use)

    def check_parts(self, expected: Mapping[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
        """Every key in ``expected`` is there with that (size, ETag), and the lease is still ours.
        The listing and the lease's HEAD are independent round trips: asked together (the
        listing's error first), and with them the multipart uploads still open under
        NAME.part. (pieces a killed writer left: ``publish`` aborts them). Returns the
        listing: every NAME.part.* key when the expected keys are all of that form (what the
        orphan clean-up needs)."""
        name_key = self.location.key(self.name)
        base = prefix = name_key + ".part."
        if not all(k.startswith(prefix) for k in expected):
            prefix = os.path.commonprefix(list(expected))
        reads: list[Callable[[], object]] = [
            partial(list_objects, self.client, self.location.bucket, prefix), self.lock.check,
            partial(open_uploads, self.client, self.location.bucket, base)]
        listed, leased, uploads = run_all(reads, name="ami-bundler-publish")
        found = cast("dict[str, tuple[int, str]]", signalsafe.result(listed))
        check_uploaded(self.client, self.location, dict(expected), found=found)
        signalsafe.result(leased)
        try:
            self._stale = [(k, u) for k, u in cast("list[tuple[str, str]]",
                                                   signalsafe.result(uploads))
                           if PART_SUFFIX.match(k[len(name_key):])]
        except BundlerError as exc:  # e.g. no s3:ListBucketMultipartUploads: not ours to fix
            log.debug("could not list open multipart uploads of %s: %s", self.name, exc)
        return found

    def publish(self, manifest: bytes, expected: Mapping[str, tuple[int, str]], *,
                release: bool = True) -> str:
        """Re-check every part and the lease, PUT the manifest (last), then remove orphans —
        parts no manifest names, and multipart uploads a killed writer left open (a failure
        there warns: the bundle is published and whole). Releases the lease, unless
        ``release`` is False: then the caller releases it (``close``), so that the round trip
        goes beside what follows instead of before it — install's RegisterImage. Returns the
        key."""
        found = self.check_parts(expected)
        # The commit point. A signal held until now stops the run before it; once the manifest
        # PUT has started, the bundle may be visible and an AMI registered from it, so it is
        # never retracted: a signal from here on waits until the publication is finished —
        # orphans removed, stale uploads aborted, lease released — and the run then ends
        # saying what it left (interrupts.kept).
        with critical():
            stop_if_signalled()
            self.manifest_sent = True
            put_bytes(self.client, self.location.bucket, self.manifest_key, manifest,
                      acl=self.acl, attempts=self.attempts)
            self.published = True
            interrupts.published(self.location.url(self.manifest_name),
                                 self.location.image_location(self.manifest_name))
            try:
                # Provisional parts of runs that were killed, or the tail of a longer older
                # bundle: the listing made under the lease just before the manifest holds them.
                remove_orphans(self.client, self.location, self.name, list(expected),
                               self.attempts, found=found)
                for key, upload_id in self._stale:
                    abort_upload(self.client, self.location.bucket, key, upload_id)
            except BundlerError as exc:
                log.warning("could not remove stale parts of %s: %s (delete-bundle -p %s "
                            "removes them)", self.name, exc, self.name)
            if release:
                self.close()
        return self.manifest_key

    @property
    def lost(self) -> bool:
        return self.lock.lost

    def retract(self) -> bool:
        """After a run failed or was interrupted: whether the parts it wrote may be removed.
        Never once the manifest is published (the bundle is whole: an interrupt during the
        orphan clean-up or the lease release must not take its parts), nor when the lease was
        lost (they may be another run's). A manifest PUT whose answer never came may have
        landed: it is deleted first, so that no visible manifest names removed parts."""
        if self.published:
            log.info("%s is published and whole: keeping it", self.location.url(self.manifest_name))
            return False
        if self.lost:
            log.warning("not removing the partial upload from %s: the lock was lost",
                        self.location.url())
            return False
        if self.manifest_sent:
            try:
                delete_keys(self.client, self.location.bucket, [self.manifest_key],
                            attempts=self.attempts)
            except BundlerError as exc:
                log.warning("not removing the parts under %s: its manifest may be there and could "
                            "not be deleted (%s)", self.location.url(), exc)
                return False
        return True

    def close(self) -> None:
        self.lock.release()


def check_replaceable(location: S3Location, manifest_name: str, *, force: bool,
                      in_use: InUseLookup | None) -> None:
    """The rule for replacing the different bundle at ``location``: never while a registered AMI
    uses it, otherwise only with ``force``. Raises BundleInUseError / ReplaceRefusedError."""
    url = location.url(manifest_name)
    users: Sequence[str] | None = None
    if in_use is not None:
        try:
            users = in_use(location.image_location(manifest_name))
        except BundlerError:
            if force:
                raise  # about to destroy it: not knowing whether an AMI uses it is an error
    if users:
        raise BundleInUseError(
            f"{url} holds a different bundle that the registered AMI(s) {', '.join(users)} use: it "
            "is never replaced, not even with --force; deregister them first (ami-bundler "
            "deregister AMI) or publish under another name (-p), prefix or bucket")
    if not force:
        raise ReplaceRefusedError(
            f"{url} already holds a different bundle named {bundle_name(manifest_name)}: nothing "
            "was changed; pass --force to replace it, or use another name (-p), prefix or bucket")
    log.warning("replacing the different bundle at %s (--force)", url)


def check_uploaded(client: S3Client, location: S3Location,
                   expected: dict[str, tuple[int, str]], *,
                   found: Mapping[str, tuple[int, str]] | None = None) -> None:
    """Every key in ``expected`` is in S3 with that (size, ETag) — the one the writer's upload or
    copy answered, or the listing it resumed from — called right before the manifest
    PUT, so a part replaced or removed by someone else while we uploaded is never published.
    ``found``: a listing just made that covers every expected key (else S3 is listed here)."""
    if not expected:
        return
    if found is None:
        found = list_objects(client, location.bucket, os.path.commonprefix(list(expected)))
    for key, (size, etag) in sorted(expected.items()):
        have = found.get(key)
        name = key[len(location.prefix):]
        if have is None:
            raise ConcurrentUploadError(f"{name} disappeared from {location.url()} while uploading "
                                        "(deleted by another run?): the manifest was not uploaded; "
                                        "re-run")
        if have != (size, etag):
            raise ConcurrentUploadError(f"another upload replaced {name} in {location.url()} while "
                                        f"uploading (it is now {have[0]} bytes, ETag {have[1]}; "
                                        f"ours: {size} bytes, ETag {etag}): "
                                        "the manifest was not uploaded; run one upload of a name "
                                        "at a time")


def _orphan_parts(found: Iterable[str], location: S3Location, name: str,
                  keep: Iterable[str]) -> list[str]:
    """Keys NAME.part.N under the prefix that the new manifest does not name: provisional parts
    of runs that died, or the tail of an older, longer bundle of the same name."""
    base = location.key(name)
    wanted = set(keep)
    return sorted(k for k in found if k.startswith(base) and k not in wanted
                  and PART_SUFFIX.match(k[len(base):]))


def remove_orphans(client: S3Client, location: S3Location, name: str, keep: Sequence[str],
                   attempts: int, *, found: Iterable[str] | None = None) -> int:
    """Delete NAME.part.* keys that ``keep`` does not name; ``found``: a listing of every
    NAME.part.* key made under the lease (else S3 is listed here)."""
    base = location.key(name) + ".part."
    if not all(k.startswith(base) for k in keep):
        return 0  # a manifest with unusual part names: what NAME.part.N belongs to is unclear
    if found is None:
        found = list_objects(client, location.bucket, base)
    orphans = _orphan_parts(found, location, name, keep)
    if orphans:
        log.info("removing %d stale part(s) of %s no manifest names, e.g. %s", len(orphans), name,
                 orphans[0])
        delete_keys(client, location.bucket, orphans, attempts=attempts)
    return len(orphans)


def bundle_name(manifest_name: str) -> str:
    for suffix in (".manifest.xml", ".manifest"):
        if manifest_name.endswith(suffix):
            return manifest_name[: -len(suffix)]
    return manifest_name
