"""Retention (bundler.publish.prune) against the strict local AWS: two generations of a plan in
2 regions × 2 accounts (the second reached by AssumeRole); exactly the old generation's AMIs and
bundles go, and nothing else: not another AMI sharing a bundle, not a non-plan AMI, not a
protected AMI, not another account's images. Checked with plain botocore clients."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from botocore.config import Config
from botocore.session import Session

from bundler.aws import AwsOptions, make_session
from bundler.publish.accounts import Account, open_account
from bundler.publish.prune import PruneTarget, Retention, prune
from tests.support.bundles import make_fake_bundle
from tests.support.strictaws import ec2images

PLAN_TAG, GENERATION_TAG = "ami-bundler:plan", "ami-bundler:generation"
REGIONS = ("us-east-1", "eu-west-1")
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)


def _client(session: Session, service: str, endpoint: str, region: str):
    return session.create_client(service, endpoint_url=endpoint, region_name=region,
                                 config=Config(s3={"addressing_style": "path"},
                                               retries={"total_max_attempts": 1}))


@dataclass
class Target:
    account: str
    region: str
    session: Session
    s3: object
    ec2: object
    bucket: str
    images: dict[str, str] = field(default_factory=dict)  # label → AMI id
    sizes: dict[str, int] = field(default_factory=dict)  # label → bundle bytes in S3


@dataclass
class World:
    plan: str
    targets: list[Target]
    opts: AwsOptions

    def prune_targets(self) -> list[PruneTarget]:
        return [PruneTarget(t.account, t.region, t.session) for t in self.targets]


def _publish(t: Target, label: str, *, plan: str | None, generation: str, tmp, signing_key,
             location: str | None = None, created: datetime.datetime | None = None) -> str:
    """Register an AMI (from a new bundle under LABEL/, or from ``location``)."""
    if location is None:
        bundle = make_fake_bundle(tmp / t.account / t.region / label, "img",
                                  [40 * 1024, 24 * 1024], signing_key)
        for name, part in zip(bundle.part_names, bundle.parts, strict=True):
            t.s3.put_object(Bucket=t.bucket, Key=f"{label}/{name}", Body=part.data,
                            ACL="aws-exec-read")
        t.s3.put_object(Bucket=t.bucket, Key=f"{label}/img.manifest.xml",
                        Body=bundle.manifest_bytes, ACL="aws-exec-read")
        t.sizes[label] = bundle.bundled_size + len(bundle.manifest_bytes)
        location = f"{t.bucket}/{label}/img.manifest.xml"
    tags = [{"Key": GENERATION_TAG, "Value": generation}]
    if plan:
        tags.append({"Key": PLAN_TAG, "Value": plan})
    name = f"{generation}-{uuid.uuid4().hex[:6]}"
    image = t.ec2.register_image(ImageLocation=location, Name=name,
                                 TagSpecifications=[{"ResourceType": "image", "Tags": tags}])
    image_id = image["ImageId"]
    if created is not None:
        ec2images.set_creation_date(t.account, t.region, image_id, created)
    t.images[label] = image_id
    return image_id


def _build(endpoint, accounts, tmp_path, signing_key, *, full: bool) -> World:
    """Generation g1 (10 days old) and g2 (1 day old) of one plan in every target (``full``:
    2 accounts × 2 regions, else the base account in us-east-1); with ``full`` the first target
    also has a non-plan AMI from g1's manifest (sharing it) and a non-plan AMI of its own."""
    plan = f"web-{uuid.uuid4().hex[:8]}"
    opts = AwsOptions(endpoint_url=endpoint, region="us-east-1", max_attempts=1)
    base = make_session(AwsOptions(region="us-east-1"))  # the caller's, as the CLI makes it
    sessions = [(accounts.base, base)]
    if full:
        second = open_account(base, Account(accounts.second, accounts.role_arn), opts,
                              region="us-east-1").session
        sessions.append((accounts.second, second))
    targets = []
    for account, session in sessions:
        for region in REGIONS if full else REGIONS[:1]:
            s3 = _client(session, "s3", endpoint, region)
            bucket = f"{plan}-{account}-{region}"
            extra = {} if region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": region}}
            s3.create_bucket(Bucket=bucket, ObjectOwnership="ObjectWriter", **extra)
            t = Target(account, region, session, s3, _client(session, "ec2", endpoint, region),
                       bucket)
            _publish(t, "g1", plan=plan, generation=f"{plan}-g1", tmp=tmp_path,
                     signing_key=signing_key, created=NOW - datetime.timedelta(days=10))
            _publish(t, "g2", plan=plan, generation=f"{plan}-g2", tmp=tmp_path,
                     signing_key=signing_key, created=NOW - datetime.timedelta(days=1))
            targets.append(t)
    first = targets[0]
    if not full:
        return World(plan, targets, opts)
    _publish(first, "sharer", plan=None, generation="other", tmp=tmp_path,
             signing_key=signing_key, location=f"{first.bucket}/g1/img.manifest.xml")
    _publish(first, "unrelated", plan=None, generation="other", tmp=tmp_path,
             signing_key=signing_key, created=NOW - datetime.timedelta(days=30))
    return World(plan, targets, opts)


