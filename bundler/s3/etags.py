"""What an S3 ETag says about an object's bytes: the one owner of "does this object hold these
bytes".

A part goes up either as one PUT — its ETag is then the MD5 of its bytes — or, when its
transfer is the run's tail, as a multipart upload of two pieces split by ``piece_sizes`` — its
ETag is then, as S3 computes it, the MD5 of the two pieces' MD5s followed by ``-2``. Both are
computed here from the bytes (and the split), so a listing tells whether an object holds given
bytes in either form. Any other ETag (SSE-KMS or SSE-C objects, other splits, other tools'
multipart uploads) proves nothing: never "the same".

A server-side copy (CopyObject) of a multipart object is a single-operation object: its ETag is
the plain MD5 again (S3's Object.ETag documentation: objects created by PUT, POST or Copy and
not encrypted with SSE-KMS/SSE-C have an MD5 ETag; multipart uploads never do). So a two-piece
upload also records the part's MD5 in its metadata (``MD5_METADATA``, kept by copies): a copy
that resumes without the bytes proves the destination's MD5 ETag against it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# S3's smallest multipart piece, except the last one.
PIECE_MIN = 5 * 1024 * 1024
PIECES = 2

_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART = re.compile(r"^[0-9a-f]{32}-([0-9]+)$")

# User metadata (x-amz-meta-…) of a two-piece upload: the hex MD5 of the whole part.
MD5_METADATA = "ami-bundler-md5"

# The bytes of an object, read only when its ETag cannot be compared without them.
BytesReader = Callable[[], bytes]


def piece_sizes(size: int) -> tuple[int, int] | None:
    """The sizes of the two pieces a part of ``size`` bytes goes up in, or None when it cannot
    be split (every piece but the last must hold at least 5 MiB). The first piece takes half,
    rounded up, and never less than the minimum: deterministic, so the ETag can be recomputed
    from the bytes alone."""
    if size <= PIECE_MIN:
        return None
    first = max(PIECE_MIN, (size + 1) // 2)
    return first, size - first


def multipart_etag(piece_md5s: Sequence[bytes]) -> str:
    """S3's ETag of a multipart upload whose pieces have these MD5s."""
    return f"{hashlib.md5(b''.join(piece_md5s)).hexdigest()}-{len(piece_md5s)}"


def pieces_etag(data: bytes | memoryview) -> str | None:
    """The ETag ``data`` gets when uploaded in the two pieces ``piece_sizes`` gives (None: it
    is never uploaded that way)."""
    sizes = piece_sizes(len(data))
    if sizes is None:
        return None
    view = memoryview(data)
    return multipart_etag([hashlib.md5(view[:sizes[0]]).digest(),
                           hashlib.md5(view[sizes[0]:]).digest()])


def says_not_md5(resp: Mapping[str, Any]) -> bool:
    """Whether S3's answer (PUT, UploadPart, Complete, Copy, HEAD, GET) says the object is
    SSE-KMS, DSSE-KMS or SSE-C encrypted: its ETag is then not an MD5 of its bytes (nor its
    pieces' ETags), so it proves nothing — S3 checked Content-MD5 on the way in; the parts'
    SHA-1s in the manifest prove the bytes."""
    return (resp.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse")
            or bool(resp.get("SSECustomerAlgorithm")))


def is_md5(etag: str) -> bool:
    return bool(_MD5.match(etag))


def is_pieces(etag: str) -> bool:
    """Whether ``etag`` has the form of our two-piece uploads (``<md5 of md5s>-2``)."""
    found = _MULTIPART.match(etag)
    return found is not None and int(found.group(1)) == PIECES


def holds(listed: tuple[int, str] | None, size: int, etag: str, *,
          data: BytesReader | None = None, md5: str | None = None) -> bool:
    """Whether an object listed as ``listed`` (size, ETag) holds the bytes known as (``size``,
    ``etag``) — ``etag`` in either form. The same form compares directly; a listing in the
    other form is decided from the bytes when ``data`` can read them, or, for an MD5 listing,
    from ``md5``, the bytes' MD5 a two-piece upload recorded (else: not proved, so not the
    same — the caller uploads or copies again, which is never wrong)."""
    if listed is None or listed[0] != size:
        return False
    have = listed[1]
    if have == etag:  # the same MD5, or the same pieces' MD5s: the same bytes
        return is_md5(have) or _MULTIPART.match(have) is not None
    if md5 is not None and is_md5(have) and is_pieces(etag):
        return md5.lower() == have
    if data is None:
        return False
    if is_pieces(have) and is_md5(etag):
        return pieces_etag(data()) == have
    if is_md5(have) and is_pieces(etag):
        return hashlib.md5(data()).hexdigest() == have
    return False
