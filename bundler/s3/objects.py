"""Single-object S3 calls: retries with back-off, error translation, PUT/GET/COPY/DELETE/list."""

from __future__ import annotations

import base64
import hashlib
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions as bexc

from ..aws import (
    NO_SUCH_BUCKET,
    NO_SUCH_OBJECT,
    common_error,
    error_code,
    is_not_found,
    response_header,
    translate_errors,
)
from ..errors import BundlerError, IntegrityError, ManifestError, PartMissingError, S3Error
from ..manifest import MAX_MANIFEST_BYTES, PartEntry
from ..parts import MAX_PART_BYTES as MAX_PART_BYTES

# The transfer defaults are owned by bundler.transfer; re-exported for the S3 modules.
from ..transfer import ACLS as ACLS
from ..transfer import DEFAULT_ACL as DEFAULT_ACL
from ..transfer import DEFAULT_ATTEMPTS as DEFAULT_ATTEMPTS
from ..transfer import DEFAULT_JOBS as DEFAULT_JOBS
from ..transfer import RETRY_ATTEMPTS as RETRY_ATTEMPTS
from .etags import says_not_md5

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef

log = logging.getLogger("bundler.s3")


# ACLs that make objects public: Block Public Access refuses them.
PUBLIC_ACLS = ("public-read", "public-read-write", "authenticated-read")
# The size caps are the manifest's and the parts' own (one owner each).
MANIFEST_SIZE_CAP = MAX_MANIFEST_BYTES
DELETE_BATCH = 1000
_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 10.0
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
# Errors worth another whole-object attempt after botocore's own retries: the bytes got
# damaged on the way (BadDigest) or the service was briefly unhappy.
_RETRYABLE_CODES = {"BadDigest", "InvalidDigest", "RequestTimeout", "InternalError", "SlowDown",
                    "ServiceUnavailable", "503", "500", "RequestTimeTooSkewed",
                    "XAmzContentSHA256Mismatch"}
T = TypeVar("T")


class _Corrupt(Exception):
    """An object's bytes did not match the digest we expected; retried, then IntegrityError."""


class _ShortBody(_Corrupt):
    """The connection delivered fewer bytes than Content-Length (closed early); retried."""


def acls_disabled(bucket: str, acl: str | None) -> str:
    """Why a bucket with ACLs disabled cannot hold a bundle, and the exact fix."""
    return (f"bucket {bucket} has ACLs disabled (Object Ownership BucketOwnerEnforced) but EC2 "
            f"reads bundles through the {acl or DEFAULT_ACL} ACL: run `aws s3api "
            f"put-bucket-ownership-controls --bucket {bucket} "
            "--ownership-controls 'Rules=[{ObjectOwnership=BucketOwnerPreferred}]'` or pass "
            "--enable-bucket-acls")


def public_blocked(bucket: str, acl: str) -> str:
    return (f"Block Public Access on bucket {bucket} (or on the account) refuses --acl {acl}: keep "
            f"the default --acl {DEFAULT_ACL} and share the AMI with --launch-permission, or lift "
            f"it with `aws s3api delete-public-access-block --bucket {bucket}`")


