"""Retention: deregister a plan's older generations in every (account, region) and delete their
bundles, through the same publishing-safety rules as ``deregister --delete-bundle``.

Per target (one account in one region, each on its own thread: one failing does not stop the
others):

1. The plan's AMIs are this account's own (``Owners=self``) carrying the plan tag; shared or
   public images of other accounts are never touched. AMIs of one generation (the generation
   tag, else the AMI name) go together; generations are ordered by CreationDate, newest first.
2. ``Retention`` picks the old generations (pure: ``old_generations``).
3. An AMI with deregistration protection on is kept and reported, and so is its bundle.
4. A bundle is exactly what its AMI's ImageLocation names: that manifest and the parts it lists
   (``s3.delete.plan_delete``). Besides those, the plan's bundles no AMI names (left by a stop
   between DeregisterImage and the delete) are found by the plan's naming and deleted when
   they are older than every generation kept (``orphans``; the targets need their bucket).
   A bundle is deleted only when no other registered AMI of the account uses it (``inuse``:
   asked again after the deregistrations, so an AMI registered meanwhile from the same
   manifest keeps it), never when its AMI could not be deregistered, and never when the
   manifest cannot be read. The manifest goes first, then the parts.

A dry run asks the same questions and changes nothing; both report the S3 bytes (to be) freed.
"""

from __future__ import annotations

import datetime
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import signalsafe
from ..aws import AwsOptions, ec2_client, ec2_errors, s3_client
from ..concurrency import run_all
from ..ec2 import deregister_image, image_location_of
from ..errors import BundlerError, EC2Error, ManifestError, UsageError
from ..inuse import images_using
from ..s3.delete import keys_from_manifest
from ..s3.download import load_remote_manifest
from ..s3.location import split_manifest_location
from ..s3.objects import delete_keys, list_objects
from ..s3.publish import bundle_name
from ..transfer import DEFAULT_ATTEMPTS
from .orphans import Orphan, list_with_times, orphan_folders

if TYPE_CHECKING:
    from botocore.session import Session

log = logging.getLogger("bundler.publish.prune")

Warn = Callable[[str], None]


# --------------------------------------------------------------------------- what to keep


@dataclass(frozen=True)
class Retention:
    """Keep the ``keep`` newest generations, and (with ``older_than_days``) anything newer
    than that; at least one generation is always kept."""

    keep: int = 1
    older_than_days: float | None = None

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise UsageError("--keep must be at least 1: prune never removes a plan's newest "
                             "generation (deregister it directly if that is meant)")
        if self.older_than_days is not None and self.older_than_days < 0:
            raise UsageError("--older-than must be a number of days, 0 or more")


@dataclass(frozen=True)
class Generation:
    name: str
    created: datetime.datetime  # the newest CreationDate among its AMIs
    images: tuple[Mapping[str, Any], ...]


def creation_date(image: Mapping[str, Any]) -> datetime.datetime:
    text = str(image.get("CreationDate") or "1970-01-01T00:00:00Z").replace("Z", "+00:00")
    when = datetime.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def tag_value(image: Mapping[str, Any], key: str) -> str | None:
    for tag in image.get("Tags") or []:
        if tag.get("Key") == key:
            return str(tag.get("Value", ""))
    return None


