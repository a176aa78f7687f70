"""Strict streaming tar reader (bundles come from anywhere, S3 included): no malformation passes.

Pulls from any ``read(n)`` stream and understands old-GNU sparse, PAX sparse 0.0/0.1/1.0,
plain GNU/ustar members, base-256 numbers, GNU long names and PAX ``path``.  Every malformation
becomes an :class:`ArchiveError`; reads are bounded so hostile headers cannot make it allocate
or loop without consuming input.  The field layout is :mod:`bundler.tarformat`'s; the writer is
:mod:`bundler.tarwriter`.

Pure: no file system access.  Spec: bundle-format.md §5.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ArchiveError
from .tarformat import (
    BLOCK,
    CHKSUM,
    DIRTYPE,
    EXT_ISEXTENDED,
    GID,
    GNUTYPE_LONGLINK,
    GNUTYPE_LONGNAME,
    GNUTYPE_SPARSE,
    ISEXTENDED,
    LINKNAME,
    MAGIC,
    MAX_OFFSET,
    META_TYPES,
    MODE,
    MTIME,
    NAME,
    PREFIX,
    REALSIZE,
    REGULAR_TYPES,
    SIZE,
    SOLARIS_XHDTYPE,
    SPARSE,
    SPARSE_ENTRY,
    SPARSE_NUMBER,
    SPARSES_IN_EXTENSION,
    SPARSES_IN_HEADER,
    TYPEFLAG,
    UID,
    USTAR_MAGIC,
    XHDTYPE,
    header_checksum,
)

log = logging.getLogger("bundler.tarstream")  # its name before the split: users filter by it


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
    return member.typeflag in REGULAR_TYPES


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
        stored_raw = block[CHKSUM]
        text = _cstr(stored_raw).strip(b" ")
        unsigned = header_checksum(block)
        # Some historic tars summed signed chars; accept both like GNU tar and Python's tarfile.
        signed = unsigned - 256 * (
            sum(1 for b in block[: CHKSUM.start] if b & 0x80)
            + sum(1 for b in block[CHKSUM.stop :] if b & 0x80)
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
        size = _parse_num(block[SIZE], "size", where)
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
            typeflag = block[TYPEFLAG]
            where = f"the header at byte {header_start}"
            if typeflag in META_TYPES:
                self._count_blocks(used, 1)
                data = self._meta_data(block, used, where)
                if typeflag == GNUTYPE_LONGNAME:
                    long_name = _cstr(data)
                elif typeflag == GNUTYPE_LONGLINK:
                    long_link = _cstr(data)
                elif typeflag in (XHDTYPE, SOLARIS_XHDTYPE):
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
        typeflag = block[TYPEFLAG]
        raw_name = _cstr(block[NAME])
        if block[MAGIC] == USTAR_MAGIC:
            prefix = _cstr(block[PREFIX])
            if prefix:
                raw_name = prefix + b"/" + raw_name
        mode = _parse_num(block[MODE], "mode", where)
        uid = _parse_num(block[UID], "uid", where)
        gid = _parse_num(block[GID], "gid", where)
        size = _parse_num(block[SIZE], "size", where)
        mtime = _parse_num(block[MTIME], "mtime", where, signed=True)
        linkname = long_link if long_link is not None else _cstr(block[LINKNAME])
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
        stored = 0 if typeflag == DIRTYPE else size
        realsize = stored
        sparse_format = ""
        smap: list[tuple[int, int]] | None = None

        if typeflag == GNUTYPE_SPARSE:
            sparse_format = "oldgnu"
            realsize = _parse_num(block[REALSIZE], "realsize", where)
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
        done = self._sparse_entries(block, SPARSE, SPARSES_IN_HEADER, smap, where)
        extended = block[ISEXTENDED]
        while extended:
            self._count_blocks(used, 1)
            ext = self._read_exact(BLOCK, f"inside the sparse map of {where}")
            if not done:
                done = self._sparse_entries(ext, 0, SPARSES_IN_EXTENSION, smap, where)
            extended = ext[EXT_ISEXTENDED]
        return smap

    @staticmethod
    def _sparse_entries(
        block: bytes, start: int, count: int, smap: list[tuple[int, int]], where: str
    ) -> bool:
        """Append a block's entries to smap; True once an empty entry ends the map (as GNU)."""
        for i in range(count):
            pos = start + SPARSE_ENTRY * i
            mid = pos + SPARSE_NUMBER
            if block[mid] == 0:  # GNU's oldgnu_add_sparse stops at an empty numbytes
                return True
            smap.append((
                _parse_num(block[pos:mid], "sparse offset", where),
                _parse_num(block[mid : pos + SPARSE_ENTRY], "sparse numbytes", where),
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
