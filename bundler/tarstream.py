"""Tar framing for the bundle's single-member archive: GNU headers out, tolerant parsing in.

Writer: produces exactly the bytes GNU tar 1.34 writes for
``tar -c -h -S --owner 0 --group 0 -C dir NAME`` (GNU format, blocking factor 20), given the
member's metadata and its data regions; the caller streams the region data itself.  Nothing here
needs the data, so headers and sizes for a 10 GiB image cost microseconds.

Reader: pulls from any ``read(n)`` stream and understands old-GNU sparse, PAX sparse 0.0/0.1/1.0,
plain GNU/ustar members, base-256 numbers, GNU long names and PAX ``path``.  Every malformation
becomes an :class:`ArchiveError`; reads are bounded so hostile headers cannot make it allocate
or loop without consuming input.

Pure: no file system access.  Spec: bundle-format.md §1.2 and §5.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bundler.errors import ArchiveError, UsageError

log = logging.getLogger("bundler.tarstream")

BLOCK = 512
RECORD = 10240  # GNU default blocking factor 20

# off_t is signed 64-bit in GNU tar; anything larger cannot be a real file size or offset.
MAX_OFFSET = (1 << 63) - 1

_GNU_MAGIC = b"ustar  \x00"  # magic + version as GNU tar's --format=gnu writes them
_USTAR_MAGIC = b"ustar\x0000"
_LONGLINK_NAME = b"././@LongLink"
_SPARSES_IN_HEADER = 4
_SPARSES_IN_EXTENSION = 21
_NAME_LEN = 100

# Header field offsets (POSIX ustar / old GNU layout).
_OFF_MODE, _OFF_UID, _OFF_GID, _OFF_SIZE, _OFF_MTIME = 100, 108, 116, 124, 136
_OFF_CHKSUM, _OFF_TYPE, _OFF_LINKNAME, _OFF_MAGIC = 148, 156, 157, 257
_OFF_UNAME, _OFF_GNAME, _OFF_PREFIX = 265, 297, 345
_OFF_SPARSE, _OFF_ISEXT, _OFF_REALSIZE = 386, 482, 483
_OFF_EXT_ISEXT = 504

_REGULAR_TYPES = frozenset({b"0", b"\x00", b"7", b"S"})
_DIRTYPE = b"5"
_META_TYPES = frozenset({b"L", b"K", b"x", b"g", b"X"})


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


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


def _encode_num(value: int, width: int, what: str) -> bytes:
    """GNU tar's to_chars(): octal + NUL when it fits in width-1 digits, else base-256."""
    if value < 0:
        raise UsageError(f"tar header field {what} cannot be negative ({value})")
    if value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    # Base-256: first byte 0x80 marks it, the remaining width-1 bytes hold the value big-endian.
    if value >= 256 ** (width - 1):
        raise UsageError(f"tar header field {what} too large ({value})")
    return b"\x80" + value.to_bytes(width - 1, "big")


def _set_checksum(block: bytearray) -> None:
    """Store the ustar checksum the way GNU tar does: six octal digits, NUL, space."""
    block[_OFF_CHKSUM : _OFF_CHKSUM + 8] = b" " * 8
    block[_OFF_CHKSUM : _OFF_CHKSUM + 8] = b"%06o\x00 " % sum(block)


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
    block[0 : min(len(name), _NAME_LEN)] = name[:_NAME_LEN]
    block[_OFF_MODE : _OFF_MODE + 8] = _encode_num(mode, 8, "mode")
    block[_OFF_UID : _OFF_UID + 8] = _encode_num(uid, 8, "uid")
    block[_OFF_GID : _OFF_GID + 8] = _encode_num(gid, 8, "gid")
    block[_OFF_SIZE : _OFF_SIZE + 12] = _encode_num(size, 12, "size")
    block[_OFF_MTIME : _OFF_MTIME + 12] = _encode_num(mtime, 12, "mtime")
    block[_OFF_TYPE : _OFF_TYPE + 1] = typeflag
    block[_OFF_MAGIC : _OFF_MAGIC + 8] = _GNU_MAGIC
    block[_OFF_UNAME : _OFF_UNAME + len(uname)] = uname
    block[_OFF_GNAME : _OFF_GNAME + len(gname)] = gname
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
    block = _base_header(_LONGLINK_NAME, 0o644, 0, 0, len(data), 0, b"L", b"root", b"root")
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
    uname = _encode_name(info.uname, "user name", 32)
    gname = _encode_name(info.gname, "group name", 32)
    prefix = _long_name_blocks(raw_name) if len(raw_name) > _NAME_LEN else b""

    if regions is None:
        block = _base_header(
            raw_name, info.mode, info.uid, info.gid, info.size, info.mtime, b"0", uname, gname
        )
        _set_checksum(block)
        return prefix + bytes(block)

    smap = gnu_sparse_map(info, regions)
    stored = sum(length for _, length in smap)
    block = _base_header(
        raw_name, info.mode, info.uid, info.gid, stored, info.mtime, b"S", uname, gname
    )
    block[_OFF_REALSIZE : _OFF_REALSIZE + 12] = _encode_num(info.size, 12, "realsize")
    _store_sparse(block, _OFF_SPARSE, smap[:_SPARSES_IN_HEADER])
    rest = smap[_SPARSES_IN_HEADER:]
    block[_OFF_ISEXT] = 1 if rest else 0  # GNU stores the C bool, i.e. byte 0x01
    _set_checksum(block)

    out = [prefix, bytes(block)]
    while rest:
        ext = bytearray(BLOCK)
        _store_sparse(ext, 0, rest[:_SPARSES_IN_EXTENSION])
        rest = rest[_SPARSES_IN_EXTENSION:]
        ext[_OFF_EXT_ISEXT] = 1 if rest else 0
        out.append(bytes(ext))  # extension blocks carry no checksum
    return b"".join(out)


