"""Publish state rules that need no AWS: which generation a run completes, what an existing AMI
lacks, and how targets get the bundle (pure)."""

from __future__ import annotations

import datetime

from bundler.publish.plan import DIGEST_TAG, GENERATION_TAG, PLAN_TAG, parse_plan
from bundler.publish.state import (
    ABSENT,
    SAME,
    Change,
    TargetState,
    desired,
    drift,
    plan_transfers,
    resolve_generation,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
PLAN = parse_plan("""\
name = "web"
regions = ["us-east-1", "eu-west-1", "ap-southeast-2"]
bucket = "b-{region}"
launch_permissions = ["333333333333"]
deprecate_after_days = 10
deregistration_protection = true
[source]
image = "x.img"
[[accounts]]
id = "123456789012"
[tags]
Team = "web"
""")
DIGEST = "ab" * 20


def image(generation: str, digest: str, created: str, **extra: object) -> dict[str, object]:
    tags = {PLAN_TAG: "web", GENERATION_TAG: generation, DIGEST_TAG: digest}
    return {"ImageId": f"ami-{generation[-4:]}", "Name": generation, "CreationDate": created,
            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()], **extra}


def test_the_newest_generation_of_this_image_is_completed_whatever_the_date() -> None:
    images = [image("web-2027-01-01-x86_64", DIGEST, "2027-01-01T10:00:00.000Z"),
              image("web-2027-01-03-x86_64", DIGEST, "2027-01-03T10:00:00.000Z"),
              image("web-2027-01-05-x86_64", "cd" * 20, "2027-01-05T10:00:00.000Z")]
    assert resolve_generation(PLAN, images, digest=DIGEST, when=NOW) == (
        "web-2027-01-03-x86_64", True)
    assert resolve_generation(PLAN, images, digest="ef" * 20, when=NOW) == (
        "web-2027-01-15-x86_64", False)


def test_an_existing_ami_gets_only_what_it_lacks() -> None:
    gen = "web-2027-01-10-x86_64"
    want = desired(PLAN, digest=DIGEST, generation=gen)
    complete = image(gen, DIGEST, "2027-01-10T12:00:00.000Z",
                     DeprecationTime="2027-01-20T12:00:00.000Z",
                     DeregistrationProtection="enabled")
    complete["Tags"] += [{"Key": "Team", "Value": "web"}]  # type: ignore[operator]
    assert drift(complete, frozenset({"333333333333", "444444444444"}), want, NOW) == []
    bare = image(gen, DIGEST, "2027-01-10T12:00:00.000Z")
    changes = drift(bare, frozenset(), want, NOW)
    assert changes == [Change("share", "333333333333"), Change("tag", "Team=web"),
                       Change("deprecate", "2027-01-20T12:00:00+00:00"), Change("protect")]


def test_an_ami_older_than_its_deprecation_is_deprecated_now_and_then_left_alone() -> None:
    gen = "web-2026-12-01-x86_64"
    want = desired(PLAN, digest=DIGEST, generation=gen)
    old = image(gen, DIGEST, "2026-12-01T00:00:00.000Z", DeregistrationProtection="enabled",
                Tags=None)
    [change] = [c for c in drift(old, frozenset(), want, NOW) if c.kind == "deprecate"]
    assert change.detail == "2027-01-15T12:01:00+00:00"
    old["DeprecationTime"] = "2027-01-15T12:01:00.000Z"
    later = NOW + datetime.timedelta(days=2)
    assert not [c for c in drift(old, frozenset(), want, later) if c.kind == "deprecate"]


def _state(label_region: str, bundle: str, conflict: str | None = None) -> TargetState:
    target = next(t for t in PLAN.targets if t.region == label_region)
    return TargetState(target, "g", f"b-{label_region}/g/web.manifest.xml", bundle=bundle,
                       conflict=conflict)


def test_bundle_once_to_the_first_targets_copy_to_the_rest() -> None:
    states = [_state(r, ABSENT) for r in PLAN.regions]
    plan_transfers(states, 1)
    assert [s.changes[0].kind for s in states] == ["bundle", "copy", "copy"]
    assert states[2].changes[0].detail == "from 123456789012/us-east-1"
    states = [_state("us-east-1", ABSENT), _state("eu-west-1", SAME),
              _state("ap-southeast-2", ABSENT, conflict="holds another image")]
    plan_transfers(states, None)
    assert states[0].changes == [Change("copy", "from 123456789012/eu-west-1")]
    assert states[1].changes == [] and states[2].changes == []
