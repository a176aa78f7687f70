"""CopyObject's ETag as S3 documents it, without hashing the copied bytes again.

AWS (the ``ETag`` of an S3 object): an object created by PUT, POST or Copy that is plaintext or
SSE-S3 has an ETag that is the MD5 digest of its data; with SSE-C or SSE-KMS it is not; an
object made by a multipart upload or UploadPartCopy has no MD5 ETag. So the copy of a plaintext
or SSE-S3 object whose ETag is its MD5 has exactly that ETag again. moto computes it by
reading the copy's whole body through MD5 (about 17 ms of the stand-in's one core per 10 MiB
part, most of a copy's cost), which on a 2-core build host competes with the tool it serves.

Here the copy takes the source's ETag when, and only when, AWS's rule makes it that: the source
is neither multipart nor SSE-C/KMS (its ETag, already known, is 32 hex digits), and the copy is
plaintext or SSE-S3. Every other copy is moto's own (it hashes what it stored), so nothing gets
an ETag AWS would not give it.

And an object that fits in moto's memory buffer holds the bytes it is given as they are
(``io.BytesIO`` over that bytes object, which reads them back without copying) instead of
writing them into a new buffer: so a copy neither reads its source into new memory nor writes
that into its own (~6 ms each per 10 MiB part). Bytes are immutable, and a later write to a
buffer gives it memory of its own, so every object stays its own.
"""

from __future__ import annotations

import functools
import io
import re
from typing import Any

from . import s3digests
from .s3digests import known_etag

_MD5 = re.compile(r"^[0-9a-f]{32}$")
PLAIN = (None, "AES256")  # no server-side encryption, or SSE-S3: the ETag is the data's MD5

_installed = False


def known_md5(key: Any) -> str | None:
    """The source object's ETag when it is the MD5 of its data and already computed."""
    etag = getattr(key, "_etag", None)
    if etag is None or getattr(key, "multipart", None) is not None:
        return None
    if getattr(key, "encryption", None) not in PLAIN:
        return None
    if getattr(key, "_metadata", {}).get("x-amz-server-side-encryption-customer-algorithm"):
        return None  # SSE-C (moto keeps the customer-key headers as metadata, if at all)
    etag = str(etag).strip('"').lower()
    return etag if _MD5.match(etag) else None


def copy_encryption(backend: Any, bucket_name: str, encryption: str | None) -> str | None:
    """The copy's server-side encryption: the request's, else the bucket's default."""
    if encryption:
        return encryption
    bucket = backend.get_bucket(bucket_name)
    rule = (bucket.encryption or {}).get("Rule", {})
    return rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")


def install() -> None:
    """Patch moto's S3 backend (idempotent; in the process that runs the server)."""
    global _installed
    if _installed:
        return
    from moto.s3.models import FakeKey, S3Backend

    s3digests.install()  # its put_object takes the ETag handed over (known_etag)
    orig_copy = S3Backend.copy_object

    @functools.wraps(orig_copy)
    def copy_object(self: Any, src_key: Any, dest_bucket_name: str, dest_key_name: str,
                    *args: Any, **kwargs: Any) -> Any:
        etag = known_md5(src_key)
        if etag is not None and copy_encryption(self, dest_bucket_name,
                                                kwargs.get("encryption")) not in PLAIN:
            etag = None
        with known_etag(etag):  # the copy's one put_object
            return orig_copy(self, src_key, dest_bucket_name, dest_key_name, *args, **kwargs)

    orig_value = FakeKey.value

    def set_value(self: Any, new_value: Any) -> None:
        buffer = self._value_buffer
        if (not isinstance(new_value, bytes) or len(new_value) > self._max_buffer_size
                or getattr(buffer, "_rolled", True) or not hasattr(buffer, "_file")):
            orig_value.fset(self, new_value)  # a file on disk, or not bytes: moto's own way
            return
        buffer._file = io.BytesIO(new_value)  # the bytes themselves, until written to
        self.contentsize = len(new_value)

    S3Backend.copy_object = copy_object
    FakeKey.value = property(orig_value.fget, set_value)
    _installed = True
