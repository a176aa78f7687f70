"""Tar writer for the bundle's single-member archive: GNU headers, padding, end of archive, sizes.

Produces exactly the bytes GNU tar 1.34 writes for
``tar -c -h -S --owner 0 --group 0 -C dir NAME`` (GNU format, blocking factor 20), given the
member's metadata and its data regions; the caller streams the region data itself.  Nothing here
needs the data, so headers and sizes for a 10 GiB image cost microseconds.  The field layout is
:mod:`bundler.tarformat`'s; the reader is :mod:`bundler.tarreader`.

Pure: no file system access.  Spec: bundle-format.md §1.2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UsageError
from .tarformat import (
    BLOCK,
    CHKSUM,
    EXT_ISEXTENDED,
    GID,
    GNAME,
    GNU_MAGIC,
    GNUTYPE_LONGNAME,
    GNUTYPE_SPARSE,
    ISEXTENDED,
    LONGLINK_NAME,
    MAGIC,
    MAX_OFFSET,
    MODE,
    MTIME,
    NAME,
    REALSIZE,
    RECORD,
    REGTYPE,
    SIZE,
    SPARSE,
    SPARSE_ENTRY,
    SPARSE_NUMBER,
    SPARSES_IN_EXTENSION,
    SPARSES_IN_HEADER,
    TYPEFLAG,
    UID,
    UNAME,
    header_checksum,
    width,
)


@dataclass(frozen=True)
class MemberInfo:
    """Metadata of the one member the bundle's archive holds."""

    name: str  # plain basename
    size: int  # real (apparent) file size
    mode: int = 0o644
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = "root"
    gname: str = "root"


def _encode_num(value: int, nbytes: int, what: str) -> bytes:
    """GNU tar's to_chars(): octal + NUL when it fits in nbytes-1 digits, else base-256."""
    if value < 0:
        raise UsageError(f"tar header field {what} cannot be negative ({value})")
    if value < 8 ** (nbytes - 1):
        return b"%0*o\x00" % (nbytes - 1, value)
    # Base-256: first byte 0x80 marks it, the remaining nbytes-1 bytes hold the value big-endian.
    if value >= 256 ** (nbytes - 1):
        raise UsageError(f"tar header field {what} too large ({value})")
    return b"\x80" + value.to_bytes(nbytes - 1, "big")


def _put_num(block: bytearray, field: slice, value: int, what: str) -> None:
    block[field] = _encode_num(value, width(field), what)


def _put_text(block: bytearray, field: slice, raw: bytes) -> None:
    """Store raw at the start of the field; the rest stays NUL (none left when it fills it)."""
    block[field.start : field.start + len(raw)] = raw


def _set_checksum(block: bytearray) -> None:
    """Store the ustar checksum the way GNU tar does: six octal digits, NUL, space."""
    block[CHKSUM] = b"%06o\x00 " % header_checksum(block)


def _encode_name(text: str, what: str, limit: int | None = None) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if b"\x00" in raw:
        raise UsageError(f"tar {what} {text!r} contains a NUL byte")
    if limit is not None and len(raw) > limit:
        raise UsageError(f"tar {what} {text!r} is longer than {limit} bytes")
    return raw


def _base_header(
    name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
    typeflag: bytes, uname: bytes, gname: bytes,
) -> bytearray:
    """A GNU-format header block with everything but the checksum (and sparse fields) filled in."""
    block = bytearray(BLOCK)
    # GNU copies at most 100 bytes and omits the NUL when the name fills the field.
    _put_text(block, NAME, name[: width(NAME)])
    _put_num(block, MODE, mode, "mode")
    _put_num(block, UID, uid, "uid")
    _put_num(block, GID, gid, "gid")
    _put_num(block, SIZE, size, "size")
    _put_num(block, MTIME, mtime, "mtime")
    block[TYPEFLAG] = typeflag
    block[MAGIC] = GNU_MAGIC
    _put_text(block, UNAME, uname)
    _put_text(block, GNAME, gname)
    # devmajor/devminor, atime/ctime and the rest stay zero: GNU only fills them for devices
    # or --incremental, and never for this pipeline's regular file.
    return block


def _validate_info(info: MemberInfo) -> None:
    if not info.name or "/" in info.name or info.name in (".", ".."):
        raise UsageError(f"tar member name must be a plain file name, got {info.name!r}")
    if not 0 <= info.size <= MAX_OFFSET:
        raise UsageError(f"tar member size {info.size} is out of range")
    if not 0 <= info.mode <= 0o7777:
        # GNU format stores permission bits only (mode_to_chars drops S_IFMT).
        raise UsageError(f"tar member mode {info.mode:o} has bits outside 07777")


