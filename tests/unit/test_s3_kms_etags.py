"""The ETag checks of CopyObject: a plaintext copy must carry its source's MD5; a copy S3 says
is SSE-KMS/DSSE-KMS/SSE-C encrypted has an ETag that proves nothing and is taken as it is."""

from __future__ import annotations

from typing import Any

import pytest

from bundler.errors import IntegrityError
from bundler.s3.etags import says_not_md5
from bundler.s3.objects import copy_object

MD5 = "0" * 31 + "1"
OTHER = "f" * 32


class Answering:
    """A client whose CopyObject answers ``resp`` and whose HEAD of the source ``head``."""

    def __init__(self, resp: dict[str, Any], head: dict[str, Any] | None = None) -> None:
        self.resp, self.head = resp, head or {}
        self.heads = 0

    def copy_object(self, **params: Any) -> dict[str, Any]:
        return self.resp

    def head_object(self, **params: Any) -> dict[str, Any]:
        assert params == {"Bucket": "src", "Key": "a"}
        self.heads += 1
        return self.head


def copy(resp: dict[str, Any], head: dict[str, Any] | None = None) -> str:
    return copy_object(Answering(resp, head), ("src", "a"), "dst", "a",  # type: ignore[arg-type]
                       etag=MD5, attempts=1)


def test_a_plaintext_copy_with_another_etag_is_refused():
    for sse in ({}, {"ServerSideEncryption": "AES256"}):
        with pytest.raises(IntegrityError, match=f"copy has ETag {OTHER}, source has {MD5}"):
            copy({"CopyObjectResult": {"ETag": f'"{OTHER}"'}, **sse})
    assert copy({"CopyObjectResult": {"ETag": f'"{MD5}"'}}) == MD5


@pytest.mark.parametrize("sse", [{"ServerSideEncryption": "aws:kms"},
                                 {"ServerSideEncryption": "aws:kms:dsse"},
                                 {"SSECustomerAlgorithm": "AES256"}])
def test_an_encrypted_copy_answers_an_etag_that_proves_nothing(sse):
    assert says_not_md5(sse)
    assert copy({"CopyObjectResult": {"ETag": f'"{OTHER}"'}, **sse}) == OTHER


def test_a_plaintext_copy_of_a_kms_source_is_taken_with_its_md5():
    # The source's listed ETag (MD5 here) was no MD5 when its HEAD says KMS: the copy's is.
    client = Answering({"CopyObjectResult": {"ETag": f'"{OTHER}"'}},
                       {"ServerSideEncryption": "aws:kms"})
    assert copy_object(client, ("src", "a"), "dst", "a", etag=MD5,  # type: ignore[arg-type]
                       attempts=1) == OTHER
    assert client.heads == 1
    with pytest.raises(IntegrityError, match="copy has ETag"):
        copy({"CopyObjectResult": {"ETag": f'"{OTHER}"'}}, {"ServerSideEncryption": "AES256"})


def test_plaintext_and_sse_s3_answers_are_md5s():
    assert not says_not_md5({}) and not says_not_md5({"ServerSideEncryption": "AES256"})
