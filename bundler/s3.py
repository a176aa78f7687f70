"""Bundles in S3: parallel upload with resume, streaming sink and source, download, delete.

Layout and order follow spec §6: keys are ``keyprefix + file name``, every object gets the
canned ACL ``aws-exec-read`` (EC2 must read them), parts go up before the manifest so that a
visible manifest always means a complete bundle. Parts are ≤ 10 MiB, so every object is one
PUT with Content-MD5 and its ETag is the MD5 of the bytes — which is what makes resume cheap:
one listing tells which parts are already there intact.

Transfers run on a bounded thread pool (boto3 clients are thread-safe); botocore retries
throttling, 5xx and connection errors, and ``_with_attempts`` adds a few whole-object retries
with jittered back-off for what botocore does not retry (BadDigest, a wrong ETag or SHA-1).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import botocore.exceptions as bexc

from .aws import common_error, error_code, response_header
from .errors import (
    BundlerError,
    IntegrityError,
    ManifestError,
    OutputError,
    PartMissingError,
    S3Error,
    UsageError,
)
from .manifest import ParsedManifest, PartEntry, bucket_and_prefix, is_encrypted, parse_manifest
from .parts import PART_SIZE, Part, pid_alive, provisional_name
from .progress import NULL_PROGRESS, ProgressListener

log = logging.getLogger("bundler.s3")

DEFAULT_ACL = "aws-exec-read"
ACLS = ("aws-exec-read", "public-read")
DEFAULT_JOBS = 8
DEFAULT_ATTEMPTS = 3
RETRY_ATTEMPTS = 5  # classic --retry: up to 5 tries per object
MANIFEST_SIZE_CAP = 16 * 1024 * 1024
MAX_PART_BYTES = 64 * 1024 * 1024  # classic parts are 10 MiB; anything far larger is not a part
DELETE_BATCH = 1000
_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 10.0

_PART_SUFFIX = re.compile(r"^\.part\.[0-9]+$")
_MANIFEST_SUFFIX = re.compile(r"^\.manifest(\.xml)?$")
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
# NAME.ami-bundler-lock under the prefix: the lease an upload of NAME holds (see UploadLock).
LOCK_SUFFIX = ".ami-bundler-lock"
LOCK_STALE_SECONDS = 300.0
# Errors worth another whole-object attempt after botocore's own retries: the bytes got
# damaged on the way (BadDigest) or the service was briefly unhappy.
_RETRYABLE_CODES = {"BadDigest", "InvalidDigest", "RequestTimeout", "InternalError", "SlowDown",
                    "ServiceUnavailable", "503", "500", "RequestTimeTooSkewed", "XAmzContentSHA256Mismatch"}

T = TypeVar("T")


class BucketLocationError(S3Error):
    """The bucket exists in another location than --location asked for (classic exit 10)."""

    exit_code = 10


class _Corrupt(Exception):
    """An object's bytes did not match the digest we expected; retried, then IntegrityError."""


class _ShortBody(_Corrupt):
    """The connection delivered fewer bytes than Content-Length (closed early); retried."""


class ConcurrentUploadError(S3Error):
    """Another run is writing the same bundle name into the same prefix."""


# --------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix ("" or ending in "/")."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, value: str | None, flag: str = "-b/--bucket") -> S3Location:
        if value is None or not value.strip().strip("/"):
            raise UsageError(f"{flag} needs BUCKET[/PREFIX], got {value!r}")
        if value.startswith("s3://"):
            value = value[5:]
        bucket, prefix = bucket_and_prefix(value)
        return cls(bucket, prefix)

    def key(self, name: str) -> str:
        return self.prefix + name

    def url(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def image_location(self, manifest_name: str) -> str:
        """What RegisterImage wants (spec §6.1): BUCKET/KEYPREFIX + manifest name."""
        return f"{self.bucket}/{self.prefix}{manifest_name}"


def split_manifest_location(value: str) -> tuple[S3Location, str]:
    """``[s3://]BUCKET/[PREFIX/]NAME.manifest.xml`` → (location, manifest name)."""
    text = value[5:] if value.startswith("s3://") else value
    text = text.strip()
    head, sep, name = text.lstrip("/").rpartition("/")
    if not sep or not head or not name:
        raise UsageError(f"manifest location {value!r} must be BUCKET/[PREFIX/]NAME.manifest.xml")
    if not name.endswith(".manifest.xml"):
        raise UsageError(f"manifest location {value!r} does not end in .manifest.xml")
    bucket, prefix = bucket_and_prefix(head)
    return S3Location(bucket, prefix), name


# --------------------------------------------------------------------------- errors


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
    region = response_header(exc, "x-amz-bucket-region") or exc.response.get("Error", {}).get("Region")
    if code == "NoSuchBucket" or (code in ("404", "NotFound") and key is None):
        return S3Error(f"{what}: bucket {bucket} does not exist (check -b, or --region/--endpoint-url)")
    if code == "AccessControlListNotSupported":
        return S3Error(
            f"{what}: the bucket has ACLs disabled (Object Ownership: BucketOwnerEnforced) but EC2 needs "
            f"{acl or DEFAULT_ACL}: enable ACLs on the bucket (Object Ownership: ObjectWriter or BucketOwnerPreferred)"
        )
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
                "301", "400") and region:
        return S3Error(f"{what}: bucket {bucket} is in region {region}: pass --region {region}")
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        if acl:
            return S3Error(f"{what}: access denied: the credentials need s3:PutObject and s3:PutObjectAcl "
                           f"(for --acl {acl}) on arn:aws:s3:::{bucket}/*")
        return S3Error(f"{what}: access denied: check that the credentials' IAM policy allows it on {bucket}")
    if code in ("NoSuchKey", "404", "NotFound"):
        return PartMissingError(f"{what}: no such object")
    if code in ("BadDigest", "InvalidDigest"):
        return IntegrityError(f"{what}: S3 kept rejecting the upload as corrupt ({code}): check memory/network")
    return S3Error(f"{what} failed: {code}: {message}" if message else f"{what} failed: {code}")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _Corrupt):
        return True
    if isinstance(exc, bexc.ClientError):
        return error_code(exc) in _RETRYABLE_CODES
    return isinstance(exc, (bexc.ConnectionError, bexc.ReadTimeoutError, bexc.ResponseStreamingError,
                            bexc.IncompleteReadError))


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** attempt))


def _with_attempts(fn: Callable[[], T], attempts: int, describe: str) -> T:
    """Whole-object retries on top of botocore's per-request ones, with full-jitter back-off."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt >= attempts or not _retryable(exc):
                raise
            delay = _backoff(attempt)
            reason = str(exc) if isinstance(exc, _Corrupt) else error_code(exc) or type(exc).__name__
            log.warning("%s: %s; retrying in %.1fs (attempt %d of %d)", describe, reason,
                        delay, attempt + 1, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- buckets


def bucket_region(client: Any, bucket: str) -> str | None:
    """The bucket's region, or None if it does not exist."""
    try:
        resp = _with_attempts(lambda: client.head_bucket(Bucket=bucket), DEFAULT_ATTEMPTS, f"check s3://{bucket}")
    except bexc.ClientError as exc:
        code = error_code(exc)
        region = response_header(exc, "x-amz-bucket-region")
        if code in ("404", "NoSuchBucket", "NotFound"):
            return None
        if region:  # a 301/400/403 still names the region
            if code in ("403", "AccessDenied"):
                log.info("no s3:ListBucket on %s; assuming it exists in %s", bucket, region)
            return region
        raise s3_error(exc, "check bucket", bucket) from None
    except bexc.BotoCoreError as exc:
        raise s3_error(exc, "check bucket", bucket) from None
    headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return resp.get("BucketRegion") or headers.get("x-amz-bucket-region") or client.meta.region_name


