"""publish PLAN.toml against the strict local AWS: three regions × two accounts (the second
reached through STS AssumeRole), one bundling pass; a region failing in both accounts (fault
proxy) and a re-run completing only it; --dry-run exit codes; a changed image refused for the
existing generation and published as a new one; the report file."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import boto3
import pytest

from tests.support.cli import MIB, publish_runner, run
from tests.support.s3kit import plain_client

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


def write_plan(path: Path, tag: str, image: Path, user_keys: tuple[Path, Path],
               second: tuple[str, str] | None = None) -> None:
    key, cert = user_keys
    other = "" if second is None else f"""
[[accounts]]
id = "{second[0]}"
role_arn = "{second[1]}"
"""
    path.write_text(f"""\
name = "web-{tag}"
ami_name = "web-{tag}-{{date}}-{{arch}}"
description = "web tier {{generation}}"
regions = {json.dumps(list(REGIONS))}
bucket = "pub-{tag}-{{account}}-{{region}}/amis"
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
{other}
[boot]
architecture = "x86_64"
imds_support = "v2.0"

[tags]
Team = "web"
""")


@pytest.fixture
def published(request, tmp_path, endpoint, proxy, user_keys, ec2_cert_dir, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    image = tmp_path / "web.img"
    write_image(image, b"generation one ")
    plan = tmp_path / "plan.toml"
    second = None
    if getattr(request, "param", 1) == 2:
        accounts = request.getfixturevalue("strict_aws_accounts")
        second = (accounts.second, accounts.role_arn)
    write_plan(plan, tag, image, user_keys, second)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))

    publish = publish_runner(plan, proxy.url, ec2_cert_dir)
    return tag, image, publish


def by_region(result: dict, account: str = ACCOUNT) -> dict[str, dict]:
    return {t["region"]: t for t in result["targets"] if t["account"] == account}


def owned_images(endpoint: str, region: str, session: boto3.Session | None, **kw) -> list[dict]:
    ec2 = plain_client("ec2", endpoint, region) if session is None else session.client(
        "ec2", endpoint_url=endpoint, region_name=region)
    return ec2.describe_images(Owners=["self"], **kw)["Images"]


def assumed(endpoint: str, role_arn: str) -> boto3.Session:
    sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="check")["Credentials"]
    return boto3.Session(aws_access_key_id=creds["AccessKeyId"],
                         aws_secret_access_key=creds["SecretAccessKey"],
                         aws_session_token=creds["SessionToken"])


@pytest.mark.parametrize("published", [2], indirect=True)
def test_three_regions_two_accounts_fail_one_resume_dry_run_and_a_new_generation(
        capsys, published, proxy, endpoint, tmp_path, strict_aws_accounts):
    tag, image, publish = published
    generation = f"web-{tag}-2027-01-15-x86_64"
    second = strict_aws_accounts.second
    accounts = (ACCOUNT, second)
    sessions = {ACCOUNT: None, second: assumed(endpoint, strict_aws_accounts.role_arn)}
    buckets = {(a, r): f"pub-{tag}-{a}-{r}" for a in accounts for r in REGIONS}

    # Dry run first: everything to do, nothing done, exit 2.
    code, result, err = publish(capsys, "--dry-run")
    assert code == 2, err
    assert result["generation"] == generation and result["dry_run"] is True
    assert len(result["targets"]) == 6
    assert {t["changes"][0].split()[0] for t in result["targets"]} <= {"bundle", "copy"}
    assert all(f"share {SHARED}" in t["changes"] for t in result["targets"])

    # ap-southeast-2 fails on every request, in both accounts: the other four are published.
    proxy.add_rule("status", rf"^/pub-{tag}-[0-9]{{12}}-ap-southeast-2", times=None, status=403,
                   code="AccessDenied")
    report = tmp_path / "report.json"
    code, result, err = publish(capsys, "--report", str(report))
    assert code == 3, err  # the failing targets' S3 error
    assert json.loads(report.read_text()) == result and result["bundled"] is True
    images = {}
    for account in accounts:
        targets = by_region(result, account)
        assert targets["ap-southeast-2"]["state"] == "failed"
        assert "access denied" in targets["ap-southeast-2"]["error"].lower()
        for region in ("us-east-1", "eu-west-1"):
            t = targets[region]
            assert t["state"] == "done" and t["error"] is None
            assert t["image_location"] == (
                f"{buckets[account, region]}/amis/{generation}/web-{tag}.manifest.xml")
            images[account, region] = t["image_id"]
            [img] = owned_images(endpoint, region, sessions[account], ImageIds=[t["image_id"]])
            tags = {x["Key"]: x["Value"] for x in img["Tags"]}
            assert tags["ami-bundler:plan"] == f"web-{tag}"
            assert tags["ami-bundler:generation"] == generation == img["Name"]
            assert tags["ami-bundler:image-digest"] == result["digest"]
            assert tags["Team"] == "web" and img["Description"] == f"web tier {generation}"
            assert img["DeprecationTime"] and img["DeregistrationProtection"] != "disabled"
            assert img["ImdsSupport"] == "v2.0" and img["OwnerId"] == account
    assert "ap-southeast-2" in err and "re-run" in err
    ec2 = plain_client("ec2", endpoint, "eu-west-1")
    perms = ec2.describe_image_attribute(ImageId=images[ACCOUNT, "eu-west-1"],
                                         Attribute="launchPermission")
    assert perms["LaunchPermissions"] == [{"UserId": SHARED}]

    # Healed: the re-run only completes ap-southeast-2 in each account, copied, not bundled.
    proxy.clear()
    code, result, err = publish(capsys, "--report", str(report))
    assert code == 0, err
    assert result["bundled"] is False and result["existing_generation"] is True
    for account in accounts:
        targets = by_region(result, account)
        for region in ("us-east-1", "eu-west-1"):
            assert targets[region]["image_id"] == images[account, region]
            assert targets[region]["changes"] == []
        third = targets["ap-southeast-2"]
        assert third["state"] == "done" and third["image_id"]
        assert third["changes"][0].startswith(f"copy from {account}/")  # within the account
    puts = {r.path.split("/")[1] for r in proxy.log if r.method == "PUT"}
    assert puts == {buckets[a, "ap-southeast-2"] for a in accounts}
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

    # The next day the template renders a new name: a new generation, the old one kept.
    os.environ["SOURCE_DATE_EPOCH"] = str(EPOCH + DAY)
    code, result, err = publish(capsys)
    assert code == 0, err
    assert result["generation"] == f"web-{tag}-2027-01-16-x86_64"
    assert result["existing_generation"] is False and result["bundled"] is True
    for account in accounts:
        new = by_region(result, account)
        for region in REGIONS:
            owned = owned_images(endpoint, region, sessions[account], Filters=[
                {"Name": "tag:ami-bundler:plan", "Values": [f"web-{tag}"]}])
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
