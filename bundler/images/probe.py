"""What is inside a guest disk: its partition table (MBR or GPT) and the filesystems found at
the partitions' starts, read through any image reader's ``read_at``. Pure parsing over a
callback, bounded: at most MAX_PARTITIONS entries and ~70 KiB read per filesystem probe."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

ReadAt = Callable[[int, int], bytes]
MAX_PARTITIONS = 128
PROBE_BYTES = 65536 + 4096 + 512  # far enough for the btrfs superblock at 64 KiB
HEAD_BYTES = 512 * 34 + MAX_PARTITIONS * 128  # MBR, GPT header and 128 entries

GPT_TYPES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI system",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "b921b045-1df0-41c3-af44-4c6f280d3fae": "Linux root (arm64)",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "Linux extended boot",
}
MBR_TYPES = {0x83: "Linux", 0x82: "Linux swap", 0x8E: "Linux LVM", 0xEF: "EFI system",
             0x0C: "FAT32 (LBA)",
             0x0B: "FAT32", 0x07: "NTFS/exFAT", 0x05: "extended", 0x0F: "extended (LBA)",
             0xFD: "Linux RAID"}


@dataclass
class Filesystem:
    type: str
    label: str | None = None
    uuid: str | None = None


@dataclass
class Partition:
    number: int
    start: int
    size: int
    type: str
    name: str | None = None
    filesystem: Filesystem | None = None


@dataclass
class DiskLayout:
    table: str | None  # "gpt", "mbr" or None
    partitions: list[Partition] = field(default_factory=list)
    filesystem: Filesystem | None = None  # an unpartitioned disk's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(raw: bytes) -> str | None:
    value = raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    return value or None


def filesystem_at(data: bytes) -> Filesystem | None:
    """The filesystem whose superblock starts ``data`` (bytes from the partition's start)."""
    def at(offset: int, magic: bytes) -> bool:
        return data[offset:offset + len(magic)] == magic

    if len(data) >= 1024 + 264 and at(1024 + 56, b"\x53\xef"):
        sb = data[1024:]
        compat, incompat = struct.unpack("<II", sb[92:100])
        kind = "ext4" if incompat & 0x2C0 else ("ext3" if compat & 4 else "ext2")
        return Filesystem(kind, _text(sb[120:136]), str(uuid.UUID(bytes=sb[104:120])))
    if at(0, b"XFSB") and len(data) >= 120:
        return Filesystem("xfs", _text(data[108:120]), str(uuid.UUID(bytes=data[32:48])))
    if at(65536 + 64, b"_BHRfS_M"):
        sb = data[65536:]
        return Filesystem("btrfs", _text(sb[299:299 + 256]), str(uuid.UUID(bytes=sb[32:48])))
    if at(0, b"LUKS\xba\xbe"):
        return Filesystem("crypto_LUKS")
    if at(512, b"LABELONE") and data[536:544] == b"LVM2 001":
        return Filesystem("LVM2_member")
    if at(0, b"hsqs"):
        return Filesystem("squashfs")
    if at(4086, b"SWAPSPACE2") or at(4086, b"SWAP-SPACE"):
        return Filesystem("swap", _text(data[1024 + 28:1024 + 44]),
                          str(uuid.UUID(bytes=data[1024 + 12:1024 + 28])))
    if at(32769, b"CD001"):
        return Filesystem("iso9660")
    if at(510, b"\x55\xaa") and (at(82, b"FAT32") or at(54, b"FAT1")):
        label = _text(data[71:82]) if at(82, b"FAT32") else _text(data[43:54])
        return Filesystem("vfat", label if label != "NO NAME" else None)
    return None


def _gpt(head: bytes, disk_size: int) -> list[Partition] | None:
    if head[512:520] != b"EFI PART":
        return None
    entries_lba, count, entry_size = struct.unpack("<QII", head[512 + 72:512 + 88])
    if entry_size < 128 or entry_size > 4096 or count == 0:
        return []
    count = min(count, MAX_PARTITIONS)
    start = entries_lba * 512
    parts = []
    for i in range(count):
        e = head[start + i * entry_size:start + i * entry_size + 128]
        if len(e) < 128 or e[:16] == bytes(16):
            continue
        first, last = struct.unpack("<QQ", e[32:48])
        if last < first or first * 512 >= disk_size:
            continue
        tguid = str(uuid.UUID(bytes_le=e[:16]))
        name = e[56:128].decode("utf-16-le", "replace").split("\0", 1)[0] or None
        parts.append(Partition(i + 1, first * 512, (last - first + 1) * 512,
                               GPT_TYPES.get(tguid, tguid), name))
    return parts


def _mbr(head: bytes, disk_size: int) -> list[Partition] | None:
    if head[510:512] != b"\x55\xaa":
        return None
    parts = []
    for i in range(4):
        e = head[446 + 16 * i:462 + 16 * i]
        ptype = e[4]
        first, count = struct.unpack("<II", e[8:16])
        if ptype == 0 or count == 0 or first * 512 >= disk_size:
            continue
        if e[0] not in (0, 0x80):
            return None  # not a partition table (a filesystem boot sector, say)
        parts.append(Partition(i + 1, first * 512, count * 512,
                               MBR_TYPES.get(ptype, f"0x{ptype:02x}")))
    return parts


def partitions_in(head: bytes, disk_size: int) -> tuple[str | None, list[Partition]]:
    """The partition table in the disk's first HEAD_BYTES bytes."""
    mbr = _mbr(head, disk_size)
    if mbr is None:
        return None, []
    if any(p.type == "0xee" for p in mbr) or (len(mbr) == 1 and head[446 + 4] == 0xEE):
        return "gpt", _gpt(head, disk_size) or []
    if not mbr and filesystem_at(head + bytes(max(0, 1100 - len(head)))):
        return None, []
    return "mbr", mbr


def probe(read_at: ReadAt, disk_size: int) -> DiskLayout:
    head = read_at(0, min(disk_size, HEAD_BYTES))
    table, parts = partitions_in(head, disk_size)
    if table is None:
        return DiskLayout(None, [], filesystem_at(read_at(0, min(disk_size, PROBE_BYTES))))
    for p in parts:
        if p.type not in ("extended", "extended (LBA)"):
            p.filesystem = filesystem_at(read_at(p.start, min(PROBE_BYTES, p.size)))
    return DiskLayout(table, parts)