def location_region(location: str) -> str:
    """Classic --location values: EU → eu-west-1, US → us-east-1, otherwise a region name."""
    upper = location.upper()
    if upper == "EU":
        return "eu-west-1"
    if upper == "US":
        return "us-east-1"
    from .aws import check_region

    return check_region(location, "--location")


def ensure_bucket(client: Any, bucket: str, *, location: str | None = None) -> bool:
    """Create ``bucket`` if missing (LocationConstraint per spec §6.2); True when created.

    An existing bucket in another place than an explicit --location is refused (classic exit 10).
    """
    region = bucket_region(client, bucket)
    wanted = location_region(location) if location else None
    if region is not None:
        if wanted and region != wanted:
            raise BucketLocationError(f"bucket {bucket} already exists in {region} and --location {location} "
                                      "was given: drop --location or use another bucket")
        return False
    target = wanted or client.meta.region_name or "us-east-1"
    params: dict[str, Any] = {"Bucket": bucket}
    if target != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": target}
    log.info("creating bucket %s in %s", bucket, target)
    try:
        client.create_bucket(**params)
    except bexc.ClientError as exc:
        if error_code(exc) in ("BucketAlreadyOwnedByYou",):
            return False
        if error_code(exc) == "BucketAlreadyExists":
            raise S3Error(f"bucket name {bucket} is taken by another account: choose another -b") from None
        raise s3_error(exc, "create bucket", bucket) from None
    except bexc.BotoCoreError as exc:
        raise s3_error(exc, "create bucket", bucket) from None
    return True


