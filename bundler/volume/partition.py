"""MBR and GPT partition tables written in pure Python (no parted/sgdisk/losetup).

Layout (512-byte sectors, everything 1 MiB aligned), the filesystem always at sector 2048:

* ``mbr``: partition 1, type 0x83, bootable, from 1 MiB to the end of the disk.
* ``gpt``: protective MBR, primary header + 128 entries in sectors 1-33; partition 1 "Linux"
  (8300) from 1 MiB to 1 MiB before the end; partition 2 "BIOS Boot Partition" (EF02) in the
  last MiB up to the last usable sector (GRUB 2's core.img goes there); backup entries and
  header in the final 33 sectors. Classic put the BIOS boot partition first; keeping the
  filesystem at sector 2048 in both schemes makes the offset independent of the scheme.

The table bytes are pure functions of the layout and the GUIDs/signature; ``write_table``
is the only I/O.
"""

from __future__ import annotations

import os
import struct
import uuid as uuidlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SECTOR = 512
MIB = 1024 * 1024
FS_START_LBA = 2048
GPT_ENTRIES = 128
GPT_ENTRY_SIZE = 128
GPT_ENTRY_SECTORS = GPT_ENTRIES * GPT_ENTRY_SIZE // SECTOR  # 32

LINUX_FS_GUID = uuidlib.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
BIOS_BOOT_GUID = uuidlib.UUID("21686148-6449-6E6F-744E-656564454649")

Scheme = Literal["none", "mbr", "gpt"]


@dataclass(frozen=True)
class GptPartition:
    type_guid: uuidlib.UUID
    unique_guid: uuidlib.UUID
    first_lba: int
    last_lba: int
    name: str
    attributes: int = 0


@dataclass(frozen=True)
class DiskLayout:
    scheme: Scheme
    disk_bytes: int
    fs_offset: int
    fs_bytes: int

    @property
    def sectors(self) -> int:
        return self.disk_bytes // SECTOR


def overhead_bytes(scheme: Scheme) -> int:
    """Disk bytes not available to the filesystem."""
    return {"none": 0, "mbr": MIB, "gpt": 2 * MIB}[scheme]


def layout_for(scheme: Scheme, disk_mib: int) -> DiskLayout:
    disk = disk_mib * MIB
    if scheme == "none":
        return DiskLayout("none", disk, 0, disk)
    if disk_mib < 3:
        raise ValueError("a partitioned image needs at least 3 MiB")
    return DiskLayout(scheme, disk, FS_START_LBA * SECTOR, disk - overhead_bytes(scheme))


# ------------------------------------------------------------------------------------ MBR