def _store_sparse(block: bytearray, start: int, entries: Sequence[tuple[int, int]]) -> None:
    pos = start
    for offset, length in entries:
        block[pos : pos + 12] = _encode_num(offset, 12, "sparse offset")
        block[pos + 12 : pos + 24] = _encode_num(length, 12, "sparse numbytes")
        pos += 24


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


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One archive member as the reader sees it, after long-name/PAX/sparse headers are applied."""

    name: str
    size: int  # real size
    mode: int
    mtime: int
    typeflag: bytes
    regions: list[tuple[int, int]]  # data regions in file offsets; [(0, size)] for plain members
    stored_size: int = 0  # data bytes in the archive (sum of region lengths)
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    sparse_format: str = ""  # "", "oldgnu", "0.0", "0.1" or "1.0"
    header_offset: int = field(default=0, repr=False)  # stream offset of the first header block


def is_regular(member: Member) -> bool:
    """True for a regular-file member (plain, contiguous or sparse), whatever its format."""
    return member.typeflag in _REGULAR_TYPES


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(raw: bytes) -> bytes:
    end = raw.find(b"\x00")
    return raw if end < 0 else raw[:end]


def _parse_num(raw: bytes, what: str, where: str, *, signed: bool = False) -> int:
    """Decode an octal or GNU base-256 numeric header field."""
    if raw[0] & 0x80:
        if raw[0] not in (0x80, 0xFF):
            raise ArchiveError(f"malformed base-256 {what} in {where}: archive corrupted")
        value = int.from_bytes(raw[1:], "big")
        if raw[0] == 0xFF:
            value -= 256 ** (len(raw) - 1)
    else:
        text = _cstr(raw).strip(b" ")
        if not text:
            return 0
        if not all(0x30 <= c <= 0x37 for c in text):
            raise ArchiveError(f"non-numeric {what} field {raw!r} in {where}: archive corrupted")
        value = int(text, 8)
    if value < 0 and not signed:
        raise ArchiveError(f"negative {what} ({value}) in {where}: archive corrupted")
    if abs(value) > MAX_OFFSET:
        raise ArchiveError(f"absurd {what} ({value}) in {where}: archive corrupted")
    return value


def _parse_decimal(text: bytes, what: str, where: str) -> int:
    # PAX and sparse-1.0 numbers are plain decimal; cap the length so int() stays cheap.
    if not text or len(text) > 19 or not text.isdigit():
        raise ArchiveError(f"non-numeric {what} {text[:40]!r} in {where}: archive corrupted")
    value = int(text)
    if value > MAX_OFFSET:
        raise ArchiveError(f"absurd {what} ({value}) in {where}: archive corrupted")
    return value


def _parse_pax(data: bytes, where: str) -> list[tuple[str, bytes]]:
    """Split PAX extended-header records ("LEN key=value\\n"), keeping order and repeats."""
    records: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers NUL-pad the record area; nothing can follow
            if any(data[pos:]):
                raise ArchiveError(f"malformed PAX header in {where}: archive corrupted")
            break
        space = data.find(b" ", pos, pos + 21)
        if space < 0:
            raise ArchiveError(f"malformed PAX record length in {where}: archive corrupted")
        length = _parse_decimal(data[pos:space], "PAX record length", where)
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise ArchiveError(f"malformed PAX record in {where}: archive corrupted")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise ArchiveError(f"malformed PAX record (no key=value) in {where}: archive corrupted")
        records.append((_decode_text(key), value))
        pos = end
    return records


def _check_map(
    smap: Sequence[tuple[int, int]], realsize: int, stored: int, where: str
) -> list[tuple[int, int]]:
    """Validate a sparse map against the real and stored sizes; return its data regions."""
    regions: list[tuple[int, int]] = []
    prev_end = 0
    total = 0
    for offset, length in smap:
        if offset < prev_end:
            raise ArchiveError(
                f"sparse map of {where} is unsorted or overlapping at offset {offset}: "
                "archive corrupted"
            )
        if offset + length > realsize:
            raise ArchiveError(
                f"sparse region ({offset}, {length}) of {where} lies outside its real size "
                f"{realsize}: archive corrupted"
            )
        prev_end = offset + length
        total += length
        if length:
            regions.append((offset, length))
    if total != stored:
        raise ArchiveError(
            f"sparse map of {where} describes {total} data bytes but the member stores {stored}: "
            "archive corrupted"
        )
    return regions


class Readable(Protocol):
    """All a tar reader needs from its stream (a file, a pipe, the decrypted bundle stream)."""

    def read(self, size: int = -1, /) -> bytes: ...


class TarReader:
    """Streaming tar reader: ``next_member()``, then ``iter_data()``, repeat; ``drain()`` at end."""

    def __init__(self, stream: Readable, *, max_header_blocks: int = 4096) -> None:
        self._stream = stream
        self._max_blocks = max_header_blocks
        self._pos = 0  # bytes consumed from the stream
        self._member: Member | None = None
        self._region_index = 0
        self._region_done = 0
        self._pad_left = 0
        self._ended = False
        self._end_offset = 0
        self._drained = False

    @property
    def position(self) -> int:
        """Bytes consumed from the stream so far."""
        return self._pos

    # -- low-level reads ----------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at EOF.  n is always bounded by the caller."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            piece = self._stream.read(n - got)
            if not piece:
                break
            if len(piece) > n - got:  # a misbehaving stream must not make us over-consume
                piece = piece[: n - got]
            parts.append(piece)
            got += len(piece)
        data = b"".join(parts)
        self._pos += len(data)
        return data

    def _read_exact(self, n: int, context: str) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise ArchiveError(
                f"archive truncated {context} (stream ends at byte {self._pos}): "
                "the bundle is incomplete or corrupted"
            )
        return data

    # -- headers --------------------------------------------------------------------------------

    def _read_header_block(self, context: str) -> bytes | None:
        """The next header block, checksum-verified; None for an all-zero block."""
        start = self._pos
        block = self._read_exact(BLOCK, context)
        if not any(block):
            return None
        stored_raw = block[_OFF_CHKSUM : _OFF_CHKSUM + 8]
        text = _cstr(stored_raw).strip(b" ")
        unsigned = sum(block[:_OFF_CHKSUM]) + 8 * 0x20 + sum(block[_OFF_CHKSUM + 8 :])
        # Some historic tars summed signed chars; accept both like GNU tar and Python's tarfile.
        signed = unsigned - 256 * (
            sum(1 for b in block[:_OFF_CHKSUM] if b & 0x80)
            + sum(1 for b in block[_OFF_CHKSUM + 8 :] if b & 0x80)
        )
        if (
            not text
            or not all(0x30 <= c <= 0x37 for c in text)
            or int(text, 8) not in (unsigned, signed)
        ):
            raise ArchiveError(
                f"bad tar header checksum at byte {start}: not a tar archive or corrupted"
            )
        return block

    def _meta_data(self, block: bytes, used: list[int], where: str) -> bytes:
        """Data of a long-name / PAX metadata member, bounded by max_header_blocks."""
        size = _parse_num(block[_OFF_SIZE : _OFF_SIZE + 12], "size", where)
        nblocks = -(-size // BLOCK)
        self._count_blocks(used, nblocks)
        data = self._read_exact(size, f"inside {where}")
        self._read_exact(-size % BLOCK, f"inside {where}")
        return data

    def _count_blocks(self, used: list[int], n: int) -> None:
        used[0] += n
        if used[0] > self._max_blocks:
            raise ArchiveError(
                f"more than {self._max_blocks} blocks of tar metadata before one member "
                f"(at byte {self._pos}): hostile or corrupted archive"
            )

    def next_member(self) -> Member | None:
        """Parse the next member's headers; None at end-of-archive."""
        if self._ended:
            return None
        if self._member is not None:
            self._skip_rest()
        self._member = None

        used = [0]  # metadata blocks for this member (list so helpers can update it)
        long_name: bytes | None = None
        long_link: bytes | None = None
        pax: list[tuple[str, bytes]] = []
        first_offset = self._pos
        while True:
            header_start = self._pos
            block = self._read_header_block(
                "inside a header" if used[0] else "before the end-of-archive marker"
            )
            if block is None:
                if used[0]:
                    raise ArchiveError(
                        f"tar metadata at byte {first_offset} is not followed by a member: "
                        "archive corrupted"
                    )
                self._finish_end(header_start)
                return None
            typeflag = block[_OFF_TYPE : _OFF_TYPE + 1]
            where = f"the header at byte {header_start}"
            if typeflag in _META_TYPES:
                self._count_blocks(used, 1)
                data = self._meta_data(block, used, where)
                if typeflag == b"L":
                    long_name = _cstr(data)
                elif typeflag == b"K":
                    long_link = _cstr(data)
                elif typeflag in (b"x", b"X"):
                    pax.extend(_parse_pax(data, where))
                else:
                    # Global PAX headers carry defaults (charset, comments) we have no use for;
                    # parse them anyway so garbage is still rejected.
                    _parse_pax(data, where)
                continue
            return self._build_member(block, header_start, first_offset, used, long_name,
                                      long_link, pax)

    def _finish_end(self, start: int) -> None:
        # One zero block, then: EOF, a second zero block, or (a prefix of) zero padding.
        self._ended = True
        self._end_offset = start
        rest = self._read(BLOCK)
        if any(rest):
            raise ArchiveError(
                f"a lone zero block at byte {start} is followed by non-zero data: "
                "archive corrupted or concatenated"
            )

    def _build_member(
        self, block: bytes, header_start: int, first_offset: int, used: list[int],
        long_name: bytes | None, long_link: bytes | None, pax: list[tuple[str, bytes]],
    ) -> Member:
        where = f"the header at byte {header_start}"
        typeflag = block[_OFF_TYPE : _OFF_TYPE + 1]
        raw_name = _cstr(block[:_NAME_LEN])
        if block[_OFF_MAGIC : _OFF_MAGIC + 8] == _USTAR_MAGIC:
            prefix = _cstr(block[_OFF_PREFIX : _OFF_PREFIX + 155])
            if prefix:
                raw_name = prefix + b"/" + raw_name
        mode = _parse_num(block[_OFF_MODE : _OFF_MODE + 8], "mode", where)
        uid = _parse_num(block[_OFF_UID : _OFF_UID + 8], "uid", where)
        gid = _parse_num(block[_OFF_GID : _OFF_GID + 8], "gid", where)
        size = _parse_num(block[_OFF_SIZE : _OFF_SIZE + 12], "size", where)
        mtime = _parse_num(block[_OFF_MTIME : _OFF_MTIME + 12], "mtime", where, signed=True)
        linkname = long_link if long_link is not None else _cstr(block[157:257])
        if long_name is not None:
            raw_name = long_name

        keys: dict[str, bytes] = {}
        sp_offsets: list[bytes] = []
        sp_numbytes: list[bytes] = []
        for key, value in pax:
            keys[key] = value
            # Sparse 0.0 repeats these two keys once per region; order pairs them up.
            if key == "GNU.sparse.offset":
                sp_offsets.append(value)
            elif key == "GNU.sparse.numbytes":
                sp_numbytes.append(value)
        if "path" in keys:
            raw_name = keys["path"]
        if "linkpath" in keys:
            linkname = keys["linkpath"]
        if "size" in keys:
            size = _parse_decimal(keys["size"], "PAX size", where)
        if "mtime" in keys:
            whole = keys["mtime"].partition(b".")[0]
            negative = whole.startswith(b"-")
            mtime = _parse_decimal(whole[1:] if negative else whole, "PAX mtime", where)
            mtime = -mtime if negative else mtime
        if "uid" in keys:
            uid = _parse_decimal(keys["uid"], "PAX uid", where)
        if "gid" in keys:
            gid = _parse_decimal(keys["gid"], "PAX gid", where)

        member_where = f"member {_decode_text(raw_name)!r}"
        stored = 0 if typeflag == _DIRTYPE else size
        realsize = stored
        sparse_format = ""
        smap: list[tuple[int, int]] | None = None

        if typeflag == b"S":
            sparse_format = "oldgnu"
            realsize = _parse_num(block[_OFF_REALSIZE : _OFF_REALSIZE + 12], "realsize", where)
            smap = self._old_gnu_map(block, used, member_where)
        elif any(k.startswith("GNU.sparse.") for k in keys):
            if "GNU.sparse.name" in keys:
                raw_name = keys["GNU.sparse.name"]
                member_where = f"member {_decode_text(raw_name)!r}"
            version = None
            if "GNU.sparse.major" in keys or "GNU.sparse.minor" in keys:
                version = (
                    keys.get("GNU.sparse.major", b"0").decode("ascii", "replace")
                    + "."
                    + keys.get("GNU.sparse.minor", b"0").decode("ascii", "replace")
                )
                if version not in ("0.0", "0.1", "1.0"):
                    raise ArchiveError(
                        f"unsupported PAX sparse format {version[:20]} in {member_where}: "
                        "only 0.0, 0.1 and 1.0 are known"
                    )
            if version == "1.0":
                sparse_format = version
                realsize = _parse_decimal(
                    keys.get("GNU.sparse.realsize", b""), "GNU.sparse.realsize", member_where
                )
                smap, map_bytes = self._pax10_map(used, stored, member_where)
                stored -= map_bytes
            elif "GNU.sparse.map" in keys or sp_offsets or sp_numbytes:
                realsize = _parse_decimal(
                    keys.get("GNU.sparse.size", b""), "GNU.sparse.size", member_where
                )
                if "GNU.sparse.map" in keys:
                    sparse_format = "0.1"
                    fields = keys["GNU.sparse.map"].split(b",") if keys["GNU.sparse.map"] else []
                    if len(fields) % 2:
                        raise ArchiveError(
                            f"GNU.sparse.map of {member_where} has an odd number of fields: "
                            "archive corrupted"
                        )
                    numbers = [_parse_decimal(f, "GNU.sparse.map entry", member_where)
                               for f in fields]
                    smap = list(zip(numbers[0::2], numbers[1::2], strict=True))
                else:
                    sparse_format = "0.0"
                    if len(sp_offsets) != len(sp_numbytes):
                        raise ArchiveError(
                            f"GNU.sparse.offset/numbytes of {member_where} do not pair up: "
                            "archive corrupted"
                        )
                    smap = [
                        (_parse_decimal(o, "GNU.sparse.offset", member_where),
                         _parse_decimal(n, "GNU.sparse.numbytes", member_where))
                        for o, n in zip(sp_offsets, sp_numbytes, strict=True)
                    ]
                if "GNU.sparse.numblocks" in keys:
                    count = _parse_decimal(
                        keys["GNU.sparse.numblocks"], "GNU.sparse.numblocks", member_where
                    )
                    if count != len(smap):
                        raise ArchiveError(
                            f"GNU.sparse.numblocks of {member_where} says {count} regions but "
                            f"the map has {len(smap)}: archive corrupted"
                        )

        if smap is not None:
            regions = _check_map(smap, realsize, stored, member_where)
        else:
            regions = [(0, stored)] if stored else []
        name = _decode_text(raw_name)
        member = Member(
            name=name, size=realsize, mode=mode, mtime=mtime, typeflag=typeflag,
            regions=regions, stored_size=stored, uid=uid, gid=gid,
            linkname=_decode_text(linkname), sparse_format=sparse_format,
            header_offset=first_offset,
        )
        log.debug("tar member %r type %r size %d stored %d sparse=%s regions=%d",
                  name, typeflag, realsize, stored, sparse_format or "no", len(regions))
        self._member = member
        self._region_index = 0
        self._region_done = 0
        self._pad_left = -stored % BLOCK
        return member

    def _old_gnu_map(self, block: bytes, used: list[int], where: str) -> list[tuple[int, int]]:
        """Sparse entries from an 'S' header and its extension blocks."""
        smap: list[tuple[int, int]] = []
        done = self._sparse_entries(block, _OFF_SPARSE, _SPARSES_IN_HEADER, smap, where)
        extended = block[_OFF_ISEXT]
        while extended:
            self._count_blocks(used, 1)
            ext = self._read_exact(BLOCK, f"inside the sparse map of {where}")
            if not done:
                done = self._sparse_entries(ext, 0, _SPARSES_IN_EXTENSION, smap, where)
            extended = ext[_OFF_EXT_ISEXT]
        return smap

    @staticmethod
    def _sparse_entries(
        block: bytes, start: int, count: int, smap: list[tuple[int, int]], where: str
    ) -> bool:
        """Append a block's entries to smap; True once an empty entry ends the map (as GNU)."""
        for i in range(count):
            pos = start + 24 * i
            if block[pos + 12] == 0:  # GNU's oldgnu_add_sparse stops at an empty numbytes
                return True
            smap.append((
                _parse_num(block[pos : pos + 12], "sparse offset", where),
                _parse_num(block[pos + 12 : pos + 24], "sparse numbytes", where),
            ))
        return False

    def _pax10_map(
        self, used: list[int], stored: int, where: str
    ) -> tuple[list[tuple[int, int]], int]:
        """Read the sparse 1.0 map at the start of the member data: count, then offset/size pairs,
        each a decimal line, padded to a block boundary.  Returns (map, bytes consumed)."""
        numbers: list[int] = []
        wanted: int | None = None
        pending = b""
        consumed = 0
        while wanted is None or len(numbers) < wanted:
            if consumed + BLOCK > stored:
                raise ArchiveError(
                    f"sparse 1.0 map of {where} runs past the member's data: archive corrupted"
                )
            self._count_blocks(used, 1)
            pending += self._read_exact(BLOCK, f"inside the sparse map of {where}")
            consumed += BLOCK
            while wanted is None or len(numbers) < wanted:
                nl = pending.find(b"\n")
                if nl < 0:
                    if len(pending) > 20:  # no decimal off_t is this long
                        raise ArchiveError(
                            f"malformed sparse 1.0 map of {where}: archive corrupted"
                        )
                    break
                numbers.append(_parse_decimal(pending[:nl], "sparse 1.0 map entry", where))
                pending = pending[nl + 1 :]
                if wanted is None:
                    if numbers[0] > self._max_blocks * BLOCK:
                        raise ArchiveError(
                            f"sparse 1.0 map of {where} claims {numbers[0]} regions: "
                            "hostile or corrupted archive"
                        )
                    wanted = 1 + 2 * numbers[0]
        body = numbers[1:]
        return list(zip(body[0::2], body[1::2], strict=True)), consumed

    # -- data -----------------------------------------------------------------------------------

    def iter_data(self, chunk: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
        """Yield (file offset, bytes) for the current member's stored data, in order."""
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        member = self._member
        if member is None:
            return
        while self._region_index < len(member.regions):
            offset, length = member.regions[self._region_index]
            left = length - self._region_done
            if left == 0:
                self._region_index += 1
                self._region_done = 0
                continue
            n = min(chunk, left)
            data = self._read(n)
            if len(data) != n:
                raise ArchiveError(
                    f"archive truncated inside member {member.name!r} "
                    f"(stream ends at byte {self._pos}): the bundle is incomplete or corrupted"
                )
            # Advance state before yielding so an abandoned generator leaves it consistent.
            start = offset + self._region_done
            self._region_done += n
            yield start, data
        self._read_padding()

    def _read_padding(self) -> None:
        if self._pad_left and self._member is not None:
            # Padding content is not checked (GNU tar does not either).
            got = len(self._read(self._pad_left))
            if got != self._pad_left:
                raise ArchiveError(
                    f"archive truncated inside member {self._member.name!r} "
                    f"(stream ends at byte {self._pos}): the bundle is incomplete or corrupted"
                )
            self._pad_left = 0

    def _skip_rest(self) -> None:
        for _ in self.iter_data(1 << 20):
            pass

    # -- end --------------------------------------------------------------------------------------

    def drain(self) -> int:
        """Consume everything after the end-of-archive marker, which must be zeros.

        Returns the length from the start of the end-of-archive marker to EOF (the zero blocks and
        record padding).  Call after next_member() returned None.
        """
        if not self._ended:
            raise RuntimeError("TarReader.drain() called before the end-of-archive marker")
        if not self._drained:
            self._drained = True
            while True:
                start = self._pos
                piece = self._read(1 << 16)
                if not piece:
                    break
                if any(piece):
                    bad = start + next(i for i, b in enumerate(piece) if b)
                    raise ArchiveError(
                        f"non-zero data at byte {bad} after the tar end-of-archive marker: "
                        "trailing garbage, the stream is corrupted or not a single archive"
                    )
        return self._pos - self._end_offset
