"""A signal (INT, TERM, HUP in turn) before the filesystem steps and HTTP requests of
``publish PLAN.toml`` and ``prune --plan PLAN.toml``, one region and one account each (the
fan-out over targets is walked by test_signals_aws.py's install --regions).

The CLI runs in a forked child against the strict local AWS (see test_signals_aws.py). Each
signalled run exits 128+signal; then: no temporary file next to the plan or in the working
directory, no lock or unfinished multipart upload in the bucket, every visible manifest names
a whole bundle, and every registered AMI of the plan names a whole bundle.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_prune import NOW, Target, _publish
from tests.reliability.test_signals_aws import walk
from tests.support import crashkit
from tests.support.s3kit import cli_env, inspect_bundles, list_keys, plain_client
from tests.support.strictaws.accounts import BASE_ACCOUNT

REGION = "us-east-1"
PARTS = 3  # test_publish's image at 64 KiB parts
EPOCH = 1_800_000_000  # 2027-01-15


class Env:
    def __init__(self, url: str) -> None:
        self.url = url
        self.s3 = plain_client("s3", url, REGION)
        self.ec2 = plain_client("ec2", url, REGION)

    def plan_images(self, plan: str) -> list[dict]:
        """By name, not by tag: an AMI registered but not yet tagged counts too."""
        images = self.ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "name", "Values": [f"{plan}-*"]}])["Images"]
        return [i for i in images if i.get("State") != "deregistered"]

    def empty_bucket(self, bucket: str) -> None:
        try:
            keys = list_keys(self.s3, bucket)
        except self.s3.exceptions.NoSuchBucket:
            return
        for key in keys:
            self.s3.delete_object(Bucket=bucket, Key=key)
        for upload in self.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            self.s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                           UploadId=upload["UploadId"])

    def check(self, when: str, bucket: str, plan: str) -> dict[str, list[str]]:
        """No lock, no open upload, nothing wrong; every plan AMI names a whole bundle.
        Returns prefix → the complete manifests under it."""
        try:
            keys = list_keys(self.s3, bucket)
        except self.s3.exceptions.NoSuchBucket:
            keys = {}
        prefixes = {k.rpartition("/")[0] + "/" for k in keys}
        complete: dict[str, list[str]] = {}
        for prefix in sorted(prefixes):
            seen = inspect_bundles(self.s3, bucket, prefix)
            assert seen.ok, f"{when}: {seen.wrong}"
            assert seen.locks == [], f"{when}: the lock was left behind: {seen.locks}"
            complete[prefix] = seen.complete
        if keys:
            uploads = self.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            assert uploads == [], f"{when}: multipart uploads left open: {uploads}"
        for image in self.plan_images(plan):
            location = image["ImageLocation"]
            assert location.startswith(bucket + "/"), f"{when}: {location}"
            prefix, _, manifest = location[len(bucket) + 1:].rpartition("/")
            assert manifest in complete.get(prefix + "/", []), (
                f"{when}: AMI {image['ImageId']} without its whole bundle {location}")
        return complete


@pytest.fixture(scope="module")
def env(moto_server: str) -> Iterator[Env]:
    with pytest.MonkeyPatch.context() as mp, crashkit.one_model_loader("s3", "ec2", "sts"):
        for key, value in cli_env(read_timeout=10, connect_timeout=5).items():
            mp.setenv(key, value)
        mp.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
        yield Env(moto_server)


def _write_plan(path: Path, name: str, image: Path, user_keys: tuple[Path, Path],
                bucket: str) -> None:
    key, cert = user_keys
    path.write_text(f"""\
name = "{name}"
ami_name = "{name}-{{date}}-{{arch}}"
regions = {json.dumps([REGION])}
bucket = "{bucket}/amis"
launch_permissions = ["333333333333"]
deprecate_after_days = 30

[source]
image = "{image.name}"

[bundle]
cert = "{cert}"
private_key = "{key}"

[[accounts]]
id = "{BASE_ACCOUNT}"

