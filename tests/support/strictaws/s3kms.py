"""SSE-KMS objects' ETags as AWS gives them: not the MD5 of their data.

AWS (the ``ETag`` of an S3 object, "Checking object integrity"): an object created by PUT, POST
or Copy that is plaintext or SSE-S3 has an ETag that is the MD5 digest of its data; one stored
with SSE-KMS or DSSE-KMS (asked for by the request, or by the bucket's default encryption) or
SSE-C has not; neither have the pieces (UploadPart) of such a multipart upload. moto gives every
object the MD5 of its data, so a tool that takes any 32-hex ETag for an MD5 works against moto
and fails on AWS in every enterprise bucket whose default encryption is aws:kms.

Here an object stored KMS-encrypted gets a deterministic ETag that is not its MD5 (the MD5 of a
KMS-specific prefix and the data; a multipart object keeps its ``-N`` form over its pieces'
such ETags), and moto's bucket-default encryption also reaches multipart uploads (their
pieces, and the ``x-amz-server-side-encryption`` answer of UploadPart and
CompleteMultipartUpload), as on AWS. PUT, CopyObject and HEAD/GET already answer
``x-amz-server-side-encryption: aws:kms`` from moto for such objects.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

KMS = ("aws:kms", "aws:kms:dsse")
_PREFIX = b"strictaws sse-kms etag\0"

_installed = False


def kms_etag(data: bytes) -> str:
    """The stand-in's ETag for KMS-encrypted ``data``: 32 hex digits, never its MD5."""
    return hashlib.md5(_PREFIX + data).hexdigest()


def bucket_default(bucket: Any) -> tuple[str | None, str | None]:
    """The bucket's default (SSEAlgorithm, KMSMasterKeyID)."""
    rule = ((bucket.encryption or {}).get("Rule", {})
            .get("ApplyServerSideEncryptionByDefault", {}))
    return rule.get("SSEAlgorithm"), rule.get("KMSMasterKeyID")


def install() -> None:
    """Patch moto's S3 backend (idempotent; in the process that runs the server)."""
    global _installed
    if _installed:
        return
    from moto.s3.models import FakeMultipart, S3Backend

    orig_put = S3Backend.put_object
    orig_create = S3Backend.create_multipart_upload
    orig_set_part = FakeMultipart.set_part

    @functools.wraps(orig_put)
    def put_object(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = orig_put(self, *args, **kwargs)
        # A completed multipart upload comes with its "-N" ETag over its pieces' (already KMS)
        # ETags: kept. Anything else (a PUT, a copy — also of a multipart source) is one object.
        if key.encryption in KMS and "-" not in str(kwargs.get("etag") or ""):
            key._etag = kms_etag(key.value)
        return key

    @functools.wraps(orig_create)
    def create_multipart_upload(self: Any, bucket_name: str, key_name: str, metadata: Any,
                                storage_type: str, tags: Any, acl: Any,
                                sse_encryption: str | None, kms_key_id: str | None) -> Any:
        if not sse_encryption:
            sse_encryption, default_key = bucket_default(self.get_bucket(bucket_name))
            kms_key_id = kms_key_id or default_key
        return orig_create(self, bucket_name, key_name, metadata, storage_type, tags, acl,
                           sse_encryption, kms_key_id)

    @functools.wraps(orig_set_part)
    def set_part(self: Any, part_id: int, value: bytes) -> Any:
        key = orig_set_part(self, part_id, value)
        if self.sse_encryption in KMS:
            key._etag = kms_etag(key.value)
        return key

    S3Backend.put_object = put_object
    S3Backend.create_multipart_upload = create_multipart_upload
    FakeMultipart.set_part = set_part
    _installed = True
