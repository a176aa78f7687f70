"""CompleteMultipartUpload's object assembled with one copy of its bytes instead of moto's five.

moto 5.2.5's ``FakeMultipart.complete`` reads every piece twice (``part.value``), extends one
bytearray with them for the object and a second one (``MultipartChecksumBuilder.complete_object``)
for its full-object checksum — which it computes on every upload, CRC64NVME (or, without awscrt,
CRC32) when none was asked for — and then copies both into ``bytes``. For a 10 MiB object that
is ~50 MiB of copying, more than half the stand-in's CPU while the tool installs a bundle, on the
same 2 cores as the tool. Here each piece is read once, joined once, and the full-object checksum
is computed over that joined object: the same checks in the same order (InvalidPart,
EntityTooSmall, MalformedXML for no parts), the same ETag and checksum, the same bytes. The
checksum rule stays moto's (its builder, given the object instead of building its own copy).
``test_strict_complete`` compares the answers with moto's own over many uploads.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Iterator
from typing import Any

_installed = False
# moto's own FakeMultipart.complete, kept when it is replaced (the tests compare the two)
moto_complete: Any = None


def complete(self: Any, body: Iterator[tuple[int, str]]) -> tuple[bytes, str, Any]:
    """``FakeMultipart.complete``: (the object, its ``md5-of-md5s-N`` ETag, the checksum
    details moto's builder gives), or moto's exception for the first piece it refuses."""
    from moto.s3 import models
    from moto.s3.exceptions import EntityTooSmall, InvalidPart, MalformedXML

    values: list[bytes] = []
    md5s: list[bytes] = []
    last = None
    for number, etag in body:  # lazily: a refusal comes at the piece moto's comes at
        part = self.parts.get(number)
        part_etag = None
        if part is not None:
            part_etag = part.etag.replace('"', "")
            etag = etag.replace('"', "")
        if part is None or part_etag != etag:
            raise InvalidPart()
        minimum = models.S3_UPLOAD_PART_MIN_SIZE  # type: ignore[attr-defined]
        if last is not None and last.contentsize < minimum:  # read now: tests lower it
            raise EntityTooSmall()
        md5s.append(binascii.a2b_hex(part_etag))  # what moto's hex_codec decoder does
        values.append(part.value)  # read once (moto reads each piece twice)
        last = part
    if not values:
        raise MalformedXML
    whole = b"".join(values)
    builder = models.MultipartChecksumBuilder(self.metadata.get("x-amz-checksum-algorithm"),
                                              self.metadata.get("x-amz-checksum-type"))
    if builder.checksum_type == "COMPOSITE":
        for value in values:  # the pieces' own digests: no copy of the object
            builder.addPart(value)
    else:
        # The builder's copy of the object would be these very bytes: it gets them instead
        # (bytes(whole) in its build() is whole itself, not a copy).
        builder.complete_object = whole  # type: ignore[assignment]
        builder.part_count = len(values)
    etag = f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(values)}"
    return whole, etag, builder.build()


def install() -> None:
    """Patch moto's FakeMultipart (idempotent; in the process that runs the server)."""
    global _installed, moto_complete
    if _installed:
        return
    from moto.s3.models import FakeMultipart

    moto_complete = FakeMultipart.complete
    FakeMultipart.complete = complete  # type: ignore[method-assign]
    _installed = True