def list_objects(client: Any, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """key → (size, ETag without quotes) for every key under ``prefix``, across all pages."""
    def attempt() -> dict[str, tuple[int, str]]:
        found: dict[str, tuple[int, str]] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = (int(obj["Size"]), str(obj.get("ETag", "")).strip('"').lower())
        return found

    try:
        # A listing decides what is skipped and what gets published: worth whole-call retries
        # on top of botocore's, like every object transfer.
        return _with_attempts(attempt, DEFAULT_ATTEMPTS, f"list s3://{bucket}/{prefix}")
    except (bexc.ClientError, bexc.BotoCoreError) as exc:
        raise s3_error(exc, "list", bucket, prefix or None) from None


# --------------------------------------------------------------------------- object transfer


def _etag_not_md5(resp: dict[str, Any]) -> bool:
    """Whether S3 says the object's ETag is not its MD5 (SSE-KMS, SSE-C)."""
    return resp.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or bool(resp.get("SSECustomerAlgorithm"))


def put_bytes(client: Any, bucket: str, key: str, data: bytes, *, md5: bytes | None = None,
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
        if etag != md5.hex() and not _etag_not_md5(resp):
            raise _Corrupt(f"ETag {etag} is not the MD5 {md5.hex()} of what was sent")
        return etag

    try:
        return _with_attempts(attempt, attempts, f"upload s3://{bucket}/{key}")
    except _Corrupt as exc:
        raise IntegrityError(f"upload s3://{bucket}/{key}: {exc}; check memory/network") from None
    except (bexc.ClientError, bexc.BotoCoreError) as exc:
        raise s3_error(exc, "upload", bucket, key, acl=acl) from None


def _get_raw(client: Any, bucket: str, key: str, limit: int, what: str, *, check_md5: bool = False) -> bytes:
    """GetObject and read the body; botocore/transport exceptions propagate untranslated so
    that ``_with_attempts`` can retry a reset or truncated body.

    A body shorter than its Content-Length is a retryable ``_ShortBody`` even when the
    connection closed cleanly; with ``check_md5`` the body's MD5 must be the object's ETag
    (single-PUT objects without SSE-KMS/C), which catches bytes damaged in transit for objects
    that, unlike parts, have no digest of their own to check."""
    resp = client.get_object(Bucket=bucket, Key=key)
    body = resp["Body"]
    try:
        length = int(resp.get("ContentLength", -1))
        if length > limit:
            raise IntegrityError(f"{what} s3://{bucket}/{key} is {length} bytes, more than the {limit}-byte limit")
        data = body.read(limit + 1)
    finally:
        body.close()
    if len(data) > limit:
        raise IntegrityError(f"{what} s3://{bucket}/{key} is larger than the {limit}-byte limit")
    if 0 <= length != len(data):
        raise _ShortBody(f"got {len(data)} of {length} bytes")
    if check_md5:
        etag = str(resp.get("ETag", "")).strip('"').lower()
        if _MD5_ETAG.match(etag) and not _etag_not_md5(resp) and hashlib.md5(data).hexdigest() != etag:
            raise _Corrupt(f"MD5 {hashlib.md5(data).hexdigest()} of the bytes received is not the ETag {etag}")
    return data


def _translate_get(exc: BaseException, bucket: str, key: str, what: str) -> BundlerError:
    if error_code(exc) in ("NoSuchKey", "404"):
        return PartMissingError(f"{what} s3://{bucket}/{key} does not exist")
    return s3_error(exc, "download", bucket, key)


def get_bytes(client: Any, bucket: str, key: str, *, limit: int, what: str = "object",
              attempts: int = DEFAULT_ATTEMPTS) -> bytes:
    """An object's bytes, checked against its length and (when it is one) its MD5 ETag."""
    try:
        return _with_attempts(lambda: _get_raw(client, bucket, key, limit, what, check_md5=True),
                              max(2, attempts), f"download s3://{bucket}/{key}")
    except _Corrupt as exc:
        raise IntegrityError(f"download {what} s3://{bucket}/{key}: kept arriving damaged ({exc}): "
                             "check the network and re-run") from None
    except (bexc.ClientError, bexc.BotoCoreError) as exc:
        raise _translate_get(exc, bucket, key, what) from None


def fetch_manifest(client: Any, bucket: str, key: str, *, cap: int = MANIFEST_SIZE_CAP) -> bytes:
    """The manifest object's bytes (capped: a manifest is a few KiB; anything huge is hostile)."""
    try:
        return get_bytes(client, bucket, key, limit=cap, what="manifest")
    except PartMissingError:
        raise ManifestError(f"manifest s3://{bucket}/{key} does not exist: check -b/-m/-p "
                            "(the manifest is uploaded last; an interrupted upload has none)") from None
    except IntegrityError as exc:
        raise ManifestError(str(exc)) from None


def _fetch_part(client: Any, bucket: str, key: str, entry: PartEntry, attempts: int) -> bytes:
    """A part's bytes, SHA-1 checked against the manifest; at least one retry on mismatch."""
    what = f"part {entry.filename}"

    def attempt() -> bytes:
        data = _get_raw(client, bucket, key, MAX_PART_BYTES, what)
        digest = hashlib.sha1(data).hexdigest()
        if digest != entry.digest.lower():
            raise _Corrupt(f"SHA-1 {digest}, manifest says {entry.digest}")
        return data

    try:
        return _with_attempts(attempt, max(2, attempts), f"download {what}")
    except _ShortBody as exc:
        raise IntegrityError(f"download {what} s3://{bucket}/{key}: the connection kept closing early ({exc}): "
                             "check the network and re-run") from None
    except _Corrupt as exc:
        raise IntegrityError(f"part {entry.filename} (index {entry.index}) in s3://{bucket}/{key} "
                             f"does not match the manifest: {exc}; the bundle in S3 is damaged or from "
                             "another bundle: re-upload it") from None
    except (bexc.ClientError, bexc.BotoCoreError) as exc:
        err = _translate_get(exc, bucket, key, what)
        if isinstance(err, PartMissingError):
            prefix = key[: len(key) - len(entry.filename)]
            err = PartMissingError(f"part {entry.filename} (index {entry.index}) is missing from "
                                   f"s3://{bucket}/{prefix}")
        raise err from None


# --------------------------------------------------------------------------- the pool


class _Pool:
    """A bounded thread pool: ``submit`` blocks while ``limit`` tasks are pending, the first
    failure is kept and re-raised by the next ``submit``/``join`` (s3transfer's model)."""

    def __init__(self, jobs: int, limit: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ami-bundler-s3")
        self._slots = threading.BoundedSemaphore(limit)
        self._futures: list[Future[Any]] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def _done(self, fut: Future[Any]) -> None:
        self._slots.release()
        if not fut.cancelled() and fut.exception() is not None:
            with self._lock:
                if self._error is None:
                    self._error = fut.exception()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        self.check()
        self._slots.acquire()
        try:
            self.check()
        except BaseException:
            self._slots.release()
            raise
        fut = self._executor.submit(fn, *args)
        self._futures.append(fut)
        fut.add_done_callback(self._done)
        return fut

    def join(self) -> None:
        """Wait for everything; on the first failure cancel what has not started and raise it."""
        done, pending = wait(self._futures, return_when=FIRST_EXCEPTION)
        if pending:
            for fut in pending:
                fut.cancel()
            wait(pending)
        self.check()
        for fut in self._futures:
            if not fut.cancelled() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]

    def shutdown(self, *, cancel: bool) -> None:
        self._executor.shutdown(wait=True, cancel_futures=cancel)


def run_parallel(tasks: Sequence[Callable[[], T]], jobs: int) -> list[T]:
    """Run callables on ``jobs`` threads; results in order; the first failure cancels the rest."""
    if not tasks:
        return []
    if jobs <= 1 or len(tasks) == 1:
        return [task() for task in tasks]
    pool = _Pool(jobs, max(jobs * 2, 1))
    futures: list[Future[T]] = []
    try:
        for task in tasks:
            futures.append(pool.submit(task))
        pool.join()
    except BaseException:
        pool.shutdown(cancel=True)
        raise
    pool.shutdown(cancel=False)
    return [fut.result() for fut in futures]


# --------------------------------------------------------------------------- the upload lock


@dataclass
class _Holder:
    etag: str
    info: dict[str, Any]
    age: float  # seconds since the lock was last written, by the server's clock


class UploadLock:
    """A lease on a bundle name in a prefix: the object ``NAME.ami-bundler-lock``.

    S3 has no transactions: two uploads of different bundles under one name would overwrite
    each other's parts, and the manifest that lands last could name parts of the other bundle.
    So an upload first creates the lock object with ``If-None-Match: *`` (atomic: one writer
    wins), keeps it fresh while it runs, checks it is still its own right before the manifest
    PUT and deletes it at the end. A lock left by a run that died is taken over with
    ``If-Match`` on its ETag (again atomic): at once when it names a dead PID on this host,
    otherwise when it has not been refreshed for ``stale_after`` seconds. S3 clones without
    conditional writes (501 NotImplemented) get a warning and no lock.
    """

    def __init__(self, client: Any, location: S3Location, name: str, *, acl: str | None = DEFAULT_ACL,
                 stale_after: float = LOCK_STALE_SECONDS, renew_every: float | None = None) -> None:
        self.client = client
        self.location = location
        self.name = name
        self.key = location.key(name + LOCK_SUFFIX)
        self.acl = acl
        self.stale_after = stale_after
        self.renew_every = renew_every if renew_every is not None else max(1.0, stale_after / 5)
        self.info = {"tool": "ami-bundler", "host": socket.gethostname(), "pid": os.getpid(),
                     "token": secrets.token_hex(8), "started": time.time()}
        self._body = json.dumps(self.info, sort_keys=True).encode()
        self._etag: str | None = None
        self._unsupported = False
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._etag is not None

    @property
    def lost(self) -> bool:
        """Whether another run has taken the lock over while we held it (seen by check/renew)."""
        return self._lost is not None

    def _put(self, **condition: str) -> str:
        params: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self.key, "Body": self._body,
                                  "ContentType": "application/json", **condition}
        if self.acl:
            params["ACL"] = self.acl
        resp = self.client.put_object(**params)
        return str(resp.get("ETag", "")).strip('"').lower()

    def _holder(self) -> _Holder | None:
        def get() -> tuple[dict[str, Any], bytes]:
            resp = self.client.get_object(Bucket=self.location.bucket, Key=self.key)
            return resp, resp["Body"].read(64 * 1024)

        try:
            resp, raw = _with_attempts(get, DEFAULT_ATTEMPTS, f"read lock {self.key}")
        except bexc.ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        try:
            info = json.loads(raw)
            if not isinstance(info, dict):
                raise ValueError("not an object")
        except ValueError:
            info = {}
        headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        age = 0.0
        try:  # both times are the server's: no dependence on this machine's clock
            now = email.utils.parsedate_to_datetime(headers["date"])
            age = max(0.0, (now - resp["LastModified"]).total_seconds())
        except (KeyError, TypeError, ValueError):
            log.debug("no server time for %s; treating it as fresh", self.key)
        return _Holder(str(resp.get("ETag", "")).strip('"').lower(), info, age)

    def _stale(self, holder: _Holder) -> bool:
        info = holder.info
        if info.get("host") == self.info["host"] and isinstance(info.get("pid"), int):
            return not pid_alive(info["pid"])
        return holder.age > self.stale_after

    def _busy(self, holder: _Holder) -> ConcurrentUploadError:
        info = holder.info
        who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
        return ConcurrentUploadError(
            f"another upload of {self.name} into {self.location.url()} is in progress ({who}, last seen "
            f"{holder.age:.0f}s ago): run one upload of a name at a time; if that run is dead, re-run after "
            f"{self.stale_after:.0f}s or delete {self.location.url(self.name + LOCK_SUFFIX)}")

    def acquire(self) -> None:
        what = f"lock {self.location.url(self.name + LOCK_SUFFIX)}"
        try:
            for _ in range(5):
                try:
                    self._etag = _with_attempts(lambda: self._put(IfNoneMatch="*"), DEFAULT_ATTEMPTS, what)
                    break
                except bexc.ClientError as exc:
                    code = error_code(exc)
                    if code in ("NotImplemented", "501"):
                        log.warning("%s does not support conditional writes: concurrent uploads of %s are not "
                                    "guarded", self.location.url(), self.name)
                        self._unsupported = True
                        return
                    if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                        raise
                holder = self._holder()
                if holder is None:
                    continue  # released in the meantime: try to create it again
                if holder.info.get("token") == self.info["token"]:
                    self._etag = holder.etag  # our own create went through, its answer was lost
                    break
                if not self._stale(holder):
                    raise self._busy(holder)
                log.info("taking over the stale lock of pid %s on %s (%.0fs old)", holder.info.get("pid"),
                         holder.info.get("host"), holder.age)
                try:
                    self._etag = self._put(IfMatch=f'"{holder.etag}"')
                    break
                except bexc.ClientError as exc:
                    if error_code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409",
                                               "NoSuchKey", "404", "NotFound"):
                        raise
                    # another run took it over first, or its holder released it (and exited)
                    # between our read and our take-over: look again
            else:
                raise ConcurrentUploadError(f"could not lock {self.name} in {self.location.url()}: other runs "
                                            "keep taking it; run one upload of a name at a time")
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise s3_error(exc, "lock", self.location.bucket, self.key, acl=self.acl) from None
        self._thread = threading.Thread(target=self._renew, name="ami-bundler-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self._etag = self._put(IfMatch=f'"{self._etag}"')
            except bexc.ClientError as exc:
                if error_code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                    self._lost = "another run took it over"
                    return
                log.warning("could not refresh %s: %s", self.key, error_code(exc))
            except bexc.BotoCoreError as exc:
                log.warning("could not refresh %s: %s", self.key, type(exc).__name__)

    def _head(self) -> dict[str, Any]:
        return _with_attempts(lambda: self.client.head_object(Bucket=self.location.bucket, Key=self.key),
                              DEFAULT_ATTEMPTS, f"check lock {self.key}")

    def check(self) -> None:
        """Raise unless the lock is still ours (called right before the manifest goes up)."""
        if self._unsupported or self._etag is None:
            return
        if self._lost is None:
            try:
                resp = self._head()
                if str(resp.get("ETag", "")).strip('"').lower() != self._etag:
                    self._lost = "another run replaced it"
            except bexc.ClientError as exc:
                if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                    raise s3_error(exc, "check lock", self.location.bucket, self.key) from None
                self._lost = "it was deleted"
            except bexc.BotoCoreError as exc:
                raise s3_error(exc, "check lock", self.location.bucket, self.key) from None
        if self._lost is not None:
            raise ConcurrentUploadError(f"lost the lock on {self.name} in {self.location.url()} ({self._lost}) "
                                        "while uploading: another upload of the same name ran; re-run when it is done")

    def release(self) -> None:
        """Stop refreshing and delete the lock if it is still ours; never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._etag is None or self._unsupported:
            return
        try:
            resp = self._head()
            if str(resp.get("ETag", "")).strip('"').lower() == self._etag:
                _with_attempts(lambda: self.client.delete_object(Bucket=self.location.bucket, Key=self.key),
                               DEFAULT_ATTEMPTS, f"unlock {self.key}")
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            log.warning("could not remove the lock %s: %s (the next run takes it over)", self.key,
                        error_code(exc) or type(exc).__name__)
        self._etag = None

    def __enter__(self) -> UploadLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _check_uploaded(client: Any, location: S3Location, expected: dict[str, tuple[int, str]]) -> None:
    """Every key in ``expected`` is in S3 with that (size, MD5): called right before the manifest
    PUT, so a part replaced or removed by someone else while we uploaded is never published."""
    if not expected:
        return
    found = list_objects(client, location.bucket, os.path.commonprefix(list(expected)))
    for key, (size, md5) in sorted(expected.items()):
        have = found.get(key)
        name = key[len(location.prefix):]
        if have is None:
            raise ConcurrentUploadError(f"{name} disappeared from {location.url()} while uploading (deleted by "
                                        "another run?): the manifest was not uploaded; re-run")
        if have != (size, md5):
            raise ConcurrentUploadError(f"another upload replaced {name} in {location.url()} while uploading "
                                        f"(it is now {have[0]} bytes, MD5 {have[1]}; ours: {size} bytes, MD5 {md5}): "
                                        "the manifest was not uploaded; run one upload of a name at a time")


def _orphan_parts(found: Iterable[str], location: S3Location, name: str, keep: Iterable[str]) -> list[str]:
    """Keys NAME.part.N under the prefix that the new manifest does not name: provisional parts
    of runs that died, or the tail of an older, longer bundle of the same name."""
    base = location.key(name)
    wanted = set(keep)
    return sorted(k for k in found if k.startswith(base) and k not in wanted
                  and _PART_SUFFIX.match(k[len(base):]))


def _remove_orphans(client: Any, location: S3Location, name: str, keep: Sequence[str], attempts: int) -> int:
    base = location.key(name) + ".part."
    if not all(k.startswith(base) for k in keep):
        return 0  # a manifest with unusual part names: what NAME.part.N belongs to is unclear
    orphans = _orphan_parts(list_objects(client, location.bucket, location.key(name) + ".part."), location,
                            name, keep)
    if orphans:
        log.info("removing %d stale part(s) of %s no manifest names, e.g. %s", len(orphans), name, orphans[0])
        delete_keys(client, location.bucket, orphans, attempts=attempts)
    return len(orphans)


def _bundle_name(manifest_name: str) -> str:
    for suffix in (".manifest.xml", ".manifest"):
        if manifest_name.endswith(suffix):
            return manifest_name[: -len(suffix)]
    return manifest_name


# --------------------------------------------------------------------------- upload-bundle


@dataclass
class LocalPart:
    entry: PartEntry
    path: Path
    size: int
    md5: bytes


@dataclass
class UploadResult:
    bucket: str
    prefix: str
    manifest_key: str | None
    image_location: str
    parts_total: int
    parts_uploaded: int
    parts_skipped: int
    bytes_uploaded: int
    bucket_created: bool = False
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        return {
            "bucket": self.bucket, "prefix": self.prefix, "manifest_key": self.manifest_key,
            "image_location": self.image_location, "parts": self.parts_total,
            "parts_uploaded": self.parts_uploaded, "parts_skipped": self.parts_skipped,
            "bytes_uploaded": self.bytes_uploaded, "bucket_created": self.bucket_created,
            "seconds": round(self.seconds, 3),
        }


def read_local_manifest(path: Path) -> ParsedManifest:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"manifest {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read manifest {path}: {exc.strerror}") from None
    if len(data) > MANIFEST_SIZE_CAP:
        raise ManifestError(f"{path} is {len(data)} bytes: too large to be a manifest")
    return parse_manifest(data, source=str(path))


def verify_local_parts(parsed: ParsedManifest, directory: Path, *, jobs: int = DEFAULT_JOBS) -> list[LocalPart]:
    """Every part file exists and its SHA-1 is the manifest's — checked before anything goes up."""
    manifest = parsed.manifest
    entries = sorted(manifest.parts, key=lambda e: e.index)

    def check(entry: PartEntry) -> LocalPart:
        path = directory / entry.filename
        sha1, md5, size = hashlib.sha1(), hashlib.md5(), 0
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    sha1.update(chunk)
                    md5.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise PartMissingError(f"part {entry.filename} (index {entry.index}) is missing from {directory}: "
                                   "pass -d with the bundle directory") from None
        except OSError as exc:
            raise IntegrityError(f"cannot read part {path}: {exc.strerror}") from None
        if sha1.hexdigest() != entry.digest.lower():
            raise IntegrityError(
                f"local part {path} does not match {parsed.source} (SHA-1 {sha1.hexdigest()}, manifest says "
                f"{entry.digest}): the directory holds another bundle's parts; re-bundle or fix -d/-m"
            )
        return LocalPart(entry, path, size, md5.digest())

    parts = run_parallel([lambda e=e: check(e) for e in entries], jobs)
    total = sum(p.size for p in parts)
    if total != manifest.bundled_size:
        raise IntegrityError(f"local parts hold {total} bytes but {parsed.source} says bundled_size "
                             f"{manifest.bundled_size}: re-bundle")
    return parts


def upload_bundle(
    client: Any,
    location: S3Location,
    manifest_path: Path,
    *,
    directory: Path | None = None,
    acl: str = DEFAULT_ACL,
    jobs: int = DEFAULT_JOBS,
    attempts: int = DEFAULT_ATTEMPTS,
    start_part: int | None = None,
    skip_manifest: bool = False,
    resume: bool = True,
    progress: ProgressListener = NULL_PROGRESS,
) -> UploadResult:
    """Upload a local bundle: verify parts, skip intact ones already in S3, PUT the rest in
    parallel, then the manifest last (spec §6.6). The bucket must exist (see ensure_bucket)."""
    started = time.monotonic()
    manifest_path = Path(manifest_path)
    parsed = read_local_manifest(manifest_path)
    directory = Path(directory) if directory is not None else manifest_path.parent
    parts = verify_local_parts(parsed, directory, jobs=jobs)

    wanted = [p for p in parts if start_part is None or p.entry.index >= start_part]
    skipped_by_flag = len(parts) - len(wanted)
    manifest_key = location.key(manifest_path.name)
    name = _bundle_name(manifest_path.name)
    part_keys = {location.key(p.entry.filename): p for p in parts}
    lock = UploadLock(client, location, name, acl=acl)
    lock.acquire()
    try:
        # One listing: what is there already (resume) and whether another bundle's manifest is.
        existing = list_objects(client, location.bucket, os.path.commonprefix([*part_keys, manifest_key]))
        todo: list[LocalPart] = []
        for part in wanted:
            have = existing.get(location.key(part.entry.filename))
            if resume and have == (part.size, part.md5.hex()):
                log.info("skipping %s: already in S3 with the same size and MD5", part.entry.filename)
            else:
                todo.append(part)
        resumed = len(wanted) - len(todo)
        if resumed:
            log.info("resuming: %d of %d parts are already in %s", resumed, len(wanted), location.url())
        ours = (len(parsed.raw), hashlib.md5(parsed.raw).hexdigest())
        old_manifest = existing.get(manifest_key)
        if todo and old_manifest is not None and old_manifest != ours:
            # Its parts are about to be overwritten: a visible manifest must never name parts
            # of another bundle, not even for the length of this upload (or after a crash).
            log.info("removing %s: it is another bundle's manifest and its parts are being replaced",
                     location.url(manifest_path.name))
            delete_keys(client, location.bucket, [manifest_key], attempts=attempts)

        total = sum(p.size for p in todo)
        progress.start("upload", total)

        def send(part: LocalPart) -> int:
            data = part.path.read_bytes()
            md5 = hashlib.md5(data).digest()
            if md5 != part.md5:
                raise IntegrityError(f"part {part.path} changed while uploading: re-bundle and re-run")
            put_bytes(client, location.bucket, location.key(part.entry.filename), data, md5=md5,
                      acl=acl, attempts=attempts)
            progress.advance("upload", len(data))
            return len(data)

        try:
            run_parallel([lambda p=p: send(p) for p in todo], jobs)
            published = None
            if not skip_manifest:
                # Every part the manifest names must be there, ours, right before it goes up.
                _check_uploaded(client, location, {k: (p.size, p.md5.hex()) for k, p in part_keys.items()})
                lock.check()
                put_bytes(client, location.bucket, manifest_key, parsed.raw, acl=acl, attempts=attempts)
                published = manifest_key
                _remove_orphans(client, location, name, list(part_keys), attempts)
            else:
                _check_uploaded(client, location, {location.key(p.entry.filename): (p.size, p.md5.hex())
                                                   for p in wanted})
        finally:
            progress.finish("upload")
    finally:
        lock.release()
    return UploadResult(
        bucket=location.bucket,
        prefix=location.prefix,
        manifest_key=published,
        image_location=location.image_location(manifest_path.name),
        parts_total=len(parts),
        parts_uploaded=len(todo),
        parts_skipped=resumed + skipped_by_flag,
        bytes_uploaded=total,
        seconds=time.monotonic() - started,
    )


# --------------------------------------------------------------------------- S3Sink


def _return_large_buffers_to_the_os() -> None:
    """Have glibc map every part-sized buffer on its own and unmap it when freed.

    Parts are made in one thread and freed in the uploader threads; glibc's default would
    raise its mmap threshold after the first free and keep recycled 10 MiB chunks in
    per-thread arenas, which adds up to well over the parts actually in flight.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 4 * 1024 * 1024)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


class S3Sink:
    """PartSink that PUTs parts as they are cut: a bounded queue in front of parallel PUTs.

    ``put_part`` blocks while ``jobs + 2`` parts are in flight (so memory stays bounded at about
    that many 10 MiB parts), a failed PUT surfaces at the next ``put_part``/``commit``, and
    ``abort`` removes everything this sink created.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, acl: str = DEFAULT_ACL,
                 jobs: int = DEFAULT_JOBS, attempts: int = DEFAULT_ATTEMPTS,
                 progress: ProgressListener = NULL_PROGRESS) -> None:
        self.client = client
        self.location = S3Location(bucket, prefix)
        self.acl = acl
        self.jobs = max(1, jobs)
        self.attempts = attempts
        self.progress = progress
        self._pool: _Pool | None = None
        self._name = ""
        self._max_parts = 0
        self._width_parts = 0
        self._keys: dict[int, str] = {}
        self._created: set[str] = set()
        self._created_lock = threading.Lock()
        self._sizes: dict[int, tuple[int, str]] = {}
        self._lock: UploadLock | None = None
        self.bytes_uploaded = 0
        self.manifest_key: str | None = None

    def describe(self) -> str:
        return self.location.url()

    def begin(self, name: str, max_parts: int) -> None:
        self._name = name
        self._max_parts = max_parts
        self._width_parts = max_parts
        lock = UploadLock(self.client, self.location, name, acl=self.acl)
        lock.acquire()
        try:
            # A manifest of this name belongs to the bundle we are replacing; its parts are about
            # to be overwritten, so it goes first (a visible manifest always means a whole bundle).
            manifest_key = self.location.key(f"{name}.manifest.xml")
            if manifest_key in list_objects(self.client, self.location.bucket, manifest_key):
                log.info("removing %s: the bundle of that name is being replaced", self.location.url(manifest_key))
                delete_keys(self.client, self.location.bucket, [manifest_key], attempts=self.attempts)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        # Parts are 10 MiB in memory each: ``jobs`` uploading plus two ready keeps every
        # uploader busy while bounding memory whatever the image size.
        self._pool = _Pool(self.jobs, self.jobs + 2)
        _return_large_buffers_to_the_os()
        self.progress.start("upload", None)

    def _put(self, key: str, part: Part) -> None:
        put_bytes(self.client, self.location.bucket, key, part.data, md5=part.md5, acl=self.acl,
                  attempts=self.attempts)
        with self._created_lock:
            self._created.add(key)
            self._sizes[part.index] = (len(part.data), part.md5.hex())
            self.bytes_uploaded += len(part.data)
        self.progress.advance("upload", len(part.data))

    def expect_parts(self, count: int) -> None:
        """The pipeline's estimate of the final part count, given before the first part: keys
        get the index width it implies, so the rename in ``commit`` is only needed when the
        estimate crossed a power of ten the wrong way."""
        if not self._keys:
            self._width_parts = max(1, min(count, self._max_parts))

    def put_part(self, part: Part) -> None:
        assert self._pool is not None, "begin() not called"
        key = self.location.key(provisional_name(self._name, part.index, self._width_parts))
        self._keys[part.index] = key
        self._pool.submit(self._put, key, part)

    def _copy(self, source: str, target: str) -> None:
        def attempt() -> None:
            resp = self.client.copy_object(
                Bucket=self.location.bucket, Key=target, ACL=self.acl, MetadataDirective="COPY",
                CopySource={"Bucket": self.location.bucket, "Key": source},
            )
            with self._created_lock:
                self._created.add(target)
            etag = str(resp.get("CopyObjectResult", {}).get("ETag", "")).strip('"')
            log.debug("copied %s → %s (ETag %s)", source, target, etag)

        try:
            _with_attempts(attempt, self.attempts, f"copy s3://{self.location.bucket}/{source}")
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise s3_error(exc, "copy to", self.location.bucket, target, acl=self.acl) from None

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        assert self._pool is not None, "begin() not called"
        try:
            self._pool.join()
        finally:
            self._pool.shutdown(cancel=True)
        if len(names) != len(self._keys):
            raise S3Error(f"internal error: {len(self._keys)} parts uploaded, {len(names)} named")
        renames = [(self._keys[i], self.location.key(n)) for i, n in enumerate(names)
                   if self._keys[i] != self.location.key(n)]
        if renames:
            # The final index width is only known now; server-side copies are cheap and
            # keep the bytes off this machine.
            log.info("renaming %d parts to their final names", len(renames))
            run_parallel([lambda s=s, t=t: self._copy(s, t) for s, t in renames], self.jobs)
            stale = [s for s, _ in renames]
            delete_keys(self.client, self.location.bucket, stale, attempts=self.attempts)
            with self._created_lock:
                self._created.difference_update(stale)
        final = [self.location.key(n) for n in names]
        _check_uploaded(self.client, self.location, {k: self._sizes[i] for i, k in enumerate(final)})
        if self._lock is not None:
            self._lock.check()
        self.manifest_key = self.location.key(manifest_name)
        put_bytes(self.client, self.location.bucket, self.manifest_key, manifest, acl=self.acl,
                  attempts=self.attempts)
        with self._created_lock:
            self._created.add(self.manifest_key)
        try:
            # Provisional parts of runs that were killed, or the tail of a longer older bundle.
            _remove_orphans(self.client, self.location, self._name, final, self.attempts)
        except BundlerError as exc:
            log.warning("could not remove stale parts of %s: %s (delete-bundle -p %s removes them)",
                        self._name, exc, self._name)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.progress.finish("upload")

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel=True)
        self.progress.finish("upload")
        if self._lock is not None:
            lock, self._lock = self._lock, None
            try:
                if lock.lost:
                    # The parts under our keys may be another run's by now: leave them alone.
                    log.warning("not removing the partial upload from %s: the lock was lost", self.location.url())
                else:
                    self._abort_uploads()
            finally:
                lock.release()
            return
        self._abort_uploads()

    def _abort_uploads(self) -> None:
        with self._created_lock:
            keys = sorted(self._created)
            self._created.clear()
        if not keys:
            return
        try:
            delete_keys(self.client, self.location.bucket, keys, attempts=self.attempts)
        except BundlerError as exc:
            log.warning("could not remove the partial upload from %s: %s", self.location.url(), exc)