def gnu_sparse_map(
    info: MemberInfo, regions: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The (offset, numbytes) list GNU tar 1.34 stores for a file with these data regions.

    GNU's SEEK_DATA/SEEK_HOLE scan always ends with an empty region at the real size (its way of
    recording the file length; for an all-hole file it is the only entry), so we append it.
    Zero-length input regions carry no data and GNU's scan never yields them, so they are dropped.
    """
    result: list[tuple[int, int]] = []
    prev_end = 0
    for item in regions:
        offset, length = item
        if offset < 0 or length < 0:
            raise UsageError(f"sparse region {item} has a negative offset or length")
        if offset < prev_end:
            raise UsageError(f"sparse regions must be sorted and non-overlapping (at {item})")
        if offset + length > info.size:
            raise UsageError(f"sparse region {item} extends past the file size {info.size}")
        if length:
            result.append((offset, length))
            prev_end = offset + length
    result.append((info.size, 0))
    return result


def _long_name_blocks(raw_name: bytes) -> bytes:
    """GNU tar's ././@LongLink 'L' member carrying a name longer than 100 bytes."""
    data = raw_name + b"\x00"
    # GNU's start_private_header: mode 0644, ids 0, mtime 0, owner names of id 0.
    block = _base_header(
        LONGLINK_NAME, 0o644, 0, 0, len(data), 0, GNUTYPE_LONGNAME, b"root", b"root"
    )
    _set_checksum(block)
    return bytes(block) + data + data_padding(len(data))


def member_header(info: MemberInfo, regions: Sequence[tuple[int, int]] | None = None) -> bytes:
    """All header bytes that precede the member's data (long-name member, header, sparse blocks).

    regions=None: plain regular file (typeflag '0'), data is the whole file.
    regions=[(offset, length), ...]: old-GNU sparse member (typeflag 'S'); the data that follows
    is the regions' bytes concatenated in order.
    """
    _validate_info(info)
    raw_name = _encode_name(info.name, "member name")
    uname = _encode_name(info.uname, "user name", width(UNAME))
    gname = _encode_name(info.gname, "group name", width(GNAME))
    prefix = _long_name_blocks(raw_name) if len(raw_name) > width(NAME) else b""

    if regions is None:
        block = _base_header(
            raw_name, info.mode, info.uid, info.gid, info.size, info.mtime, REGTYPE, uname, gname
        )
        _set_checksum(block)
        return prefix + bytes(block)

    smap = gnu_sparse_map(info, regions)
    stored = sum(length for _, length in smap)
    block = _base_header(
        raw_name, info.mode, info.uid, info.gid, stored, info.mtime, GNUTYPE_SPARSE, uname, gname
    )
    _put_num(block, REALSIZE, info.size, "realsize")
    _store_sparse(block, SPARSE, smap[:SPARSES_IN_HEADER])
    rest = smap[SPARSES_IN_HEADER:]
    block[ISEXTENDED] = 1 if rest else 0  # GNU stores the C bool, i.e. byte 0x01
    _set_checksum(block)

    out = [prefix, bytes(block)]
    while rest:
        ext = bytearray(BLOCK)
        _store_sparse(ext, 0, rest[:SPARSES_IN_EXTENSION])
        rest = rest[SPARSES_IN_EXTENSION:]
        ext[EXT_ISEXTENDED] = 1 if rest else 0
        out.append(bytes(ext))  # extension blocks carry no checksum
    return b"".join(out)


def _store_sparse(block: bytearray, start: int, entries: Sequence[tuple[int, int]]) -> None:
    pos = start
    for offset, length in entries:
        mid = pos + SPARSE_NUMBER
        block[pos:mid] = _encode_num(offset, SPARSE_NUMBER, "sparse offset")
        block[mid : pos + SPARSE_ENTRY] = _encode_num(length, SPARSE_NUMBER, "sparse numbytes")
        pos += SPARSE_ENTRY


def stored_size(info: MemberInfo, regions: Sequence[tuple[int, int]] | None = None) -> int:
    """Number of data bytes the member stores in the archive (before block padding)."""
    if regions is None:
        return info.size
    return sum(length for _, length in gnu_sparse_map(info, regions))


def data_padding(length: int) -> bytes:
    """Zeros that pad length bytes of member data to the next 512-byte boundary."""
    return bytes(-length % BLOCK)


def _end_length(bytes_so_far: int) -> int:
    if bytes_so_far < 0 or bytes_so_far % BLOCK:
        raise UsageError(f"archive length {bytes_so_far} is not a whole number of tar blocks")
    return 2 * BLOCK + (-(bytes_so_far + 2 * BLOCK) % RECORD)


def end_of_archive(bytes_so_far: int) -> bytes:
    """Two zero blocks, then zeros up to a multiple of RECORD, exactly as GNU tar's write_eot."""
    return bytes(_end_length(bytes_so_far))


def archive_size(info: MemberInfo, regions: Sequence[tuple[int, int]] | None = None) -> int:
    """Total length of the one-member archive, computed without touching any data."""
    data = stored_size(info, regions)
    body = len(member_header(info, regions)) + data + (-data % BLOCK)
    return body + _end_length(body)