def generations(images: Iterable[Mapping[str, Any]], generation_tag: str) -> list[Generation]:
    """The images grouped by generation, newest first (ties: by name, for a stable order)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for image in images:
        name = tag_value(image, generation_tag) or str(image.get("Name") or image["ImageId"])
        groups.setdefault(name, []).append(image)
    found = [Generation(name, max(creation_date(i) for i in group),
                        tuple(sorted(group, key=lambda i: str(i["ImageId"]))))
             for name, group in groups.items()]
    return sorted(found, key=lambda g: (g.created, g.name), reverse=True)


def old_generations(found: Sequence[Generation], retention: Retention,
                    now: datetime.datetime) -> tuple[list[Generation], list[Generation]]:
    """(kept, old) of generations ordered newest first."""
    kept, old = list(found[:retention.keep]), list[Generation]()
    cutoff = (now - datetime.timedelta(days=retention.older_than_days)
              if retention.older_than_days is not None else None)
    for generation in found[retention.keep:]:
        (old if cutoff is None or generation.created < cutoff else kept).append(generation)
    return kept, old


# --------------------------------------------------------------------------- the report


@dataclass
class ImageAction:
    image_id: str
    name: str
    generation: str
    created: str
    image_location: str | None
    # would-deregister | deregistered | protected | failed
    state: str = "would-deregister"
    error: str | None = None


@dataclass
class BundleAction:
    image_location: str
    images: list[str]
    objects: int = 0
    bytes: int = 0
    # would-delete | deleted | in-use | missing | kept (its AMI stays or the manifest is bad)
    state: str = "would-delete"
    kept_for: list[str] = field(default_factory=list)
    error: str | None = None
    orphan: bool = False  # no AMI names it: an older generation's bundle left behind (orphans)


@dataclass
class TargetResult:
    account: str
    region: str
    kept: list[str] = field(default_factory=list)  # generations kept, newest first
    images: list[ImageAction] = field(default_factory=list)
    bundles: list[BundleAction] = field(default_factory=list)
    error: str | None = None
    exit_code: int = 0

    @property
    def label(self) -> str:
        return f"{self.account}/{self.region}"

    @property
    def failed(self) -> bool:
        return (self.error is not None or any(i.state == "failed" for i in self.images)
                or any(b.error for b in self.bundles))


@dataclass
class PruneReport:
    plan: str
    dry_run: bool
    targets: list[TargetResult]

    @property
    def bytes_freed(self) -> int:
        done = "would-delete" if self.dry_run else "deleted"
        return sum(b.bytes for t in self.targets for b in t.bundles if b.state == done)

    @property
    def changed(self) -> bool:
        """Something was (or, dry run, would be) deregistered or deleted."""
        states = {"would-deregister", "deregistered", "would-delete", "deleted"}
        return any(i.state in states for t in self.targets for i in t.images) or any(
            b.state in states for t in self.targets for b in t.bundles)

    @property
    def failed(self) -> list[TargetResult]:
        return [t for t in self.targets if t.failed]

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "dry_run": self.dry_run, "changed": self.changed,
                "bytes_freed": self.bytes_freed, "targets": [asdict(t) for t in self.targets]}


# --------------------------------------------------------------------------- the work


@dataclass(frozen=True)
class PruneTarget:
    """One account in one region, reached (``accounts.open_accounts``) and verified."""

    account: str
    region: str
    session: Session = field(repr=False, compare=False)
    # Where the plan's bundles are (plan.Target): BUCKET/PREFIX/GENERATION/MANIFEST. Without
    # them only the bundles of old AMIs are pruned, not the orphans (bundler.publish.orphans).
    bucket: str | None = None
    prefix: str = ""
    manifest_name: str | None = None


def plan_images(ec2: Any, plan: str, plan_tag: str) -> list[dict[str, Any]]:
    """This account's registered AMIs of the plan in the client's region."""
    found: list[dict[str, Any]] = []
    with ec2_errors(f"list the AMIs of plan {plan}"):
        pages = ec2.get_paginator("describe_images").paginate(
            Owners=["self"], Filters=[{"Name": f"tag:{plan_tag}", "Values": [plan]}])
        for page in pages:
            found.extend(i for i in page.get("Images", []) if i.get("State") != "deregistered")
    return found


def _protected(image: Mapping[str, Any]) -> bool:
    # "enabled-without-cooldown", "enabled-with-cooldown", or "disabled"; anything else (a
    # cooldown still running) is treated as protected: DeregisterImage would refuse it anyway
    return str(image.get("DeregistrationProtection") or "disabled") != "disabled"


class _Bundles:
    """The bundles of the old AMIs in one target: read once, sized, deleted at most once."""

    def __init__(self, s3: Any, ec2: Any, warn: Warn | None, attempts: int) -> None:
        self.s3, self.ec2, self.warn, self.attempts = s3, ec2, warn, attempts
        self.keys: dict[str, list[str]] = {}

    def inspect(self, action: BundleAction) -> None:
        """The bundle's keys and size, from its manifest; state ``missing``/``kept`` if none."""
        location, name = split_manifest_location(action.image_location)
        present = list_objects(self.s3, location.bucket, location.key(bundle_name(name)))
        if location.key(name) not in present:
            action.state = "missing"  # deleted already: nothing to free, nothing to guess
            return
        try:
            parsed, _, _ = load_remote_manifest(self.s3, location, name)
        except (ManifestError, UsageError) as exc:
            # never guess which objects an unreadable manifest owned: keep all of them
            action.state, action.error = "kept", f"cannot read its manifest: {exc}"
            return
        keys = keys_from_manifest(location, name, parsed)
        found = [k for k in keys if k in present]
        self.keys[action.image_location] = found
        action.objects = len(found)
        action.bytes = sum(present[k][0] for k in found)

    def users(self, action: BundleAction, exclude: Sequence[str]) -> list[str]:
        """The other registered AMIs using the bundle; when EC2 will not say, the bundle is
        treated as used (prune deletes only what it knows to be free)."""
        found = images_using(self.ec2, action.image_location, exclude=exclude, warn=self.warn)
        if found is None:
            raise EC2Error(f"cannot tell whether another AMI uses {action.image_location}: kept")
        return found

    def delete(self, action: BundleAction) -> None:
        """The manifest first, then the parts: a visible manifest never names a missing part
        (even when a stop or a 1000-key batch falls between them)."""
        location, name = split_manifest_location(action.image_location)
        keys = self.keys[action.image_location]
        manifest = [k for k in keys if k == location.key(name)]
        for batch in (manifest, [k for k in keys if k not in manifest]):
            if batch:
                delete_keys(self.s3, location.bucket, batch, attempts=self.attempts)
        action.state = "deleted"

    def leftover(self, action: BundleAction, orphan: Orphan) -> None:
        """Parts whose manifest is gone already: deleted by their names."""
        self.keys[action.image_location] = list(orphan.keys)
        action.objects, action.bytes = len(orphan.keys), orphan.bytes