[boot]
architecture = "x86_64"

[tags]
Team = "web"
""")


def test_publish(env, tmp_path, user_keys, ec2_cert_dir):
    tag = uuid.uuid4().hex[:8]
    name, bucket = f"sig-{tag}", f"sig-pub-{tag}"
    image = tmp_path / "web.img"
    with open(image, "wb") as fh:  # 1 MiB, a hole and 160 KiB that does not compress
        fh.truncate(1 << 20)
        fh.write(random.Random(7).randbytes(160 << 10))
    plan = tmp_path / "plan.toml"
    _write_plan(plan, name, image, user_keys, bucket)
    before = sorted(os.listdir(tmp_path))
    cwd_before = sorted(os.listdir(crashkit.REPO))

    def reset() -> None:
        for img in env.plan_images(name):
            env.ec2.deregister_image(ImageId=img["ImageId"])
        env.empty_bucket(bucket)

    def check(when: str) -> None:
        env.check(when, bucket, name)
        assert sorted(os.listdir(tmp_path)) == before, f"{when}: left {os.listdir(tmp_path)}"
        assert sorted(os.listdir(crashkit.REPO)) == cwd_before, when

    argv = ["publish", str(plan), "--endpoint-url", env.url, "--ec2cert-dir", str(ec2_cert_dir),
            "--max-attempts", "1", "-q"]
    # Every step (27, about 7 s): the bundle streams to S3, so there are few of them.
    walk(argv, reset, check, minimum=20, part_size=64 << 10)
    # The unsignalled run published the whole generation.
    [published] = env.plan_images(name)
    complete = env.check("after the unsignalled run", bucket, name)
    assert published["ImageLocation"] == f"{bucket}/amis/{published['Name']}/{name}.manifest.xml"
    assert list(complete.values()) == [[f"{name}.manifest.xml"]]
    assert len(list_keys(env.s3, bucket)) == PARTS + 1


def test_prune(env, tmp_path, signing_key):
    tag = uuid.uuid4().hex[:8]
    name, bucket = f"sig-{tag}", f"sig-prune-{tag}"
    env.s3.create_bucket(Bucket=bucket, ObjectOwnership="ObjectWriter")
    plan = tmp_path / "plan.toml"
    _write_plan(plan, name, tmp_path / "gone.img", (tmp_path / "k", tmp_path / "c"), bucket)
    target = Target(BASE_ACCOUNT, REGION, None, env.s3, env.ec2, bucket)
    (tmp_path / "b").mkdir()
    before = sorted(os.listdir(tmp_path))
    cwd_before = sorted(os.listdir(crashkit.REPO))

    def reset() -> None:
        for img in env.plan_images(name):
            env.ec2.deregister_image(ImageId=img["ImageId"])
        env.empty_bucket(bucket)
        for label, age in (("g1", 10), ("g2", 1)):
            _publish(target, label, plan=name, generation=f"{name}-{label}", tmp=tmp_path / "b",
                     signing_key=signing_key, created=NOW - datetime.timedelta(days=age))

    def check(when: str) -> None:
        env.check(when, bucket, name)
        assert target.images["g2"] in {i["ImageId"] for i in env.plan_images(name)}, when
        assert sorted(os.listdir(tmp_path)) == before, f"{when}: left {os.listdir(tmp_path)}"
        assert sorted(os.listdir(crashkit.REPO)) == cwd_before, when

    argv = ["prune", "--plan", str(plan), "--keep", "1", "--endpoint-url", env.url,
            "--max-attempts", "1", "-q"]
    # Every step (8, about 2 s). A signal after g1's DeregisterImage and before its bundle is
    # deleted leaves that bundle in S3 (whole, used by no AMI); the next prune deletes it by
    # the plan's naming (tests/integration/test_prune_orphans.py).
    walk(argv, reset, check, minimum=6)
    assert [i["ImageId"] for i in env.plan_images(name)] == [target.images["g2"]]
    assert not any(k.startswith("g1/") for k in list_keys(env.s3, bucket))
