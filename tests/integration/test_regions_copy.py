"""copy-bundle against moto over HTTP: server-side copies (and a streamed fallback), resume,
the migrated manifest last, round trip through unbundle --from-s3, register in the target."""

from __future__ import annotations

import hashlib
import json
import uuid

from tests.support.awsfixtures import REGION_B, plain_client
from tests.support.cli import bundle_puts, keys_in, run


def copy(capsys, proxy, bucket, dest, cert, key, region_b, *extra):
    return run(capsys, "copy-bundle", "-c", str(cert), "-k", str(key), "-m", "disk.manifest.xml",
               "-b", f"{bucket}/src", "-d", dest, "--region", REGION_B,
               "--ec2cert", str(region_b.cert_path), "--endpoint-url", proxy.url, "--json", *extra)


def test_copy_round_trip_server_side(capsys, endpoint, proxy, s3, bucket, source_bundle, tmp_path,
                                     user_keys, region_b):
    digest, parts = source_bundle
    key, cert = user_keys
    dest_bucket = f"dst-{uuid.uuid4().hex[:12]}"
    code, out, err = copy(capsys, proxy, bucket, f"{dest_bucket}/copied", cert, key, region_b,
                          "--register")
    assert code == 0, err
    result = json.loads(out)
    got = (result["mode"], result["parts_copied"], result["region"])
    assert got == ("server", len(parts), REGION_B)
    assert result["image_location"] == f"{dest_bucket}/copied/disk.manifest.xml"
    s3_b = plain_client("s3", endpoint, REGION_B)
    assert s3_b.get_bucket_location(Bucket=dest_bucket)["LocationConstraint"] == REGION_B

    puts = bundle_puts(proxy, f"/{dest_bucket}/")
    copies = [r for r in puts if r.headers.get("x-amz-copy-source")]
    assert sorted(r.key for r in copies) == sorted(f"copied/{p['name']}" for p in parts)
    assert all(r.headers["x-amz-copy-source"].startswith(f"{bucket}/src/") for r in copies)
    assert puts[-1].key == "copied/disk.manifest.xml"
    assert not puts[-1].headers.get("x-amz-copy-source")
    assert {r.headers.get("x-amz-acl") for r in puts} == {"aws-exec-read"}
    assert not proxy.requests("GET", r"\.part\.[0-9]+$")  # no part bytes went through this machine

    # The copy unbundles with the user key and with the target region's EC2 key.
    for name, k in (("user", key), ("ec2b", region_b.key_path)):
        dest = tmp_path / name
        dest.mkdir()
        code, _, err = run(capsys, "unbundle", "--from-s3", "-m", result["image_location"],
                           "-k", str(k),
                           "-c", str(cert), "-d", str(dest), "--endpoint-url", endpoint)
        assert code == 0, err
        assert hashlib.sha1((dest / "disk").read_bytes()).hexdigest() == digest
    ec2_b = plain_client("ec2", endpoint, REGION_B)
    [image] = ec2_b.describe_images(ImageIds=[result["image_id"]])["Images"]
    assert image["Name"] == "disk"


def test_copy_resumes_with_only_what_is_missing(capsys, endpoint, proxy, s3, bucket, source_bundle,
                                                user_keys, region_b):
    _, parts = source_bundle
    key, cert = user_keys
    dest_bucket = f"dst-{uuid.uuid4().hex[:12]}"
    code, _, err = copy(capsys, proxy, bucket, dest_bucket, cert, key, region_b)
    assert code == 0, err
    # Lose one part and the manifest (as if interrupted), corrupt nothing else.
    s3.delete_objects(Bucket=dest_bucket,
                      Delete={"Objects": [{"Key": parts[1]["name"]}, {"Key": "disk.manifest.xml"}]})
    proxy.clear()
    code, out, err = copy(capsys, proxy, bucket, dest_bucket, cert, key, region_b)
    assert code == 0, err
    result = json.loads(out)
    assert (result["parts_copied"], result["parts_skipped"]) == (1, len(parts) - 1)
    puts = [r.key for r in bundle_puts(proxy, f"/{dest_bucket}/")]
    assert puts == [parts[1]["name"], "disk.manifest.xml"]
    assert set(keys_in(s3, dest_bucket)) == {p["name"] for p in parts} | {"disk.manifest.xml"}


def test_stream_mode_between_endpoints(capsys, endpoint, proxy, s3, bucket, source_bundle, tmp_path,
                                       user_keys, region_b):
    digest, parts = source_bundle
    key, cert = user_keys
    dest_bucket = f"dst-{uuid.uuid4().hex[:12]}"
    # A different source endpoint means no single endpoint sees both buckets: GET → PUT.
    code, out, err = copy(capsys, proxy, bucket, dest_bucket, cert, key, region_b,
                          "--source-endpoint-url", endpoint)
    assert code == 0, err
    assert json.loads(out)["mode"] == "stream"
    puts = proxy.requests("PUT", f"/{dest_bucket}/")
    assert not any(r.headers.get("x-amz-copy-source") for r in puts)
    assert sorted(r.key for r in puts if ".part." in r.key) == sorted(p["name"] for p in parts)
    dest = tmp_path / "out"
    dest.mkdir()
    code, _, err = run(capsys, "unbundle", "--from-s3", "-m", f"{dest_bucket}/disk.manifest.xml",
                       "-k",
                       str(region_b.key_path), "-c", str(cert), "-d", str(dest),
                       "--endpoint-url", endpoint)
    assert code == 0, err
    assert hashlib.sha1((dest / "disk").read_bytes()).hexdigest() == digest


def test_tampered_source_manifest_copies_nothing(capsys, endpoint, proxy, s3, bucket, source_bundle,
                                                 user_keys, region_b):
    key, cert = user_keys
    body = s3.get_object(Bucket=bucket, Key="src/disk.manifest.xml")["Body"].read()
    s3.put_object(Bucket=bucket, Key="src/disk.manifest.xml",
                  Body=body.replace(b"<size>", b"<size>1"))
    dest_bucket = f"dst-{uuid.uuid4().hex[:12]}"
    code, _, err = copy(capsys, proxy, bucket, dest_bucket, cert, key, region_b)
    assert code != 0 and "signature does not verify" in err
    assert keys_in(s3, dest_bucket) == {}


def test_classic_name_and_bad_manifest_name(capsys, endpoint, bucket, user_keys, region_b):
    from bundler.cli import main

    key, cert = user_keys
    code = main(["copy-bundle", "-c", str(cert), "-k", str(key), "-m", "a/disk.manifest.xml",
                 "-b", bucket,
                 "-d", "other-bucket", "--region", "eu-west-1", "--endpoint-url", endpoint],
                prog="ec2-migrate-bundle")
    assert code == 2
    err = capsys.readouterr().err
    expected = "-m 'a/disk.manifest.xml' must be the manifest object name"
    assert f"ec2-migrate-bundle: error: {expected}" in err
