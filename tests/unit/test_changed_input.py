"""Inputs that change under the bundler, an input that is an output, and the recomputed
tar-stream digest that re-runs compare with the manifest (issue 11, problems 3 and 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.stub import Stubber

from bundler.dirsink import DirectorySink
from bundler.errors import ImageError
from bundler.imagetar import tar_digest
from bundler.inuse import images_using
from bundler.pipeline import BundleKeys, BundleOptions, bundle
from bundler.source import open_image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(user_key_pair, ec2_key_pair):
    return BundleKeys(user_key_pair.private_key, user_key_pair.public_key, ec2_key_pair.public_key)


def sparse(path: Path, size: int = 3 << 20) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.seek(1 << 20)
        fh.write(os.urandom(300_000))
    return path


def test_tar_digest_is_the_manifest_digest_without_compressing(tmp_path, keys):
    image = sparse(tmp_path / "disk.img")
    out = tmp_path / "out"
    out.mkdir()
    result = bundle(
        open_image(image, name="disk"),
        DirectorySink(out),
        keys,
        BundleOptions(name="disk", user="123456789012"),
    )
    source = open_image(image, name="disk")
    try:
        assert tar_digest(source, "disk") == result.manifest.digest
        assert (
            tar_digest(source, "other") != result.manifest.digest
        )  # the member name is in the stream
    finally:
        source.close()


@pytest.mark.parametrize("change", ["rewrite", "grow", "shrink-then-regrow"])
def test_an_image_changed_while_read_fails_and_leaves_nothing(tmp_path, keys, change):
    image = sparse(tmp_path / "disk.img")
    out = tmp_path / "out"
    out.mkdir()
    source = open_image(image, name="disk")
    st = os.stat(image)
    with open(image, "r+b") as fh:
        if change == "rewrite":  # same size, same mtime: only ctime tells
            fh.seek(1 << 20)
            fh.write(os.urandom(4096))
        elif change == "grow":
            fh.seek(0, os.SEEK_END)
            fh.write(b"more")
        else:
            fh.truncate(st.st_size - 4096)
            fh.truncate(st.st_size)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ImageError, match="while it was being read: nothing was kept"):
        bundle(source, DirectorySink(out), keys, BundleOptions(name="disk", user="123456789012"))
    assert os.listdir(out) == []


def test_bundle_image_refuses_its_own_output_as_input(tmp_path, user_key_pair, ec2_key_pair):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.img").write_bytes(os.urandom(100_000))
    base = [
        sys.executable,
        "-m",
        "bundler",
        "bundle-image",
        "-d",
        str(out),
        "-p",
        "a",
        "-c",
        str(user_key_pair.cert_path),
        "-k",
        str(user_key_pair.key_path),
        "-u",
        "123456789012",
        "--ec2cert",
        str(ec2_key_pair.cert_path),
    ]
    done = subprocess.run(
        [*base, "-i", str(out / "a.img")], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    os.link(out / "a.part.0", tmp_path / "elsewhere")  # the same file under another name
    for victim in (out / "a.part.0", out / "a.manifest.xml", tmp_path / "elsewhere"):
        done = subprocess.run(
            [*base, "-i", str(victim), "--force"], cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 2
        assert (
            "one of the files this run would write" in done.stderr
            and "Traceback" not in done.stderr
        )
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_describe_images_denied_is_unknown_not_an_error():
    import boto3

    ec2 = boto3.client(
        "ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    warnings = []
    with Stubber(ec2) as stub:
        stub.add_client_error(
            "describe_images", service_error_code="UnauthorizedOperation", http_status_code=403
        )
        assert images_using(ec2, "b/p/x.manifest.xml", warn=warnings.append) is None
        stub.add_response(
            "describe_images",
            {
                "Images": [
                    {"ImageId": "ami-1", "State": "available"},
                    {"ImageId": "ami-2", "State": "deregistered"},
                    {"ImageId": "ami-3", "State": "available"},
                ]
            },
            {
                "Owners": ["self"],
                "Filters": [{"Name": "manifest-location", "Values": ["b/p/x.manifest.xml"]}],
            },
        )
        assert images_using(ec2, "b/p/x.manifest.xml", exclude=["ami-3"]) == ["ami-1"]
    assert warnings and "ec2:DescribeImages denied" in warnings[0]
