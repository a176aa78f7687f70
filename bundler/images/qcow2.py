"""qcow2 (versions 2 and 3) as a VirtualDisk: header, L1 and L2 tables, zlib and zstd
compressed clusters (docs/interop/qcow2.txt in qemu). Refcounts and internal snapshots are
not needed to read the active image and are ignored; backing files, encryption, external
data files and extended L2 entries are refused with the reason."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .bounded import BoundedFile
from .disk import (
    BACKING,
    DEFLATE,
    HOLE,
    HOLE_BLOCK,
    RAW,
    ZSTD,
    Block,
    HostRanges,
    RawDisk,
    VirtualDisk,
    union,
)

MAGIC = b"QFI\xfb"
OFFSET_MASK = 0x00FFFFFFFFFFFE00
COMPRESSED = 1 << 62
ZERO = 1
INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = (
    1, 2, 4, 8, 16)
KNOWN_INCOMPAT = 31
MAX_CHAIN = 8
BACKING_BLOCK = Block(BACKING)


class Qcow2Disk(VirtualDisk):
    fmt = "qcow2"

    def __init__(self, file: BoundedFile, *, allow_backing: bool = False, root: Path | None = None,
                 chain: tuple[Path, ...] = ()) -> None:
        self.file = file
        self.backing: VirtualDisk | None = None
        head = file.read(0, 72, "header")
        (magic, version, backing_offset, backing_size, cluster_bits, size, crypt, l1_size,
         l1_offset, _rc_offset, _rc_clusters, snapshots, _snap_offset) = struct.unpack(
             ">4sIQIIQIIQQIIQ", head)
        if magic != MAGIC:
            raise file.fail("header", 0, "no qcow2 magic")
        if version not in (2, 3):
            raise file.fail("header", 4, f"qcow2 version {version} is not supported (2 and 3 are)")
        if not 9 <= cluster_bits <= 21:
            raise file.fail("header", 20, f"cluster_bits {cluster_bits} is outside qcow2's 9..21")
        cluster = 1 << cluster_bits
        compression = "zlib"
        header_length = 72
        if version == 3:
            ext = file.read(72, 32, "version 3 header")
            incompat, _compat, _autoclear, _refcount_order, header_length = struct.unpack(
                ">QQQII", ext)
            if header_length < 104 or header_length > cluster:
                raise file.fail("header", 100,
                                f"header_length {header_length} is not in 104..{cluster}")
            if incompat & ~KNOWN_INCOMPAT:
                raise file.fail("header", 72,
                                f"unknown incompatible features 0x{incompat:x}: this qcow2 "
                                "needs a newer reader (qemu-img convert it to a plain qcow2 or "
                                "raw)")
            if incompat & INCOMPAT_CORRUPT:
                raise file.fail("header", 72, "qemu marked this image corrupt: repair it with "
                                "qemu-img check -r all first")
            if incompat & INCOMPAT_DATA_FILE:
                raise file.fail("header", 72,
                                "the data lives in an external data file, which is not "
                                "supported: qemu-img convert it to a self-contained image")
            if incompat & INCOMPAT_EXTL2:
                raise file.fail("header", 72,
                                "extended L2 entries (subclusters) are not supported: "
                                "qemu-img convert it to a plain qcow2 or raw")
            if incompat & INCOMPAT_COMPRESSION:
                if header_length < 105:
                    raise file.fail("header", 104,
                                    "compression type flag set but no compression_type field")
                ctype = file.read(104, 1, "compression_type")[0]
                if ctype not in (0, 1):
                    raise file.fail("header", 104, f"unknown compression type {ctype}")
                compression = "zstd" if ctype == 1 else "zlib"
        if crypt:
            raise file.fail("header", 32, "the image is encrypted (crypt_method "
                            f"{crypt}); decrypt it with qemu-img convert first")
        backing_name = None
        if backing_offset:
            if not 0 < backing_size <= 1023:
                raise file.fail("header", 16,
                                f"backing file name length {backing_size} is not 1..1023")
            backing_name = file.read(backing_offset, backing_size,
                                     "backing file name").decode("utf-8", "replace")
            if not allow_backing:
                raise file.fail("header", 8,
                                f"the image has a backing file {backing_name!r}: its unallocated "
                                "clusters live there; flatten it with qemu-img convert first, or "
                                "pass --allow-backing-file to read it (it must be in the image's "
                                "directory)")
        self.cluster_bits = cluster_bits
        self.block_size = cluster
        self.virtual_size = size
        self.l2_entries = cluster // 8
        self.compression_kind = ZSTD if compression == "zstd" else DEFLATE
        span = cluster * self.l2_entries
        needed = -(-size // span)
        if l1_size < needed:
            raise file.fail("L1 table", l1_offset, f"{l1_size} entries cannot map {size} bytes "
                            f"(needs {needed})")
        if l1_offset % cluster:
            raise file.fail("L1 table", l1_offset, "is not cluster-aligned")
        file.check_table(l1_offset, needed * 8, "L1 table")
        self.l1_offset = l1_offset
        self.l1 = struct.unpack(f">{needed}Q", file.read(l1_offset, needed * 8, "L1 table"))
        self.csize_shift = 62 - (cluster_bits - 8)
        self._l2_index = -1
        self._l2: tuple[int, ...] = ()
        self.details: dict[str, Any] = {"version": version, "cluster_size": cluster,
                                        "compression_type": compression, "snapshots": snapshots}
        if backing_name is not None:
            self.details["backing_file"] = backing_name
            self.backing = self._open_backing(backing_name, self._backing_format(header_length),
                                              root or file.path.resolve().parent, chain)

    def _backing_format(self, start: int) -> str | None:
        """The backing file format header extension, if present."""
        pos, end = start, min(self.file.size, self.block_size)
        while pos + 8 <= end:
            kind, length = struct.unpack(">II", self.file.read(pos, 8, "header extension"))
            if kind == 0:
                return None
            if pos + 8 + length > end:
                raise self.file.fail("header extension", pos,
                                     f"{length} bytes run past the header cluster")
            if kind == 0xE2792ACA:
                return self.file.read(pos + 8, length,
                                      "backing format extension").decode("ascii", "replace")
            pos += 8 + length + (-length % 8)
        return None

    def _open_backing(self, name: str, fmt: str | None, root: Path,
                      chain: tuple[Path, ...]) -> VirtualDisk:
        path = (self.file.path.parent / name).resolve()
        where = f"backing file {name!r}"
        if not path.is_relative_to(root):
            raise self.file.fail("header", 8,
                                 f"{where} is outside the image's directory {root}: refused")
        if path in chain or path == self.file.path.resolve() or len(chain) >= MAX_CHAIN:
            raise self.file.fail("header", 8,
                                 f"{where} makes a loop or a chain over {MAX_CHAIN} images")
        from . import probe_format

        fmt = fmt or probe_format(path)
        if fmt not in ("qcow2", "raw"):
            raise self.file.fail("header", 8,
                                 f"{where} is {fmt}; only qcow2 and raw backing files are read")
        backing = BoundedFile(path, fmt)
        try:
            if fmt == "raw":
                return RawDisk(backing)
            return Qcow2Disk(backing, allow_backing=True, root=root,
                             chain=(*chain, self.file.path.resolve()))
        except BaseException:
            backing.close()
            raise

    def backing_read(self, offset: int, length: int) -> bytes:
        assert self.backing is not None
        return self.backing.read_at(offset, length)

    def allocated(self) -> list[tuple[int, int]]:
        own = super().allocated()
        if self.backing is None:
            return own
        size = self.virtual_size
        below = [(o, min(n, size - o)) for o, n in self.backing.allocated() if o < size]
        return union(own, below)

    def files(self) -> list[BoundedFile]:
        return [self.file, *(self.backing.files() if self.backing is not None else ())]

    def close(self) -> None:
        if self.backing is not None:
            self.backing.close()
        super().close()

    def _table(self, l1_index: int) -> tuple[int, ...] | None:
        entry = self.l1[l1_index]
        offset = entry & OFFSET_MASK
        if not offset:
            return None
        if offset % self.block_size:
            raise self.file.fail("L2 table", offset,
                                 f"(L1 entry {l1_index}) is not cluster-aligned")
        if l1_index != self._l2_index:
            raw = self.file.read(offset, self.block_size, f"L2 table (L1 entry {l1_index})")
            self._l2 = struct.unpack(f">{self.l2_entries}Q", raw)
            self._l2_index = l1_index
        return self._l2

    def _decode(self, entry: int, index: int) -> Block:
        if entry & COMPRESSED:
            shift = self.csize_shift
            host = entry & ((1 << shift) - 1)
            sectors = ((entry >> shift) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
            length = sectors * 512 - (host & 511)
            if host >= self.file.size:
                raise self.file.fail(f"compressed cluster {index}", host,
                                     "starts past the end of the file")
            # The last compressed cluster's sector may run past the end of the file.
            return Block(self.compression_kind, host, min(length, self.file.size - host))
        if entry & ZERO:
            return HOLE_BLOCK
        host = entry & OFFSET_MASK
        if not host:
            return BACKING_BLOCK if self.backing is not None else HOLE_BLOCK
        if host % self.block_size:
            raise self.file.fail(f"data cluster {index}", host, "is not cluster-aligned")
        return Block(RAW, host, self.block_size)

    def lookup(self, index: int) -> Block:
        l1_index, l2_index = divmod(index, self.l2_entries)
        if l1_index >= len(self.l1):
            return BACKING_BLOCK if self.backing is not None else HOLE_BLOCK
        table = self._table(l1_index)
        if table is None:
            return BACKING_BLOCK if self.backing is not None else HOLE_BLOCK
        return self._decode(table[l2_index], index)

    def mapped(self) -> Iterator[tuple[int, Block]]:
        ranges = HostRanges(self.file)
        cluster = self.block_size
        ranges.add(0, cluster, "header")
        ranges.add(self.l1_offset, len(self.l1) * 8, "L1 table")
        blocks = -(-self.virtual_size // cluster)
        for l1_index in range(len(self.l1)):
            table = self._table(l1_index)
            if table is None:
                continue
            ranges.add(self.l1[l1_index] & OFFSET_MASK, cluster, f"L2 table (L1 entry {l1_index})")
            base = l1_index * self.l2_entries
            for i, entry in enumerate(table):
                if not entry:
                    continue
                index = base + i
                if index >= blocks:
                    break
                block = self._decode(entry, index)
                if block.kind == RAW:
                    self.file.check(block.host, min(cluster, self.virtual_size - index * cluster),
                                    f"data cluster {index}")
                    ranges.add(block.host, cluster, "data")
                elif block.kind not in (HOLE, BACKING):
                    # Packed compressed clusters may share a sector, never a start.
                    ranges.add(block.host, 1, f"compressed cluster {index}")
                if block.kind not in (HOLE, BACKING):
                    yield index, block
        ranges.check()
