"""Multipart uploads' part order and upload ids as S3 answers them (patched into moto's S3, in
the server process).

AWS (the S3 API reference, CompleteMultipartUpload's and UploadPart's errors):

* CompleteMultipartUpload whose part list is not in ascending order of part number → 400
  ``InvalidPartOrder``, "The list of parts was not in ascending order. The parts list must be
  specified in order by part number." moto means to (its parser compares each number with the
  one before) but never moves past the first, so it completes any order — sorted by nothing,
  the object is its pieces in the order listed. A number listed twice is not ascending either.
* UploadPart, UploadPartCopy, ListParts, CompleteMultipartUpload and AbortMultipartUpload with
  an upload id the bucket does not have (never made, aborted, completed) → 404
  ``NoSuchUpload``. moto answers it for ListParts and AbortMultipartUpload and a 500 (a
  ``KeyError`` in its backend) for the other three; they get moto's own NoSuchUpload here.

Choice: the order is checked over the whole list before any part is looked at (the documented
errors do not say which of InvalidPartOrder and InvalidPart/EntityTooSmall comes first; a list
S3 cannot read in order is refused as a list). A Complete repeated after its upload completed
stays moto's (the object it made, as S3 answers a retried Complete).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

_installed = False


def in_order(parts: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """The parts as listed, once all of them are known to ascend by part number."""
    from moto.s3.exceptions import InvalidPartOrder

    listed = list(parts)
    for (before, _), (after, _) in itertools.pairwise(listed):
        if after <= before:
            raise InvalidPartOrder()
    return iter(listed)


def install() -> None:
    """Patch moto's S3 (idempotent; in the process that runs the server)."""
    global _installed
    if _installed:
        return
    from moto.s3.exceptions import NoSuchUpload
    from moto.s3.models import S3Backend
    from moto.s3.responses import S3Response

    orig_parts = S3Response._complete_multipart_body

    @functools.wraps(orig_parts)
    def _complete_multipart_body(self: Any, body: bytes) -> Iterator[tuple[int, str]]:
        return in_order(orig_parts(self, body))

    def existing(method: Any) -> Any:
        """``method(self, bucket_name, multipart_id, ...)`` once the upload is known to exist."""
        @functools.wraps(method)
        def wrapper(self: Any, bucket_name: str, multipart_id: str, *args: Any,
                    **kwargs: Any) -> Any:
            if multipart_id not in self.get_bucket(bucket_name).multiparts:
                raise NoSuchUpload(upload_id=multipart_id)
            return method(self, bucket_name, multipart_id, *args, **kwargs)
        return wrapper

    S3Response._complete_multipart_body = _complete_multipart_body  # type: ignore[method-assign]
    for name in ("upload_part", "upload_part_copy", "complete_multipart_upload"):
        setattr(S3Backend, name, existing(getattr(S3Backend, name)))
    _installed = True