def prune_target(target: PruneTarget, *, plan: str, retention: Retention, opts: AwsOptions,
                 plan_tag: str, generation_tag: str, dry_run: bool,
                 now: datetime.datetime, warn: Warn | None = None,
                 attempts: int = DEFAULT_ATTEMPTS) -> TargetResult:
    result = TargetResult(target.account, target.region)
    ec2 = ec2_client(opts, session=target.session, region=target.region)
    s3 = s3_client(opts, session=target.session, region=target.region)
    registered = plan_images(ec2, plan, plan_tag)
    kept, old = old_generations(generations(registered, generation_tag), retention, now)
    result.kept = [g.name for g in kept]
    bundles: dict[str, BundleAction] = {}
    for generation in old:
        for image in generation.images:
            location = image_location_of(dict(image))
            action = ImageAction(str(image["ImageId"]), str(image.get("Name", "")),
                                 generation.name, str(image.get("CreationDate", "")), location)
            if _protected(image):
                action.state = "protected"
            result.images.append(action)
            if location:
                bundle = bundles.setdefault(location, BundleAction(location, []))
                bundle.images.append(action.image_id)
    result.bundles = list(bundles.values())
    store = _Bundles(s3, ec2, warn, attempts)
    leftovers: dict[str, Orphan] = {}
    for orphan in _orphans(target, s3, registered, kept, retention, now, attempts):
        result.bundles.append(BundleAction(orphan.image_location, [], orphan=True))
        if not orphan.manifest:
            leftovers[orphan.image_location] = orphan
    leaving = [i.image_id for i in result.images if i.state == "would-deregister"]
    for bundle in result.bundles:
        staying = [i for i in result.images if i.image_id in bundle.images
                   and i.state == "protected"]
        try:
            if bundle.image_location in leftovers:
                store.leftover(bundle, leftovers[bundle.image_location])
            else:
                store.inspect(bundle)
            if staying:
                bundle.state, bundle.kept_for = "kept", [i.image_id for i in staying]
            elif bundle.state == "would-delete":
                others = store.users(bundle, leaving)
                if others:
                    bundle.state, bundle.kept_for = "in-use", others
        except BundlerError as exc:  # this bundle stays; the target's other work goes on
            bundle.state, bundle.error = "kept", str(exc)
            result.exit_code = result.exit_code or exc.exit_code
    if dry_run:
        return result
    deregistered = _deregister(ec2, result.images)
    if any(i.state == "failed" for i in result.images):
        result.exit_code = result.exit_code or EC2Error.exit_code
    for bundle in result.bundles:
        if bundle.state != "would-delete":
            continue
        if not set(bundle.images) <= set(deregistered):
            bundle.state = "kept"  # its AMI is still registered: so is its bundle
            continue
        try:
            # again, now: an AMI registered from this manifest since the first look keeps it
            others = store.users(bundle, deregistered)
            if others:
                bundle.state, bundle.kept_for = "in-use", others
                continue
            store.delete(bundle)
        except BundlerError as exc:
            bundle.error = str(exc)
            result.exit_code = result.exit_code or exc.exit_code
    return result


