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
    """A client whose CopyObject answers ``resp``."""

    def __init__(self, resp: dict[str, Any]) -> None:
        self.resp = resp

    def copy_object(self, **params: Any) -> dict[str, Any]:
        return self.resp


def copy(resp: dict[str, Any]) -> str:
    return copy_object(Answering(resp), ("src", "a"), "dst", "a", etag=MD5,  # type: ignore[arg-type]
                       attempts=1)


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


def test_plaintext_and_sse_s3_answers_are_md5s():
    assert not says_not_md5({}) and not says_not_md5({"ServerSideEncryption": "AES256"})