def s3_error(exc: BaseException, action: str, bucket: str, key: str | None = None, *,
             acl: str | None = None) -> BundlerError:
    """One actionable line for a failed S3 call; never includes credentials."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    what = f"{action} {where}"
    if isinstance(exc, BundlerError):
        return exc
    common = common_error(exc, what)
    if common is not None:
        return common
    if not isinstance(exc, bexc.ClientError):
        return S3Error(f"{what} failed: {' '.join(str(exc).split()) or type(exc).__name__}")
    code = error_code(exc)
    message = " ".join(str(exc.response.get("Error", {}).get("Message", "")).split())
    region = (response_header(exc, "x-amz-bucket-region")
              or exc.response.get("Error", {}).get("Region"))
    if code == "NoSuchBucket" or (code in NO_SUCH_BUCKET and key is None):
        return S3Error(f"{what}: bucket {bucket} does not exist (check -b, or "
                       "--region/--endpoint-url)")
    if code == "AccessControlListNotSupported":
        return S3Error(f"{what}: {acls_disabled(bucket, acl)}")
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed",
                "IllegalLocationConstraintException", "301", "400") and region:
        return S3Error(f"{what}: bucket {bucket} is in region {region}: pass --region {region}")
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        if acl in PUBLIC_ACLS:
            return S3Error(f"{what}: access denied: {public_blocked(bucket, acl)}, or the "
                           f"credentials lack s3:PutObjectAcl on arn:aws:s3:::{bucket}/*")
        if acl:
            return S3Error(f"{what}: access denied: the credentials need s3:PutObject and "
                           f"s3:PutObjectAcl (for --acl {acl}) on arn:aws:s3:::{bucket}/*")
        return S3Error(f"{what}: access denied: check that the credentials' IAM policy allows it "
                       f"on {bucket}")
    if code in NO_SUCH_OBJECT:
        return PartMissingError(f"{what}: no such object")
    if code in ("BadDigest", "InvalidDigest"):
        return IntegrityError(f"{what}: S3 kept rejecting the upload as corrupt ({code}): check "
                              "memory/network")
    return S3Error(f"{what} failed: {code}: {message}" if message else f"{what} failed: {code}")


def s3_errors(action: str, bucket: str, key: str | None = None, *,
              acl: str | None = None) -> AbstractContextManager[None]:
    """``aws.translate_errors`` for S3 calls: a boto failure in the block becomes ``s3_error``."""
    return translate_errors(lambda exc: s3_error(exc, action, bucket, key, acl=acl))


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _Corrupt):
        return True
    if isinstance(exc, bexc.ClientError):
        return error_code(exc) in _RETRYABLE_CODES
    return isinstance(exc,
                      (bexc.ConnectionError, bexc.ReadTimeoutError, bexc.ResponseStreamingError,
                            bexc.IncompleteReadError))


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** attempt))


def with_attempts(fn: Callable[[], T], attempts: int, describe: str) -> T:
    """Whole-object retries on top of botocore's per-request ones, with full-jitter back-off."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt >= attempts or not _retryable(exc):
                raise
            delay = _backoff(attempt)
            reason = (str(exc) if isinstance(exc, _Corrupt)
                      else error_code(exc) or type(exc).__name__)
            log.warning("%s: %s; retrying in %.1fs (attempt %d of %d)", describe, reason,
                        delay, attempt + 1, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")


def list_objects(client: S3Client, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """key → (size, ETag without quotes) for every key under ``prefix``, across all pages."""
    def attempt() -> dict[str, tuple[int, str]]:
        found: dict[str, tuple[int, str]] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = (int(obj["Size"]), str(obj.get("ETag", "")).strip('"').lower())
        return found

    with s3_errors("list", bucket, prefix or None):
        # A listing decides what is skipped and what gets published: worth whole-call retries
        # on top of botocore's, like every object transfer.
        return with_attempts(attempt, DEFAULT_ATTEMPTS, f"list s3://{bucket}/{prefix}")


def put_bytes(client: S3Client, bucket: str, key: str, data: bytes, *, md5: bytes | None = None,
              acl: str | None = DEFAULT_ACL, attempts: int = DEFAULT_ATTEMPTS) -> str:
    """One PUT with Content-MD5 and the canned ACL; returns the ETag (== hex MD5)."""
    md5 = md5 or hashlib.md5(data).digest()
    content_md5 = base64.b64encode(md5).decode("ascii")
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data, "ContentMD5": content_md5}
    if acl:
        params["ACL"] = acl

    def attempt() -> str:
        resp = client.put_object(**params)
        etag = str(resp.get("ETag", "")).strip('"').lower()
        # SSE-KMS/SSE-C objects have a non-MD5 ETag; S3 has already checked Content-MD5 then.
        # A single PUT never has a multipart ("-N") ETag, so one here is as wrong as any other.
        if etag != md5.hex() and not says_not_md5(resp):
            raise _Corrupt(f"ETag {etag} is not the MD5 {md5.hex()} of what was sent")
        return etag

    with s3_errors("upload", bucket, key, acl=acl):
        try:
            return with_attempts(attempt, attempts, f"upload s3://{bucket}/{key}")
        except _Corrupt as exc:
            raise IntegrityError(f"upload s3://{bucket}/{key}: {exc}; check "
                                 "memory/network") from None


# A body is read in pieces of this size: each read allocates only its own piece, where one
# read of the whole (a part of 10 MiB) would allocate it twice (http.client's buffer and
# the bytes copied out of it) for every download in flight.
BODY_PIECE = 1 << 20


def _get_pieces(client: S3Client, bucket: str, key: str, limit: int,
                what: str) -> tuple[GetObjectOutputTypeDef, list[bytes]]:
    """GetObject and read the body in pieces; botocore/transport exceptions propagate
    untranslated so that ``with_attempts`` can retry a reset or truncated body. A body shorter
    than its Content-Length is a retryable ``_ShortBody`` even when the connection closed
    cleanly."""
    resp = client.get_object(Bucket=bucket, Key=key)
    body = resp["Body"]
    pieces: list[bytes] = []
    got = 0
    try:
        length = int(resp.get("ContentLength", -1))
        if length > limit:
            raise IntegrityError(f"{what} s3://{bucket}/{key} is {length} bytes, more than the "
                                 f"{limit}-byte limit")
        want = limit + 1 if length < 0 else length
        try:
            while got < want and (piece := body.read(min(BODY_PIECE, want - got))):
                pieces.append(piece)
                got += len(piece)
            if length >= 0 and got == length and body.read(1):
                got += 1  # more than Content-Length said: as wrong as less
        except bexc.IncompleteReadError:
            pass  # botocore's own length check on an early end: reported below, as one
    finally:
        body.close()
    if got > limit:
        raise IntegrityError(f"{what} s3://{bucket}/{key} is larger than the {limit}-byte limit")
    if 0 <= length != got:
        raise _ShortBody(f"got {got} of {length} bytes")
    return resp, pieces


def _get_raw(client: S3Client, bucket: str, key: str, limit: int, what: str, *,
             check_md5: bool = False) -> bytes:
    """``_get_pieces`` joined; with ``check_md5`` the body's MD5 must be the object's ETag
    (single-PUT objects without SSE-KMS/C), which catches bytes damaged in transit for objects
    that, unlike parts, have no digest of their own to check."""
    resp, pieces = _get_pieces(client, bucket, key, limit, what)
    data = b"".join(pieces)
    if check_md5:
        etag = str(resp.get("ETag", "")).strip('"').lower()
        if (_MD5_ETAG.match(etag) and not says_not_md5(resp)
                and hashlib.md5(data).hexdigest() != etag):
            raise _Corrupt(f"MD5 {hashlib.md5(data).hexdigest()} of the bytes received is not the "
                           f"ETag {etag}")
    return data


def _translate_get(exc: BaseException, bucket: str, key: str, what: str) -> BundlerError:
    if is_not_found(exc, NO_SUCH_OBJECT):
        return PartMissingError(f"{what} s3://{bucket}/{key} does not exist")
    return s3_error(exc, "download", bucket, key)


def get_bytes(client: S3Client, bucket: str, key: str, *, limit: int, what: str = "object",
              attempts: int = DEFAULT_ATTEMPTS) -> bytes:
    """An object's bytes, checked against its length and (when it is one) its MD5 ETag."""
    with translate_errors(lambda exc: _translate_get(exc, bucket, key, what)):
        try:
            return with_attempts(lambda: _get_raw(client, bucket, key, limit, what, check_md5=True),
                                  max(2, attempts), f"download s3://{bucket}/{key}")
        except _Corrupt as exc:
            raise IntegrityError(f"download {what} s3://{bucket}/{key}: kept arriving damaged "
                                 f"({exc}): "
                                 "check the network and re-run") from None


def fetch_manifest(client: S3Client, bucket: str, key: str, *,
                   cap: int = MANIFEST_SIZE_CAP) -> bytes:
    """The manifest object's bytes (capped: a manifest is a few KiB; anything huge is hostile)."""
    try:
        return get_bytes(client, bucket, key, limit=cap, what="manifest")
    except PartMissingError:
        raise ManifestError(f"manifest s3://{bucket}/{key} does not exist: check -b/-m/-p "
                            "(the manifest is uploaded last; an interrupted upload has "
                            "none)") from None
    except IntegrityError as exc:
        raise ManifestError(str(exc)) from None


def fetch_part(client: S3Client, bucket: str, key: str, entry: PartEntry, attempts: int) -> bytes:
    """A part's bytes, SHA-1 checked against the manifest; at least one retry on mismatch."""
    return b"".join(fetch_part_pieces(client, bucket, key, entry, attempts))


def fetch_part_pieces(client: S3Client, bucket: str, key: str, entry: PartEntry,
                      attempts: int) -> list[bytes]:
    """``fetch_part`` as the pieces the body was read in (never copied into one buffer)."""
    what = f"part {entry.filename}"

    def attempt() -> list[bytes]:
        _, pieces = _get_pieces(client, bucket, key, MAX_PART_BYTES, what)
        sha1 = hashlib.sha1()
        for piece in pieces:
            sha1.update(piece)
        digest = sha1.hexdigest()
        if digest != entry.digest.lower():
            raise _Corrupt(f"SHA-1 {digest}, manifest says {entry.digest}")
        return pieces

    def translate(exc: BaseException) -> BundlerError:
        if is_not_found(exc, NO_SUCH_OBJECT):
            prefix = key[: len(key) - len(entry.filename)]
            return PartMissingError(f"part {entry.filename} (index {entry.index}) is missing from "
                                    f"s3://{bucket}/{prefix}")
        return _translate_get(exc, bucket, key, what)

    with translate_errors(translate):
        return _fetch_checked(attempt, attempts, bucket, key, entry, what)


def _fetch_checked(attempt: Callable[[], T], attempts: int, bucket: str, key: str,
                   entry: PartEntry, what: str) -> T:
    try:
        return with_attempts(attempt, max(2, attempts), f"download {what}")
    except _ShortBody as exc:
        raise IntegrityError(f"download {what} s3://{bucket}/{key}: the connection kept closing "
                             f"early ({exc}): "
                             "check the network and re-run") from None
    except _Corrupt as exc:
        raise IntegrityError(f"part {entry.filename} (index {entry.index}) in s3://{bucket}/{key} "
                             f"does not match the manifest: {exc}; the bundle in S3 is damaged or "
                             "from another bundle: re-upload it") from None


def object_exists(client: S3Client, bucket: str, key: str) -> bool:
    with s3_errors("check", bucket, key):
        try:
            client.head_object(Bucket=bucket, Key=key)
        except bexc.ClientError as exc:
            if is_not_found(exc, NO_SUCH_OBJECT):
                return False
            raise
    return True


def copy_object(client: S3Client, source: tuple[str, str], bucket: str, key: str, *,
                etag: str | None,
                acl: str | None = DEFAULT_ACL, attempts: int = DEFAULT_ATTEMPTS) -> str:
    """Server-side CopyObject (sent to the destination's endpoint) with the canned ACL; the copy's
    ETag must equal the source's (both are the MD5 of a single-PUT part) unless S3 answers that
    the copy is SSE-KMS/SSE-C encrypted (a KMS bucket's default): its ETag is then no MD5 and
    proves nothing either way (``etags.says_not_md5``). A plaintext copy's ETag is its MD5; when
    it is not the source's, the source's was no MD5 only if the source is SSE-KMS/SSE-C (a copy
    out of a KMS bucket): one HEAD of the source decides, else the copy is refused. Returns the
    copy's ETag."""
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "MetadataDirective": "COPY",
                              "CopySource": {"Bucket": source[0], "Key": source[1]}}
    if acl:
        params["ACL"] = acl

    def attempt() -> str:
        resp = client.copy_object(**params)
        got = str(resp.get("CopyObjectResult", {}).get("ETag", "")).strip('"').lower()
        if (etag and got and "-" not in etag and got != etag and not says_not_md5(resp)
                and not _source_not_md5(client, source)):
            raise _Corrupt(f"copy has ETag {got}, source has {etag}")
        return got

    with s3_errors("copy to", bucket, key, acl=acl):
        try:
            return with_attempts(attempt, attempts,
                                 f"copy s3://{source[0]}/{source[1]} to s3://{bucket}/{key}")
        except _Corrupt as exc:
            raise IntegrityError(f"copy to s3://{bucket}/{key}: {exc}") from None
        except bexc.ClientError as exc:
            if is_not_found(exc, NO_SUCH_OBJECT):
                raise PartMissingError(f"copy source s3://{source[0]}/{source[1]} does not "
                                       "exist") from None
            raise


