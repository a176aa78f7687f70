"""publish's relayed fan-out when something fails: three regions of one account, bundled to the
first and each part copied server-side to the others as it lands (bundler.s3.relay).

A relayed region whose copies fail is that region's failure alone: the others are published and
registered, the report names the failure, the failed bucket holds no manifest and no lease.
When the region bundled to fails, the regions relayed from it fail with the reason and nothing
anywhere looks published. A re-run completes what is missing."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bundler.errors import S3Error
from tests.support.cli import ACCOUNT, publish_runner, relay_image, write_publish_plan
from tests.support.s3kit import inspect_bundles, list_keys, plain_client

REGIONS = ("us-east-1", "eu-west-1", "eu-central-1")


@pytest.fixture
def plan(tmp_path: Path, user_keys, monkeypatch) -> tuple[str, Path]:
    tag = uuid.uuid4().hex[:8]
    image = relay_image(tmp_path, monkeypatch)
    path = tmp_path / "plan.toml"
    write_publish_plan(path, f"relay-{tag}", REGIONS, f"relay-{tag}-{{region}}/amis", image,
                       user_keys)
    return tag, path


def _state(endpoint: str, tag: str, region: str, generation: str) -> tuple[list[str], list]:
    """(the complete manifests in the region's bucket, its leases and loose parts)."""
    s3 = plain_client("s3", endpoint, region)
    bucket = f"relay-{tag}-{region}"
    if not list_keys(s3, bucket):
        return [], []
    seen = inspect_bundles(s3, bucket, f"amis/{generation}/")
    assert seen.ok, seen.wrong
    return seen.complete, seen.locks


def _images(endpoint: str, region: str, name: str) -> list[dict]:
    return plain_client("ec2", endpoint, region).describe_images(
        Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]


def test_a_relayed_region_that_fails_does_not_stop_the_others(
        capsys, plan, endpoint, ec2_cert_dir, monkeypatch):
    tag, path = plan
    import bundler.s3.relay as relay

    copy = relay.copy_object
    failing = f"relay-{tag}-eu-west-1"

    def copy_object(client, source, bucket, key, **kw):
        if bucket == failing:
            raise S3Error(f"copy to s3://{bucket}/{key}: access denied (test)")
        return copy(client, source, bucket, key, **kw)

    monkeypatch.setattr(relay, "copy_object", copy_object)
    publish = publish_runner(path, endpoint, ec2_cert_dir)
    code, result, err = publish(capsys)
    assert code == S3Error.exit_code, err
    targets = {t["region"]: t for t in result["targets"]}
    assert targets["eu-west-1"]["state"] == "failed"
    assert "access denied (test)" in targets["eu-west-1"]["error"]
    assert result["done"] is False and result["bundled"] is True
    generation = result["generation"]
    for region in ("us-east-1", "eu-central-1"):
        assert targets[region]["state"] == "done" and targets[region]["error"] is None
        assert _state(endpoint, tag, region, generation) == ([f"relay-{tag}.manifest.xml"], [])
        [image] = _images(endpoint, region, generation)
        assert image["ImageId"] == targets[region]["image_id"]
    assert targets["eu-central-1"]["changes"][0] == f"copy from {ACCOUNT}/us-east-1"
    assert _state(endpoint, tag, "eu-west-1", generation) == ([], [])
    assert _images(endpoint, "eu-west-1", generation) == []

    # Healed: the re-run copies the missing region from one that has the bundle.
    monkeypatch.setattr(relay, "copy_object", copy)
    code, result, err = publish(capsys)
    assert code == 0, err
    again = {t["region"]: t for t in result["targets"]}
    assert again["eu-west-1"]["state"] == "done" and again["eu-west-1"]["image_id"]
    assert again["eu-west-1"]["changes"][0].startswith(f"copy from {ACCOUNT}/")
    assert again["us-east-1"]["changes"] == [] and result["bundled"] is False


def test_when_the_region_bundled_to_fails_its_relays_fail_and_nothing_looks_published(
        capsys, plan, endpoint, proxy, ec2_cert_dir):
    tag, path = plan
    # The third part's PUT to the first region is refused, every time.
    proxy.add_rule("status", rf"^/relay-{tag}-us-east-1/.*\.part\.0*2$", method="PUT",
                   times=None, status=403, code="AccessDenied")
    publish = publish_runner(path, proxy.url, ec2_cert_dir)
    code, result, err = publish(capsys)
    assert code != 0
    targets = {t["region"]: t for t in result["targets"]}
    assert {t["state"] for t in targets.values()} == {"failed"}
    assert "access denied" in targets["us-east-1"]["error"].lower()
    for region in ("eu-west-1", "eu-central-1"):
        assert "not bundled" in targets[region]["error"], targets[region]
    for region in REGIONS:
        assert _state(endpoint, tag, region, result["generation"]) == ([], []), region
        assert _images(endpoint, region, result["generation"]) == []


def test_when_the_region_to_bundle_to_fails_before_bundling_another_takes_its_place(
        capsys, plan, endpoint, proxy, ec2_cert_dir):
    tag, path = plan
    # The first region's bucket cannot be created: it fails once its state has been read.
    proxy.add_rule("status", rf"^/relay-{tag}-us-east-1$", method="PUT", times=None,
                   status=403, code="AccessDenied")
    publish = publish_runner(path, proxy.url, ec2_cert_dir)
    code, result, err = publish(capsys)
    assert code != 0
    targets = {t["region"]: t for t in result["targets"]}
    assert targets["us-east-1"]["state"] == "failed"
    assert [targets[r]["state"] for r in ("eu-west-1", "eu-central-1")] == ["done", "done"], err
    assert result["bundled"] is True
    assert targets["eu-central-1"]["changes"][0] == f"copy from {ACCOUNT}/eu-west-1"
    assert targets["eu-west-1"]["changes"][0] == f"bundle {targets['eu-west-1']['image_location']}"
    for region in ("eu-west-1", "eu-central-1"):
        assert _state(endpoint, tag, region, result["generation"]) == (
            [f"relay-{tag}.manifest.xml"], [])
