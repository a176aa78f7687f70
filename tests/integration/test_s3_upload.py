"""upload-bundle / download-bundle against moto in server mode over HTTP (127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support.bundles import FakeBundle, make_fake_bundle
from tests.support.cli import KIB, MIB, bundle_puts, keys_in, run, upload


@pytest.fixture
def bundle3(tmp_path: Path, signing_key) -> FakeBundle:
    return make_fake_bundle(tmp_path / "bundle", "img", [MIB, MIB, 300 * KIB], signing_key)


def test_upload_layout_acl_and_download_round_trip(capsys, endpoint, proxy, s3, bucket, bundle3,
                                                   tmp_path, user_keys):
    code, out, err = upload(capsys, proxy.url, f"/{bucket}/amis/web/", bundle3)
    assert code == 0, err
    assert f"Manifest uploaded to: {bucket}/amis/web/img.manifest.xml" in out

    stored = keys_in(s3, bucket)
    expected = {f"amis/web/{n}": (len(p.data), hashlib.md5(p.data).hexdigest())
                for n, p in zip(bundle3.part_names, bundle3.parts, strict=True)}
    expected["amis/web/img.manifest.xml"] = (len(bundle3.manifest_bytes),
                                             hashlib.md5(bundle3.manifest_bytes).hexdigest())
    assert stored == expected

    puts = bundle_puts(proxy, r"/amis/web/")
    assert len(puts) == 4
    # Every object carries the EC2-readable canned ACL and a Content-MD5 of its bytes.
    assert {r.headers.get("x-amz-acl") for r in puts} == {"aws-exec-read"}
    assert all(r.headers.get("content-md5") for r in puts)
    # The manifest goes up last, after every part has completed.
    manifest_put = [r for r in puts if r.path.endswith(".manifest.xml")]
    assert len(manifest_put) == 1
    assert manifest_put[0].started >= max(r.ended for r in puts if ".part." in r.path)

    dest = tmp_path / "down"
    dest.mkdir()
    code, out, err = run(capsys, "download-bundle", "-b", f"{bucket}/amis/web", "-p", "img",
                         "-d", str(dest),
                         "-k", str(user_keys[0]), "--endpoint-url", endpoint, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["signature_verified"] is True
    assert result["parts_downloaded"] == 3
    for name, part in zip(bundle3.part_names, bundle3.parts, strict=True):
        assert (dest / name).read_bytes() == part.data
    assert (dest / "img.manifest.xml").read_bytes() == bundle3.manifest_bytes
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


def test_public_read_acl_is_stored(capsys, endpoint, s3, bucket, bundle3):
    s3.delete_public_access_block(Bucket=bucket)  # a bucket whose owner allows public objects
    code, _, err = upload(capsys, endpoint, bucket, bundle3, "--acl", "public-read")
    assert code == 0, err
    grants = s3.get_object_acl(Bucket=bucket, Key="img.part.0")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/global/AllUsers")
               and g["Permission"] == "READ" for g in grants)


def test_parts_are_uploaded_in_parallel(capsys, proxy, s3, bucket, tmp_path, signing_key):
    bundle = make_fake_bundle(tmp_path / "b", "par", [256 * KIB] * 8, signing_key)
    proxy.add_rule("delay", r"\.part\.", method="PUT", times=None, delay=0.15)
    code, _, err = upload(capsys, proxy.url, bucket, bundle, "--jobs", "4")
    assert code == 0, err
    assert proxy.max_in_flight("PUT") >= 2
    assert proxy.max_in_flight("PUT") <= 4
    assert len(keys_in(s3, bucket)) == 9


def test_jobs_1_is_sequential(capsys, proxy, bucket, tmp_path, signing_key):
    bundle = make_fake_bundle(tmp_path / "b", "seq", [64 * KIB] * 4, signing_key)
    proxy.add_rule("delay", r"\.part\.", method="PUT", times=None, delay=0.05)
    code, _, err = upload(capsys, proxy.url, bucket, bundle, "--jobs", "1")
    assert code == 0, err
    assert proxy.max_in_flight("PUT") == 1


def test_throttling_and_connection_resets_are_retried(capsys, proxy, endpoint, s3, bucket, bundle3,
                                                      tmp_path, user_keys):
    proxy.add_rule("status", r"\.part\.", method="PUT", times=3, status=503, code="SlowDown")
    proxy.add_rule("reset", r"\.part\.1", method="PUT", times=2)
    proxy.add_rule("status", r"\.part\.2", method="PUT", times=1, status=400, code="BadDigest")
    code, out, err = upload(capsys, proxy.url, bucket, bundle3)
    assert code == 0, err
    statuses = [r.status for r in proxy.requests("PUT")]
    assert statuses.count(503) == 3 and statuses.count(None) == 2 and statuses.count(400) == 1
    stored = keys_in(s3, bucket)
    for name, part in zip(bundle3.part_names, bundle3.parts, strict=True):
        assert stored[name] == (len(part.data), hashlib.md5(part.data).hexdigest())
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == part.data


def test_interrupted_upload_resumes_with_only_missing_parts(capsys, proxy, s3, bucket, tmp_path,
                                                            signing_key):
    bundle = make_fake_bundle(tmp_path / "b", "res", [128 * KIB] * 6, signing_key)
    # Part 3 fails permanently (403 is not retried): the run dies with parts 0-2, 4-5 possibly up.
    proxy.add_rule("status", r"\.part\.3$", method="PUT", times=None, status=403,
                   code="AccessDenied")
    code, _, err = upload(capsys, proxy.url, bucket, bundle, "--jobs", "1")
    assert code == 3
    assert "s3:PutObjectAcl" in err
    before = keys_in(s3, bucket)
    assert "res.manifest.xml" not in before and "res.part.3" not in before
    assert {"res.part.0", "res.part.1", "res.part.2"} <= set(before)

    proxy.clear()
    code, out, err = upload(capsys, proxy.url, bucket, bundle, "--json")
    assert code == 0, err
    result = json.loads(out)
    put_keys = sorted(r.key for r in bundle_puts(proxy))
    missing = [f"res.part.{i}" for i in range(6) if f"res.part.{i}" not in before]
    expected = sorted([*missing, "res.manifest.xml"])
    assert put_keys == expected
    assert result["parts_skipped"] == len(before)
    assert len(keys_in(s3, bucket)) == 7

    # A third run re-uploads no part at all, just the manifest.
    proxy.clear()
    code, _, err = upload(capsys, proxy.url, bucket, bundle)
    assert code == 0, err
    assert [r.key for r in bundle_puts(proxy)] == ["res.manifest.xml"]


def test_damaged_remote_part_is_replaced_on_resume(capsys, endpoint, s3, bucket, bundle3):
    code, _, err = upload(capsys, endpoint, bucket, bundle3)
    assert code == 0, err
    s3.put_object(Bucket=bucket, Key="img.part.1", Body=b"x" * len(bundle3.parts[1].data))
    code, out, err = upload(capsys, endpoint, bucket, bundle3, "--json")
    assert code == 0, err
    assert json.loads(out)["parts_uploaded"] == 1
    assert s3.get_object(Bucket=bucket, Key="img.part.1")["Body"].read() == bundle3.parts[1].data


def test_part_and_skipmanifest_flags(capsys, proxy, s3, bucket, bundle3):
    code, _, err = upload(capsys, proxy.url, bucket, bundle3, "--part", "1", "--skipmanifest")
    assert code == 0, err
    assert set(keys_in(s3, bucket)) == {"img.part.1", "img.part.2"}


def test_local_part_mismatch_is_refused_before_any_upload(capsys, proxy, s3, bucket, bundle3):
    (bundle3.directory / "img.part.1").write_bytes(b"other bundle" * 100)
    code, _, err = upload(capsys, proxy.url, bucket, bundle3)
    assert code == 5
    assert "img.part.1" in err and "is corrupt" in err
    assert proxy.requests("PUT") == []
    assert keys_in(s3, bucket) == {}


def test_missing_local_part(capsys, endpoint, bucket, bundle3):
    (bundle3.directory / "img.part.2").unlink()
    code, _, err = upload(capsys, endpoint, bucket, bundle3)
    assert code == 5 and "img.part.2" in err and "missing" in err


def test_bucket_is_created_with_location(capsys, endpoint, s3, bundle3):
    name = "created-" + bundle3.parts[0].sha1[:12]
    code, out, err = upload(capsys, endpoint, f"{name}/p", bundle3, "--location", "eu-west-1")
    assert code == 0, err
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] == "eu-west-1"
    assert "p/img.manifest.xml" in keys_in(s3, name)
    # Same bucket, a conflicting --location: classic exit 10.
    code, _, err = upload(capsys, endpoint, f"{name}/p", bundle3, "--location", "us-west-2")
    assert code == 10 and "already exists in eu-west-1" in err


def test_wrong_explicit_region_names_the_right_one(capsys, endpoint, bundle3):
    from tests.support.awsfixtures import plain_client

    eu = plain_client("s3", endpoint, "eu-central-1")
    name = "eu-" + bundle3.parts[0].sha1[:12]
    eu.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"},
                     ObjectOwnership="ObjectWriter")
    code, _, err = upload(capsys, endpoint, name, bundle3, "--region", "us-west-2")
    assert code == 3 and "--region eu-central-1" in err
    # Without --region the bucket's region is used.
    code, _, err = upload(capsys, endpoint, name, bundle3)
    assert code == 0, err


def test_acl_disabled_bucket_names_the_fix(capsys, proxy, bucket, bundle3):
    proxy.add_rule("status", r"\.part\.", method="PUT", times=None, status=400,
                   code="AccessControlListNotSupported")
    code, _, err = upload(capsys, proxy.url, bucket, bundle3)
    assert code == 3  # S3 said so at the PUT (e.g. ownership changed after the check)
    assert "put-bucket-ownership-controls" in err and "--enable-bucket-acls" in err


@pytest.mark.parametrize("target", ["", "/", "//"])
def test_malformed_bucket_argument(capsys, endpoint, bundle3, target):
    code, _, err = upload(capsys, endpoint, target, bundle3)
    assert code == 2 and "BUCKET" in err


def test_no_credentials(capsys, endpoint, bundle3, monkeypatch, bucket):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, _, err = upload(capsys, endpoint, bucket, bundle3)
    assert code == 3
    assert "no AWS credentials found" in err and "AWS_PROFILE" in err


def test_secret_on_command_line_warns_and_is_not_echoed(capsys, endpoint, bucket, bundle3,
                                                        monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, out, err = upload(capsys, endpoint, bucket, bundle3, "-a", "AKIDEXAMPLE",
                            "-s", "sekrit-value-123", "--debug")
    assert code == 0, err
    assert "visible to other users" in err
    assert "sekrit-value-123" not in out + err