def _source_not_md5(client: S3Client, source: tuple[str, str]) -> bool:
    """Whether the copy source's ETag is no MD5 (SSE-KMS/SSE-C), as its HEAD says; not proved
    (any failure) is False."""
    try:
        head = client.head_object(Bucket=source[0], Key=source[1])
    except (bexc.BotoCoreError, bexc.ClientError):
        return False
    return says_not_md5(head)


def delete_keys(client: S3Client, bucket: str, keys: Sequence[str], *,
                attempts: int = DEFAULT_ATTEMPTS) -> int:
    """DeleteObjects in batches of 1000; per-key failures are reported, not ignored."""
    deleted = 0
    for start in range(0, len(keys), DELETE_BATCH):
        batch = list(keys[start:start + DELETE_BATCH])

        def attempt(batch: list[str] = batch) -> Any:
            return client.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": k} for k in batch], "Quiet": True})

        with s3_errors("delete from", bucket):
            resp = with_attempts(attempt, attempts, f"delete from s3://{bucket}")
        errors = resp.get("Errors", [])
        if errors:
            first = errors[0]
            raise S3Error(f"could not delete {len(errors)} object(s) from s3://{bucket}, e.g. "
                          f"{first.get('Key')}: {first.get('Code')} "
                          f"{first.get('Message', '')}".rstrip())
        deleted += len(batch)
    return deleted
