"""regions: botocore partition data, suggestions, certificates by partition, bucket maps;
FanOutSink."""

from __future__ import annotations

import pytest

from bundler import ec2certs, regions
from bundler.errors import S3Error, UsageError
from bundler.multiregion import FanOutSink
from bundler.parts import Part
from tests.support.sinks import MemorySink


def injected() -> Exception:
    return S3Error("injected")


def test_regions_come_from_botocore():
    import botocore.session

    session = botocore.session.get_session()
    assert set(regions.partitions()) == set(session.get_available_partitions())
    assert "eu-west-1" in regions.known_regions("aws")
    china = session.get_available_regions("ec2", partition_name="aws-cn")
    assert regions.known_regions("aws-cn") == sorted(china)


@pytest.mark.parametrize(("region", "partition", "cert"), [
    ("us-east-1", "aws", "cert-ec2.pem"),
    ("eu-central-2", "aws", "cert-ec2.pem"),
    ("cn-north-1", "aws-cn", "cert-ec2-cn-north-1.pem"),
    ("cn-northwest-1", "aws-cn", "cert-ec2-cn-north-1.pem"),
    ("us-gov-west-1", "aws-us-gov", "cert-ec2-gov.pem"),
    ("us-gov-east-1", "aws-us-gov", "cert-ec2-gov.pem"),
    # Unknown to botocore: placed by the partition regex.
    ("cn-south-7", "aws-cn", "cert-ec2-cn-north-1.pem"),
])
def test_partition_and_certificate(region, partition, cert):
    assert regions.partition_of(region) == partition
    assert ec2certs.partition_cert_name(region) == cert


@pytest.mark.parametrize(("typo", "suggestion"), [
    ("eu-wset-1", "eu-west-1"), ("us-est-1", "us-east-1"), ("cn-north1", "cn-north-1"),
    ("US-EAST-1 ", None),
])
def test_typos_get_a_suggestion(typo, suggestion):
    if suggestion is None:
        assert regions.validate_region(typo) == "us-east-1"
        return
    with pytest.raises(UsageError, match=f"did you mean {suggestion}"):
        regions.validate_region(typo)


def test_unknown_region_rejected_unless_allowed():
    with pytest.raises(UsageError, match="not a region botocore knows"):
        regions.validate_region("xx-moon-1")
    assert regions.validate_region("xx-moon-1", allow_unknown=True) == "xx-moon-1"
    with pytest.raises(UsageError, match="not a region name"):
        regions.validate_region("frankfurt", allow_unknown=True)


def test_parse_regions_and_bucket_map():
    rs = regions.parse_regions(["us-east-1,eu-west-1", "us-east-1"])
    assert rs == ["us-east-1", "eu-west-1"]
    m = regions.bucket_map(rs, template="amis-{region}/web", pairs=["eu-west-1=special/x/y"])
    assert m == {"us-east-1": ("amis-us-east-1", "web/"), "eu-west-1": ("special", "x/y/")}
    with pytest.raises(UsageError, match="no bucket for region eu-west-1"):
        regions.bucket_map(rs, pairs=["us-east-1=a-bucket"])
    with pytest.raises(UsageError, match="must contain"):
        regions.bucket_map(rs, template="amis")
    with pytest.raises(UsageError, match="more than one region"):
        regions.bucket_map(rs, pairs=["us-east-1=same", "eu-west-1=same"])
    with pytest.raises(UsageError, match="not in --regions"):
        regions.bucket_map(rs, template="a-{region}", pairs=["ap-south-1=x-bucket"])


def test_fanout_drops_a_failing_child_and_gives_each_its_manifest():
    a, b, c = MemorySink(), MemorySink(fail_put=1, put_error=injected), MemorySink()
    fan = FanOutSink({"a": a, "b": b, "c": c}, manifest_for=lambda label,
                     data: data + label.encode())
    fan.begin("img", 9)
    for i in range(3):
        fan.put_part(Part.of(i, bytes([i]) * 10))
    fan.commit(["p0", "p1", "p2"], "img.manifest.xml", b"M-")
    assert a.indices == c.indices == [0, 1, 2] and b.indices == [0]
    assert b.aborted and not a.aborted
    assert a.committed == (["p0", "p1", "p2"], "img.manifest.xml", b"M-a")
    assert c.committed[2] == b"M-c" and b.committed is None
    assert set(fan.failures) == {"b"} and sorted(fan.committed) == ["a", "c"]


def test_fanout_fails_when_every_child_failed():
    fan = FanOutSink({"a": MemorySink(fail_put=0, put_error=injected),
                      "b": MemorySink(fail_put=0, put_error=injected)})
    fan.begin("img", 1)
    with pytest.raises(S3Error, match="every destination failed: a: injected; b: injected"):
        fan.put_part(Part.of(0, b"x"))
