"""VHD (Virtual PC / Hyper-V / Azure) fixed and dynamic disks as a VirtualDisk: the 512-byte
footer, the dynamic disk header and its Block Allocation Table. Differencing disks are refused
(their unallocated blocks live in a parent)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from ..source import find_data_regions
from .bounded import BoundedFile
from .disk import HOLE_BLOCK, RAW, Block, HostRanges, VirtualDisk

COOKIE = b"conectix"
DYN_COOKIE = b"cxsparse"
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
UNALLOCATED = 0xFFFFFFFF
MAX_GEOMETRY = 65535 * 16 * 255
# Creators that size the disk by current_size rather than by CHS geometry (qemu follows the
# same table, so our size matches qemu-img's).
SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")


def checksum(data: bytes, skip: int) -> int:
    return ~(sum(data) - sum(data[skip:skip + 4])) & 0xFFFFFFFF


def footer_at(file: BoundedFile, offset: int) -> bytes | None:
    if file.size < offset + 512 or offset < 0:
        return None
    data = file.read(offset, 512, "footer")
    return data if data[:8] == COOKIE else None


class VhdDisk(VirtualDisk):
    fmt = "vhd"

    def __init__(self, file: BoundedFile) -> None:
        self.file = file
        if file.size < 512:
            raise file.fail("footer", 0, "the file is smaller than a VHD footer")
        footer_offset = file.size - 512
        footer = footer_at(file, footer_offset)
        if footer is None:
            footer_offset = 0
            footer = footer_at(file, 0)  # the copy at the start of a dynamic disk
        if footer is None:
            raise file.fail("footer", file.size - 512, "no 'conectix' cookie")
        (data_offset, _ts, creator, _cver, _host, _orig, current, cyls, heads, secs, dtype,
         csum) = struct.unpack(">8x8xQI4sI4sQQHBBII", footer[:68])
        if checksum(footer, 64) != csum:
            raise file.fail("footer", footer_offset, f"bad checksum 0x{csum:08x} (expected "
                            f"0x{checksum(footer, 64):08x}): corrupt image")
        size = cyls * heads * secs * 512
        if creator in SIZE_CREATORS or cyls * heads * secs == MAX_GEOMETRY:
            size = current
        self.virtual_size = size
        self.details: dict[str, Any] = {"creator": creator.decode("latin-1").strip("\0 ")}
        if dtype == DIFFERENCING:
            raise file.fail("footer", footer_offset,
                            "a differencing VHD: its unallocated blocks live "
                            "in the parent disk; merge it (qemu-img convert) first")
        if dtype == FIXED:
            self.details["subformat"] = "fixed"
            self.block_size = 1 << 21
            if size > file.size - 512:
                raise file.fail("footer", footer_offset, f"a fixed disk of {size} bytes in a "
                                f"{file.size}-byte file (truncated)")
            self.bat: tuple[int, ...] = ()
            return
        if dtype != DYNAMIC:
            raise file.fail("footer", footer_offset, f"unknown disk type {dtype}")
        self.details["subformat"] = "dynamic"
        header = file.read(data_offset, 1024, "dynamic disk header")
        (cookie, _next, table_offset, _version, entries, block_size,
         hsum) = struct.unpack(">8sQQIIII", header[:40])
        if cookie != DYN_COOKIE:
            raise file.fail("dynamic disk header", data_offset, "no 'cxsparse' cookie")
        if checksum(header, 36) != hsum:
            raise file.fail("dynamic disk header", data_offset, "bad checksum: corrupt image")
        if block_size < 512 or block_size & (block_size - 1) or block_size > 1 << 28:
            raise file.fail("dynamic disk header", data_offset, f"block size {block_size} is not a "
                            "power of two between 512 bytes and 256 MiB")
        if entries * block_size < size:
            raise file.fail("Block Allocation Table", table_offset, f"{entries} entries of "
                            f"{block_size} bytes cannot map {size} bytes")
        needed = -(-size // block_size)
        self.bat = struct.unpack(f">{needed}I", file.read_table(table_offset, needed * 4,
                                                                "Block Allocation Table"))
        self.block_size = block_size
        self.bitmap = -(-block_size // (512 * 8 * 512)) * 512
        self.table_offset = table_offset
        self.data_offset = data_offset
        self.details["block_size"] = block_size

    def _block(self, index: int, sector: int) -> Block:
        if sector == UNALLOCATED:
            return HOLE_BLOCK
        # The sector bitmap is ignored for reads, as qemu does: an allocated block is read whole.
        return Block(RAW, sector * 512 + self.bitmap, self.block_size)

    def lookup(self, index: int) -> Block:
        if not self.bat:
            return Block(RAW, index * self.block_size, self.block_size)
        if index >= len(self.bat):
            return HOLE_BLOCK
        return self._block(index, self.bat[index])

    def allocated(self) -> list[tuple[int, int]]:
        if not self.bat:  # a fixed disk is a raw file plus a footer: its holes are the file's
            return find_data_regions(self.file.fd, self.virtual_size)
        return super().allocated()

    def mapped(self) -> Iterator[tuple[int, Block]]:
        blocks = -(-self.virtual_size // self.block_size)
        if not self.bat:
            for i in range(blocks):
                yield i, Block(RAW, i * self.block_size, self.block_size)
            return
        ranges = HostRanges(self.file)
        ranges.add(self.data_offset, 1024, "dynamic disk header")
        ranges.add(self.table_offset, len(self.bat) * 4, "Block Allocation Table")
        ranges.add(self.file.size - 512, 512, "footer")
        for index, sector in enumerate(self.bat):
            if sector == UNALLOCATED:
                continue
            block = self._block(index, sector)
            length = min(self.block_size, self.virtual_size - index * self.block_size)
            self.file.check(block.host, length, f"block {index}")
            ranges.add(sector * 512, self.bitmap + length, f"block {index}")
            yield index, block
        ranges.check()
