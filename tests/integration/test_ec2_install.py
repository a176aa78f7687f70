"""install (bundle → S3 → register in one streaming run) end to end against moto over HTTP."""

from __future__ import annotations

import hashlib
import json
import uuid

from tests.support.cli import MIB, images_named, keys_in, run, sparse_image


def test_install_then_download_and_unbundle(capsys, endpoint, proxy, s3, ec2, bucket, tmp_path,
                                            user_keys, ec2_keys):
    key, cert = user_keys
    image = tmp_path / "disk.img"
    digest = sparse_image(image, 40 * MIB)
    name = f"install-{uuid.uuid4().hex[:8]}"
    code, out, err = run(capsys, "install", "-i", str(image), "-p", "disk", "-c", str(cert),
                         "-k", str(key),
                         "-u", "123456789012", "-r", "x86_64", "--ec2cert", str(ec2_keys[1]),
                         "-b", f"{bucket}/inst", "-n", name, "--jobs", "4", "--wait",
                         "--endpoint-url", proxy.url, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["image_location"] == f"{bucket}/inst/disk.manifest.xml"
    assert result["state"] == "available"
    parts = result["parts"]
    assert len(parts) >= 2  # the random 11 MiB does not compress

    [image_desc] = ec2.describe_images(ImageIds=[result["image_id"]])["Images"]
    assert image_desc["Name"] == name
    stored = keys_in(s3, bucket, "inst/")
    assert set(stored) == {f"inst/{p['name']}" for p in parts} | {"inst/disk.manifest.xml"}
    # Manifest PUT last; every object with the EC2-readable ACL (a part sent in two pieces
    # gets it where its multipart upload is created).
    puts = proxy.requests("PUT", r"/inst/")
    assert puts[-1].key == "inst/disk.manifest.xml"
    creates = ([r for r in puts if "partNumber=" not in r.query]
               + proxy.requests("POST", r"/inst/.*\?uploads$"))
    assert {r.headers.get("x-amz-acl") for r in creates} == {"aws-exec-read"}

    # Download the bundle, then unbundle it locally: the very same image comes back.
    dl = tmp_path / "dl"
    dl.mkdir()
    code, _, err = run(capsys, "download-bundle", "-b", f"{bucket}/inst", "-p", "disk",
                       "-d", str(dl), "-k", str(key), "--endpoint-url", endpoint)
    assert code == 0, err
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run(capsys, "unbundle", "-m", str(dl / "disk.manifest.xml"), "-k", str(key),
                       "-d", str(out_dir))
    assert code == 0, err
    assert hashlib.sha1((out_dir / "disk").read_bytes()).hexdigest() == digest

    # And straight from S3, no parts on disk.
    direct = tmp_path / "direct"
    direct.mkdir()
    code, _, err = run(capsys, "unbundle", "--from-s3", "-m", f"{bucket}/inst/disk.manifest.xml",
                       "-k", str(key), "-d", str(direct), "--endpoint-url", endpoint)
    assert code == 0, err
    assert hashlib.sha1((direct / "disk").read_bytes()).hexdigest() == digest

    code, out, err = run(capsys, "deregister", result["image_id"],
                         "--delete-bundle", "--endpoint-url", endpoint)
    assert code == 0, err
    assert keys_in(s3, bucket) == {}


def test_install_failure_leaves_nothing_behind(capsys, proxy, s3, ec2, bucket, tmp_path, user_keys,
                                               ec2_keys):
    key, cert = user_keys
    image = tmp_path / "fail.img"
    sparse_image(image, 30 * MIB)
    proxy.add_rule("status", r"\.part\.", method="PUT", times=None, status=403, code="AccessDenied")
    name = f"install-{uuid.uuid4().hex[:8]}"
    code, _, err = run(capsys, "install", "-i", str(image), "-c", str(cert), "-k", str(key),
                       "-u", "123456789012",
                       "-r", "x86_64", "--ec2cert", str(ec2_keys[1]), "-b", bucket, "-n", name,
                       "--endpoint-url", proxy.url)
    assert code == 3 and "s3:PutObjectAcl" in err
    assert keys_in(s3, bucket) == {}
    assert images_named(ec2, name) == []