# --------------------------------------------------------------------------- S3PartSource


class S3PartSource:
    """PartSource reading parts from S3: a bounded window of parts fetched in parallel, yielded in
    order, each SHA-1 checked (one retry on mismatch). Memory: about ``window`` parts."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, jobs: int = 4,
                 window: int | None = None, attempts: int = DEFAULT_ATTEMPTS) -> None:
        self.client = client
        self.location = S3Location(bucket, prefix)
        self.jobs = max(1, jobs)
        self.window = max(1, window or self.jobs + 2)
        self.attempts = attempts

    def describe(self) -> str:
        return self.location.url()

    def check_present(self, entries: Sequence[PartEntry]) -> None:
        if not entries:
            return
        keys = [self.location.key(e.filename) for e in entries]
        existing = list_objects(self.client, self.location.bucket, os.path.commonprefix(keys))
        for entry, key in zip(entries, keys, strict=True):
            if key not in existing:
                raise PartMissingError(f"part {entry.filename} (index {entry.index}) is missing from "
                                       f"{self.location.url()}")

    def iter_parts(self, entries: Sequence[PartEntry]) -> Iterator[tuple[PartEntry, Iterable[bytes]]]:
        executor = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="ami-bundler-get")
        pending: list[tuple[PartEntry, Future[bytes]]] = []
        todo = iter(entries)

        def fill() -> None:
            while len(pending) < self.window:
                entry = next(todo, None)
                if entry is None:
                    return
                pending.append((entry, executor.submit(
                    _fetch_part, self.client, self.location.bucket, self.location.key(entry.filename),
                    entry, self.attempts)))

        try:
            fill()
            while pending:
                entry, fut = pending.pop(0)
                data = fut.result()
                fill()
                yield entry, (data,)
        finally:
            # A consumer that stops early (error, Ctrl-C) must not leave downloads running.
            for _, fut in pending:
                fut.cancel()
            executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- download-bundle


@dataclass
class DownloadResult:
    directory: Path
    manifest_path: Path
    plaintext_path: Path | None
    name: str
    parts: int
    parts_downloaded: int
    parts_skipped: int
    bytes_downloaded: int
    verified_signature: bool
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        return {
            "directory": str(self.directory), "manifest": str(self.manifest_path),
            "plaintext_manifest": str(self.plaintext_path) if self.plaintext_path else None,
            "name": self.name, "parts": self.parts, "parts_downloaded": self.parts_downloaded,
            "parts_skipped": self.parts_skipped, "bytes_downloaded": self.bytes_downloaded,
            "signature_verified": self.verified_signature, "seconds": round(self.seconds, 3),
        }


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None


def _local_part_ok(path: Path, entry: PartEntry) -> bool:
    sha1 = hashlib.sha1()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                sha1.update(chunk)
    except OSError:
        return False
    return sha1.hexdigest() == entry.digest.lower()


def load_remote_manifest(client: Any, location: S3Location, manifest_name: str, *,
                         private_key: Any = None) -> tuple[ParsedManifest, bytes, bytes | None]:
    """Fetch and parse ``manifest_name``; legacy encrypted manifests are decrypted with
    ``private_key``. Returns (parsed, raw object bytes, plaintext if it was encrypted)."""
    key = location.key(manifest_name)
    raw = fetch_manifest(client, location.bucket, key)
    plaintext = None
    data = raw
    if is_encrypted(raw):
        if private_key is None:
            raise UsageError(f"{location.url(manifest_name)} is a legacy encrypted manifest: pass -k PRIVATEKEY")
        from .keys import decrypt_legacy_manifest

        plaintext = data = decrypt_legacy_manifest(raw, private_key)
    return parse_manifest(data, source=location.url(manifest_name)), raw, plaintext


def download_bundle(
    client: Any,
    location: S3Location,
    manifest_name: str,
    directory: Path,
    *,
    private_key: Any = None,
    verify_key: Any = None,
    jobs: int = DEFAULT_JOBS,
    attempts: int = DEFAULT_ATTEMPTS,
    progress: ProgressListener = NULL_PROGRESS,
) -> DownloadResult:
    """Download a bundle to ``directory``: manifest checked (signature when a key is given),
    parts fetched in parallel, each written under a temporary name and renamed into place only
    after its SHA-1 matched. Parts already present and intact are kept. Manifest written last."""
    started = time.monotonic()
    directory = Path(directory)
    if not directory.is_dir():
        raise OutputError(f"download directory {directory} does not exist")
    parsed, raw, plaintext = load_remote_manifest(client, location, manifest_name, private_key=private_key)
    verified = False
    if verify_key is not None:
        from .keys import verify_manifest

        verify_manifest(parsed, verify_key)
        verified = True
    manifest = parsed.manifest
    entries = sorted(manifest.parts, key=lambda e: e.index)
    for entry in entries:
        if "/" in entry.filename or entry.filename in (".", ".."):
            raise ManifestError(f"{parsed.source}: part name {entry.filename!r} is not a plain file name")
    todo = [e for e in entries if not _local_part_ok(directory / e.filename, e)]
    progress.start("download", manifest.bundled_size if len(todo) == len(entries) else None)

    def fetch(entry: PartEntry) -> int:
        data = _fetch_part(client, location.bucket, location.key(entry.filename), entry, attempts)
        _write_atomic(directory / entry.filename, data)
        progress.advance("download", len(data))
        return len(data)

    try:
        sizes = run_parallel([lambda e=e: fetch(e) for e in todo], jobs)
    finally:
        progress.finish("download")
    manifest_path = directory / manifest_name
    _write_atomic(manifest_path, raw)
    plaintext_path = None
    if plaintext is not None:
        plaintext_path = directory / f"{manifest_name}.plaintext"
        _write_atomic(plaintext_path, plaintext)
    return DownloadResult(directory, manifest_path, plaintext_path, manifest.name, len(entries), len(todo),
                          len(entries) - len(todo), sum(sizes), verified, time.monotonic() - started)


# --------------------------------------------------------------------------- copy-bundle


@dataclass
class CopyResult:
    source: str
    destination: S3Location
    manifest_name: str
    mode: str  # "server" (CopyObject) or "stream" (GET → PUT through this process)
    parts_total: int
    parts_copied: int
    parts_skipped: int
    bytes_copied: int
    seconds: float = 0.0

    @property
    def image_location(self) -> str:
        return self.destination.image_location(self.manifest_name)

    def summary(self) -> dict[str, object]:
        return {"source": self.source, "destination": self.destination.url(),
                "image_location": self.image_location, "mode": self.mode, "parts": self.parts_total,
                "parts_copied": self.parts_copied, "parts_skipped": self.parts_skipped,
                "bytes_copied": self.bytes_copied, "seconds": round(self.seconds, 3)}


def object_exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except bexc.ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise s3_error(exc, "check", bucket, key) from None
    except bexc.BotoCoreError as exc:
        raise s3_error(exc, "check", bucket, key) from None
    return True


def copy_object(client: Any, source: tuple[str, str], bucket: str, key: str, *, etag: str | None,
                acl: str | None = DEFAULT_ACL, attempts: int = DEFAULT_ATTEMPTS) -> None:
    """Server-side CopyObject (sent to the destination's endpoint) with the canned ACL; the copy's
    ETag must equal the source's (both are the MD5 of a single-PUT part)."""
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "MetadataDirective": "COPY",
                              "CopySource": {"Bucket": source[0], "Key": source[1]}}
    if acl:
        params["ACL"] = acl

    def attempt() -> None:
        resp = client.copy_object(**params)
        got = str(resp.get("CopyObjectResult", {}).get("ETag", "")).strip('"').lower()
        if etag and got and "-" not in etag and got != etag:
            raise _Corrupt(f"copy has ETag {got}, source has {etag}")

    try:
        _with_attempts(attempt, attempts, f"copy s3://{source[0]}/{source[1]} to s3://{bucket}/{key}")
    except _Corrupt as exc:
        raise IntegrityError(f"copy to s3://{bucket}/{key}: {exc}") from None
    except (bexc.ClientError, bexc.BotoCoreError) as exc:
        if error_code(exc) in ("NoSuchKey", "404"):
            raise PartMissingError(f"copy source s3://{source[0]}/{source[1]} does not exist") from None
        raise s3_error(exc, "copy to", bucket, key, acl=acl) from None


