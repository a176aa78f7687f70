"""install --regions: bundle once, fan out to three regions' buckets, one region's endpoint
failing (fault proxy) → the other two registered; a re-run completes the third by copying the
bundle from a region that has it (nothing is bundled or uploaded twice)."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

from bundler.s3 import LOCK_SUFFIX
from tests.support.awsfixtures import plain_client
from tests.support.cli import MIB, keys_in, run, sparse_image

REGIONS = ("us-east-1", "eu-west-1", "cn-north-1")


def install(capsys, proxy, image, template, cert_dir, user_keys, name, *extra):
    key, cert = user_keys
    return run(capsys, "install", "-i", str(image), "-p", "disk", "-c", str(cert), "-k", str(key),
               "-u", "123456789012", "-r", "x86_64", "--regions", ",".join(REGIONS),
               "--bucket-template", template,
               "--ec2cert-dir", str(cert_dir), "-n", name, "--jobs", "4",
               "--endpoint-url", proxy.url, "--max-attempts", "1", "--json", *extra)


def test_three_regions_one_failing_then_resume(capsys, endpoint, proxy, s3, tmp_path, user_keys,
                                               cert_dir):
    certs, ec2_keys = cert_dir
    image = tmp_path / "disk.img"
    digest = sparse_image(image, 24 * MIB)
    tag = uuid.uuid4().hex[:8]
    template = f"multi-{tag}-{{region}}/amis"
    bucket = {r: f"multi-{tag}-{r}" for r in REGIONS}
    name = f"multi-{tag}"
    # Every request for eu-west-1's bucket fails.
    proxy.add_rule("status", f"/{bucket['eu-west-1']}", times=None, status=403, code="AccessDenied")

    code, out, err = install(capsys, proxy, image, template, certs, user_keys, name)
    assert code == 3, err
    result = json.loads(out)
    regions = result["regions"]
    assert result["bundled"] is True and result["failed"] == ["eu-west-1"]
    assert Path(regions["cn-north-1"]["ec2_certificate"]["path"]).name == "cert-ec2-cn-north-1.pem"
    assert Path(regions["us-east-1"]["ec2_certificate"]["path"]).name == "cert-ec2.pem"
    assert "access denied" in regions["eu-west-1"]["error"]
    assert "eu-west-1" in err and "re-run" in err
    images = {}
    for region in ("us-east-1", "cn-north-1"):
        assert regions[region]["action"] == "bundled" and regions[region]["registered"] == "new"
        ec2 = plain_client("ec2", endpoint, region)
        [img] = ec2.describe_images(ImageIds=[regions[region]["image_id"]])["Images"]
        assert img["Name"] == name
        images[region] = regions[region]["image_id"]
    parts = result["bundle"]["parts"]
    # Same parts everywhere.
    for region in ("us-east-1", "cn-north-1"):
        stored = keys_in(s3, bucket[region], "amis/")
        assert set(stored) == {f"amis/{p['name']}" for p in parts} | {"amis/disk.manifest.xml"}
    us, cn = (keys_in(s3, bucket[r], "amis/disk.part") for r in ("us-east-1", "cn-north-1"))
    assert us == cn

    # Re-run with the endpoint healed: only eu-west-1 is completed, by server-side copy.
    proxy.clear()
    code, out, err = install(capsys, proxy, image, template, certs, user_keys, name, "--wait")
    assert code == 0, err
    result = json.loads(out)
    regions = result["regions"]
    assert result["bundled"] is False and result["failed"] == []
    assert {r: regions[r]["image_id"] for r in images} == images  # not registered twice
    assert regions["us-east-1"]["registered"] == regions["cn-north-1"]["registered"] == "existing"
    eu = regions["eu-west-1"]
    assert eu["action"] == "copied" and eu["registered"] == "new"
    assert eu["copied_from"] in ("us-east-1", "cn-north-1")
    # --wait waits for the AMI it registered, per region; the ones already there are not polled.
    assert eu["state"] == "available" and regions["us-east-1"]["state"] is None
    puts = proxy.requests("PUT")
    # Nothing went to the two complete regions; eu-west-1 got its bucket, copies, then the manifest.
    assert {r.path.split("/")[1] for r in puts} == {bucket["eu-west-1"]}
    body_puts = [r for r in puts if r.key.startswith("amis/")
                 and not r.headers.get("x-amz-copy-source") and not r.key.endswith(LOCK_SUFFIX)]
    assert [r.key for r in body_puts] == ["amis/disk.manifest.xml"]
    copies = sorted(r.key for r in puts if r.headers.get("x-amz-copy-source"))
    assert copies == sorted(f"amis/{p['name']}" for p in parts)
    assert not proxy.requests("GET", r"\.part\.[0-9]+$")

    # Each region's manifest opens with that region's EC2 key (China has its own) and gives the
    # image.
    key, cert = user_keys
    for region in REGIONS:
        dest = tmp_path / f"out-{region}"
        dest.mkdir()
        code, _, err = run(capsys, "unbundle",
                           "--from-s3", "-m", f"{bucket[region]}/amis/disk.manifest.xml",
                           "-k", str(ec2_keys[region]), "-c", str(cert), "-d", str(dest),
                           "--endpoint-url", endpoint)
        assert code == 0, (region, err)
        assert hashlib.sha1((dest / "disk").read_bytes()).hexdigest() == digest

    # A third run has nothing to do.
    proxy.clear()
    code, out, err = install(capsys, proxy, image, template, certs, user_keys, name)
    assert code == 0, err
    assert not proxy.requests("PUT") and not proxy.requests("POST", "RegisterImage")
    actions = {r: v["action"] for r, v in json.loads(out)["regions"].items()}
    assert actions == dict.fromkeys(REGIONS, "present")


def test_bad_region_list(capsys, endpoint, proxy, tmp_path, user_keys, cert_dir):
    certs, _ = cert_dir
    image = tmp_path / "x.img"
    image.write_bytes(b"x" * 4096)
    key, cert = user_keys
    base = ["install", "-i", str(image), "-c", str(cert), "-k", str(key), "-u", "123456789012",
            "--ec2cert-dir", str(certs), "--endpoint-url", proxy.url]
    code, _, err = run(capsys, *base, "--regions", "us-east-1,eu-wset-1",
                       "--bucket-template", "b-{region}")
    assert code == 2 and "did you mean eu-west-1?" in err
    code, _, err = run(capsys, *base, "--regions", "us-east-1,eu-west-1",
                       "-b", "us-east-1=only-one")
    assert code == 2 and "no bucket for region eu-west-1" in err
    code, _, err = run(capsys, *base, "--regions", "us-east-1,me-south-1",
                       "--bucket-template", "b-{region}")
    # An opt-in region: its own certificate.
    assert code != 0 and "cert-ec2-me-south-1.pem" in err and "--ec2cert" in err
    assert not proxy.requests()  # all of it caught before any request
