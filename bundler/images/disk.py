"""What every virtual-disk reader shares: a guest disk cut into blocks, each a hole, raw bytes
at a host offset, or a compressed blob; and the ImageSource that streams such a disk.

A format module only parses its headers and tables into ``lookup``/``mapped`` answers; the
guest-order reading, decompression limits, overlap checks and the allocation map the sparse
tar framing needs are here, once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from isal import isal_zlib

from ..concurrency import ordered_window
from ..source import READ_SIZE, ZERO_GRANULE, check_size, drop_zero_runs, find_data_regions
from .bounded import BoundedFile

# ISA-L inflates deflate 2-3x faster than zlib, with zlib's API (max_length, unconsumed_tail,
# adler32 check), and releases the GIL, so the inflate threads really run side by side.
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (
    zlib.error, getattr(isal_zlib, "error"))  # noqa: B009 - typed as an instance in the stubs

log = logging.getLogger("bundler.images")

HOLE, RAW, DEFLATE, ZLIB, ZSTD, BACKING = range(6)
KIND_NAMES = {RAW: "raw", DEFLATE: "deflate", ZLIB: "zlib", ZSTD: "zstd"}

INFLATE_THREADS = max(1, min(4, os.cpu_count() or 1))
INFLATE_AHEAD = 2 * INFLATE_THREADS

# Contiguous host runs tracked for the overlap check; a sane 10 GiB image has a few thousand.
MAX_HOST_RUNS = 1_000_000


@dataclass(frozen=True)
class Block:
    kind: int
    host: int = 0
    length: int = 0  # host bytes (compressed length for compressed kinds)


HOLE_BLOCK = Block(HOLE)


class HostRanges:
    """Host ranges used by tables and data blocks: two that overlap mean a loop, a shared
    cluster or data written over metadata, which a well-formed image never has."""

    def __init__(self, file: BoundedFile) -> None:
        self.file = file
        self._runs: list[list[int]] = []  # [start, end, first structure offset]
        self._names: dict[int, str] = {}

    def add(self, start: int, length: int, structure: str) -> None:
        if length <= 0:
            return
        if (structure == "data" and self._runs and self._runs[-1][1] == start
                and self._names[self._runs[-1][2]] == "data"):
            self._runs[-1][1] = start + length
            return
        if len(self._runs) >= MAX_HOST_RUNS:
            raise self.file.fail(structure, start,
                                 f"the image is fragmented into over {MAX_HOST_RUNS} "
                                 "host runs (hostile or corrupt layout)")
        self._runs.append([start, start + length, len(self._names)])
        self._names[len(self._names)] = structure

    def check(self) -> None:
        self._runs.sort()
        prev_end, prev_name = -1, ""
        for start, end, name in self._runs:
            if start < prev_end:
                raise self.file.fail(self._names[name], start,
                                     f"overlaps the {prev_name} before it "
                                     "(a table loop, a shared cluster or data over metadata)")
            if end > prev_end:
                prev_end, prev_name = end, self._names[name]
        self._runs, self._names = [], {}


class VirtualDisk(ABC):
    """A guest disk of ``virtual_size`` bytes, read through a format's block map."""

    fmt: str
    virtual_size: int
    block_size: int
    file: BoundedFile
    details: dict[str, Any]

    @abstractmethod
    def lookup(self, index: int) -> Block:
        """Where guest block ``index`` lives (sequential calls must be cheap)."""

    @abstractmethod
    def mapped(self) -> Iterator[tuple[int, Block]]:
        """Every block that is not a hole, ascending, after checking the tables' layout."""

    def files(self) -> list[BoundedFile]:
        """Every file the guest's bytes are read from (the image, backing files, extents)."""
        return [self.file]

    def check_unchanged(self) -> None:
        """ImageError naming the first of the disk's files that changed since it was opened."""
        for file in self.files():
            file.check_unchanged()

    def close(self) -> None:
        self.file.close()

    # ------------------------------------------------------------------ shared reading

    def backing_read(self, offset: int, length: int) -> bytes:
        """Guest bytes a backing file holds (formats with backing files override this)."""
        return bytes(length)

    _cache_index: int = -1
    _cache_data: bytes = b""
    has_compressed: bool = False

    def allocated(self) -> list[tuple[int, int]]:
        """Guest ranges holding data, merged, clipped to the virtual size."""
        out: list[tuple[int, int]] = []
        bs = self.block_size
        for index, block in self.mapped():
            if block.kind in (DEFLATE, ZLIB, ZSTD):
                self.has_compressed = True
            start = index * bs
            end = min(start + bs, self.virtual_size)
            if start >= end:
                continue
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], end - out[-1][0])
            else:
                out.append((start, end - start))
        return out

    def _block_bytes(self, index: int, block: Block) -> bytes:
        if index != self._cache_index:
            self._cache_data = self.inflate(index, block)
            self._cache_index = index
        return self._cache_data

    def inflate(self, index: int, block: Block) -> bytes:
        """A compressed block's bytes; touches no shared state, so threads may call it."""
        bs = self.block_size
        want = min(bs, self.virtual_size - index * bs)
        where = f"block {index} (guest offset {index * bs})"
        data = self.file.read(block.host, block.length, f"compressed {where}")
        if block.kind == ZSTD:
            out, problem = _zstd_block(data, bs)
            if problem:
                raise self.file.fail(f"compressed {where}", block.host, problem)
        else:
            d = isal_zlib.decompressobj(-15 if block.kind == DEFLATE else 15)
            try:
                out = d.decompress(data, bs)
                # Input left after a full block must not hold one more byte of output.
                extra = d.decompress(d.unconsumed_tail, 1) if d.unconsumed_tail else b""
            except _INFLATE_ERRORS as exc:
                raise self.file.fail(f"compressed {where}", block.host, "bad deflate data "
                                                                        f"({exc})") from None
            if extra:
                raise self.file.fail(f"compressed {where}", block.host,
                                     f"inflates beyond the {bs}-byte block (a decompression bomb?)")
        if len(out) < want:
            raise self.file.fail(f"compressed {where}", block.host,
                                 f"inflates to {len(out)} bytes, not the block's {want}")
        return out[:bs]

    def peek_at(self, offset: int, length: int) -> bytes:
        """Bytes for the zero-run scan. A range touching a compressed block counts as data
        without inflating it: writers compress only non-zero clusters (qemu-img leaves zero
        ones unallocated), so a second inflate of every cluster would buy nothing."""
        bs = self.block_size
        for index in range(offset // bs, (offset + length - 1) // bs + 1):
            if self.lookup(index).kind in (DEFLATE, ZLIB, ZSTD):
                return b"\1"
        return self.read_at(offset, length)

    def read_at(self, offset: int, length: int) -> bytes:
        """Guest bytes [offset, offset+length) clipped to the disk; zeros in holes."""
        return self.fetch(self.plan(offset, length), cached=True)

    def plan(self, offset: int, length: int) -> list[tuple]:
        """What reading [offset, offset+length) takes: table lookups (and backing-file reads)
        happen here, in the caller's thread; ``fetch`` then does only file reads and inflates."""
        end = min(offset + length, self.virtual_size)
        bs = self.block_size
        steps: list[tuple] = []
        pos = offset
        while pos < end:
            index = pos // bs
            block = self.lookup(index)
            inner = pos - index * bs
            take = min(bs - inner, end - pos)
            if block.kind == HOLE:
                steps.append((HOLE, take))
            elif block.kind == BACKING:
                data = self.backing_read(pos, take)
                steps.append((BACKING, data + bytes(take - len(data))))
            elif block.kind == RAW:
                # Host-contiguous raw blocks are read at once.
                run = take
                nxt = index + 1
                while pos + run < end:
                    b = self.lookup(nxt)
                    if b.kind != RAW or b.host != block.host + (nxt - index) * bs:
                        break
                    run += min(bs, end - pos - run)
                    nxt += 1
                steps.append((RAW, block.host + inner, run, index))
                take = run
            else:
                steps.append((DEFLATE, index, block, inner, take))
            pos += take
        return steps

    def fetch(self, steps: list[tuple], *, cached: bool = False) -> bytes:
        bs = self.block_size
        parts: list[bytes] = []
        for step in steps:
            kind = step[0]
            if kind == HOLE:
                parts.append(bytes(step[1]))
            elif kind == BACKING:
                parts.append(step[1])
            elif kind == RAW:
                _, host, run, index = step
                parts.append(self.file.read(host, run,
                                            f"data block {index} (guest offset {index * bs})"))
            else:
                _, index, block, inner, take = step
                data = self._block_bytes(index, block) if cached else self.inflate(index, block)
                parts.append(data[inner:inner + take])
        return b"".join(parts)


def _zstd_block(data: bytes, limit: int) -> tuple[bytes, str]:
    """The first zstd frame in ``data`` (packed clusters share sectors, so more may follow),
    decoded to at most ``limit`` bytes, or a problem to report."""
    import zstandard

    try:
        declared = zstandard.get_frame_parameters(data).content_size
        d = zstandard.ZstdDecompressor().decompressobj()
        if 0 < declared <= limit:
            # zstd itself stops a frame that produces more than its declared size.
            out = d.decompress(data)
        elif declared == zstandard.CONTENTSIZE_UNKNOWN:
            # Small pieces bound what one call can produce (a 128 KiB block per few bytes).
            out = b""
            for pos in range(0, len(data), 256):
                out += d.decompress(data[pos:pos + 256])
                if len(out) > limit or d.eof:
                    break
        else:
            return b"", f"declares {declared} bytes, not a {limit}-byte block"
    except zstandard.ZstdError as exc:
        return b"", f"bad zstd data ({exc})"
    if len(out) > limit:
        return b"", f"inflates beyond the {limit}-byte block (a decompression bomb?)"
    return out, ""


class RawDisk(VirtualDisk):
    """A raw file as a VirtualDisk (a qcow2 image's raw backing file): holes by SEEK_HOLE."""

    fmt = "raw"
    block_size = ZERO_GRANULE

    def __init__(self, file: BoundedFile) -> None:
        self.file = file
        self.virtual_size = file.size
        self.details: dict[str, Any] = {}

    def lookup(self, index: int) -> Block:
        return Block(RAW, index * self.block_size, self.block_size)

    def mapped(self) -> Iterator[tuple[int, Block]]:  # pragma: no cover - allocated is overridden
        raise NotImplementedError

    def allocated(self) -> list[tuple[int, int]]:
        return find_data_regions(self.file.fd, self.file.size)


def union(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Two sorted range lists merged into one."""
    out: list[tuple[int, int]] = []
    for offset, length in sorted(a + b):
        if out and offset <= out[-1][0] + out[-1][1]:
            s = out[-1][0]
            out[-1] = (s, max(offset + length, s + out[-1][1]) - s)
        else:
            out.append((offset, length))
    return out


@dataclass
class DiskImageSource:
    """An ImageSource over a VirtualDisk: its allocation map (at 64 KiB granules, zero runs
    inside allocated data dropped as for raw files) becomes the sparse tar map, and only the
    mapped bytes are ever read, decompressed or hashed."""

    disk: VirtualDisk
    name: str
    mode: int = 0o644
    mtime: int = 0
    size: int = 0
    allocated_bytes: int = 0
    rereadable: ClassVar[bool] = True  # re-runs compare it with a bundle, then bundle it
    _regions: list[tuple[int, int]] = field(default_factory=list, repr=False)

    @classmethod
    def open(cls, disk: VirtualDisk, name: str, *, allow_large: bool = False,
             zero_runs_as_holes: bool = True) -> DiskImageSource:
        try:
            check_size(disk.virtual_size, disk.file.path, allow_large)
            allocated = disk.allocated()
            used = sum(n for _, n in allocated)
            regions = coarsen(allocated, disk.virtual_size)
            if zero_runs_as_holes:
                regions = drop_zero_runs(disk.peek_at, regions)
        except BaseException:
            disk.close()
            raise
        log.info("%s image %s: %d bytes virtual, %d allocated, %d bytes in %d data regions",
                 disk.fmt, disk.file.path, disk.virtual_size, used, sum(n for _, n in regions),
                 len(regions))
        return cls(disk=disk, name=name, mtime=disk.file.mtime, size=disk.virtual_size,
                   allocated_bytes=used, _regions=regions)

    def regions(self) -> list[tuple[int, int]] | None:
        if self._regions == [(0, self.size)] or self.size < 512:
            self._regions = [(0, self.size)]
            return None
        return self._regions

    def chunks(self) -> Iterator[bytes]:
        pieces = ((offset, min(READ_SIZE, start + length - offset))
                  for start, length in self._regions
                  for offset in range(start, start + length, READ_SIZE))
        if not self.disk.has_compressed:
            for offset, n in pieces:
                yield self.disk.read_at(offset, n)
            self.disk.check_unchanged()
            return
        # Compressed clusters inflate on worker threads (zlib and zstd release the GIL), a few
        # pieces ahead of the pipeline and in guest order; the plans (table lookups) are made
        # here, in the reading thread, as the window refills.
        plans = (self.disk.plan(offset, n) for offset, n in pieces)
        with contextlib.closing(ordered_window(self.disk.fetch, plans, jobs=INFLATE_THREADS,
                                               window=INFLATE_AHEAD,
                                               name="ami-bundler-inflate")) as done:
            for _plan, data in done:
                yield data
        self.disk.check_unchanged()

    def close(self) -> None:
        self.disk.close()


def coarsen(ranges: list[tuple[int, int]], size: int,
            granule: int = ZERO_GRANULE) -> list[tuple[int, int]]:
    """Round ranges out to granule boundaries and merge: at most size/granule/2 regions
    whatever the format's block size, so the tar map stays small."""
    out: list[tuple[int, int]] = []
    for offset, length in ranges:
        start = offset - offset % granule
        end = min(size, -(-(offset + length) // granule) * granule)
        if out and start <= out[-1][0] + out[-1][1]:
            s = out[-1][0]
            out[-1] = (s, max(end, s + out[-1][1]) - s)
        else:
            out.append((start, end - start))
    return out


def path_of(disk: VirtualDisk) -> Path:
    return disk.file.path