def copy_bundle(
    src_client: Any,
    source: S3Location,
    manifest_name: str,
    dst_client: Any,
    destination: S3Location,
    *,
    manifest: bytes,
    parsed: ParsedManifest,
    server_side: bool = True,
    acl: str = DEFAULT_ACL,
    jobs: int = DEFAULT_JOBS,
    attempts: int = DEFAULT_ATTEMPTS,
    progress: ProgressListener = NULL_PROGRESS,
) -> CopyResult:
    """Copy the parts ``parsed`` names from ``source`` to ``destination``, then put ``manifest``
    (the migrated one) there last.

    Resumable: a part already at the destination with the source's size and ETag is skipped.
    ``server_side`` uses CopyObject (no bytes through this machine; the buckets must be reachable
    from one endpoint, i.e. the same partition); otherwise each part is streamed GET → SHA-1
    check → PUT, at most ``jobs`` parts in memory at a time.
    """
    started = time.monotonic()
    entries = sorted(parsed.manifest.parts, key=lambda e: e.index)
    src_keys = [source.key(e.filename) for e in entries]
    dst_keys = [destination.key(e.filename) for e in entries]
    have_src = list_objects(src_client, source.bucket, os.path.commonprefix(src_keys))
    missing = [e.filename for e, k in zip(entries, src_keys, strict=True) if k not in have_src]
    if missing:
        raise PartMissingError(f"cannot copy {parsed.source}: part {missing[0]} is missing from {source.url()} "
                               f"({len(entries) - len(missing)} of {len(entries)} present)")
    total = sum(have_src[k][0] for k in src_keys)
    if total != parsed.manifest.bundled_size:
        raise IntegrityError(f"parts in {source.url()} hold {total} bytes but {parsed.source} says bundled_size "
                             f"{parsed.manifest.bundled_size}: they are not this bundle's parts")
    have_dst = list_objects(dst_client, destination.bucket, os.path.commonprefix(dst_keys))
    todo = [(e, s, d) for e, s, d in zip(entries, src_keys, dst_keys, strict=True) if have_dst.get(d) != have_src[s]]
    skipped = len(entries) - len(todo)
    if skipped:
        log.info("resuming: %d of %d parts are already in %s", skipped, len(entries), destination.url())
    progress.start("copy", sum(have_src[s][0] for _, s, _ in todo))

    def server(entry: PartEntry, src_key: str, dst_key: str) -> int:
        copy_object(dst_client, (source.bucket, src_key), destination.bucket, dst_key,
                    etag=have_src[src_key][1], acl=acl, attempts=attempts)
        progress.advance("copy", have_src[src_key][0])
        return have_src[src_key][0]

    def stream(entry: PartEntry, src_key: str, dst_key: str) -> int:
        data = _fetch_part(src_client, source.bucket, src_key, entry, attempts)  # SHA-1 checked
        put_bytes(dst_client, destination.bucket, dst_key, data, acl=acl, attempts=attempts)
        progress.advance("copy", len(data))
        return len(data)

    copy = server if server_side else stream
    try:
        sizes = run_parallel([lambda t=t: copy(*t) for t in todo], jobs)
        # Last: a visible manifest always means a complete bundle (spec §6.6).
        put_bytes(dst_client, destination.bucket, destination.key(manifest_name), manifest, acl=acl,
                  attempts=attempts)
    finally:
        progress.finish("copy")
    return CopyResult(source.url(manifest_name), destination, manifest_name, "server" if server_side else "stream",
                      len(entries), len(todo), skipped, sum(sizes), time.monotonic() - started)