@pytest.fixture
def world(endpoint, strict_aws_accounts, tmp_path, signing_key) -> Iterator[World]:
    built = _build(endpoint, strict_aws_accounts, tmp_path, signing_key, full=True)
    last = built.targets[-1]
    last.ec2.enable_image_deregistration_protection(ImageId=last.images["g1"])
    yield built
    last.ec2.disable_image_deregistration_protection(ImageId=last.images["g1"])


@pytest.fixture
def small(endpoint, strict_aws_accounts, tmp_path, signing_key) -> World:
    """g1 and g2 of a plan in one target, nothing else."""
    return _build(endpoint, strict_aws_accounts, tmp_path, signing_key, full=False)


def _registered(t: Target) -> set[str]:
    images = t.ec2.describe_images(Owners=["self"])["Images"]
    return {i["ImageId"] for i in images if i.get("State") != "deregistered"}


def _keys(t: Target) -> set[str]:
    return {o["Key"] for o in t.s3.list_objects_v2(Bucket=t.bucket).get("Contents", [])}


def _snapshot(world: World) -> list[tuple[set[str], set[str]]]:
    return [(_registered(t), _keys(t)) for t in world.targets]


def test_older_than_keeps_younger_generations(small):
    world = small
    base = world.targets
    targets = [PruneTarget(t.account, t.region, t.session) for t in base]
    report = prune(targets, plan=world.plan, retention=Retention(keep=1, older_than_days=30),
                   opts=world.opts, plan_tag=PLAN_TAG, generation_tag=GENERATION_TAG, now=NOW)
    assert not report.changed  # g1 is 10 days old
    assert report.targets[0].kept == [f"{world.plan}-g2", f"{world.plan}-g1"]
    report = prune(targets, plan=world.plan, retention=Retention(keep=1, older_than_days=5),
                   opts=world.opts, plan_tag=PLAN_TAG, generation_tag=GENERATION_TAG, now=NOW)
    assert [i.state for i in report.targets[0].images] == ["deregistered"]
    assert base[0].images["g2"] in _registered(base[0])


def _no_credentials() -> Session:
    from botocore.credentials import CredentialResolver

    session = Session()
    session.register_component("credential_provider", CredentialResolver([]))
    session.set_config_variable("region", "us-east-1")
    return session


def test_a_failing_target_does_not_stop_the_others(small):
    world = small
    t = world.targets[0]
    report = prune([PruneTarget("999988887777", "us-east-1", _no_credentials()),
                    PruneTarget(t.account, t.region, t.session)], plan=world.plan,
                   retention=Retention(keep=1), opts=world.opts, plan_tag=PLAN_TAG,
                   generation_tag=GENERATION_TAG, now=NOW)
    broken, done = report.targets
    assert broken.error and "\n" not in broken.error and "no AWS credentials" in broken.error
    assert broken.exit_code == 3 and report.failed == [broken]
    assert [i.state for i in done.images] == ["deregistered"]
    assert [b.state for b in done.bundles] == ["deleted"]


def test_retention_needs_one_generation_kept():
    from bundler.errors import UsageError

    with pytest.raises(UsageError):
        Retention(keep=0)
    with pytest.raises(UsageError):
        Retention(older_than_days=-1)


def test_deregistration_protection_turned_on_meanwhile_is_reported(small, monkeypatch):
    world = small
    t = world.targets[0]
    from bundler.publish import prune as prune_mod

    real = prune_mod.deregister_image

    def protect_first(ec2, image_id):
        t.ec2.enable_image_deregistration_protection(ImageId=image_id)
        try:
            real(ec2, image_id)
        finally:
            t.ec2.disable_image_deregistration_protection(ImageId=image_id)

    monkeypatch.setattr(prune_mod, "deregister_image", protect_first)
    report = prune([PruneTarget(t.account, t.region, t.session)], plan=world.plan,
                   retention=Retention(keep=1), opts=world.opts, plan_tag=PLAN_TAG,
                   generation_tag=GENERATION_TAG, now=NOW)
    r = report.targets[0]
    assert [i.state for i in r.images] == ["failed"] and "protection" in r.images[0].error
    assert [b.state for b in r.bundles] == ["kept"] and r.exit_code == 4
    assert "g1/img.manifest.xml" in _keys(t) and t.images["g1"] in _registered(t)
