"""What each (account, region) of a plan already holds, read from AWS itself — no state file.

A target's state is its bucket's bundle of the generation (absent, this very image, or another
one: ``bundler.rerun.existing_bundle`` proves it by signature, size and tar-stream SHA-1) and
the AMI of that name (DescribeImages, owner self). From it follow the changes a publish makes
there (``Change``), or why it must not touch the target at all (``TargetState.conflict``): an
AMI or bundle of that generation that holds another image is never changed.

Which generation a run completes: an AMI of this plan (tag ``PLAN_TAG``) that carries this
image's digest (``DIGEST_TAG``) in any target names it (the newest, by CreationDate), so a
re-run — the next day too — finishes the same generation; otherwise the name template renders
a new one.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..aws import ec2_errors
from ..rerun import ImageFingerprint, existing_bundle
from ..s3 import bucket_region
from .plan import BUNDLE_DIGEST_TAG, DIGEST_TAG, GENERATION_TAG, PLAN_TAG, Plan, Target

log = logging.getLogger("bundler.publish.state")

DEPRECATION_SLACK = datetime.timedelta(hours=1)  # registration vs CreationDate, EC2's rounding

ABSENT, SAME, DIFFERENT = "absent", "same", "different"


@dataclass(frozen=True)
class Change:
    """One thing a publish does at a target: bundle | copy | register | share | tag |
    deprecate | protect, with what (``detail``)."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.detail}".strip()


@dataclass
class TargetState:
    target: Target
    generation: str
    image_location: str  # BUCKET/PREFIX/GENERATION/NAME.manifest.xml
    bundle: str = ABSENT  # ABSENT | SAME | DIFFERENT
    image: dict[str, Any] | None = None  # the generation's AMI (DescribeImages entry)
    launch_permissions: frozenset[str] = frozenset()  # the AMI's, as the plan writes them
    conflict: str | None = None  # why nothing may be done here
    changes: list[Change] = field(default_factory=list)
    bundle_digest: str | None = None  # the bucket's manifest's digest (SAME or DIFFERENT)
    bucket_exists: bool = False  # the bucket was found, in the target's region

    @property
    def image_id(self) -> str | None:
        return None if self.image is None else str(self.image["ImageId"])


@dataclass(frozen=True)
class Desired:
    """What every AMI of the generation must have."""

    tags: Mapping[str, str]
    launch_permissions: tuple[str, ...]
    deprecate_after: datetime.timedelta | None
    deregistration_protection: bool


def desired(plan: Plan, *, digest: str, generation: str) -> Desired:
    days = plan.deprecate_after_days
    return Desired(plan.rendered_tags(digest=digest, generation=generation),
                   plan.launch_permissions,
                   None if days is None else datetime.timedelta(days=days),
                   plan.deregistration_protection)


# --------------------------------------------------------------------------- reading AWS


def tags_of(image: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in image.get("Tags", []) or []}


def plan_images(ec2: Any, plan_name: str) -> list[dict[str, Any]]:
    """This account's AMIs in the client's region that carry the plan's tag."""
    out: list[dict[str, Any]] = []
    with ec2_errors(f"look up the AMIs of plan {plan_name}"):
        pages = ec2.get_paginator("describe_images").paginate(
            Owners=["self"], Filters=[{"Name": f"tag:{PLAN_TAG}", "Values": [plan_name]}])
        for page in pages:
            out += [i for i in page.get("Images", []) if i.get("State") != "deregistered"]
    return out


def images_named(ec2: Any, name: str) -> list[dict[str, Any]]:
    with ec2_errors(f"look up AMI {name}"):
        images = ec2.describe_images(Owners=["self"],
                                     Filters=[{"Name": "name", "Values": [name]}])["Images"]
    return [i for i in images if i.get("State") != "deregistered"]


def launch_permissions_of(ec2: Any, image_id: str) -> frozenset[str]:
    """The AMI's launch permissions written as a plan writes them (ids, ARNs, ``all``)."""
    with ec2_errors(f"read the launch permissions of {image_id}"):
        answer = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    out = set()
    for entry in answer.get("LaunchPermissions", []) or []:
        if entry.get("Group") == "all":
            out.add("all")
        for key in ("UserId", "OrganizationArn", "OrganizationalUnitArn"):
            if entry.get(key):
                out.add(str(entry[key]))
    return frozenset(out)


