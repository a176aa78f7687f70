"""GRUB 2 i386-pc boot sector and core image patching, as ``grub-bios-setup`` does it. Pure.

grub-bios-setup needs a block device (it opens the disk, probes it, and reads back the
embedding area through the OS), which means a loop device on an image file. What it writes is
small and well defined, so we do it on bytes:

* **boot.img** (the 512-byte MBR code, ``include/grub/i386/pc/boot.h``): bytes 0x5c-0x63 hold
  the LBA of core.img's first sector (``GRUB_BOOT_MACHINE_KERNEL_SECTOR``), 0x64 the boot
  drive (0xff: the drive the BIOS booted from), 0x66 a 2-byte jump that skips the "is this a
  hard disk" check; on a hard disk it becomes two NOPs, to work around BIOSes that pass a
  wrong drive number in DL. The BIOS parameter block area (0x03-0x59) and everything from
  the disk signature (0x1b8) to the partition table's end (0x1fe) are kept from the sector
  already on disk, so the partition table and the disk signature survive.
* **core.img** starts with diskboot.img, whose last 12 bytes are the first entry of a
  blocklist growing downwards: ``(u64 start LBA, u16 sectors, u16 load segment)``, terminated
  by an all-zero entry. diskboot itself is sector ``first``; the rest of core.img follows
  contiguously in the MBR gap or the BIOS boot partition, so one entry (``first + 1``,
  ``n - 1`` sectors, segment 0x820 = 0x8000 + 512 bytes) is all it takes. Reed-Solomon
  redundancy (grub-install's protection against tools scribbling into the MBR gap) is not
  added: its length field stays 0, which the startup code takes as "none".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SECTOR = 512
BPB_START, BPB_END = 0x03, 0x5A
KERNEL_SECTOR = 0x5C
BOOT_DRIVE = 0x64
DRIVE_CHECK = 0x66
WINDOWS_NT_MAGIC = 0x1B8   # disk signature: start of what is kept from the disk's sector 0
PART_END = 0x1FE
BLOCKLIST_SIZE = 12
BLOCKLIST_FORMAT = "<QHH"
KERNEL_SEGMENT = 0x800     # GRUB_BOOT_I386_PC_KERNEL_SEG: diskboot loads core.img at 0x8000
NOP = 0x90
JMP_SHORT = 0xEB


class GrubImageError(ValueError):
    """boot.img / core.img are not what this GRUB i386-pc layout expects."""


@dataclass(frozen=True)
class BlockEntry:
    start: int
    sectors: int
    segment: int


def sectors_for(size: int) -> int:
    return -(-size // SECTOR)


def patch_boot_img(boot_img: bytes, existing_mbr: bytes, core_lba: int) -> bytes:
    """The MBR sector: GRUB's boot.img pointing at ``core_lba``, with the BPB area and
    the disk signature + partition table of ``existing_mbr`` kept."""
    if len(boot_img) != SECTOR:
        raise GrubImageError(f"boot.img is {len(boot_img)} bytes, expected {SECTOR}")
    if len(existing_mbr) != SECTOR:
        raise GrubImageError("the existing MBR must be one 512-byte sector")
    if boot_img[510:512] != b"\x55\xaa":
        raise GrubImageError("boot.img lacks the 0x55AA boot signature")
    out = bytearray(boot_img)
    out[BPB_START:BPB_END] = existing_mbr[BPB_START:BPB_END]
    struct.pack_into("<Q", out, KERNEL_SECTOR, core_lba)
    out[BOOT_DRIVE] = 0xFF
    if out[DRIVE_CHECK] == JMP_SHORT:
        out[DRIVE_CHECK:DRIVE_CHECK + 2] = bytes([NOP, NOP])
    elif out[DRIVE_CHECK:DRIVE_CHECK + 2] != bytes([NOP, NOP]):
        raise GrubImageError(f"unexpected code at boot.img offset {DRIVE_CHECK:#x}: not a "
                             "GRUB 2 i386-pc boot.img")
    out[WINDOWS_NT_MAGIC:PART_END] = existing_mbr[WINDOWS_NT_MAGIC:PART_END]
    return bytes(out)


def read_blocklist(core_img: bytes) -> list[BlockEntry]:
    """The blocklist entries in core.img's first sector, up to (not including) the terminator."""
    entries = []
    off = SECTOR - BLOCKLIST_SIZE
    while off >= 0:
        start, length, segment = struct.unpack_from(BLOCKLIST_FORMAT, core_img, off)
        if length == 0:
            break
        entries.append(BlockEntry(start, length, segment))
        off -= BLOCKLIST_SIZE
    return entries


def patch_core_img(core_img: bytes, first_lba: int) -> bytes:
    """core.img with its diskboot blocklist describing a contiguous copy at ``first_lba``,
    padded to whole sectors (what gets written to the disk)."""
    if len(core_img) <= SECTOR:
        raise GrubImageError("core.img is too small to be a GRUB i386-pc core image")
    n = sectors_for(len(core_img))
    if n - 1 > 0xFFFF:
        raise GrubImageError(f"core.img is {n} sectors: too large for one blocklist entry")
    out = bytearray(core_img.ljust(n * SECTOR, b"\0"))
    off = SECTOR - BLOCKLIST_SIZE
    # The entry below the first must be a terminator, as grub-bios-setup insists.
    _, nxt_len, _ = struct.unpack_from(BLOCKLIST_FORMAT, out, off - BLOCKLIST_SIZE)
    if nxt_len != 0:
        raise GrubImageError("no terminator in the core image's blocklist: not a GRUB 2 "
                             "i386-pc core.img")
    segment = KERNEL_SEGMENT + (SECTOR >> 4)
    struct.pack_into(BLOCKLIST_FORMAT, out, off, first_lba + 1, n - 1, segment)
    return bytes(out)


def boot_sectors(boot_img: bytes, core_img: bytes, existing_mbr: bytes, core_lba: int,
                 core_limit_lba: int) -> tuple[bytes, bytes]:
    """(sector 0, core.img sectors to write at ``core_lba``); the core must end before
    ``core_limit_lba`` (exclusive): the filesystem or the backup GPT starts there."""
    core = patch_core_img(core_img, core_lba)
    available = core_limit_lba - core_lba
    if len(core) // SECTOR > available:
        raise GrubImageError(f"core.img needs {len(core) // SECTOR} sectors but only "
                             f"{available} are free for it")
    return patch_boot_img(boot_img, existing_mbr, core_lba), core
