"""Pure logic of the S3/EC2 layer: locations, regions, addressing, flag parsing, the pool."""

from __future__ import annotations

import argparse

import pytest

from bundler.aws import AwsOptions, is_aws_endpoint, needs_path_style
from bundler.cli.context import add_aws_options, aws_options_from_args
from bundler.ec2 import parse_launch_permissions, parse_register_block_device_mappings, parse_tags
from bundler.errors import UsageError
from bundler.s3 import S3Location, location_region, split_manifest_location


@pytest.mark.parametrize("value, bucket, prefix", [
    ("b-1", "b-1", ""),
    ("/my-bucket/amis/web/", "my-bucket", "amis/web/"),
    ("my.bucket/a", "my.bucket", "a/"),
    ("s3://bkt/x/y", "bkt", "x/y/"),
])
def test_location_parse(value, bucket, prefix):
    loc = S3Location.parse(value)
    assert (loc.bucket, loc.prefix) == (bucket, prefix)
    assert loc.image_location("n.manifest.xml") == f"{bucket}/{prefix}n.manifest.xml"


@pytest.mark.parametrize("value", ["", "/", "//", None, "a", "bad bucket/x"])
def test_location_parse_rejects(value):
    with pytest.raises(UsageError):
        S3Location.parse(value)


def test_split_manifest_location():
    loc, name = split_manifest_location("s3://bkt/a/b/img.manifest.xml")
    assert (loc.bucket, loc.prefix, name) == ("bkt", "a/b/", "img.manifest.xml")
    loc, name = split_manifest_location("bkt/img.manifest.xml")
    assert (loc.bucket, loc.prefix, name) == ("bkt", "", "img.manifest.xml")
    for bad in ("bkt", "bkt/", "bkt/img.part.0", "/img.manifest.xml"):
        with pytest.raises(UsageError):
            split_manifest_location(bad)


def test_location_region():
    assert location_region("EU") == "eu-west-1"
    assert location_region("us") == "us-east-1"
    assert location_region("ap-southeast-4") == "ap-southeast-4"  # no hard-coded list
    with pytest.raises(UsageError):
        location_region("Mars")


@pytest.mark.parametrize("url, aws", [
    (None, True),
    ("https://s3.eu-west-1.amazonaws.com", True),
    ("https://s3.cn-north-1.amazonaws.com.cn", True),
    ("http://127.0.0.1:5000", False),
    ("http://localhost:9000", False),
    ("https://minio.example.com", False),
])
def test_is_aws_endpoint(url, aws):
    assert is_aws_endpoint(url) is aws


def test_path_style_rules():
    assert needs_path_style("plain-bucket", None) is False
    assert needs_path_style("with.dots", None) is True
    assert needs_path_style("Upper_Legacy", None) is True
    assert needs_path_style("plain-bucket", "http://127.0.0.1:5000") is True


def parse_aws(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_aws_options(p)
    return p.parse_args(list(argv))


def test_options_from_args_and_secret_warning():
    warnings: list[str] = []
    opts = aws_options_from_args(parse_aws("--url", "http://127.0.0.1:1", "-a", "AK",
                                           "-s", "SECRET", "-t", "TOK",
                                       "--region", "eu-north-1", "--max-attempts", "4"),
                                 warnings.append)
    assert opts.endpoint_url == "http://127.0.0.1:1" and opts.region == "eu-north-1"
    assert (opts.access_key, opts.secret_key, opts.session_token) == ("AK", "SECRET", "TOK")
    assert opts.max_attempts == 4
    assert any("ps" in w for w in warnings)
    assert "SECRET" not in repr(opts) and "TOK" not in repr(opts)


def test_options_from_args_rejects_half_credentials_and_bad_region():
    with pytest.raises(UsageError):
        aws_options_from_args(parse_aws("-a", "AK"))
    with pytest.raises(UsageError):
        aws_options_from_args(parse_aws("--region", "moon"))
    assert aws_options_from_args(parse_aws()) == AwsOptions()


def test_register_block_device_mappings():
    got = parse_register_block_device_mappings(["/dev/sdb=ephemeral0,/dev/sdc=none",
                                                "/dev/sdd=snap-0abc:8:false:io2:3000"])
    assert got == [
        {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"},
        {"DeviceName": "/dev/sdc", "NoDevice": ""},
        {"DeviceName": "/dev/sdd",
         "Ebs": {"SnapshotId": "snap-0abc", "VolumeSize": 8, "DeleteOnTermination": False,
                                           "VolumeType": "io2", "Iops": 3000}},
    ]
    for bad in ("nodevice", "/dev/sdb=", "/dev/sdb=:", "/dev/sdb=snap-x", "/dev/sdb=:big",
                "/dev/sdb=:8:maybe"):
        with pytest.raises(UsageError):
            parse_register_block_device_mappings([bad])


def test_tags_and_launch_permissions():
    assert parse_tags(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(UsageError):
        parse_tags(["novalue"])
    assert parse_launch_permissions(["1234-5678-9012", "ALL"]) == ["123456789012", "all"]
    with pytest.raises(UsageError):
        parse_launch_permissions(["12345"])




def _get_response(data: bytes, length: int | None = None) -> dict:
    import io

    from botocore.response import StreamingBody

    n = len(data) if length is None else length
    return {"Body": StreamingBody(io.BytesIO(data), n), "ContentLength": n}


def test_a_part_is_downloaded_in_pieces_checked_as_one():
    """A part's body is read in 1 MiB pieces that are kept as they came (no 10 MiB buffer and
    its copy per download) and SHA-1 checked together; a damaged part is retried, then refused."""
    import hashlib
    import os

    import boto3
    from botocore.stub import Stubber

    from bundler.errors import IntegrityError
    from bundler.manifest import PartEntry
    from bundler.s3.objects import BODY_PIECE, fetch_part_pieces

    data = os.urandom(3 * BODY_PIECE + 12345)
    entry = PartEntry(0, "img.part.0", hashlib.sha1(data).hexdigest())
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x",
                      aws_secret_access_key="x")
    with Stubber(s3) as stub:
        stub.add_response("get_object", _get_response(data), {"Bucket": "b", "Key": "k"})
        pieces = fetch_part_pieces(s3, "b", "k", entry, 1)
        assert b"".join(pieces) == data and len(pieces) == 4
        assert all(len(p) <= BODY_PIECE for p in pieces)
        damaged = bytes([data[0] ^ 1]) + data[1:]
        for _ in range(2):
            stub.add_response("get_object", _get_response(damaged), {"Bucket": "b", "Key": "k"})
        with pytest.raises(IntegrityError, match="img.part.0 .* does not match the manifest"):
            fetch_part_pieces(s3, "b", "k", entry, 1)
        for _ in range(2):  # a body that ends before its Content-Length: retried, then one line
            stub.add_response("get_object", _get_response(data[:1000], len(data)),
                              {"Bucket": "b", "Key": "k"})
        with pytest.raises(IntegrityError, match="kept closing early"):
            fetch_part_pieces(s3, "b", "k", entry, 1)
