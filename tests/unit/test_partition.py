"""MBR/GPT tables written in pure Python, checked field by field and with sfdisk."""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
import zlib

import pytest

from bundler.volume.partition import (
    BIOS_BOOT_GUID,
    LINUX_FS_GUID,
    MIB,
    gpt_tables,
    layout_for,
    mbr_table,
    write_table,
)

DISK_GUID = uuid.UUID("12345678-1234-5678-9abc-def012345678")
PARTS = (uuid.UUID(int=1), uuid.UUID(int=2))


def test_layouts():
    assert layout_for("none", 100).fs_offset == 0
    assert layout_for("none", 100).fs_bytes == 100 * MIB
    mbr = layout_for("mbr", 100)
    assert (mbr.fs_offset, mbr.fs_bytes) == (MIB, 99 * MIB)
    gpt = layout_for("gpt", 100)
    assert (gpt.fs_offset, gpt.fs_bytes) == (MIB, 98 * MIB)
    with pytest.raises(ValueError):
        layout_for("gpt", 2)


def test_mbr_bytes():
    sector = mbr_table(layout_for("mbr", 64), 0xDEADBEEF)
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    assert struct.unpack_from("<I", sector, 440)[0] == 0xDEADBEEF
    entry = sector[446:462]
    assert entry[0] == 0x80 and entry[4] == 0x83
    assert struct.unpack_from("<II", entry, 8) == (2048, 64 * 2048 - 2048)
    assert sector[462:510] == bytes(48)


def test_gpt_bytes_and_crcs():
    layout = layout_for("gpt", 64)
    total = layout.sectors
    head, tail = gpt_tables(layout, DISK_GUID, PARTS)
    assert len(head) == 34 * 512 and len(tail) == 33 * 512
    pmbr = head[:512]
    assert pmbr[446 + 4] == 0xEE and struct.unpack_from("<II", pmbr, 446 + 8) == (1, total - 1)
    hdr = head[512:1024]
    assert hdr[:8] == b"EFI PART"
    fields = struct.unpack_from("<8sIIIIQQQQ16sQIII", hdr)
    _, rev, size, crc, _, cur, backup, first, last, guid, lba, n, esize, ecrc = fields
    assert (rev, size, cur, backup, first, last, lba, n, esize) == (
        0x10000, 92, 1, total - 1, 34, total - 34, 2, 128, 128)
    assert uuid.UUID(bytes_le=guid) == DISK_GUID
    zeroed = bytearray(hdr[:92])
    zeroed[16:20] = bytes(4)
    assert zlib.crc32(zeroed) == crc
    entries = head[1024:]
    assert zlib.crc32(entries) == ecrc
    assert tail[:-512] == entries
    bfields = struct.unpack_from("<8sIIIIQQQQ16sQIII", tail[-512:])
    assert (bfields[5], bfields[6], bfields[10]) == (total - 1, 1, total - 33)
    t1, u1, f1, l1 = struct.unpack_from("<16s16sQQ", entries, 0)
    t2, _, f2, l2 = struct.unpack_from("<16s16sQQ", entries, 128)
    assert uuid.UUID(bytes_le=t1) == LINUX_FS_GUID and uuid.UUID(bytes_le=u1) == PARTS[0]
    assert (f1, l1) == (2048, total - 2048 - 1)
    assert uuid.UUID(bytes_le=t2) == BIOS_BOOT_GUID and (f2, l2) == (total - 2048, total - 34)
    assert entries[56:56 + 10].decode("utf-16-le") == "Linux"


@pytest.mark.skipif(shutil.which("sfdisk") is None,
                    reason="sfdisk not installed (apt-get install fdisk)")
@pytest.mark.parametrize("scheme", ["mbr", "gpt"])
def test_sfdisk_accepts_table(tmp_path, scheme):
    img = tmp_path / "disk.img"
    with open(img, "wb") as fh:
        fh.truncate(64 * MIB)
    write_table(img, layout_for(scheme, 64), disk_id=DISK_GUID)
    verify = subprocess.run(["sfdisk", "--verify", str(img)], capture_output=True, text=True)
    assert verify.returncode == 0 and "No errors detected" in verify.stdout, (
        verify.stdout + verify.stderr)
    dump = subprocess.run(["sfdisk", "--dump", str(img)], capture_output=True, text=True,
                          check=True).stdout
    first = next(ln for ln in dump.splitlines() if ln.startswith(f"{img}1 "))
    assert "start=        2048" in first
    if scheme == "gpt":
        assert "label: gpt" in dump and str(DISK_GUID).upper() in dump
        assert 'name="BIOS Boot Partition"' in dump
    else:
        assert "label: dos" in dump and "bootable" in first and "type=83" in first