# --------------------------------------------------------------------------- delete-bundle


def keys_from_manifest(location: S3Location, manifest_name: str, parsed: ParsedManifest) -> list[str]:
    """Exactly the manifest object and the parts it names (document order), spec §6.8."""
    keys = [location.key(e.filename) for e in parsed.manifest.parts]
    keys.append(location.key(manifest_name))
    return keys


def keys_by_prefix(client: Any, location: S3Location, name: str) -> list[str]:
    """Keys ``keyprefix+NAME`` followed by ``.part.N``, ``.manifest[.xml]`` or the upload lock
    suffix (all pages): everything a bundle of that name, or an interrupted upload of it, left."""
    base = location.key(name)
    selected = []
    for key in sorted(list_objects(client, location.bucket, base)):
        rest = key[len(base):]
        if _PART_SUFFIX.match(rest) or _MANIFEST_SUFFIX.match(rest) or rest == LOCK_SUFFIX:
            selected.append(key)
    return selected


def existing_keys(client: Any, bucket: str, keys: Sequence[str]) -> list[str]:
    if not keys:
        return []
    found = list_objects(client, bucket, os.path.commonprefix(list(keys)))
    return [k for k in keys if k in found]


def delete_keys(client: Any, bucket: str, keys: Sequence[str], *, attempts: int = DEFAULT_ATTEMPTS) -> int:
    """DeleteObjects in batches of 1000; per-key failures are reported, not ignored."""
    deleted = 0
    for start in range(0, len(keys), DELETE_BATCH):
        batch = list(keys[start:start + DELETE_BATCH])

        def attempt(batch: list[str] = batch) -> Any:
            return client.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": k} for k in batch], "Quiet": True})

        try:
            resp = _with_attempts(attempt, attempts, f"delete from s3://{bucket}")
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise s3_error(exc, "delete from", bucket) from None
        errors = resp.get("Errors", [])
        if errors:
            first = errors[0]
            raise S3Error(f"could not delete {len(errors)} object(s) from s3://{bucket}, e.g. "
                          f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip())
        deleted += len(batch)
    return deleted


