"""publish PLAN.toml against the strict local AWS: three regions, one bundling pass; a region
failing (fault proxy) and a re-run completing only it; --dry-run exit codes; a changed image
refused for the existing generation and published as a new one; the report file."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import plain_client
from tests.integration.test_s3_upload import MIB, run

REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")
ACCOUNT = "123456789012"
SHARED = "333333333333"
DAY = 86400
EPOCH = 1_800_000_000  # 2027-01-15


def write_image(path: Path, seed: bytes) -> None:
    with open(path, "wb") as fh:
        fh.truncate(3 * MIB)
        fh.write(seed * (200_000 // len(seed)))
        fh.seek(2 * MIB)
        fh.write(os.urandom(4096))


def write_plan(path: Path, tag: str, image: Path, user_keys: tuple[Path, Path]) -> None:
    key, cert = user_keys
    path.write_text(f"""\
name = "web-{tag}"
ami_name = "web-{tag}-{{date}}-{{arch}}"
description = "web tier {{generation}}"
regions = {json.dumps(list(REGIONS))}
bucket = "pub-{tag}-{{region}}/amis"
launch_permissions = ["{SHARED}"]
deprecate_after_days = 30
deregistration_protection = true

[source]
image = "{image.name}"

[bundle]
cert = "{cert}"
private_key = "{key}"

[[accounts]]
id = "{ACCOUNT}"

[boot]
architecture = "x86_64"
imds_support = "v2.0"

