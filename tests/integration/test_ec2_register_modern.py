"""RegisterImage as EC2 has it today, against the strict local AWS: tags at registration,
IMDSv2, deprecation, deregistration protection, organization launch permissions, block public
access for AMIs; no bookkeeping tag (EC2 reports ImageLocation)."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from tests.support.bundles import make_fake_bundle
from tests.support.cli import KIB, ami_name, images_named, keys_in, register, run, upload

ORG = "arn:aws:organizations::123456789012:organization/o-abcdefghij"
OU = "arn:aws:organizations::123456789012:ou/o-abcdefghij/ou-ab12-cdefghij"


def test_modern_register(capsys, endpoint, proxy, s3, ec2, bucket, reg_bundle):
    name = ami_name()
    location = f"{bucket}/amis/reg.manifest.xml"
    code, out, err = register(capsys, proxy.url, location, name, "--json", "--tag", "team=infra",
                              "--tag", "os=debian", "--imds-support", "v2.0",
                              "--deprecate-at", "2031-05-06T07:08:00Z",
                              "--deregistration-protection",
                              "--launch-permission", "1111-2222-3333",
                              "--launch-permission", ORG, "--launch-permission", OU)
    assert code == 0, err
    assert not [r for r in proxy.requests("POST") if b"Action=CreateTags" in r.body_prefix]
    [call] = [r for r in proxy.requests("POST") if b"Action=RegisterImage" in r.body_prefix]
    form = parse_qs(call.body_prefix.decode())
    assert form["TagSpecification.1.ResourceType"] == ["image"]
    [image] = images_named(ec2, name)
    assert image["ImageLocation"] == location and image["RootDeviceType"] == "instance-store"
    assert (sorted((t["Key"], t["Value"]) for t in image["Tags"])
            == [("os", "debian"), ("team", "infra")])
    assert image["ImdsSupport"] == "v2.0"
    assert image["DeprecationTime"].startswith("2031-05-06T07:08")
    assert image["DeregistrationProtection"] == "enabled-without-cooldown"
    perms = ec2.describe_image_attribute(ImageId=image["ImageId"],
                                         Attribute="launchPermission")["LaunchPermissions"]
    assert {"UserId": "111122223333"} in perms
    assert {"OrganizationArn": ORG} in perms and {"OrganizationalUnitArn": OU} in perms
    # Protected: deregister is refused and the bundle stays.
    code, _, err = run(capsys, "deregister", image["ImageId"],
                       "--delete-bundle", "--endpoint-url", endpoint)
    assert code != 0 and "deregistration protection" in err
    assert len(keys_in(s3, bucket)) == 4
    ec2.disable_image_deregistration_protection(ImageId=image["ImageId"])
    # deregister --delete-bundle finds the bundle through ImageLocation (no tag exists).
    code, out, err = run(capsys, "deregister", image["ImageId"],
                         "--delete-bundle", "--endpoint-url", endpoint)
    assert code == 0, err
    assert keys_in(s3, bucket) == {}


def test_sharing_with_all_under_block_public_access(capsys, endpoint, ec2, bucket, reg_bundle):
    name = ami_name()
    assert (ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"]
            == "block-new-sharing")
    code, _, err = register(capsys, endpoint, f"{bucket}/amis/reg.manifest.xml", name,
                            "--launch-permission", "all")
    assert code != 0 and "Traceback" not in err
    assert "block public access for AMIs" in err and "disable-image-block-public-access" in err
    assert images_named(ec2, name) == []  # refused before the AMI existed
    ec2.disable_image_block_public_access()
    try:
        code, _, err = register(capsys, endpoint, f"{bucket}/amis/reg.manifest.xml", name,
                                "--launch-permission", "all")
        assert code == 0, err
        [image] = images_named(ec2, name)
        assert image["Public"] is True
    finally:
        ec2.enable_image_block_public_access(ImageBlockPublicAccessState="block-new-sharing")


def test_bad_register_flags(capsys, endpoint, bucket, reg_bundle):
    location = f"{bucket}/amis/reg.manifest.xml"
    for flags, text in ((["--deprecate-at", "2001-01-01"], "not in the future"),
                        (["--deprecate-at", "soon"], "expected a time"),
                        (["--launch-permission", "arn:aws:iam::123456789012:root"],
                         "organization ARN")):
        code, _, err = register(capsys, endpoint, location, ami_name(), *flags)
        assert code == 2 and text in err, err


@pytest.mark.parametrize(("damage", "detail"), [
    ("other-region", "another region's EC2 certificate"),
    ("grant", "aws-exec-read grant"),
    ("tampered", "does not match its digest"),
])
def test_register_fails_clearly_for_a_bundle_ec2_cannot_use(capsys, endpoint, s3, ec2, bucket,
                                                          tmp_path, signing_key, strict_aws,
                                                          damage, detail):
    other = (strict_aws.keys.private_key("af-south-1").public_key()
             if damage == "other-region" else None)
    bundle = make_fake_bundle(tmp_path / "b", "bad", [64 * KIB, 16 * KIB], signing_key,
                              ec2_public_key=other)
    code, _, err = upload(capsys, endpoint, f"{bucket}/amis", bundle)
    assert code == 0, err
    if damage == "grant":
        s3.put_object(Bucket=bucket, Key="amis/bad.part.1", Body=bundle.parts[1].data)  # no ACL
    if damage == "tampered":
        data = bytearray(bundle.parts[0].data)
        data[7] ^= 0xFF
        s3.put_object(Bucket=bucket, Key="amis/bad.part.0", Body=bytes(data), ACL="aws-exec-read")
    name = ami_name()
    code, _, err = register(capsys, endpoint, f"{bucket}/amis/bad.manifest.xml", name)
    assert code != 0 and "Traceback" not in err
    [line] = [x for x in err.splitlines() if x.startswith("ami-bundler: error:")]
    assert "InvalidManifest" in line and detail in line
    assert images_named(ec2, name) == []