def _chs(lba: int) -> bytes:
    """CHS triple for an LBA with 255 heads / 63 sectors, saturating like fdisk does."""
    heads, spt = 255, 63
    cyl = lba // (heads * spt)
    if cyl > 1023:
        return b"\xfe\xff\xff"
    head = (lba // spt) % heads
    sector = lba % spt + 1
    return bytes([head, ((cyl >> 2) & 0xC0) | sector, cyl & 0xFF])


def _mbr_entry(boot: bool, ptype: int, first: int, count: int) -> bytes:
    last = first + count - 1
    return (bytes([0x80 if boot else 0]) + _chs(first) + bytes([ptype]) + _chs(last)
            + struct.pack("<II", first, count))


def mbr_sector(entries: list[bytes], disk_signature: int = 0) -> bytes:
    sector = bytearray(SECTOR)
    struct.pack_into("<I", sector, 440, disk_signature & 0xFFFFFFFF)
    for i, e in enumerate(entries[:4]):
        sector[446 + 16 * i: 446 + 16 * (i + 1)] = e
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def mbr_table(layout: DiskLayout, disk_signature: int) -> bytes:
    """The 512-byte MBR for an ``mbr`` layout. Pure."""
    first = layout.fs_offset // SECTOR
    count = min(layout.fs_bytes // SECTOR, 0xFFFFFFFF)
    return mbr_sector([_mbr_entry(True, 0x83, first, count)], disk_signature)


def protective_mbr(total_sectors: int) -> bytes:
    entry = (b"\x00\x00\x02\x00" + bytes([0xEE]) + b"\xff\xff\xff"
             + struct.pack("<II", 1, min(total_sectors - 1, 0xFFFFFFFF)))
    return mbr_sector([entry])


# ------------------------------------------------------------------------------------ GPT

def gpt_partitions(layout: DiskLayout,
                   part_guids: tuple[uuidlib.UUID, uuidlib.UUID]) -> list[GptPartition]:
    total = layout.sectors
    fs_first = layout.fs_offset // SECTOR
    fs_last = fs_first + layout.fs_bytes // SECTOR - 1
    return [
        GptPartition(LINUX_FS_GUID, part_guids[0], fs_first, fs_last, "Linux"),
        GptPartition(BIOS_BOOT_GUID, part_guids[1], fs_last + 1, total - 34, "BIOS Boot Partition"),
    ]


def _gpt_entries(parts: list[GptPartition]) -> bytes:
    out = bytearray(GPT_ENTRIES * GPT_ENTRY_SIZE)
    for i, p in enumerate(parts):
        name = p.name.encode("utf-16-le")[:72].ljust(72, b"\0")
        struct.pack_into("<16s16sQQQ72s", out, i * GPT_ENTRY_SIZE, p.type_guid.bytes_le,
                         p.unique_guid.bytes_le, p.first_lba, p.last_lba, p.attributes, name)
    return bytes(out)


def _gpt_header(*, current: int, backup: int, total: int, disk_guid: uuidlib.UUID,
                entries_lba: int, entries_crc: int) -> bytes:
    fields = [b"EFI PART", 0x00010000, 92, 0, 0, current, backup, 34, total - 34,
              disk_guid.bytes_le, entries_lba, GPT_ENTRIES, GPT_ENTRY_SIZE, entries_crc]
    fmt = "<8sIIIIQQQQ16sQIII"
    header = struct.pack(fmt, *fields)
    fields[3] = zlib.crc32(header) & 0xFFFFFFFF
    return struct.pack(fmt, *fields).ljust(SECTOR, b"\0")


def gpt_tables(layout: DiskLayout, disk_guid: uuidlib.UUID,
               part_guids: tuple[uuidlib.UUID, uuidlib.UUID]) -> tuple[bytes, bytes]:
    """(sectors 0-33: protective MBR, header, entries; last 33 sectors: entries, backup header)."""
    total = layout.sectors
    entries = _gpt_entries(gpt_partitions(layout, part_guids))
    crc = zlib.crc32(entries) & 0xFFFFFFFF
    primary = _gpt_header(current=1, backup=total - 1, total=total, disk_guid=disk_guid,
                          entries_lba=2, entries_crc=crc)
    backup = _gpt_header(current=total - 1, backup=1, total=total, disk_guid=disk_guid,
                         entries_lba=total - 1 - GPT_ENTRY_SECTORS, entries_crc=crc)
    return protective_mbr(total) + primary + entries, entries + backup


# ------------------------------------------------------------------------------------ I/O

def write_table(image: Path, layout: DiskLayout, *, disk_id: uuidlib.UUID | None = None) -> None:
    """Write the partition table of ``layout`` into the (already sized) disk image."""
    if layout.scheme == "none":
        return
    disk_id = disk_id or uuidlib.uuid4()
    fd = os.open(image, os.O_WRONLY)
    try:
        if os.fstat(fd).st_size != layout.disk_bytes:
            os.ftruncate(fd, layout.disk_bytes)
        if layout.scheme == "mbr":
            os.pwrite(fd, mbr_table(layout, int.from_bytes(disk_id.bytes[:4], "little")), 0)
        else:
            # Partition GUIDs derived from the disk GUID keep a run reproducible given --uuid.
            guids = (uuidlib.uuid5(disk_id, "1"), uuidlib.uuid5(disk_id, "2"))
            head, tail = gpt_tables(layout, disk_id, guids)
            os.pwrite(fd, head, 0)
            os.pwrite(fd, tail, layout.disk_bytes - len(tail))
    finally:
        os.close(fd)

