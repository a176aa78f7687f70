"""One translation of boto errors: a boto failure leaves a block as one of our errors (no
botocore chain), our own errors pass unchanged, and "not found" means the same codes everywhere."""

from __future__ import annotations

import botocore.exceptions as bexc
import pytest

from bundler.aws import NO_SUCH_BUCKET, NO_SUCH_OBJECT, ec2_errors, is_not_found, translate_errors
from bundler.ec2 import describe_image
from bundler.errors import EC2Error, PartMissingError, S3Error, UsageError
from bundler.s3.buckets import bucket_region
from bundler.s3.objects import object_exists, s3_errors


def client_error(code: str, op: str = "HeadObject", status: int = 400) -> bexc.ClientError:
    return bexc.ClientError({"Error": {"Code": code, "Message": f"{code} happened"},
                             "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}}}, op)


def test_a_boto_error_leaves_the_block_translated_without_its_chain():
    with pytest.raises(S3Error) as info:
        with translate_errors(lambda exc: S3Error(f"translated {type(exc).__name__}")):
            raise bexc.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert str(info.value) == "translated EndpointConnectionError"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_our_own_errors_and_others_pass_unchanged():
    with pytest.raises(UsageError, match="mine"):
        with s3_errors("upload", "bucket", "key"):
            raise UsageError("mine")
    with pytest.raises(KeyError):
        with ec2_errors("describe"):
            raise KeyError("x")


@pytest.mark.parametrize("code", ["NoSuchKey", "404", "NotFound"])
def test_not_found_codes_are_named_once(code):
    assert is_not_found(client_error(code))
    assert code in NO_SUCH_OBJECT


def test_no_such_bucket_is_not_a_missing_object():
    assert "NoSuchBucket" in NO_SUCH_BUCKET and "NoSuchBucket" not in NO_SUCH_OBJECT
    assert not is_not_found(client_error("NoSuchBucket"))


class FakeS3:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.meta = type("Meta", (), {"region_name": "us-east-1"})()

    def head_object(self, **kw):
        raise self.exc

    def head_bucket(self, **kw):
        raise self.exc


def test_s3_calls_share_the_translation():
    assert object_exists(FakeS3(client_error("404")), "b", "k") is False
    with pytest.raises(S3Error, match="access denied"):
        object_exists(FakeS3(client_error("AccessDenied", status=403)), "b", "k")
    with pytest.raises(S3Error, match="connection failed"):
        object_exists(FakeS3(bexc.ReadTimeoutError(endpoint_url="http://x")), "b", "k")
    assert bucket_region(FakeS3(client_error("NoSuchBucket")), "b") is None
    with pytest.raises(PartMissingError):
        with s3_errors("download", "b", "k"):
            raise client_error("NoSuchKey", "GetObject")


class FakeEc2:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def describe_images(self, **kw):
        raise self.exc


def test_ec2_calls_share_the_translation():
    with pytest.raises(EC2Error, match="not found in this region"):
        describe_image(FakeEc2(client_error("InvalidAMIID.NotFound")), "ami-1")
    with pytest.raises(EC2Error, match="access denied"):
        describe_image(FakeEc2(client_error("UnauthorizedOperation")), "ami-1")
    with pytest.raises(EC2Error, match="rejected the credentials"):
        describe_image(FakeEc2(client_error("AuthFailure")), "ami-1")
