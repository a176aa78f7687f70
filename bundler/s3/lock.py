"""The lease an upload holds on a bundle name in a prefix (the NAME.ami-bundler-lock object)."""

from __future__ import annotations

import email.utils
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bexc

from ..aws import NO_SUCH_OBJECT, error_code, is_not_found
from ..concurrency import join_thread, start_thread
from ..errors import S3Error
from ..signalsafe import Event
from ..stale import pid_alive
from .location import S3Location
from .objects import DEFAULT_ACL, DEFAULT_ATTEMPTS, RETRY_ATTEMPTS, s3_errors, with_attempts

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef, HeadObjectOutputTypeDef

log = logging.getLogger("bundler.s3")


# NAME.ami-bundler-lock under the prefix: the lease an upload of NAME holds (see UploadLock).
LOCK_SUFFIX = ".ami-bundler-lock"
LOCK_STALE_SECONDS = 300.0


class ConcurrentUploadError(S3Error):
    """Another run is writing the same bundle name into the same prefix."""


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

    Its requests get the run's whole-object ``attempts`` (``--retry``), like the parts: a lease
    that gave up sooner than the transfer it guards would fail a run the parts survived. Its
    release gets at least ``RETRY_ATTEMPTS``: a lock left behind after a published bundle
    blocks the next run from another host for ``stale_after`` seconds.
    """

    def __init__(self, client: S3Client, location: S3Location, name: str, *,
                 acl: str | None = DEFAULT_ACL,
                 stale_after: float = LOCK_STALE_SECONDS, renew_every: float | None = None,
                 attempts: int = DEFAULT_ATTEMPTS) -> None:
        self.client = client
        self.location = location
        self.name = name
        self.key = location.key(name + LOCK_SUFFIX)
        self.acl = acl
        self.stale_after = stale_after
        self.attempts = attempts
        self.renew_every = renew_every if renew_every is not None else max(1.0, stale_after / 5)
        self.info = {"tool": "ami-bundler", "host": socket.gethostname(), "pid": os.getpid(),
                     "token": secrets.token_hex(8), "started": time.time()}
        self._body = json.dumps(self.info, sort_keys=True).encode()
        self._etag: str | None = None
        self._unsupported = False
        self._attempted = False  # a create was sent: an interrupt may have hidden its answer
        self._lost: str | None = None
        self._stop = Event()  # set by release, on the main thread too (signalsafe)
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._etag is not None

    @property
    def lost(self) -> bool:
        """Whether another run has taken the lock over while we held it (seen by check/renew)."""
        return self._lost is not None

    def _put(self, **condition: str) -> str:
        params: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self.key,
                                  "Body": self._body,
                                  "ContentType": "application/json", **condition}
        if self.acl:
            params["ACL"] = self.acl
        resp = self.client.put_object(**params)
        return str(resp.get("ETag", "")).strip('"').lower()

    def _holder(self) -> _Holder | None:
        def get() -> tuple[GetObjectOutputTypeDef, bytes]:
            resp = self.client.get_object(Bucket=self.location.bucket, Key=self.key)
            return resp, resp["Body"].read(64 * 1024)

        try:
            resp, raw = with_attempts(get, self.attempts, f"read lock {self.key}")
        except bexc.ClientError as exc:
            if is_not_found(exc, NO_SUCH_OBJECT):
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
            f"another upload of {self.name} into {self.location.url()} is in progress ({who}, last "
            f"seen {holder.age:.0f}s ago): run one upload of a name at a time; if that run is "
            f"dead, re-run after {self.stale_after:.0f}s or delete "
            f"{self.location.url(self.name + LOCK_SUFFIX)}")

    def acquire(self) -> None:
        with s3_errors("lock", self.location.bucket, self.key, acl=self.acl):
            if not self._take():
                return
        self._thread = threading.Thread(target=self._renew, name="ami-bundler-lock", daemon=True)
        start_thread(self._thread)

    def _take(self) -> bool:
        """Create the lock or take over a stale one; False when the endpoint cannot guard it."""
        what = f"lock {self.location.url(self.name + LOCK_SUFFIX)}"
        self._attempted = True
        for _ in range(5):
            try:
                self._etag = with_attempts(lambda: self._put(IfNoneMatch="*"), self.attempts, what)
                break
            except bexc.ClientError as exc:
                code = error_code(exc)
                if code in ("NotImplemented", "501"):
                    log.warning("%s does not support conditional writes: concurrent uploads of %s "
                                "are not guarded", self.location.url(), self.name)
                    self._unsupported = True
                    return False
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
            log.info("taking over the stale lock of pid %s on %s (%.0fs old)",
                     holder.info.get("pid"), holder.info.get("host"), holder.age)
            try:
                self._etag = self._put(IfMatch=f'"{holder.etag}"')
                break
            except bexc.ClientError as exc:
                if error_code(exc) not in ("PreconditionFailed", "412",
                                           "ConditionalRequestConflict", "409", *NO_SUCH_OBJECT):
                    raise
                # another run took it over first, or its holder released it (and exited)
                # between our read and our take-over: look again
        else:
            raise ConcurrentUploadError(f"could not lock {self.name} in {self.location.url()}: "
                                        "other runs keep taking it; run one upload of a name at a "
                                        "time")
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self._etag = self._put(IfMatch=f'"{self._etag}"')
            except bexc.ClientError as exc:
                if error_code(exc) in ("PreconditionFailed", "412", *NO_SUCH_OBJECT):
                    self._lost = "another run took it over"
                    return
                log.warning("could not refresh %s: %s", self.key, error_code(exc))
            except bexc.BotoCoreError as exc:
                log.warning("could not refresh %s: %s", self.key, type(exc).__name__)

    def _head(self, attempts: int) -> HeadObjectOutputTypeDef:
        return with_attempts(lambda: self.client.head_object(Bucket=self.location.bucket,
                                                             Key=self.key),
                             attempts, f"check lock {self.key}")

    def check(self) -> None:
        """Raise unless the lock is still ours (called right before the manifest goes up)."""
        if self._unsupported or self._etag is None:
            return
        if self._lost is None:
            with s3_errors("check lock", self.location.bucket, self.key):
                try:
                    resp = self._head(self.attempts)
                    if str(resp.get("ETag", "")).strip('"').lower() != self._etag:
                        self._lost = "another run replaced it"
                except bexc.ClientError as exc:
                    if not is_not_found(exc, NO_SUCH_OBJECT):
                        raise
                    self._lost = "it was deleted"
        if self._lost is not None:
            raise ConcurrentUploadError(f"lost the lock on {self.name} in {self.location.url()} "
                                        f"({self._lost}) "
                                        "while uploading: another upload of the same name ran; "
                                        "re-run when it is done")

    def release(self) -> None:
        """Stop refreshing and delete the lock if it is still ours; never raises."""
        self._stop.set()
        if self._thread is not None:
            join_thread(self._thread)  # a renewal under way lands before the release
            self._thread = None
        if self._unsupported or not self._attempted:
            return
        attempts = max(self.attempts, RETRY_ATTEMPTS)
        try:
            if self._etag is None:
                # A signal (or a failure) between our create and its answer: the lock is ours
                # if it holds our token.
                holder = self._holder()
                if holder is None or holder.info.get("token") != self.info["token"]:
                    return
                self._etag = holder.etag
            etag = self._etag
            # One conditional DELETE (If-Match our ETag: S3's conditional deletes): deleted
            # only while it is still ours, in one round trip; a lock another run took over
            # answers 412 and stays.
            with_attempts(lambda: self.client.delete_object(Bucket=self.location.bucket,
                                                            Key=self.key, IfMatch=f'"{etag}"'),
                          attempts, f"unlock {self.key}")
        except bexc.ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412"):
                log.debug("not removing %s: another run holds it now", self.key)
            elif error_code(exc) in ("NotImplemented", "501"):
                self._release_unconditional_delete(attempts)
            elif not is_not_found(exc, NO_SUCH_OBJECT):
                self._left_behind(error_code(exc) or type(exc).__name__)
        except bexc.BotoCoreError as exc:
            self._left_behind(type(exc).__name__)
        self._etag = None
        self._attempted = False

    def _release_unconditional_delete(self, attempts: int) -> None:
        """Where DELETE takes no If-Match (an S3-compatible store): the lock is deleted when
        its HEAD still shows our ETag."""
        try:
            resp = self._head(attempts)
            if str(resp.get("ETag", "")).strip('"').lower() == self._etag:
                with_attempts(lambda: self.client.delete_object(Bucket=self.location.bucket,
                                                                Key=self.key),
                              attempts, f"unlock {self.key}")
        except bexc.ClientError as exc:
            if not is_not_found(exc, NO_SUCH_OBJECT):
                self._left_behind(error_code(exc) or type(exc).__name__)
        except bexc.BotoCoreError as exc:
            self._left_behind(type(exc).__name__)

    def _left_behind(self, reason: str) -> None:
        log.warning("could not remove the lock %s (%s): a run from this host takes it over, one "
                    "from another host waits up to %.0fs; delete it when no upload of %s runs",
                    self.location.url(self.name + LOCK_SUFFIX), reason, self.stale_after, self.name)

    def __enter__(self) -> UploadLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
