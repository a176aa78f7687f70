"""VHDX (Hyper-V) as a VirtualDisk: the two headers (CRC-32C, highest valid sequence number
wins), the region table, the metadata items and the Block Allocation Table with its
interleaved sector-bitmap entries. A dirty log (one that must be replayed) and differencing
disks are refused: replaying a log means writing to the user's image."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from typing import Any

from .bounded import BoundedFile
from .disk import HOLE_BLOCK, RAW, Block, HostRanges, VirtualDisk

SIGNATURE = b"vhdxfile"
MIB = 1 << 20
BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
PAGE83 = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746").bytes_le
LOGICAL_SECTOR = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F").bytes_le
PHYSICAL_SECTOR = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556").bytes_le
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le
KNOWN_ITEMS = {FILE_PARAMETERS, VIRTUAL_DISK_SIZE, PAGE83, LOGICAL_SECTOR, PHYSICAL_SECTOR,
               PARENT_LOCATOR}
NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, FULLY_PRESENT, PARTIALLY_PRESENT = 0, 1, 2, 3, 6, 7
MAX_VIRTUAL_SIZE = 64 << 40


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _checked(file: BoundedFile, offset: int, length: int, signature: bytes,
             structure: str) -> bytes | None:
    """The structure if its signature and CRC-32C (field at +4, zeroed for the sum) match."""
    data = file.read(offset, length, structure)
    if data[:4] != signature:
        return None
    stored = struct.unpack("<I", data[4:8])[0]
    if crc32c(data[:4] + b"\0\0\0\0" + data[8:]) != stored:
        return None
    return data


class VhdxDisk(VirtualDisk):
    fmt = "vhdx"

    def __init__(self, file: BoundedFile) -> None:
        self.file = file
        if file.read(0, 8, "file identifier") != SIGNATURE:
            raise file.fail("file identifier", 0, "no 'vhdxfile' signature")
        headers = []
        for offset in (64 * 1024, 128 * 1024):
            data = _checked(file, offset, 4096, b"head", "header")
            if data is not None:
                headers.append((struct.unpack("<Q", data[8:16])[0], offset, data))
        if not headers:
            raise file.fail("header", 64 * 1024, "both headers (at 64 KiB and 128 KiB) have bad "
                            "signatures or CRC-32C checksums: corrupt image")
        _seq, hoffset, header = max(headers)
        log_guid = header[48:64]
        version, log_length, log_offset = struct.unpack("<xxHIQ", header[64:80])
        if version != 1:
            raise file.fail("header", hoffset, f"version {version} is not supported (1 is)")
        if log_guid != bytes(16):
            raise file.fail("log", log_offset,
                            "the log is dirty (the image was not closed cleanly) and "
                            "would have to be replayed, which writes to the image: open it once in "
                            "Hyper-V, or run qemu-img check -r all on a copy")
        regions = None
        for offset in (192 * 1024, 256 * 1024):
            regions = _checked(file, offset, 64 * 1024, b"regi", "region table")
            if regions is not None:
                roffset = offset
                break
        if regions is None:
            raise file.fail("region table", 192 * 1024,
                            "both copies have bad signatures or CRC-32C "
                            "checksums: corrupt image")
        count = struct.unpack("<I", regions[8:12])[0]
        if count > 2047:
            raise file.fail("region table", roffset, f"{count} entries is over the format's 2047")
        found: dict[bytes, tuple[int, int]] = {}
        self.ranges_meta: list[tuple[int, int, str]] = [(0, MIB, "headers and region tables")]
        if log_length:
            self.ranges_meta.append((log_offset, log_length, "log"))
        for i in range(count):
            guid, off, length, required = struct.unpack("<16sQII", regions[16 + 32 * i:48 + 32 * i])
            if guid not in (BAT_GUID, METADATA_GUID):
                if required & 1:
                    raise file.fail("region table", roffset,
                                    f"entry {i} is a required region this reader "
                                    f"does not know ({uuid.UUID(bytes_le=guid)})")
                continue
            if off % MIB or off < MIB:
                raise file.fail("region table", roffset,
                                f"entry {i} offset {off} is not a MiB multiple past the headers")
            file.check(off, length, "BAT" if guid == BAT_GUID else "metadata region")
            found[guid] = (off, length)
        if BAT_GUID not in found or METADATA_GUID not in found:
            raise file.fail("region table", roffset, "has no BAT or metadata region")
        moff, mlen = found[METADATA_GUID]
        meta = self._metadata(moff, mlen)
        bat_off, bat_len = found[BAT_GUID]
        self.ranges_meta += [(moff, mlen, "metadata region"), (bat_off, bat_len, "BAT")]
        self.block_size, self.virtual_size, sector = meta
        self.chunk_ratio = (1 << 23) * sector // self.block_size
        blocks = -(-self.virtual_size // self.block_size)
        entries = blocks + (blocks - 1) // self.chunk_ratio if blocks else 0
        if entries * 8 > bat_len:
            raise file.fail("BAT", bat_off, f"{bat_len} bytes cannot hold the {entries} entries "
                            f"{self.virtual_size} bytes need")
        self.bat = struct.unpack(f"<{entries}Q", file.read_table(bat_off, entries * 8, "BAT"))
        self.bat_offset = bat_off
        self.details: dict[str, Any] = {"block_size": self.block_size,
                                        "logical_sector_size": sector}

    def _metadata(self, moff: int, mlen: int) -> tuple[int, int, int]:
        file = self.file
        head = file.read(moff, 32, "metadata table")
        if head[:8] != b"metadata":
            raise file.fail("metadata table", moff, "no 'metadata' signature")
        count = struct.unpack("<H", head[10:12])[0]
        if count > 2047 or 32 + count * 32 > min(mlen, 64 * 1024):
            raise file.fail("metadata table", moff, f"{count} entries do not fit the table")
        table = file.read(moff + 32, count * 32, "metadata table")
        items: dict[bytes, bytes] = {}
        for i in range(count):
            guid, off, length, flags = struct.unpack("<16sIII", table[32 * i:32 * i + 28])
            if guid not in KNOWN_ITEMS:
                if flags & 4:
                    raise file.fail("metadata table", moff,
                                    f"entry {i} is a required item this reader "
                                    f"does not know ({uuid.UUID(bytes_le=guid)})")
                continue
            if length > 64 * 1024 or off + length > mlen or (length and off < 64 * 1024):
                raise file.fail("metadata item", moff + off,
                                f"entry {i} ({length} bytes at {off}) lies "
                                "outside the metadata region")
            items[guid] = file.read(moff + off, length, "metadata item")
        try:
            block_size, fflags = struct.unpack("<II", items[FILE_PARAMETERS][:8])
            size = struct.unpack("<Q", items[VIRTUAL_DISK_SIZE][:8])[0]
            sector = struct.unpack("<I", items[LOGICAL_SECTOR][:4])[0]
        except (KeyError, struct.error):
            raise file.fail("metadata table", moff,
                            "lacks the file parameters, virtual disk size or "
                            "logical sector size") from None
        if fflags & 2:
            raise file.fail("metadata item", moff,
                            "a differencing VHDX: its unallocated blocks live in "
                            "the parent disk; merge it (qemu-img convert) first")
        if block_size < MIB or block_size > 256 * MIB or block_size & (block_size - 1):
            raise file.fail("metadata item", moff, f"block size {block_size} is not a power of two "
                            "from 1 MiB to 256 MiB")
        if sector not in (512, 4096):
            raise file.fail("metadata item", moff,
                            f"logical sector size {sector} is not 512 or 4096")
        if not 0 < size <= MAX_VIRTUAL_SIZE or size % sector:
            raise file.fail("metadata item", moff,
                            f"virtual disk size {size} is not a positive multiple "
                            f"of {sector} up to 64 TiB")
        return block_size, size, sector

    def _decode(self, entry: int, index: int) -> Block:
        state = entry & 7
        if state in (NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED):
            return HOLE_BLOCK
        host = (entry >> 20) << 20
        where = f"BAT entry for block {index}"
        if state == PARTIALLY_PRESENT:
            raise self.file.fail(where, self.bat_offset,
                                 "a partially present block outside a differencing disk")
        if state != FULLY_PRESENT:
            raise self.file.fail(where, self.bat_offset, f"unknown payload block state {state}")
        if host < MIB:
            raise self.file.fail(where, self.bat_offset,
                                 f"block offset {host} is inside the headers")
        return Block(RAW, host, self.block_size)

    def lookup(self, index: int) -> Block:
        slot = index + index // self.chunk_ratio
        if slot >= len(self.bat):
            return HOLE_BLOCK
        return self._decode(self.bat[slot], index)

    def mapped(self) -> Iterator[tuple[int, Block]]:
        ranges = HostRanges(self.file)
        for start, length, name in self.ranges_meta:
            ranges.add(start, length, name)
        blocks = -(-self.virtual_size // self.block_size)
        for index in range(blocks):
            block = self.lookup(index)
            if block.kind == HOLE_BLOCK.kind:
                continue
            length = min(self.block_size, self.virtual_size - index * self.block_size)
            self.file.check(block.host, length, f"block {index}")
            ranges.add(block.host, length, "data")
            yield index, block
        ranges.check()