[tags]
Team = "web"
""")


@pytest.fixture
def published(tmp_path, endpoint, proxy, user_keys, ec2_cert_dir, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    image = tmp_path / "web.img"
    write_image(image, b"generation one ")
    plan = tmp_path / "plan.toml"
    write_plan(plan, tag, image, user_keys)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))

    def publish(capsys, *extra: str) -> tuple[int, dict, str]:
        code, out, err = run(capsys, "publish", str(plan), "--endpoint-url", proxy.url,
                             "--ec2cert-dir", str(ec2_cert_dir), "--max-attempts", "1",
                             "--json", *extra)
        return code, json.loads(out) if out.strip() else {}, err

    return tag, image, publish


def by_region(result: dict) -> dict[str, dict]:
    return {t["region"]: t for t in result["targets"]}


def test_three_regions_fail_one_resume_dry_run_and_a_new_generation(
        capsys, published, proxy, endpoint, tmp_path):
    tag, image, publish = published
    generation = f"web-{tag}-2027-01-15-x86_64"
    buckets = {r: f"pub-{tag}-{r}" for r in REGIONS}

    # Dry run first: everything to do, nothing done, exit 2.
    code, result, err = publish(capsys, "--dry-run")
    assert code == 2, err
    assert result["generation"] == generation and result["dry_run"] is True
    first = by_region(result)
    assert [c.split()[0] for c in first["us-east-1"]["changes"]][:2] == ["bundle", "register"]
    assert f"share {SHARED}" in first["eu-west-1"]["changes"]
    s3 = plain_client("s3", endpoint)
    assert not [b for b in s3.list_buckets()["Buckets"] if b["Name"] in buckets.values()]

    # The third region's bucket fails on every request: the other two are published.
    proxy.add_rule("status", f"/{buckets['ap-southeast-2']}", times=None, status=403,
                   code="AccessDenied")
    report = tmp_path / "report.json"
    code, result, err = publish(capsys, "--report", str(report))
    assert code == 3, err  # the failing target's S3 error
    assert json.loads(report.read_text()) == result
    targets = by_region(result)
    assert targets["ap-southeast-2"]["state"] == "failed"
    assert "access denied" in targets["ap-southeast-2"]["error"].lower()
    assert "ap-southeast-2" in err and "re-run" in err
    images = {}
    for region in ("us-east-1", "eu-west-1"):
        t = targets[region]
        assert t["state"] == "done" and t["error"] is None and t["account"] == ACCOUNT
        assert t["image_location"] == f"{buckets[region]}/amis/{generation}/web-{tag}.manifest.xml"
        images[region] = t["image_id"]
        ec2 = plain_client("ec2", endpoint, region)
        [img] = ec2.describe_images(ImageIds=[t["image_id"]])["Images"]
        tags = {x["Key"]: x["Value"] for x in img["Tags"]}
        assert tags["ami-bundler:plan"] == f"web-{tag}"
        assert tags["ami-bundler:generation"] == generation == img["Name"]
        assert tags["ami-bundler:image-digest"] == result["digest"]
        assert tags["Team"] == "web" and img["Description"] == f"web tier {generation}"
        assert img["DeprecationTime"] and img["DeregistrationProtection"] != "disabled"
        assert img["ImdsSupport"] == "v2.0"
        perms = ec2.describe_image_attribute(ImageId=t["image_id"], Attribute="launchPermission")
        assert perms["LaunchPermissions"] == [{"UserId": SHARED}]
    assert result["bundled"] is True

    # Healed: the re-run only completes the third region, copied, not bundled again.
    proxy.clear()
    code, result, err = publish(capsys, "--report", str(report))
    assert code == 0, err
    assert result["bundled"] is False and result["existing_generation"] is True
    targets = by_region(result)
    assert {r: targets[r]["image_id"] for r in images} == images
    assert all(targets[r]["changes"] == [] for r in images)
    third = targets["ap-southeast-2"]
    assert third["state"] == "done" and third["image_id"]
    assert third["changes"][0].startswith(f"copy from {ACCOUNT}/")
    # nothing written to the regions that were done
    assert not [r for r in proxy.log if r.method == "PUT"
                and r.path.startswith((f"/{buckets['us-east-1']}/", f"/{buckets['eu-west-1']}/"))]
    assert [r for r in proxy.log if r.method == "PUT"
            and r.path.startswith(f"/{buckets['ap-southeast-2']}/")]
    assert json.loads(report.read_text())["done"] is True

    # Nothing left to do: the dry run says so with exit 0.
    code, result, err = publish(capsys, "--dry-run")
    assert code == 0, err
    assert all(t["state"] == "done" and not t["changes"] for t in result["targets"])

    # A changed image on the same day renders the same generation name: refused everywhere,
    # nothing touched.
    write_image(image, b"generation two ")
    code, result, err = publish(capsys)
    assert code == 1
    assert {t["state"] for t in result["targets"]} == {"refused"}
    assert "holds another image" in result["targets"][0]["error"]
    ec2 = plain_client("ec2", endpoint, "us-east-1")
    [img] = ec2.describe_images(ImageIds=[images["us-east-1"]])["Images"]
    assert img["State"] == "available"

    # The next day the template renders a new name: a new generation, the old one kept.
    os.environ["SOURCE_DATE_EPOCH"] = str(EPOCH + DAY)
    code, result, err = publish(capsys)
    assert code == 0, err
    assert result["generation"] == f"web-{tag}-2027-01-16-x86_64"
    assert result["existing_generation"] is False and result["bundled"] is True
    new = by_region(result)
    for region in REGIONS:
        owned = plain_client("ec2", endpoint, region).describe_images(
            Owners=["self"], Filters=[{"Name": "tag:ami-bundler:plan", "Values": [f"web-{tag}"]}]
        )["Images"]
        assert sorted(i["Name"] for i in owned) == [generation, result["generation"]]
        assert new[region]["image_id"] not in images.values()


def test_a_re_run_the_next_day_completes_the_same_generation(capsys, published, tmp_path):
    tag, image, publish = published
    code, result, err = publish(capsys, "--max-regions", "1")
    assert code == 0, err
    # bundled once (to the first target), copied to the others one at a time
    kinds = [t["changes"][0].split()[0] for t in result["targets"]]
    assert kinds == ["bundle", "copy", "copy"] and result["bundled"] is True
    os.environ["SOURCE_DATE_EPOCH"] = str(EPOCH + 3 * DAY)  # the template would render anew
    code, again, err = publish(capsys, "--dry-run")
    assert code == 0, err
    assert again["generation"] == result["generation"] and again["existing_generation"]


def test_plan_errors_name_the_line_and_write_nothing(capsys, tmp_path, endpoint):
    plan = tmp_path / "bad.toml"
    plan.write_text('name = "web"\nregions = ["us-east-1"]\nregoin = "x"\n')
    code, out, err = run(capsys, "publish", str(plan), "--endpoint-url", endpoint)
    assert code == 2
    assert f"{plan}:3: unknown key 'regoin' (did you mean 'regions'?)" in err
    assert "Traceback" not in err and out == ""