def _orphans(target: PruneTarget, s3: Any, registered: Sequence[Mapping[str, Any]],
             kept: Sequence[Generation], retention: Retention, now: datetime.datetime,
             attempts: int) -> list[Orphan]:
    """The plan's bundles in the target's bucket no AMI names, older than every generation
    kept (``bundler.publish.orphans``); none when no generation is kept there (which one is
    the newest could not be told)."""
    if target.bucket is None or target.manifest_name is None or not kept:
        return []
    horizon = min(g.created for g in kept)
    if retention.older_than_days is not None:
        horizon = min(horizon, now - datetime.timedelta(days=retention.older_than_days))
    used = {loc for loc in (image_location_of(dict(i)) for i in registered) if loc}
    listing = list_with_times(s3, target.bucket, target.prefix, attempts)
    return orphan_folders(listing, bucket=target.bucket, prefix=target.prefix,
                          manifest_name=target.manifest_name, used=used,
                          kept={g.name for g in kept}, older_than=horizon)


def _deregister(ec2: Any, images: Sequence[ImageAction]) -> list[str]:
    done: list[str] = []
    for image in images:
        if image.state != "would-deregister":
            continue
        try:
            deregister_image(ec2, image.image_id)
        except BundlerError as exc:  # protection turned on meanwhile, permissions…
            image.state, image.error = "failed", str(exc)
            continue
        image.state = "deregistered"
        done.append(image.image_id)
    return done


def prune(targets: Sequence[PruneTarget], *, plan: str, retention: Retention, opts: AwsOptions,
          plan_tag: str, generation_tag: str, dry_run: bool = False,
          now: datetime.datetime | None = None, warn: Warn | None = None,
          attempts: int = DEFAULT_ATTEMPTS) -> PruneReport:
    """Prune every target at once; a failing target is reported and the others go on."""
    when = now or datetime.datetime.now(datetime.timezone.utc)
    tasks: list[Callable[[], TargetResult]] = [
        functools.partial(prune_target, t, plan=plan, retention=retention, opts=opts,
                          plan_tag=plan_tag, generation_tag=generation_tag, dry_run=dry_run,
                          now=when, warn=warn, attempts=attempts) for t in targets]
    results: list[TargetResult] = []
    for target, future in zip(targets, run_all(tasks, name="ami-bundler-prune"), strict=True):
        error = signalsafe.exception(future)
        if error is None:
            results.append(signalsafe.result(future))
        elif isinstance(error, BundlerError):
            results.append(TargetResult(target.account, target.region, error=str(error),
                                        exit_code=error.exit_code))
        else:
            raise error
    return PruneReport(plan, dry_run, results)


__all__ = ["BundleAction", "Generation", "ImageAction", "PruneReport", "PruneTarget",
           "Retention", "TargetResult", "creation_date", "generations", "old_generations",
           "plan_images", "prune", "prune_target", "tag_value"]
