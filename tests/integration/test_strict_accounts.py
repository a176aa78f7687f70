"""Two accounts in the strict local AWS (tests/support/strictaws/accounts.py), checked with plain
boto3 clients, independent of bundler: AssumeRole as STS does it, per-account S3 and EC2, and
launch permissions that reach the other account."""

from __future__ import annotations

import uuid

import boto3
import botocore.exceptions as bexc
import pytest
from botocore.config import Config

from tests.support.bundles import make_fake_bundle
from tests.support.s3kit import put_bundle


def _code(exc: pytest.ExceptionInfo) -> str:
    return str(exc.value.response["Error"]["Code"])


def _name() -> str:
    return f"acct-{uuid.uuid4().hex[:12]}"


def _session(endpoint: str, role_arn: str, region: str = "us-east-1") -> boto3.Session:
    sts = boto3.client("sts", endpoint_url=endpoint, region_name=region,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="test-session")["Credentials"]
    return boto3.Session(aws_access_key_id=creds["AccessKeyId"],
                         aws_secret_access_key=creds["SecretAccessKey"],
                         aws_session_token=creds["SessionToken"], region_name=region)


def _client(session: boto3.Session, service: str, endpoint: str, region: str = "us-east-1"):
    return session.client(service, endpoint_url=endpoint, region_name=region,
                          config=Config(s3={"addressing_style": "path"},
                                        retries={"total_max_attempts": 1}))


@pytest.fixture
def second(endpoint, strict_aws_accounts) -> boto3.Session:
    return _session(endpoint, strict_aws_accounts.role_arn)


def test_assume_role_reaches_the_second_account(endpoint, strict_aws_accounts, second):
    base = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1")
    assert base.get_caller_identity()["Account"] == strict_aws_accounts.base
    ident = _client(second, "sts", endpoint).get_caller_identity()
    assert ident["Account"] == strict_aws_accounts.second
    assert ident["Arn"].endswith(":assumed-role/ami-bundler-publish/test-session")


def test_assume_role_refused_as_sts_refuses(endpoint, strict_aws_accounts):
    sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1")
    second = strict_aws_accounts.second
    for arn in (strict_aws_accounts.untrusted_role_arn,  # exists, trusts nobody
                f"arn:aws:iam::{second}:role/no-such-role",
                "arn:aws:iam::333344445555:role/ami-bundler-publish"):  # an account never seen
        with pytest.raises(bexc.ClientError) as exc:
            sts.assume_role(RoleArn=arn, RoleSessionName="s1")
        assert _code(exc) == "AccessDenied"
        assert f"sts:AssumeRole on resource: {arn}" in str(exc.value)
    role = strict_aws_accounts.role_arn
    for kwargs in ({"RoleSessionName": "bad name"},
                   {"RoleSessionName": "ok", "DurationSeconds": 3601}):
        with pytest.raises(bexc.ClientError) as exc:
            sts.assume_role(RoleArn=role, **kwargs)
        assert _code(exc) == "ValidationError"


def test_external_id_condition(endpoint, strict_aws_accounts):
    arn = strict_aws_accounts.endpoint.make_role(strict_aws_accounts.second, "with-external-id",
                                                 external_id="secret-42")
    sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1")
    for kwargs in ({}, {"ExternalId": "wrong-one"}):
        with pytest.raises(bexc.ClientError) as exc:
            sts.assume_role(RoleArn=arn, RoleSessionName="s1", **kwargs)
        assert _code(exc) == "AccessDenied"
    assert sts.assume_role(RoleArn=arn, RoleSessionName="s1", ExternalId="secret-42")["Credentials"]


def test_buckets_are_global_names_owned_by_one_account(endpoint, s3, second):
    s3b = _client(second, "s3", endpoint)
    mine, theirs = _name(), _name()
    s3.create_bucket(Bucket=mine)
    s3b.create_bucket(Bucket=theirs)
    assert theirs not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert mine not in [b["Name"] for b in s3b.list_buckets()["Buckets"]]
    with pytest.raises(bexc.ClientError) as exc:
        s3b.create_bucket(Bucket=mine)
    assert _code(exc) == "BucketAlreadyExists"
    for call in (lambda: s3b.put_object(Bucket=mine, Key="k", Body=b"x"),
                 lambda: s3b.list_objects_v2(Bucket=mine),
                 lambda: s3b.head_bucket(Bucket=mine),
                 lambda: s3.get_object(Bucket=theirs, Key="k")):
        with pytest.raises(bexc.ClientError) as exc:
            call()
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "Contents" not in s3.list_objects_v2(Bucket=mine)


