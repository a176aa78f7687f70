"""S3 as it is since April 2023, against the strict local AWS: buckets the tool creates take ACLs
(ObjectWriter), a bucket with ACLs disabled is refused before anything is written (or fixed with
--enable-bucket-acls), Block Public Access refusing public-read is a clear error, and a missing
s3:GetBucketOwnershipControls permission only warns."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.support.bundles import make_fake_bundle
from tests.support.cli import KIB, images_named, keys_in, run, upload
from tests.support.strictaws.s3rules import EC2_CANONICAL_ID


@pytest.fixture
def bundle2(tmp_path, signing_key):
    return make_fake_bundle(tmp_path / "bundle", "own", [200 * KIB, 50 * KIB], signing_key)


def acl_disabled_bucket(s3) -> str:
    """A bucket made the way S3 makes them today (no ObjectOwnership given)."""
    name = f"enforced-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def ec2_can_read(s3, bucket: str, key: str) -> bool:
    grants = s3.get_object_acl(Bucket=bucket, Key=key)["Grants"]
    return any(g["Grantee"].get("ID") == EC2_CANONICAL_ID and g["Permission"] == "READ"
               for g in grants)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("ami-bundler: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_new_bucket_is_created_with_acls_and_every_object_has_the_grant(capsys, endpoint, s3,
                                                                        bundle2):
    name = f"new-{uuid.uuid4().hex[:12]}"
    code, _, err = upload(capsys, endpoint, f"{name}/p", bundle2)
    assert code == 0, err
    rules = s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"]
    assert rules == [{"ObjectOwnership": "ObjectWriter"}]
    stored = keys_in(s3, name, "p/")
    assert len(stored) == 3 and all(ec2_can_read(s3, name, k) for k in stored)


def test_acl_disabled_bucket_refused_before_any_write(capsys, endpoint, proxy, s3, bundle2):
    name = acl_disabled_bucket(s3)
    code, _, err = upload(capsys, proxy.url, name, bundle2)
    line = one_line(err)
    assert code != 0
    assert "ACLs disabled" in line and "BucketOwnerEnforced" in line
    assert "--enable-bucket-acls" in line
    assert (f"aws s3api put-bucket-ownership-controls --bucket {name} --ownership-controls "
            "'Rules=[{ObjectOwnership=BucketOwnerPreferred}]'") in line
    assert not proxy.requests("PUT") and not proxy.requests("POST")
    assert keys_in(s3, name) == {}
    # With --enable-bucket-acls the tool fixes the bucket and the upload works.
    code, _, err = upload(capsys, endpoint, name, bundle2, "--enable-bucket-acls")
    assert code == 0, err
    assert "enabled ACLs" in err
    rules = s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"]
    assert rules == [{"ObjectOwnership": "BucketOwnerPreferred"}]
    assert all(ec2_can_read(s3, name, k) for k in keys_in(s3, name))


def test_public_read_under_block_public_access_is_a_clear_error(capsys, proxy, s3, bucket, bundle2):
    code, _, err = upload(capsys, proxy.url, bucket, bundle2, "--acl", "public-read")
    line = one_line(err)
    assert code != 0 and "Block Public Access" in line and "--launch-permission" in line
    assert not proxy.requests("PUT")


def test_missing_permission_to_read_ownership_warns_and_goes_on(capsys, proxy, s3, bucket, bundle2):
    proxy.add_rule("status", r"\?ownershipControls", method="GET", times=None, status=403,
                   code="AccessDenied")
    code, _, err = upload(capsys, proxy.url, bucket, bundle2)
    assert code == 0, err
    assert "s3:GetBucketOwnershipControls" in err
    assert len(keys_in(s3, bucket)) == 3


def test_install_refuses_an_acl_disabled_bucket_before_bundling(capsys, proxy, s3, tmp_path,
                                                                user_keys, ec2_keys):
    key, cert = user_keys
    image = tmp_path / "i.img"
    image.write_bytes(os.urandom(100 * KIB))
    name = acl_disabled_bucket(s3)
    base = ["-i", str(image), "-c", str(cert), "-k", str(key), "-u", "123456789012", "-r", "x86_64",
            "--ec2cert", str(ec2_keys[1]), "--no-register", "--endpoint-url", proxy.url]
    code, _, err = run(capsys, "install", *base, "-b", name)
    assert code != 0 and "--enable-bucket-acls" in one_line(err)
    assert not proxy.requests("PUT") and not proxy.requests("POST")
    # install --regions: every target bucket is checked before the first part is bundled.
    good = f"good-{uuid.uuid4().hex[:8]}"
    proxy.clear()
    code, out, err = run(capsys, "install", *base, "--regions", "us-east-1,us-west-2",
                         "-b", f"us-east-1={name}", "-b", f"us-west-2={good}", "--json")
    assert code != 0
    assert "--enable-bucket-acls" in err
    assert keys_in(s3, name) == {}


def test_copy_bundle_refuses_an_acl_disabled_destination(capsys, endpoint, proxy, s3, bucket,
                                                         bundle2, user_keys,
                                                        ec2_keys):
    code, _, err = upload(capsys, endpoint, f"{bucket}/src", bundle2)
    assert code == 0, err
    key, cert = user_keys
    dest = acl_disabled_bucket(s3)
    code, _, err = run(capsys, "copy-bundle", "-c", str(cert), "-k", str(key),
                       "-m", "own.manifest.xml",
                       "-b", f"{bucket}/src", "-d", f"{dest}/copied", "--region", "us-east-1",
                       "--ec2cert", str(ec2_keys[1]), "--endpoint-url", proxy.url)
    assert code != 0 and "--enable-bucket-acls" in one_line(err)
    assert not proxy.requests("PUT") and keys_in(s3, dest) == {}


def test_install_into_a_new_bucket_registers_and_every_object_has_the_grant(capsys, endpoint, s3,
                                                                            ec2, tmp_path,
                                                                              user_keys, ec2_keys):
    key, cert = user_keys
    image = tmp_path / "n.img"
    image.write_bytes(os.urandom(300 * KIB))
    name = f"fresh-{uuid.uuid4().hex[:12]}"
    code, _, err = run(capsys, "install", "-i", str(image), "-c", str(cert), "-k", str(key),
                       "-u", "123456789012",
                       "-r", "x86_64", "--ec2cert", str(ec2_keys[1]), "-b", f"{name}/i", "-n", name,
                       "--no-check", "--endpoint-url", endpoint)
    assert code == 0, err
    assert s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"] == [
        {"ObjectOwnership": "ObjectWriter"}]
    stored = keys_in(s3, name, "i/")
    assert stored and all(ec2_can_read(s3, name, k) for k in stored)
    [image_desc] = images_named(ec2, name)
    assert image_desc["ImageLocation"] == f"{name}/i/n.img.manifest.xml"
