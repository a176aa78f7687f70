"""register / deregister against moto (EC2 + S3) over HTTP, with the S3 preflight."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from bundler.errors import EC2Error
from tests.support.cli import ami_name, images_named, keys_in, register, run


def test_register_tags_permissions_and_deregister_with_bundle(capsys, endpoint, proxy, s3, ec2,
                                                              bucket, reg_bundle):
    name = ami_name()
    code, out, err = register(capsys, proxy.url, f"{bucket}/amis/reg.manifest.xml", name,
                              "--json", "--wait",
                              "--tag", "team=infra", "--launch-permission", "1111-2222-3333",
                              "--description", "test image")
    assert code == 0, err
    result = json.loads(out)
    image_id = result["image_id"]
    assert image_id.startswith("ami-") and result["state"] == "available"
    assert result["preflight"]["parts"] == 3
    [image] = images_named(ec2, name)
    assert image["ImageId"] == image_id
    assert {"Key": "team", "Value": "infra"} in image["Tags"]
    attribute = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    perms = attribute["LaunchPermissions"]
    assert {"UserId": "111122223333"} in perms
    # What went to EC2: the ImageLocation and the manifest's architecture.
    [call] = [r for r in proxy.requests("POST") if b"Action=RegisterImage" in r.body_prefix]
    form = parse_qs(call.body_prefix.decode())
    assert form["ImageLocation"] == [f"{bucket}/amis/reg.manifest.xml"]
    assert form["Architecture"] == ["x86_64"]

    code, out, err = run(capsys, "deregister", image_id,
                         "--delete-bundle", "--endpoint-url", endpoint)
    assert code == 0, err
    assert "Deleted 4 objects" in out
    assert images_named(ec2, name) == []
    assert keys_in(s3, bucket) == {}


@pytest.mark.parametrize("damage, message", [
    ("manifest", "does not exist"),
    ("part", "reg.part.1 missing"),
    ("size", "bundled_size"),
])
def test_preflight_blocks_register(capsys, endpoint, s3, ec2, bucket, reg_bundle, damage, message):
    if damage == "manifest":
        s3.delete_object(Bucket=bucket, Key="amis/reg.manifest.xml")
    elif damage == "part":
        s3.delete_object(Bucket=bucket, Key="amis/reg.part.1")
    else:
        s3.put_object(Bucket=bucket, Key="amis/reg.part.2", Body=b"short")
    name = ami_name()
    code, _, err = register(capsys, endpoint, f"{bucket}/amis/reg.manifest.xml", name)
    assert code != 0
    assert message in err
    assert images_named(ec2, name) == []


def test_register_in_wrong_region_is_refused(capsys, endpoint, ec2, bucket, reg_bundle):
    name = ami_name()
    code, _, err = register(capsys, endpoint, f"{bucket}/amis/reg.manifest.xml", name,
                            "--region", "eu-west-1")
    assert code == 3 and "--region us-east-1" in err
    assert images_named(ec2, name) == []


def test_register_bad_location(capsys, endpoint):
    code, _, err = register(capsys, endpoint, "just-a-bucket", ami_name())
    assert code == 2 and "NAME.manifest.xml" in err


def test_register_block_device_mapping_is_parsed(capsys, proxy, bucket, reg_bundle):
    code, _, err = register(capsys, proxy.url, f"{bucket}/amis/reg.manifest.xml", ami_name(),
                            "-b", "/dev/sdb=ephemeral0",
                            "-b", "/dev/sdc=none,/dev/sdd=:20:true:gp3")
    assert code == 0, err
    [call] = [r for r in proxy.requests("POST") if b"Action=RegisterImage" in r.body_prefix]
    form = parse_qs(call.body_prefix.decode())
    assert form["BlockDeviceMapping.1.VirtualName"] == ["ephemeral0"]
    assert form["BlockDeviceMapping.3.Ebs.VolumeSize"] == ["20"]
    assert form["BlockDeviceMapping.3.Ebs.VolumeType"] == ["gp3"]


def test_deregister_unknown_image(capsys, endpoint):
    code, _, err = run(capsys, "deregister", "ami-0123456789abcdef0", "--endpoint-url", endpoint)
    assert code == EC2Error.exit_code == 4 and "not found" in err
