"""A part as a multipart upload of two pieces on two streams.

The last part of a streaming upload can only start once it is cut, and one stream carries it
at one stream's bandwidth: on a WAN its transfer is the run's tail. Two pieces (S3's minimum
piece is 5 MiB except the last; see ``etags.piece_sizes``) on two streams halve it, for two
short requests more (create, complete). Each piece goes with its Content-MD5, and the
completed object's ETag must be the one ``etags`` computes from the pieces' MD5s.

An upload that fails or is stopped is aborted (AbortMultipartUpload), so no hidden, billed
pieces stay behind; one left by a killed process is removed by the next publication of that
bundle name (``publish``'s clean-up).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from functools import partial
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bexc

from ..aws import error_code
from ..errors import BundlerError, IntegrityError
from ..signalsafe import Event
from .etags import MD5_METADATA, multipart_etag, piece_sizes, says_not_md5
from .objects import _Corrupt, s3_errors, with_attempts

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.s3")

# Runs a piece's upload on another thread; returns its future.
Submit = Callable[[Callable[[], str]], "Future[str]"]


class Stopped(BundlerError):
    """The writer was stopped (its sink aborted) before the upload completed: aborted."""


def put_in_pieces(client: S3Client, bucket: str, key: str, data: bytes, *, acl: str | None,
                  attempts: int, submit: Submit, streams: AbstractContextManager[object],
                  stopping: Event | None = None,
                  md5: bytes | None = None) -> tuple[str, bytes]:
    """Upload ``data`` as two pieces, the second on ``submit``'s thread, each while holding
    one of ``streams`` (the writer's bound on requests carrying bytes); returns the ETag and
    the whole part's MD5, which is recorded in its metadata (``etags.MD5_METADATA``): ``md5``
    when the caller knows it, else computed here, in the same pass as the first piece's while
    the second piece's is computed on its own thread. Aborted on any failure, and instead of
    completing when ``stopping`` is set."""
    sizes = piece_sizes(len(data))
    # botocore adds Expect: 100-continue to any upload of a file (a round trip more per
    # piece), in a handler of "before-call.s3", which runs after those of UploadPart's own
    # event; a bytes-like body, what a piece was before it was a view, goes without, and so
    # does ours (only ours: ``_no_expect`` looks at the body). Registered once per client.
    client.meta.events.register_last("before-call.s3", _no_expect,
                                     unique_id="ami-bundler-piece-no-expect")
    if sizes is None:
        raise ValueError(f"{len(data)} bytes cannot be split into pieces")
    view = memoryview(data)
    pieces = [view[:sizes[0]], view[sizes[0]:]]
    params: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if acl:
        params["ACL"] = acl
    what = f"upload s3://{bucket}/{key}"
    md5s: list[bytes] = [b"", b""]
    upload_id: list[str] = []  # set once created; empty when the create failed
    created = threading.Event()

    def piece(number: int) -> str:
        view = pieces[number - 1]
        if not md5s[number - 1]:
            md5s[number - 1] = hashlib.md5(view).digest()
        digest = md5s[number - 1]
        created.wait()  # the create's answer comes while the digests are computed
        if not upload_id:
            return ""  # the create failed: that failure is the caller's to report

        def attempt() -> str:
            resp = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id[0],
                                      PartNumber=number, Body=_Body(view),  # type: ignore[arg-type]
                                      ContentMD5=base64.b64encode(digest).decode("ascii"))
            etag = str(resp.get("ETag", "")).strip('"').lower()
            if etag != digest.hex() and not says_not_md5(resp):  # SSE-KMS: no MD5 ETag
                raise _Corrupt(f"piece {number} has ETag {etag}, not the MD5 {digest.hex()} "
                               "sent")
            return etag

        with streams, s3_errors("upload", bucket, key, acl=acl):
            return with_attempts(attempt, attempts, f"{what} (piece {number})")

    # The second piece's digest (then its upload, once created) on its own thread; the whole
    # part's here, the first piece's on the way (an MD5 object's digest so far is the first
    # piece's), so that the create, which records the whole part's, waits for one pass only.
    second: Future[str] = submit(partial(piece, 2))
    try:
        if md5 is None:
            whole = hashlib.md5(pieces[0])
            md5s[0] = whole.digest()
            whole.update(pieces[1])
            md5 = whole.digest()
        params["Metadata"] = {MD5_METADATA: md5.hex()}
        with s3_errors("upload", bucket, key, acl=acl):
            answer = with_attempts(lambda: client.create_multipart_upload(**params), attempts,
                                   what)
        upload_id.append(answer["UploadId"])
    except BaseException:
        created.set()  # the second piece ends without sending
        _wait_for(second)
        raise
    created.set()
    try:
        first = piece(1)
        last = second.result()
        if stopping is not None and stopping.is_set():
            raise Stopped(f"{what}: stopped before it completed")
        expected = multipart_etag(md5s)
        return _complete(client, bucket, key, upload_id[0], [first, last], expected,
                         acl=acl, attempts=attempts), md5
    except _Corrupt as exc:
        _abort(client, bucket, key, upload_id[0], second)
        raise IntegrityError(f"{what}: {exc}; check memory/network") from None
    except BaseException:
        _abort(client, bucket, key, upload_id[0], second)
        raise


class _Body:
    """A piece as a file whose reads are views of the part: no copy of its bytes. (botocore
    takes bytes, bytearray or a file as a body, not a view; urllib3 sends whatever it reads
    as it is. Seekable, for botocore's retries and its payload hash over plain HTTP.)"""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._at = 0

    def __len__(self) -> int:
        return len(self._view)

    def read(self, size: int | None = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else min(len(self._view),
                                                                   self._at + size)
        chunk = self._view[self._at:end]
        self._at = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._at, len(self._view))[whence]
        self._at = max(0, min(len(self._view), base + offset))
        return self._at

    def tell(self) -> int:
        return self._at


def _no_expect(params: dict[str, Any], **kwargs: Any) -> None:
    if isinstance(params.get("body"), _Body):
        params["headers"].pop("Expect", None)


def _complete(client: S3Client, bucket: str, key: str, upload_id: str, etags: list[str],
              expected: str, *, acl: str | None, attempts: int) -> str:
    done = {"Parts": [{"ETag": f'"{e}"', "PartNumber": n} for n, e in enumerate(etags, 1)]}
    tried = [0]

    def attempt() -> str:
        tried[0] += 1
        try:
            resp = client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                    MultipartUpload=done)  # type: ignore[arg-type]
        except bexc.ClientError as exc:
            # An earlier attempt completed it but its answer was lost: the object says so.
            if tried[0] > 1 and error_code(exc) == "NoSuchUpload":
                head = client.head_object(Bucket=bucket, Key=key)
                resp = head  # type: ignore[assignment]
            else:
                raise
        etag = str(resp.get("ETag", "")).strip('"').lower()
        if etag != expected and not says_not_md5(resp):
            raise _Corrupt(f"ETag {etag} is not {expected}, the one of the pieces sent")
        return etag

    with s3_errors("upload", bucket, key, acl=acl):
        return with_attempts(attempt, attempts, f"complete s3://{bucket}/{key}")


def _wait_for(second: Future[str] | None) -> None:
    """Until the second piece is no longer being sent (cancelled if it has not started)."""
    if second is not None:
        second.cancel()
        try:
            second.exception()  # waits for a piece in flight
        except BaseException:  # cancelled: nothing in flight
            pass


def _abort(client: S3Client, bucket: str, key: str, upload_id: str,
           second: Future[str] | None) -> None:
    """Abort the upload once its second piece is no longer being sent (never raises: the
    failure that brought us here is what the caller reports)."""
    _wait_for(second)
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except Exception as exc:
        log.warning("could not abort the multipart upload of s3://%s/%s (%s): a lifecycle rule "
                    "(AbortIncompleteMultipartUpload) or the next upload of that bundle removes "
                    "it", bucket, key, error_code(exc) or type(exc).__name__)


def recorded_md5(client: S3Client, bucket: str, key: str) -> str | None:
    """The whole part's MD5 a two-piece upload recorded in its metadata (None: none there)."""
    with s3_errors("check", bucket, key):
        head = with_attempts(lambda: client.head_object(Bucket=bucket, Key=key), 2,
                             f"check s3://{bucket}/{key}")
    value = head.get("Metadata", {}).get(MD5_METADATA)
    return str(value).lower() if value else None


def open_uploads(client: S3Client, bucket: str, prefix: str) -> list[tuple[str, str]]:
    """(key, upload id) of every multipart upload in progress under ``prefix``."""
    found: list[tuple[str, str]] = []
    with s3_errors("list multipart uploads in", bucket, prefix):
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket,
                                                                        Prefix=prefix)
        for page in pages:
            found += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
    return found


def abort_upload(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """AbortMultipartUpload; one that is already gone is what was wanted."""
    with s3_errors("abort the multipart upload of", bucket, key):
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except bexc.ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                raise