def test_images_per_account_and_launch_permissions_reach_the_other(
        endpoint, s3, ec2, second, strict_aws_accounts, tmp_path, signing_key):
    ec2b = _client(second, "ec2", endpoint)
    bucket = _name()
    s3.create_bucket(Bucket=bucket, ObjectOwnership="ObjectWriter")
    bundle = make_fake_bundle(tmp_path / "b", "a", [64 * 1024, 20 * 1024], signing_key)
    location = put_bundle(s3, bucket, bundle)
    name = _name()
    image = ec2.register_image(ImageLocation=location, Name=name, TagSpecifications=[
        {"ResourceType": "image", "Tags": [{"Key": "plan", "Value": "web"}]}])["ImageId"]
    try:
        assert image not in [i["ImageId"] for i in ec2b.describe_images(Owners=["self"])["Images"]]
        with pytest.raises(bexc.ClientError) as exc:  # not shared yet: B cannot see it
            ec2b.describe_images(ImageIds=[image])
        assert _code(exc) == "InvalidAMIID.NotFound"
        with pytest.raises(bexc.ClientError) as exc:  # its bucket is not B's either
            _client(second, "s3", endpoint).get_object(Bucket=bucket, Key="img/a.manifest.xml")
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

        ec2.modify_image_attribute(ImageId=image, LaunchPermission={
            "Add": [{"UserId": strict_aws_accounts.second}]})
        seen = ec2b.describe_images(ImageIds=[image])["Images"]
        assert [(i["ImageId"], i["OwnerId"], i["Name"]) for i in seen] == [
            (image, strict_aws_accounts.base, name)]
        assert not seen[0].get("Tags")  # the owner's tags are the owner's
        for scope in ({"ExecutableUsers": ["self"]}, {"Owners": [strict_aws_accounts.base]},
                      {"Filters": [{"Name": "name", "Values": [name]}]}):
            found = ec2b.describe_images(**scope)["Images"]
            assert image in [i["ImageId"] for i in found], scope
        assert image not in [i["ImageId"] for i in ec2b.describe_images(Owners=["self"])["Images"]]
        # B's own view of the plan tag finds nothing: it cannot filter by A's tags
        assert not ec2b.describe_images(Filters=[{"Name": "tag:plan", "Values": ["web"]}])["Images"]
        # other regions and other accounts' deregistration stay apart
        elsewhere = _client(second, "ec2", endpoint, "eu-west-1").describe_images(
            ExecutableUsers=["self"])["Images"]
        assert image not in [i["ImageId"] for i in elsewhere]
        # explicit launch permissions only: not the public catalogue (other tests sharing the
        # stand-in may have shared their own private images with B)
        executable = ec2b.describe_images(ExecutableUsers=["self"])["Images"]
        assert image in [i["ImageId"] for i in executable]
        assert all(not i["Public"] and i["OwnerId"] == strict_aws_accounts.base
                   for i in executable), executable
        with pytest.raises(bexc.ClientError):
            ec2b.deregister_image(ImageId=image)
        ec2.modify_image_attribute(ImageId=image, LaunchPermission={
            "Remove": [{"UserId": strict_aws_accounts.second}]})
        with pytest.raises(bexc.ClientError) as exc:
            ec2b.describe_images(ImageIds=[image])
        assert _code(exc) == "InvalidAMIID.NotFound"
    finally:
        ec2.deregister_image(ImageId=image)


def test_per_account_rules_hold_in_the_second_account(endpoint, second, tmp_path, signing_key):
    """Bucket ownership, RegisterImage's bundle check, image block public access and
    deregistration protection apply in B exactly as in the base account."""
    s3b, ec2b = _client(second, "s3", endpoint), _client(second, "ec2", endpoint)
    enforced = _name()
    s3b.create_bucket(Bucket=enforced)
    with pytest.raises(bexc.ClientError) as exc:
        s3b.put_object(Bucket=enforced, Key="a", Body=b"x", ACL="aws-exec-read")
    assert _code(exc) == "AccessControlListNotSupported"
    bucket = _name()
    s3b.create_bucket(Bucket=bucket, ObjectOwnership="ObjectWriter")
    bundle = make_fake_bundle(tmp_path / "b", "a", [64 * 1024, 20 * 1024], signing_key)
    location = put_bundle(s3b, bucket, bundle, skip_grant=bundle.part_names[1])
    with pytest.raises(bexc.ClientError) as exc:
        ec2b.register_image(ImageLocation=location, Name=_name())
    assert _code(exc) == "InvalidManifest"
    location = put_bundle(s3b, bucket, bundle)
    image = ec2b.register_image(ImageLocation=location, Name=_name())["ImageId"]
    assert ec2b.get_image_block_public_access_state()["ImageBlockPublicAccessState"] == \
        "block-new-sharing"
    with pytest.raises(bexc.ClientError) as exc:
        ec2b.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"Group": "all"}]})
    assert _code(exc) == "OperationNotPermitted"
    ec2b.enable_image_deregistration_protection(ImageId=image)
    with pytest.raises(bexc.ClientError):
        ec2b.deregister_image(ImageId=image)
    ec2b.disable_image_deregistration_protection(ImageId=image)
    ec2b.deregister_image(ImageId=image)
