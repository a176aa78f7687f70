"""A request body's digests checked as S3 checks them, patched into moto's S3 responses (in the
server process). moto stores any body whatever its ``Content-MD5`` or ``x-amz-checksum-*``
header says, so a client whose bytes are damaged on the way (or that sends a wrong digest)
works against moto and fails on S3.

AWS (the error codes of the S3 API reference; PutObject and UploadPart, ``Content-MD5``; "Checking
object integrity"):

* ``Content-MD5`` that is not the base64 of 128 bits (an empty one too) → 400 ``InvalidDigest``,
  "The Content-MD5 you specified was invalid."
* ``Content-MD5`` that is not the MD5 of the body received → 400 ``BadDigest``, "The Content-MD5
  you specified did not match what we received.", with ``ExpectedDigest`` (the hex of what was
  sent) and ``CalculatedDigest`` (the base64 of what was received).
* ``x-amz-checksum-crc32`` / ``-sha1`` / ``-sha256`` that is not the base64 of a digest of its
  size → 400 ``InvalidRequest``, "Value for x-amz-checksum-crc32 header is invalid."; one that
  does not match the body → 400 ``BadDigest``, "The CRC32 you specified did not match the
  calculated checksum." (CRC32C and CRC64NVME are passed on unchecked, as moto does: the
  stand-in's dependencies have neither, and botocore computes them only with awscrt.)

Nothing is stored when a digest is refused. PutObject and UploadPart are checked against the
object's bytes (aws-chunked bodies already decoded by moto); every other bucket-level PUT or POST
with a body (DeleteObjects, PutBucketOwnershipControls, whose ``x-amz-checksum-crc32`` botocore
always sends) against its XML. CompleteMultipartUpload's checksum headers are the whole object's,
not its body's, and CopyObject and UploadPartCopy have no body: moto's as before. Checksums in
an aws-chunked trailer are not checked (botocore sends them only over https, and the stand-in
is http).

CPU: moto computes every stored object's MD5 for its ETag (``FakeKey.etag``, on the first read
of the ETag, i.e. for the PUT's own answer). A body checked against its ``Content-MD5`` is hashed
here once and that digest handed to moto (``known_etag``), so a checked PUT costs the stand-in no
second pass over its bytes (a 10 MiB body: ~14 ms of MD5). ``s3copy`` hands over a copy's known
ETag the same way.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from .s3rules import error_response

BAD_DIGEST = "The Content-MD5 you specified did not match what we received."
INVALID_DIGEST = "The Content-MD5 you specified was invalid."


def _crc32(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


# x-amz-checksum-<name>: (digest size in bytes, the digest of a body).
CHECKSUMS: dict[str, tuple[int, Callable[[bytes], bytes]]] = {
    "crc32": (4, _crc32),
    "sha1": (20, lambda data: hashlib.sha1(data).digest()),
    "sha256": (32, lambda data: hashlib.sha256(data).digest()),
}

Response = tuple[int, dict[str, str], str]

_installed = False
# Within this thread's request: the ETag (hex MD5) the object it stores must get (None: moto's).
_known = threading.local()


@contextlib.contextmanager
def known_etag(etag: str | None) -> Iterator[None]:
    """Within the block, the next object this thread stores (moto's ``put_object``, or an
    UploadPart's piece) gets ``etag`` instead of moto hashing its bytes for it."""
    _known.etag = etag
    try:
        yield
    finally:
        _known.etag = None


def _take_etag() -> str | None:
    etag, _known.etag = getattr(_known, "etag", None), None  # one stored object only
    return etag


def _decoded(value: str, size: int) -> bytes | None:
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == size else None


def check(headers: Any, body: bytes) -> tuple[Response | None, bytes | None]:
    """(S3's refusal or None, the body's MD5 when ``Content-MD5`` made it computed)."""
    md5: bytes | None = None
    sent = headers.get("Content-MD5")
    if sent is not None:
        expected = _decoded(sent, 16)
        if expected is None:
            refused = error_response(400, "InvalidDigest", INVALID_DIGEST, **{"Content-MD5": sent})
            return refused, None
        md5 = hashlib.md5(body).digest()
        if md5 != expected:
            return error_response(400, "BadDigest", BAD_DIGEST, ExpectedDigest=expected.hex(),
                                  CalculatedDigest=base64.b64encode(md5).decode("ascii")), None
    for name, (size, digest) in CHECKSUMS.items():
        value = headers.get(f"x-amz-checksum-{name}")
        if value is None:
            continue
        expected = _decoded(value, size)
        if expected is None:
            return error_response(400, "InvalidRequest",
                                  f"Value for x-amz-checksum-{name} header is invalid."), None
        if digest(body) != expected:
            return error_response(400, "BadDigest", f"The {name.upper()} you specified did not "
                                  "match the calculated checksum."), None
    return None, md5


def _body(resp: Any) -> bytes:
    body = resp.body
    return body if isinstance(body, bytes) else (body or "").encode()


def install() -> None:
    """Patch moto's S3 (idempotent; in the process that runs the server)."""
    global _installed
    if _installed:
        return
    from moto.s3 import responses
    from moto.s3.models import FakeMultipart, S3Backend

    cls = responses.S3Response
    orig_put, orig_part, orig_bucket = cls.put_object, cls.upload_part, cls._bucket_response

    def checked_then(self: Any, store: Any) -> Any:
        """The body refused as S3 refuses it, or stored by moto with the checked MD5 as its
        ETag (hashed once)."""
        refused, md5 = check(self.headers, _body(self))
        if refused is not None:
            return refused
        with known_etag(md5.hex() if md5 is not None else None):
            return store(self)

    @functools.wraps(orig_put)
    def put_object(self: Any) -> Any:
        return checked_then(self, orig_put)

    @functools.wraps(orig_part)
    def upload_part(self: Any) -> Any:
        bucket = self.backend.get_bucket(self.bucket_name)
        if self._get_param("uploadId") not in bucket.multiparts:
            return orig_part(self)  # moto's answer for an upload that does not exist
        return checked_then(self, orig_part)

    @functools.wraps(orig_bucket)
    def _bucket_response(self: Any, request: Any, full_url: str) -> Any:
        if request.method in ("PUT", "POST"):
            body = _body(self)
            if body:
                refused, _ = check(self.headers, body)
                if refused is not None:
                    return refused
        return orig_bucket(self, request, full_url)

    orig_store, orig_set_part = S3Backend.put_object, FakeMultipart.set_part

    @functools.wraps(orig_store)
    def store(self: Any, *args: Any, **kwargs: Any) -> Any:
        etag = _take_etag()
        if etag is not None and kwargs.get("etag") is None:
            kwargs["etag"] = etag
        return orig_store(self, *args, **kwargs)

    @functools.wraps(orig_set_part)
    def set_part(self: Any, part_id: int, value: bytes) -> Any:
        etag = _take_etag()
        key = orig_set_part(self, part_id, value)
        if etag is not None:
            key._etag = etag  # before anything reads it: moto hashes on the first read
        return key

    cls.put_object = put_object
    cls.upload_part = upload_part
    cls._bucket_response = _bucket_response
    S3Backend.put_object = store
    FakeMultipart.set_part = set_part
    _installed = True
