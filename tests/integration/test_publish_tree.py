"""publish with a root filesystem directory as the source, against the strict local AWS: two
regions; the tree's fingerprint names the generation and the bundle digest each AMI records
proves the bucket's bundle; a re-run is a no-op; a changed file is refused for the existing
generation and is a new generation the next day; a bundle no AMI records is refused."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.support.cli import publish_runner
from tests.support.roots import write_clean_root
from tests.support.s3kit import plain_client

REGIONS = ("us-east-1", "eu-west-1")
ACCOUNT = "123456789012"
DAY = 86400
EPOCH = 1_800_000_000  # 2027-01-15


def write_plan(path: Path, tag: str, tree: Path, user_keys: tuple[Path, Path]) -> None:
    key, cert = user_keys
    path.write_text(f"""\
name = "tree-{tag}"
ami_name = "tree-{tag}-{{date}}"
regions = {json.dumps(list(REGIONS))}
bucket = "tree-{tag}-{{region}}/amis"

[source]
directory = "{tree}"
exclude = ["var/cache"]
size_mib = 64
fs_type = "ext4"
generate_fstab = true

[bundle]
cert = "{cert}"
private_key = "{key}"

[[accounts]]
id = "{ACCOUNT}"
""")


@pytest.fixture
def tree_plan(tmp_path, proxy, user_keys, ec2_cert_dir, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    tree = tmp_path / "root"
    write_clean_root(tree)
    (tree / "var" / "cache").mkdir(parents=True)
    (tree / "var" / "cache" / "junk").write_bytes(os.urandom(1000))
    (tree / "srv").mkdir()
    (tree / "srv" / "app.conf").write_text("version = 1\n")
    plan = tmp_path / "plan.toml"
    write_plan(plan, tag, tree, user_keys)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))

    publish = publish_runner(plan, proxy.url, ec2_cert_dir)
    return tag, tree, publish


def tags_of(image: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in image.get("Tags", [])}


def plan_images(endpoint: str, region: str, tag: str) -> list[dict]:
    ec2 = plain_client("ec2", endpoint, region)
    return ec2.describe_images(Owners=["self"], Filters=[
        {"Name": "tag:ami-bundler:plan", "Values": [f"tree-{tag}"]}])["Images"]


def test_a_directory_publishes_once_re_runs_as_a_no_op_and_a_change_is_a_new_generation(
        capsys, tree_plan, proxy, endpoint):
    tag, tree, publish = tree_plan
    generation = f"tree-{tag}-2027-01-15"

    code, result, err = publish(capsys)
    assert code == 0, err
    assert result["generation"] == generation and result["bundled"] is True
    # Bundled once, to one region; the other gets a server-side copy (nothing uploaded twice).
    [first, second] = result["targets"]
    assert first["changes"][0].startswith("bundle ") and second["changes"][0] == (
        f"copy from {ACCOUNT}/{REGIONS[0]}")
    uploads = [r for r in proxy.log if r.method == "PUT" and ".part." in r.path
               and not any(k.lower() == "x-amz-copy-source" for k in r.headers)]
    assert uploads and {r.path.split("/")[1] for r in uploads} == {f"tree-{tag}-{REGIONS[0]}"}
    fingerprint = result["digest"]
    assert len(fingerprint) == 64  # the tree's SHA-256, not an image's SHA-1
    digests = set()
    for region in REGIONS:
        [image] = plan_images(endpoint, region, tag)
        tags = tags_of(image)
        assert tags["ami-bundler:image-digest"] == fingerprint
        assert tags["ami-bundler:generation"] == generation == image["Name"]
        digests.add(tags["ami-bundler:bundle-digest"])
        # the manifest in the bucket carries the digest the AMI records
        s3 = plain_client("s3", endpoint, region)
        body = s3.get_object(Bucket=f"tree-{tag}-{region}",
                             Key=f"amis/{generation}/tree-{tag}.manifest.xml")["Body"].read()
        assert f">{tags['ami-bundler:bundle-digest']}</digest>".encode() in body
    assert len(digests) == 1  # bundled once, fanned out

    # The same tree again: nothing to do, nothing built or written.
    proxy.log.clear()
    code, again, err = publish(capsys, "--dry-run")
    assert code == 0, err
    assert again["digest"] == fingerprint and again["existing_generation"] is True
    assert all(t["state"] == "done" and not t["changes"] for t in again["targets"])
    code, again, err = publish(capsys)
    assert code == 0 and again["bundled"] is False, err
    assert not [r for r in proxy.log if r.method in ("PUT", "DELETE")]  # no S3 write

    # A changed file in the tree: another fingerprint; the same day's name holds another tree.
    (tree / "srv" / "app.conf").write_text("version = 2\n")
    code, result, err = publish(capsys)
    assert code == 1, err
    assert {t["state"] for t in result["targets"]} == {"refused"}
    assert result["digest"] != fingerprint
    assert "holds another image" in result["targets"][0]["error"]
    for region in REGIONS:
        assert len(plan_images(endpoint, region, tag)) == 1  # nothing registered

    # The next day: a new generation from the changed tree, the old one kept.
    os.environ["SOURCE_DATE_EPOCH"] = str(EPOCH + DAY)
    code, result, err = publish(capsys)
    assert code == 0, err
    assert result["generation"] == f"tree-{tag}-2027-01-16" and result["bundled"] is True
    for region in REGIONS:
        names = sorted(i["Name"] for i in plan_images(endpoint, region, tag))
        assert names == [generation, result["generation"]]


def test_an_excluded_path_does_not_change_the_fingerprint_and_a_bundle_no_ami_records_is_refused(
        capsys, tree_plan, endpoint):
    tag, tree, publish = tree_plan
    code, first, err = publish(capsys, "--dry-run")
    assert code == 2, err
    (tree / "var" / "cache" / "junk").write_bytes(os.urandom(1000))  # excluded by the plan
    code, second, err = publish(capsys, "--dry-run")
    assert code == 2 and second["digest"] == first["digest"], err

    # A bundle of this generation's name that no AMI records (a run stopped before it
    # registered, or another tree): never replaced; the error says how to clear it.
    code, result, err = publish(capsys)
    assert code == 0, err
    for region in REGIONS:
        ec2 = plain_client("ec2", endpoint, region)
        [image] = plan_images(endpoint, region, tag)
        ec2.deregister_image(ImageId=image["ImageId"])
    code, result, err = publish(capsys)
    assert code == 1, err
    [t, _] = result["targets"]
    assert t["state"] == "refused"
    assert "not provably this tree's" in t["error"] and "delete-bundle" in t["error"]
