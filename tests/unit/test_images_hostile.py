"""Hostile and broken images: every table offset, size and count from the file is checked,
and each failure is one ImageFormatError line naming the format, the structure and its offset,
before anything is bundled. Images are made by qemu-img at test time, then damaged."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from bundler.errors import ImageError, ImageFormatError
from bundler.images import open_source

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")
MIB = 1 << 20


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "disk.raw"
    with open(path, "wb") as fh:
        fh.truncate(4 * MIB)
        for offset in (0, MIB, 3 * MIB + 65536):
            fh.seek(offset)
            fh.write(os.urandom(50_000) + b"compressible " * 4000)
    return path


def convert(raw: Path, tmp_path: Path, fmt: str, *opts: str, name: str = "") -> Path:
    out = tmp_path / (name or f"disk.{fmt}")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, str(raw), str(out)],
                   check=True)
    return out


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def fails(path: Path, *fragments: str) -> str:
    with pytest.raises(ImageFormatError) as info:
        source = open_source(path)
        try:
            b"".join(source.chunks())
        finally:
            source.close()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def qcow2_fields(path: Path) -> dict[str, int]:
    head = path.read_bytes()[:72]
    cluster_bits, = struct.unpack(">I", head[20:24])
    l1_size, l1_offset = struct.unpack(">IQ", head[36:48])
    return {"cluster": 1 << cluster_bits, "l1_size": l1_size, "l1_offset": l1_offset}


def l1_entry(path: Path, index: int = 0) -> int:
    f = qcow2_fields(path)
    with open(path, "rb") as fh:
        fh.seek(f["l1_offset"] + 8 * index)
        return struct.unpack(">Q", fh.read(8))[0]


# ---------------------------------------------------------------------------------- qcow2


def test_qcow2_truncated_l1_table(raw, tmp_path):
    image = convert(raw, tmp_path, "qcow2")
    f = qcow2_fields(image)
    os.truncate(image, f["l1_offset"] + 4)
    fails(image, "qcow2 image: L1 table at offset", "past the end")


def test_qcow2_l1_offset_past_eof(raw, tmp_path):
    image = convert(raw, tmp_path, "qcow2")
    patch(image, 40, struct.pack(">Q", 1 << 40))
    fails(image, f"L1 table at offset {1 << 40}", "past the end")


def test_qcow2_l2_table_past_eof(raw, tmp_path):
    image = convert(raw, tmp_path, "qcow2")
    f = qcow2_fields(image)
    patch(image, f["l1_offset"], struct.pack(">Q", (1 << 63) | (1 << 36)))
    fails(image, "L2 table (L1 entry 0) at offset", "past the end")


def test_qcow2_data_cluster_pointing_at_its_own_l2_table(raw, tmp_path):
    image = convert(raw, tmp_path, "qcow2")
    l2 = l1_entry(image) & 0x00FFFFFFFFFFFE00
    patch(image, l2, struct.pack(">Q", (1 << 63) | l2))  # guest cluster 0 → the L2 table itself
    fails(image, "qcow2 image:", "overlaps", "table loop")


def test_qcow2_two_l1_entries_sharing_one_l2_table(tmp_path):
    big = tmp_path / "big.raw"
    with open(big, "wb") as fh:
        fh.truncate(1 << 30)
        fh.write(b"x" * 4096)
        fh.seek(600 * MIB)
        fh.write(b"y" * 4096)
    image = convert(big, tmp_path, "qcow2")
    f = qcow2_fields(image)
    patch(image, f["l1_offset"] + 8, struct.pack(">Q", l1_entry(image, 0)))
    fails(image, "overlaps")


def test_qcow2_two_guest_clusters_sharing_a_host_cluster(raw, tmp_path):
    image = convert(raw, tmp_path, "qcow2")
    l2 = l1_entry(image) & 0x00FFFFFFFFFFFE00
    with open(image, "rb") as fh:
        fh.seek(l2)
        first = fh.read(8)
    patch(image, l2 + 8 * 40, first)  # guest cluster 40 (a hole) → cluster 0's data
    fails(image, "overlaps", "shared cluster")


def test_qcow2_absurd_sizes(raw, tmp_path):
    image = convert(raw, tmp_path, "qcow2")
    patch(image, 20, struct.pack(">I", 30))
    fails(image, "header at offset 20", "cluster_bits 30")
    image = convert(raw, tmp_path, "qcow2", name="b.qcow2")
    patch(image, 24, struct.pack(">Q", 1 << 60))  # a virtual size its L1 table cannot map
    fails(image, "L1 table", "cannot map")
    image = convert(raw, tmp_path, "qcow2", name="c.qcow2")
    patch(image, 24, struct.pack(">Q", 1 << 58))
    patch(image, 36, struct.pack(">I", (1 << 58) // (64 * 1024 * 8192)))
    fails(image, "L1 table", "over the 256 MiB limit for metadata held in memory")


def test_qcow2_compressed_cluster_that_inflates_beyond_its_cluster(raw, tmp_path):
    image = convert(raw, tmp_path, "qcow2", "-c")
    l2 = l1_entry(image) & 0x00FFFFFFFFFFFE00
    with open(image, "rb") as fh:
        fh.seek(l2)
        entry, = struct.unpack(">Q", fh.read(8))
    host = entry & ((1 << 54) - 1)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    blob = bomb.compress(bytes(200_000)) + bomb.flush()
    end = os.path.getsize(image)
    patch(image, end, blob)
    sectors = (len(blob) + (end & 511) + 511) // 512 - 1
    patch(image, l2, struct.pack(">Q", (1 << 63) | (1 << 62) | (sectors << 54) | end))
    assert host != end
    fails(image, "compressed block 0", "inflates beyond")


def test_qcow2_corrupt_deflate_data(raw, tmp_path):
    image = convert(raw, tmp_path, "qcow2", "-c")
    l2 = l1_entry(image) & 0x00FFFFFFFFFFFE00
    with open(image, "rb") as fh:
        fh.seek(l2)
        entry, = struct.unpack(">Q", fh.read(8))
    patch(image, entry & ((1 << 54) - 1), b"\xff" * 64)
    fails(image, "compressed block 0", "bad deflate data")


def test_qcow2_encrypted_and_unknown_features_refused(raw, tmp_path):
    image = convert(raw, tmp_path, "qcow2")
    patch(image, 32, struct.pack(">I", 1))
    fails(image, "encrypted")
    image = convert(raw, tmp_path, "qcow2", name="f.qcow2")
    patch(image, 72, struct.pack(">Q", 1 << 40))
    fails(image, "unknown incompatible features")


# --------------------------------------------------------------------------- VHD / VHDX / VMDK


def test_vhd_bad_footer_checksum(raw, tmp_path):
    image = convert(raw, tmp_path, "vpc")
    size = os.path.getsize(image)
    patch(image, size - 512 + 48, b"\x7f")  # current size changed, checksum not
    fails(image, "vhd image: footer at offset", "bad checksum")


def test_vhd_bat_entry_past_eof_and_shared_blocks(raw, tmp_path):
    image = convert(raw, tmp_path, "vpc")
    data = image.read_bytes()
    table, = struct.unpack(">Q", data[512 + 16:512 + 24])
    patch(image, table, struct.pack(">I", 0x7FFFFFF0))
    fails(image, "vhd image: block 0 at offset", "past the end")
    image = convert(raw, tmp_path, "vpc", name="b.vhd")
    first = image.read_bytes()[table:table + 4]
    patch(image, table + 4, first)
    fails(image, "overlaps")


def test_vhdx_bad_header_checksums_and_dirty_log(raw, tmp_path):
    image = convert(raw, tmp_path, "vhdx")
    patch(image, 64 * 1024 + 20, b"\x01")
    patch(image, 128 * 1024 + 20, b"\x01")
    fails(image, "vhdx image: header at offset 65536", "CRC-32C")
    image = convert(raw, tmp_path, "vhdx", name="log.vhdx")
    # A non-zero log GUID with a valid checksum: a log that must be replayed.
    from bundler.images.vhdx import crc32c
    for offset in (64 * 1024, 128 * 1024):
        header = bytearray(image.read_bytes()[offset:offset + 4096])
        header[48:64] = b"\x11" * 16
        header[4:8] = b"\0\0\0\0"
        header[4:8] = struct.pack("<I", crc32c(bytes(header)))
        patch(image, offset, bytes(header))
    fails(image, "vhdx image: log at offset", "dirty", "replayed")


def test_vmdk_grain_directory_past_eof_and_wrong_marker(raw, tmp_path):
    image = convert(raw, tmp_path, "vmdk")
    patch(image, 56, struct.pack("<Q", 1 << 40))
    fails(image, "vmdk image: grain directory at offset", "past the end")
    image = convert(raw, tmp_path, "vmdk", "-o", "subformat=streamOptimized", name="s.vmdk")
    data = image.read_bytes()
    gd_sector, = struct.unpack("<Q", data[56:64])  # qemu writes it in the header too
    gt_sector, = struct.unpack("<I", data[gd_sector * 512:gd_sector * 512 + 4])
    grain_sector, = struct.unpack("<I", data[gt_sector * 512:gt_sector * 512 + 4])
    patch(image, grain_sector * 512, struct.pack("<Q", 999))
    fails(image, "grain 0 marker", "says sector 999")


def test_vmdk_descriptor_extent_outside_its_directory(tmp_path):
    desc = tmp_path / "evil.vmdk"
    desc.write_text('# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n'
                    'RW 2048 FLAT "../../etc/passwd" 0\n')
    fails(desc, "descriptor", "plain file name beside the descriptor")


def test_truncated_images_of_every_format(raw, tmp_path):
    for fmt, opts in [("qcow2", []), ("vmdk", ["-o", "subformat=streamOptimized"]), ("vpc", []),
                      ("vhdx", [])]:
        image = convert(raw, tmp_path, fmt, *opts)
        os.truncate(image, os.path.getsize(image) // 2)
        with pytest.raises(ImageError) as info:
            source = open_source(image, fmt={"vpc": "vhd"}.get(fmt, fmt))
            b"".join(source.chunks())
        assert "\n" not in str(info.value)


def test_vmdk_stream_with_its_grain_directory_in_the_footer(raw, tmp_path):
    """VMware writes GD_AT_END in the header and the real offset in a footer before the
    end-of-stream marker; qemu writes it in the header. Both read the same."""
    image = convert(raw, tmp_path, "vmdk", "-o", "subformat=streamOptimized")
    header = bytearray(image.read_bytes()[:512])
    end = os.path.getsize(image)
    end += -end % 512
    footer_marker = struct.pack("<QII", 0, 0, 3).ljust(512, b"\0")
    patch(image, end, footer_marker + bytes(header) + bytes(512))
    patch(image, 56, struct.pack("<Q", 0xFFFFFFFFFFFFFFFF))
    expected = raw.read_bytes()
    source = open_source(image)
    try:
        assert source.size == len(expected)
        data = b"".join(source.chunks())
        image_bytes = bytearray(source.size)
        pos = 0
        for offset, length in source.regions():
            image_bytes[offset:offset + length] = data[pos:pos + length]
            pos += length
        assert bytes(image_bytes) == expected
    finally:
        source.close()
    os.truncate(image, end + 512)  # footer cut off: an incomplete stream
    fails(image, "footer")