def _created(image: Mapping[str, Any]) -> datetime.datetime:
    return _time(image.get("CreationDate")) or datetime.datetime.min.replace(
        tzinfo=datetime.timezone.utc)


def _time(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    text = str(value).replace("Z", "+00:00")
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def resolve_generation(plan: Plan, images: Iterable[Mapping[str, Any]], *, digest: str,
                       when: datetime.datetime) -> tuple[str, bool]:
    """(generation name, whether an AMI of it exists already) for this image (module doc)."""
    same = [i for i in images
            if tags_of(i).get(DIGEST_TAG) == digest and tags_of(i).get(GENERATION_TAG)]
    if same:
        newest = max(same, key=_created)
        return tags_of(newest)[GENERATION_TAG], True
    return plan.generation(digest=digest, when=when), False


def read_target(plan: Plan, target: Target, generation: str, *, s3: Any, ec2: Any,
                fingerprint: ImageFingerprint, user_public_key: Any, want: Desired,
                now: datetime.datetime) -> TargetState:
    """The target's state for ``generation`` and the changes (or the conflict) that follow."""
    location = target.location(generation)
    st = TargetState(target, generation, location.image_location(plan.manifest_name))
    at = bucket_region(s3, target.bucket)
    if at is not None and at != target.region:
        st.conflict = (f"bucket {target.bucket} is in {at}, not {target.region}: EC2 registers "
                       "a bundle only in its bucket's region (fix the plan's bucket template)")
        return st
    if at is not None:
        st.bucket_exists = True
        found = existing_bundle(s3, location, plan.manifest_name, fingerprint, user_public_key)
        if found is not None:
            st.bundle = SAME if found.same_image else DIFFERENT
            if found.parsed is not None:
                st.bundle_digest = found.parsed.manifest.digest.lower()
    digest = fingerprint.digest()
    for image in images_named(ec2, generation):
        st.image = image
        theirs = tags_of(image).get(DIGEST_TAG)
        recorded = tags_of(image).get(BUNDLE_DIGEST_TAG)
        if recorded and st.bundle == SAME and recorded.lower() != st.bundle_digest:
            st.bundle = DIFFERENT  # the bucket's bundle is not the one this AMI came from
        if image.get("ImageLocation") != st.image_location:
            st.conflict = (f"AMI {image['ImageId']} is already named {generation} but was "
                           f"registered from {image.get('ImageLocation') or 'a snapshot'}")
        elif (theirs and theirs != digest) or st.bundle == DIFFERENT:
            st.conflict = (f"generation {generation} ({image['ImageId']}) holds another image "
                           f"(digest {theirs or 'of its bundle'} ≠ {digest}): it is never "
                           "changed; give the new image a new generation name (the ami_name "
                           "template renders the same name: add {time} or {digest}, or set "
                           "SOURCE_DATE_EPOCH)")
        elif st.bundle == ABSENT:
            st.conflict = (f"AMI {image['ImageId']} ({generation}) is registered but its bundle "
                           f"{st.image_location} is gone: deregister it (it cannot launch)")
        break
    if st.conflict is None and st.bundle == DIFFERENT:
        if plan.source.directory is not None:
            folder = f"{target.bucket}/{location.prefix}".rstrip("/")
            st.conflict = (
                f"{st.image_location} holds a bundle that is not provably this tree's: no AMI "
                f"of generation {generation} records its digest (a run stopped between upload "
                "and registration, or another tree); it is never replaced: delete it "
                f"(ami-bundler delete-bundle -b {folder} -m {plan.manifest_name} --region "
                f"{target.region}) and re-run, or give the tree a new generation name")
        else:
            st.conflict = (f"{st.image_location} holds a different bundle (not this image): it "
                           "is never replaced; give the new image a new generation name")
    if st.conflict is not None:
        return st
    if st.image is None:
        st.changes.append(Change("register", generation))
        st.changes += [Change("share", who) for who in want.launch_permissions]
        st.changes += [Change("tag", f"{k}={v}") for k, v in want.tags.items()]
        if want.deprecate_after is not None:
            st.changes.append(Change("deprecate", (now + want.deprecate_after).isoformat()))
        if want.deregistration_protection:
            st.changes.append(Change("protect"))
        return st
    st.launch_permissions = launch_permissions_of(ec2, str(st.image["ImageId"]))
    st.changes += drift(st.image, st.launch_permissions, want, now)
    return st


def drift(image: Mapping[str, Any], launch_permissions: frozenset[str], want: Desired,
          now: datetime.datetime) -> list[Change]:
    """What an existing AMI of the generation lacks. Only what is missing is added: extra
    launch permissions or tags someone set are left alone (docs/publish.md)."""
    changes = [Change("share", who) for who in want.launch_permissions
               if who not in launch_permissions]
    have = tags_of(image)
    changes += [Change("tag", f"{k}={v}") for k, v in want.tags.items() if have.get(k) != v]
    if want.deprecate_after is not None:
        due = _created(image) + want.deprecate_after
        current = _time(image.get("DeprecationTime"))
        ok = current is not None and (abs(current - due) <= DEPRECATION_SLACK or (
            due <= now and current <= now + DEPRECATION_SLACK))  # deprecated already: so be it
        if not ok:
            at = deprecation_time(image, want.deprecate_after, now)
            changes.append(Change("deprecate", at.isoformat()))
    if want.deregistration_protection and image.get("DeregistrationProtection", "disabled") in (
            "disabled", None):
        changes.append(Change("protect"))
    return changes


def deprecation_time(image: Mapping[str, Any], after: datetime.timedelta,
                     now: datetime.datetime) -> datetime.datetime:
    """N days after the AMI's creation; EC2 takes no time in the past, so at least a minute
    from now (an AMI older than N days gets deprecated right away)."""
    return max(_created(image) + after, now + datetime.timedelta(minutes=1))


def plan_transfers(states: Sequence[TargetState], max_regions: int | None,
                   copy_group: Callable[[TargetState], Hashable] | None = None) -> None:
    """Put the bundle's way to each target that lacks it first in its changes: copied from a
    target that has it, or — when none has — bundled in one pass to one target of each copy
    group (``copy_group``: targets a server-side copy can reach from each other, the same
    account, partition and endpoint; at most ``max_regions`` of them) and copied from those to
    the rest, server-side where possible. A server-side copy never crosses the build host's
    network, so bundling to one region and copying beats uploading the bundle again. Without
    ``copy_group`` (copies are streamed) the first ``max_regions`` targets are bundled to."""
    ok = [st for st in states if st.conflict is None]
    have = [st for st in ok if st.bundle == SAME]
    need = [st for st in ok if st.bundle == ABSENT]
    if not have and need:
        if copy_group is None:
            first = need[:max_regions] if max_regions else need
        else:
            leaders: dict[Hashable, TargetState] = {}
            for st in need:
                leaders.setdefault(copy_group(st), st)
            first = list(leaders.values())
            first = first[:max_regions] if max_regions else first
        for st in first:
            st.changes.insert(0, Change("bundle", st.image_location))
        have, need = first, [st for st in need if all(st is not f for f in first)]
    for st in need:
        # As install ranks sources: one in the same copy group can copy server-side.
        src = min(have, key=lambda h: (copy_group is None or copy_group(h) != copy_group(st),
                                       h.target.account.id != st.target.account.id))
        st.changes.insert(0, Change("copy", f"from {src.target.label}"))


def summary(states: Sequence[TargetState]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for st in states:
        for change in st.changes:
            counts[change.kind] = counts.get(change.kind, 0) + 1
    return counts


__all__ = [
    "ABSENT",
    "Change",
    "DIFFERENT",
    "Desired",
    "SAME",
    "TargetState",
    "deprecation_time",
    "desired",
    "drift",
    "images_named",
    "plan_transfers",
    "launch_permissions_of",
    "plan_images",
    "read_target",
    "resolve_generation",
    "summary",
    "tags_of",
]