def delete_bucket_if_empty(client: Any, bucket: str) -> bool:
    try:
        resp = client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        if resp.get("KeyCount", 0) or resp.get("Contents"):
            return False
        client.delete_bucket(Bucket=bucket)
    except bexc.ClientError as exc:
        if error_code(exc) == "BucketNotEmpty":
            return False
        raise s3_error(exc, "delete bucket", bucket) from None
    except bexc.BotoCoreError as exc:
        raise s3_error(exc, "delete bucket", bucket) from None
    return True


@dataclass
class DeletePlan:
    bucket: str
    keys: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def plan_delete(client: Any, location: S3Location, *, manifest: tuple[str, ParsedManifest] | None = None,
                name: str | None = None) -> DeletePlan:
    """Which keys a delete-bundle removes: from a manifest (name, parsed) or by NAME listing."""
    if manifest is not None:
        wanted = keys_from_manifest(location, manifest[0], manifest[1])
        present = set(existing_keys(client, location.bucket, wanted))
        return DeletePlan(location.bucket, [k for k in wanted if k in present],
                          [k for k in wanted if k not in present])
    if not name:
        raise UsageError("delete-bundle needs -m MANIFEST or -p PREFIX")
    return DeletePlan(location.bucket, keys_by_prefix(client, location, name))


__all__ = [
    "ACLS",
    "BucketLocationError",
    "ConcurrentUploadError",
    "CopyResult",
    "DEFAULT_ACL",
    "DEFAULT_JOBS",
    "DeletePlan",
    "DownloadResult",
    "MANIFEST_SIZE_CAP",
    "PART_SIZE",
    "S3Location",
    "S3PartSource",
    "S3Sink",
    "UploadLock",
    "UploadResult",
    "bucket_region",
    "copy_bundle",
    "copy_object",
    "delete_bucket_if_empty",
    "delete_keys",
    "download_bundle",
    "ensure_bucket",
    "fetch_manifest",
    "keys_by_prefix",
    "keys_from_manifest",
    "list_objects",
    "load_remote_manifest",
    "location_region",
    "object_exists",
    "plan_delete",
    "put_bytes",
    "read_local_manifest",
    "run_parallel",
    "s3_error",
    "split_manifest_location",
    "upload_bundle",
    "verify_local_parts",
]
