"""Bundles in buckets whose default encryption is SSE-KMS, against the strict stand-in over HTTP.

On AWS an object stored SSE-KMS/DSSE-KMS (asked for, or by the bucket's default encryption, as
in many enterprises) has an ETag that is not the MD5 of its data, nor are its multipart pieces'
ETags (S3 Object ETag; tests/support/strictaws/s3kms.py gives such objects such ETags). So an
ETag there proves nothing: every command must still work — install (its two-piece tail
included), upload-bundle and its resume (which must upload again what it cannot prove),
copy-bundle server-side into and out of a KMS bucket, publish relayed into a KMS region,
download and unbundle of a KMS bundle — and the parts' SHA-1s in the signed manifest prove the
bytes."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest

from tests.support.awsfixtures import REGION_B
from tests.support.bundles import make_fake_bundle
from tests.support.cli import (
    ACCOUNT,
    KIB,
    MIB,
    bundle_puts,
    install_argv,
    keys_in,
    publish_runner,
    relay_image,
    run,
    upload,
    write_publish_plan,
)
from tests.support.s3kit import inspect_bundles, plain_client

KMS_DEFAULT = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]}


def kms_bucket(s3, name: str | None = None, region: str = "us-east-1") -> str:
    """A bucket for bundles (ACLs enabled) whose default encryption is aws:kms."""
    name = name or f"kms-{uuid.uuid4().hex[:16]}"
    extra = {} if region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=name, ObjectOwnership="ObjectWriter", **extra)
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration=KMS_DEFAULT)
    return name


def assert_no_md5_etags(s3, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """Every object under ``prefix`` is KMS-encrypted with an ETag that is not its MD5."""
    stored = keys_in(s3, bucket, prefix)
    assert stored
    for key, (_, etag) in stored.items():
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert etag != hashlib.md5(data).hexdigest(), key
    return stored


def test_the_stand_in_gives_kms_objects_no_md5_etags(s3, bucket):
    kms = kms_bucket(s3)
    data = os.urandom(6 * MIB)
    md5 = hashlib.md5(data).hexdigest()
    put = s3.put_object(Bucket=kms, Key="a", Body=data)
    assert put["ServerSideEncryption"] == "aws:kms" and put["ETag"].strip('"') != md5
    asked = s3.put_object(Bucket=bucket, Key="b", Body=data, ServerSideEncryption="aws:kms:dsse")
    assert asked["ServerSideEncryption"] == "aws:kms:dsse" and asked["ETag"].strip('"') != md5
    s3.put_object(Bucket=bucket, Key="plain", Body=data)
    into = s3.copy_object(Bucket=kms, Key="c", CopySource={"Bucket": bucket, "Key": "plain"})
    assert into["ServerSideEncryption"] == "aws:kms"
    assert into["CopyObjectResult"]["ETag"].strip('"') != md5  # not the source's MD5 passed on
    out = s3.copy_object(Bucket=bucket, Key="d", CopySource={"Bucket": kms, "Key": "a"})
    assert out["CopyObjectResult"]["ETag"].strip('"') == md5  # a plaintext copy: the MD5 again
    upload_id = s3.create_multipart_upload(Bucket=kms, Key="m")["UploadId"]
    pieces = []
    for number, piece in enumerate((data[:5 * MIB], data[5 * MIB:]), 1):
        resp = s3.upload_part(Bucket=kms, Key="m", UploadId=upload_id, PartNumber=number,
                              Body=piece)
        assert resp["ServerSideEncryption"] == "aws:kms"
        assert resp["ETag"].strip('"') != hashlib.md5(piece).hexdigest()
        pieces.append({"ETag": resp["ETag"], "PartNumber": number})
    done = s3.complete_multipart_upload(Bucket=kms, Key="m", UploadId=upload_id,
                                        MultipartUpload={"Parts": pieces})
    assert done["ServerSideEncryption"] == "aws:kms" and done["ETag"].strip('"').endswith("-2")


def test_install_into_a_kms_bucket_then_download_and_unbundle(capsys, endpoint, proxy, s3,
                                                              tmp_path, user_keys, ec2_keys):
    bucket = kms_bucket(s3)
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:  # 16 MiB that does not compress: a 10 MiB part and a 6 MiB
        fh.write(os.urandom(16 * MIB))  # tail, which goes up in two pieces
        fh.truncate(20 * MIB)
    digest = hashlib.sha1(image.read_bytes()).hexdigest()
    argv = install_argv(image, user_keys, proxy.url, bucket=f"{bucket}/inst",
                        ec2cert=ec2_keys[1], name="disk")
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["image_id"]
    stored = assert_no_md5_etags(s3, bucket, "inst/")
    assert set(stored) == {f"inst/{p['name']}" for p in result["parts"]} | {
        "inst/disk.manifest.xml"}
    assert proxy.requests("POST", r"/inst/.*\?uploads")  # the two-piece tail went through
    seen = inspect_bundles(s3, bucket, "inst/")
    assert seen.ok and seen.complete == ["disk.manifest.xml"] and not seen.locks, seen.wrong

    dl = tmp_path / "dl"
    dl.mkdir()
    code, _, err = run(capsys, "download-bundle", "-b", f"{bucket}/inst", "-p", "disk",
                       "-d", str(dl), "-k", str(user_keys[0]), "--endpoint-url", endpoint)
    assert code == 0, err
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run(capsys, "unbundle", "-m", str(dl / "disk.manifest.xml"),
                       "-k", str(user_keys[0]), "-d", str(out_dir))
    assert code == 0, err
    assert hashlib.sha1((out_dir / "disk").read_bytes()).hexdigest() == digest


def test_upload_bundle_into_a_kms_bucket_and_its_resume_uploads_what_it_cannot_prove(
        capsys, proxy, s3, tmp_path, signing_key):
    bucket = kms_bucket(s3)
    bundle = make_fake_bundle(tmp_path / "b", "res", [128 * KIB] * 4, signing_key)
    # Part 2 is refused (403 is not retried): the run dies with some parts up.
    proxy.add_rule("status", r"\.part\.2$", method="PUT", times=None, status=403,
                   code="AccessDenied")
    code, _, err = upload(capsys, proxy.url, bucket, bundle, "--jobs", "1")
    assert code != 0
    before = keys_in(s3, bucket)
    assert "res.manifest.xml" not in before and {"res.part.0", "res.part.1"} <= set(before)

    # The parts there have ETags that prove nothing: the resume sends them again, and the
    # bundle it publishes is complete and right.
    proxy.clear()
    code, out, err = upload(capsys, proxy.url, bucket, bundle, "--json")
    assert code == 0, err
    assert json.loads(out)["parts_skipped"] == 0
    put_keys = sorted(r.key for r in bundle_puts(proxy))
    assert put_keys == sorted([*(f"res.part.{i}" for i in range(4)), "res.manifest.xml"])
    assert_no_md5_etags(s3, bucket, "")
    for name, part in zip(bundle.part_names, bundle.parts, strict=True):
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == part.data
    seen = inspect_bundles(s3, bucket, "")
    assert seen.ok and seen.complete == ["res.manifest.xml"] and not seen.locks, seen.wrong


def test_copy_bundle_server_side_into_a_kms_bucket(capsys, endpoint, proxy, source_bundle,
                                                   bucket, tmp_path, user_keys, region_b):
    digest, parts = source_bundle
    key, cert = user_keys
    s3_b = plain_client("s3", endpoint, REGION_B)
    dest = kms_bucket(s3_b, region=REGION_B)
    name = f"kms-{uuid.uuid4().hex[:8]}"
    code, out, err = run(capsys, "copy-bundle", "-c", str(cert), "-k", str(key),
                         "-m", "disk.manifest.xml", "-b", f"{bucket}/src", "-d", f"{dest}/copied",
                         "--region", REGION_B, "--ec2cert", str(region_b.cert_path),
                         "--endpoint-url", proxy.url, "--json", "--register", "-n", name)
    assert code == 0, err  # main refused: "copy has ETag …, source has …"
    result = json.loads(out)
    assert (result["mode"], result["parts_copied"]) == ("server", len(parts))
    assert not proxy.requests("GET", r"\.part\.[0-9]+$")  # no part bytes through this machine
    assert_no_md5_etags(s3_b, dest, "copied/")
    seen = inspect_bundles(s3_b, dest, "copied/")
    assert seen.ok and seen.complete == ["disk.manifest.xml"] and not seen.locks, seen.wrong

    assert_unbundles_to(capsys, endpoint, result["image_location"], user_keys, tmp_path, digest)
    [image] = plain_client("ec2", endpoint, REGION_B).describe_images(
        ImageIds=[result["image_id"]])["Images"]
    assert image["Name"] == name


def assert_unbundles_to(capsys, endpoint: str, location: str, user_keys, tmp_path: Path,
                        digest: str) -> None:
    """``unbundle --from-s3`` of the bundle at ``location`` gives back the image of SHA-1
    ``digest``."""
    key, cert = user_keys
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run(capsys, "unbundle", "--from-s3", "-m", location, "-k", str(key),
                       "-c", str(cert), "-d", str(out_dir), "--endpoint-url", endpoint)
    assert code == 0, err
    assert hashlib.sha1((out_dir / "disk").read_bytes()).hexdigest() == digest


def test_copy_bundle_server_side_out_of_a_kms_bucket(capsys, endpoint, s3, tmp_path, user_keys,
                                                     ec2_keys, region_b):
    key, cert = user_keys
    source = kms_bucket(s3)
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.write(os.urandom(2 * MIB))
    digest = hashlib.sha1(image.read_bytes()).hexdigest()
    argv = install_argv(image, user_keys, endpoint, bucket=f"{source}/src", ec2cert=ec2_keys[1],
                        name="disk", register=False)
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    s3_b = plain_client("s3", endpoint, REGION_B)
    dest = f"plain-{uuid.uuid4().hex[:12]}"
    code, out, err = run(capsys, "copy-bundle", "-c", str(cert), "-k", str(key),
                         "-m", "disk.manifest.xml", "-b", f"{source}/src", "-d", f"{dest}/copied",
                         "--region", REGION_B, "--ec2cert", str(region_b.cert_path),
                         "--endpoint-url", endpoint, "--json")
    assert code == 0, err  # a plaintext copy's MD5 ETag is not the KMS source's ETag
    result = json.loads(out)
    assert result["mode"] == "server"
    stored = keys_in(s3_b, dest, "copied/")
    for name, (_, etag) in stored.items():  # plaintext copies: MD5 ETags again
        assert etag == hashlib.md5(s3_b.get_object(Bucket=dest, Key=name)["Body"].read()
                                   ).hexdigest()
    assert_unbundles_to(capsys, endpoint, result["image_location"], user_keys, tmp_path, digest)


@pytest.fixture
def kms_plan(tmp_path: Path, user_keys, endpoint, monkeypatch) -> tuple[str, Path]:
    tag = uuid.uuid4().hex[:8]
    image = relay_image(tmp_path, monkeypatch)
    kms_bucket(plain_client("s3", endpoint, "eu-west-1"), f"kms-{tag}-eu-west-1", "eu-west-1")
    path = tmp_path / "plan.toml"
    write_publish_plan(path, f"kms-{tag}", ("us-east-1", "eu-west-1"),
                       f"kms-{tag}-{{region}}/amis", image, user_keys)
    return tag, path


def test_publish_relays_into_a_kms_region(capsys, kms_plan, endpoint, ec2_cert_dir):
    tag, path = kms_plan
    code, result, err = publish_runner(path, endpoint, ec2_cert_dir)(capsys)
    assert code == 0, err
    targets = {t["region"]: t for t in result["targets"]}
    assert {t["state"] for t in targets.values()} == {"done"}, targets
    assert targets["eu-west-1"]["changes"][0] == f"copy from {ACCOUNT}/us-east-1"
    generation = result["generation"]
    for region in ("us-east-1", "eu-west-1"):
        s3 = plain_client("s3", endpoint, region)
        seen = inspect_bundles(s3, f"kms-{tag}-{region}", f"amis/{generation}/")
        assert seen.ok and seen.complete == [f"kms-{tag}.manifest.xml"], seen.wrong
        assert not seen.locks
        [image] = plain_client("ec2", endpoint, region).describe_images(
            ImageIds=[targets[region]["image_id"]])["Images"]
        assert image["Name"] == generation
    assert_no_md5_etags(plain_client("s3", endpoint, "eu-west-1"), f"kms-{tag}-eu-west-1",
                        f"amis/{generation}/")
