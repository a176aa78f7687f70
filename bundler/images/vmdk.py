"""VMDK as a VirtualDisk: monolithic sparse and stream-optimized extents (grain directory,
grain tables, deflate-compressed grains with their markers) and text descriptors whose
extents are flat raw files, zeros or sparse extent files beside the descriptor."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..source import find_data_regions
from .bounded import BoundedFile
from .disk import HOLE_BLOCK, RAW, ZLIB, Block, HostRanges, VirtualDisk

MAGIC = b"KDMV"
GD_AT_END = 0xFFFFFFFFFFFFFFFF
FLAG_ZERO_GRAIN, FLAG_COMPRESSED, FLAG_MARKERS = 1 << 2, 1 << 16, 1 << 17
DESCRIPTOR_MAGIC = b"# Disk DescriptorFile"
MAX_DESCRIPTOR = 64 * 1024
MAX_EXTENTS = 256


class VmdkSparseDisk(VirtualDisk):
    fmt = "vmdk"

    def __init__(self, file: BoundedFile) -> None:
        self.file = file
        header = self._header(0)
        (version, flags, capacity, grain, _desc_off, _desc_size, gtes, _rgd, gd_offset,
         _overhead) = header
        if gd_offset == GD_AT_END:
            # Stream-optimized: the footer at the end (marker, header copy, end-of-stream) has
            # the real grain directory offset.
            if file.size < 1536:
                raise file.fail("footer", 0, "the file is too small to hold the stream footer")
            marker = file.read(file.size - 1536, 16, "footer marker")
            val, size, mtype = struct.unpack("<QII", marker)
            if size != 0 or mtype != 3:
                raise file.fail("footer marker", file.size - 1536,
                                "missing (an incomplete stream?)")
            header = self._header(file.size - 1024)
            (version, flags, capacity, grain, _d, _ds, gtes, _rgd, gd_offset, _o) = header
            if gd_offset == GD_AT_END:
                raise file.fail("footer", file.size - 1024, "has no grain directory offset")
        if grain < 1 or grain & (grain - 1) or grain > 1 << 18:
            raise file.fail("header", 20,
                            f"grain size {grain} sectors is not a power of two up to 128 MiB")
        if not 1 <= gtes <= 1 << 16:
            raise file.fail("header", 44, f"{gtes} entries per grain table is out of range")
        self.flags = flags
        self.compressed = bool(flags & FLAG_COMPRESSED)
        self.zero_grain = bool(flags & FLAG_ZERO_GRAIN)
        self.block_size = grain * 512
        self.virtual_size = capacity * 512
        self.gtes = gtes
        gts = -(-capacity // (grain * gtes))
        self.gd_offset = gd_offset * 512
        self.gd = struct.unpack(f"<{gts}I",
                                file.read_table(self.gd_offset, gts * 4, "grain directory"))
        self._gt_index = -1
        self._gt: tuple[int, ...] = ()
        subformat = "streamOptimized" if self.compressed and flags & FLAG_MARKERS else (
            "compressed sparse" if self.compressed else "monolithicSparse")
        self.details: dict[str, Any] = {"version": version, "subformat": subformat,
                                        "grain_size": self.block_size}

    def _header(self, offset: int) -> tuple[int, ...]:
        data = self.file.read(offset, 79, "header")
        if data[:4] != MAGIC:
            raise self.file.fail("header", offset, "no 'KDMV' magic")
        version, flags, capacity, grain, doff, dsize, gtes, rgd, gd, overhead = struct.unpack(
            "<IIQQQQIQQQ", data[4:72])
        if version not in (1, 2, 3):
            raise self.file.fail("header", offset + 4, f"version {version} is not supported")
        algo = struct.unpack("<H", data[77:79])[0]
        if flags & FLAG_COMPRESSED and algo != 1:
            raise self.file.fail("header", offset + 77,
                                 f"compression algorithm {algo} is not deflate")
        return version, flags, capacity, grain, doff, dsize, gtes, rgd, gd, overhead

    def _table(self, gd_index: int) -> tuple[int, ...] | None:
        sector = self.gd[gd_index]
        if not sector:
            return None
        if gd_index != self._gt_index:
            raw = self.file.read(sector * 512, self.gtes * 4, f"grain table {gd_index}")
            self._gt = struct.unpack(f"<{self.gtes}I", raw)
            self._gt_index = gd_index
        return self._gt

    def _decode(self, sector: int, index: int) -> Block:
        if sector == 0 or (sector == 1 and self.zero_grain):
            return HOLE_BLOCK
        host = sector * 512
        if not self.compressed:
            return Block(RAW, host, self.block_size)
        lba, size = struct.unpack("<QI", self.file.read(host, 12, f"grain {index} marker"))
        if lba != index * (self.block_size // 512):
            raise self.file.fail(f"grain {index} marker", host,
                                 f"says sector {lba}, the grain table "
                                 f"says {index * (self.block_size // 512)}")
        if size == 0:
            raise self.file.fail(f"grain {index} marker", host, "is a metadata marker, not a grain")
        self.file.check(host + 12, size, f"grain {index}")
        return Block(ZLIB, host + 12, size)

    def lookup(self, index: int) -> Block:
        gd_index, gt_index = divmod(index, self.gtes)
        if gd_index >= len(self.gd):
            return HOLE_BLOCK
        table = self._table(gd_index)
        return HOLE_BLOCK if table is None else self._decode(table[gt_index], index)

    def mapped(self) -> Iterator[tuple[int, Block]]:
        ranges = HostRanges(self.file)
        ranges.add(0, 512, "header")
        ranges.add(self.gd_offset, len(self.gd) * 4, "grain directory")
        blocks = -(-self.virtual_size // self.block_size)
        for gd_index in range(len(self.gd)):
            table = self._table(gd_index)
            if table is None:
                continue
            ranges.add(self.gd[gd_index] * 512, self.gtes * 4, f"grain table {gd_index}")
            base = gd_index * self.gtes
            for i, sector in enumerate(table):
                index = base + i
                if index >= blocks:
                    break
                block = self._decode(sector, index)
                if block.kind == HOLE_BLOCK.kind:
                    continue
                if block.kind == RAW:
                    length = min(self.block_size, self.virtual_size - index * self.block_size)
                    self.file.check(block.host, length, f"grain {index}")
                    ranges.add(block.host, self.block_size, "data")
                else:
                    ranges.add(block.host - 12, block.length + 12, f"grain {index}")
                yield index, block
        ranges.check()


_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(FLAT|SPARSE|ZERO|VMFS|VMFSSPARSE)'
                     r'(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')


class VmdkDescriptorDisk(VirtualDisk):
    """A text descriptor: the guest disk is its extents, end to end."""

    fmt = "vmdk"
    block_size = 512

    def __init__(self, file: BoundedFile) -> None:
        self.file = file
        if file.size > MAX_DESCRIPTOR:
            raise file.fail("descriptor", 0,
                            f"a {file.size}-byte text descriptor is implausibly large")
        text = file.read(0, file.size, "descriptor").decode("utf-8", "replace")
        self.extents: list[tuple[int, int, Any, int]] = []  # (guest start, bytes, source, offset)
        pos = 0
        base = file.path.parent
        for line_no, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#") or "=" in line.split(" ", 1)[0]:
                continue
            m = _EXTENT.match(line)
            if not m:
                continue
            _access, sectors, kind, name, offset = m.groups()
            length = int(sectors) * 512
            if len(self.extents) >= MAX_EXTENTS:
                raise file.fail("descriptor", 0, f"more than {MAX_EXTENTS} extents")
            if kind == "ZERO":
                source: Any = None
            else:
                if not name or Path(name).name != name or name in (".", ".."):
                    raise file.fail("descriptor", 0,
                                    f"line {line_no}: extent file {name!r} must be a plain "
                                    "file name beside the descriptor")
                path = base / name
                if kind in ("FLAT", "VMFS"):
                    source = BoundedFile(path, "vmdk")
                    start = int(offset or 0) * 512
                    source.check(start, length, f"flat extent {name!r}")
                else:
                    sub = VmdkSparseDisk(BoundedFile(path, "vmdk"))
                    if sub.virtual_size < length:
                        raise file.fail("descriptor", 0,
                                        f"line {line_no}: sparse extent {name!r} holds "
                                        f"{sub.virtual_size} bytes, the descriptor says {length}")
                    source = sub
            self.extents.append((pos, length, source, int(offset or 0) * 512))
            pos += length
        if not self.extents:
            raise file.fail("descriptor", 0, "names no extents")
        self.virtual_size = pos
        self.details = {"subformat": "descriptor", "extents": len(self.extents)}

    def lookup(self, index: int) -> Block:  # pragma: no cover - read_at is overridden
        raise NotImplementedError

    def mapped(self) -> Iterator[tuple[int, Block]]:  # pragma: no cover
        raise NotImplementedError

    def allocated(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for start, length, source, offset in self.extents:
            if source is None:
                continue
            if isinstance(source, BoundedFile):
                found = [(o - offset, n) for o, n in find_data_regions(source.fd, offset + length)
                         if o + n > offset]
                found = [(max(o, 0), n + min(o, 0)) for o, n in found]
            else:
                found = [(o, n) for o, n in source.allocated() if o < length]
            out += [(start + o, min(n, length - o)) for o, n in found]
        return out

    def peek_at(self, offset: int, length: int) -> bytes:
        return self.read_at(offset, length)

    def read_at(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.virtual_size)
        parts = []
        for start, size, source, host in self.extents:
            lo, hi = max(offset, start), min(end, start + size)
            if lo >= hi:
                continue
            if source is None:
                parts.append(bytes(hi - lo))
            elif isinstance(source, BoundedFile):
                parts.append(source.read(host + lo - start, hi - lo, "flat extent"))
            else:
                parts.append(source.read_at(lo - start, hi - lo))
        return b"".join(parts)

    def files(self) -> list[BoundedFile]:
        out = [self.file]
        for _s, _l, source, _o in self.extents:
            if isinstance(source, BoundedFile):
                out.append(source)
            elif source is not None:
                out += source.files()
        return out

    def close(self) -> None:
        for _s, _l, source, _o in self.extents:
            if source is not None:
                source.close()
        self.file.close()
