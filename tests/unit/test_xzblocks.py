"""Multi-block .xz images decode block by block on several threads (bundler/images/xzblocks.py):
the same bytes as one serial decoder, in order; the all-zero blocks are holes found from the
index (one decode per kind of block) and never decoded again; a damaged block or a lying index
is one ImageFormatError naming the block; what does not fit the parallel path reads serially."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from bundler.errors import ImageError, ImageFormatError
from bundler.images import compressed, open_source
from bundler.images.bounded import BoundedFile
from bundler.images.xzblocks import data_regions, encode_vli, read_index, vli

pytestmark = pytest.mark.skipif(not shutil.which("xz"), reason="needs xz (xz-utils)")

MIB = 1 << 20


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("xz") / "disk.raw"
    with open(path, "wb") as fh:
        fh.write(os.urandom(MIB + 333))
        fh.write(b"text " * 300_000)
        fh.truncate(7 * MIB + 4096)
    return path


@pytest.fixture(scope="module")
def multi(raw) -> Path:
    return xz(raw, raw.with_name("multi.raw.xz"), "-T2", "--block-size=1MiB")


def xz(raw: Path, out: Path, *opts: str) -> Path:
    with open(out, "wb") as fh:
        subprocess.run(["xz", "-c", "-1", *opts, str(raw)], stdout=fh, check=True)
    return out


def decoded(path: Path, calls: list | None = None) -> tuple[bytes, set[str]]:
    """The guest disk the source stores (its regions placed, zeros elsewhere), and the names of
    the threads that decoded blocks while it was read (each decoded block added to ``calls``)."""
    threads: set[str] = set()
    decode = compressed.decode_block

    def spy(*args):
        threads.add(threading.current_thread().name)
        if calls is not None:
            calls.append(args[2])
        return decode(*args)

    source = open_source(path)
    compressed.decode_block = spy
    try:
        data = b"".join(source.chunks())
        regions = source.regions()
        if regions is None:
            return data, threads
        disk = bytearray(source.size)
        pos = 0
        for offset, length in regions:
            disk[offset:offset + length] = data[pos:pos + length]
            pos += length
        assert pos == len(data)
        return bytes(disk), threads
    finally:
        compressed.decode_block = decode
        source.close()


def test_blocks_decode_in_parallel_to_the_serial_bytes(raw, multi):
    path = multi
    file = BoundedFile(path, "xz")
    index = read_index(file)
    file.close()
    assert index is not None and len(index.blocks) == 8 and index.size == raw.stat().st_size
    data, threads = decoded(path)
    assert data == raw.read_bytes()
    assert threads and all(t.startswith("ami-bundler-xz") for t in threads)


def test_one_block_or_large_blocks_read_serially(raw, multi, tmp_path, monkeypatch):
    single = xz(raw, tmp_path / "one.raw.xz", "-T1")
    data, threads = decoded(single)
    assert data == raw.read_bytes() and not threads
    # Blocks too large to hold whole: one at a time, in pieces; the zero ones still holes.
    monkeypatch.setattr(compressed, "XZ_MAX_BLOCK", MIB - 1)
    monkeypatch.setattr(compressed, "XZ_PIECE", 100_000)
    source = open_source(multi)
    try:
        assert source.regions() == [(0, 3 * MIB), (7 * MIB, 4096)]
    finally:
        source.close()
    data, threads = decoded(multi)
    assert data == raw.read_bytes() and not threads


@pytest.mark.parametrize(("reader", "piece"), [("_xz_blocks", MIB), ("_xz_pieces", MIB),
                                               ("_xz_pieces", 100_000)])
def test_any_regions_read_from_the_blocks_give_those_bytes(raw, multi, reader, piece,
                                                           monkeypatch):
    monkeypatch.setattr(compressed, "XZ_PIECE", piece)
    image = raw.read_bytes()
    file = BoundedFile(multi, "xz")
    index = read_index(file)
    assert index is not None
    read = getattr(compressed, reader)
    try:
        for regions in ([(0, len(image))], [(5, 10)], [(MIB - 7, 14), (3 * MIB + 1, 2 * MIB)],
                        [(0, 1), (MIB, 1), (2 * MIB + 99_999, 100_002), (len(image) - 3, 3)]):
            expected = b"".join(image[o:o + n] for o, n in regions)
            assert b"".join(read(file, index, regions)) == expected, regions
    finally:
        file.close()


def damaged_copy(multi: Path, tmp_path: Path, number: int, at: Callable[[int], int],
                 flip: int) -> tuple[Path, int]:
    """A copy of the multi-block image whose block ``number`` has the byte ``at(unpadded size)``
    (counted from the block's start) XORed with ``flip``: (the copy, the block's offset)."""
    path = Path(shutil.copy(multi, tmp_path / "disk.raw.xz"))
    file = BoundedFile(path, "xz")
    index = read_index(file)
    file.close()
    assert index is not None
    block = index.blocks[number]
    data = bytearray(path.read_bytes())
    data[block.offset + at(block.unpadded)] ^= flip
    path.write_bytes(bytes(data))
    return path, block.offset


def test_a_damaged_large_block_names_it(multi, tmp_path, monkeypatch):
    monkeypatch.setattr(compressed, "XZ_MAX_BLOCK", MIB - 1)
    # random data: a data block, read only when bundled; damaged in its check
    path, offset = damaged_copy(multi, tmp_path, 0, lambda unpadded: unpadded - 2, 0x01)
    source = open_source(path)
    try:
        with pytest.raises(ImageFormatError, match=f"xz image: block at offset {offset}: "):
            b"".join(source.chunks())
    finally:
        source.close()


def test_a_damaged_block_names_it(multi, tmp_path):
    path, offset = damaged_copy(multi, tmp_path, 3, lambda unpadded: unpadded // 2, 0xFF)
    where = f"xz image: block at offset {offset}: corrupt"
    with pytest.raises(ImageFormatError, match=where):
        decoded(path)


def test_an_index_that_lies_about_a_block_size_fails_at_that_block(multi, tmp_path):
    path = Path(shutil.copy(multi, tmp_path / "disk.raw.xz"))
    data = bytearray(path.read_bytes())
    backward = (struct.unpack("<I", data[-8:-4])[0] + 1) * 4
    at = len(data) - 12 - backward
    index = bytes(data[at:at + backward])
    count, pos = vli(index, 1)
    records = []
    for _ in range(count):
        unpadded, pos = vli(index, pos)
        size, pos = vli(index, pos)
        records.append((unpadded, size))
    # Blocks 2 and 3 swap 4 KiB of their sizes: the total (the image size) stays right.
    records[2] = (records[2][0], records[2][1] - 4096)
    records[3] = (records[3][0], records[3][1] + 4096)
    body = b"\x00" + encode_vli(count) + b"".join(encode_vli(u) + encode_vli(s) for u, s in records)
    body += bytes(-len(body) % 4)
    new = body + struct.pack("<I", zlib.crc32(body))
    assert len(new) == backward
    data[at:at + backward] = new
    path.write_bytes(bytes(data))
    with pytest.raises(ImageFormatError, match="xz image: block at offset [0-9]+: decodes to"):
        decoded(path)


def test_zero_blocks_are_holes_decoded_once_per_kind(raw, multi, tmp_path):
    file = BoundedFile(multi, "xz")
    index = read_index(file)
    assert index is not None
    regions, decoded_kinds = data_regions(file, index)
    file.close()
    # Blocks 3..6 are 1 MiB of zeros each, stored alike: one decode tells them all. Blocks 1
    # and 2 (repeated text) store as small as zeros, so they are decoded too, and found to be
    # data. The 4 KiB tail of zeros does not store 1024 times smaller: it stays data unread.
    assert regions == [(0, 3 * MIB), (7 * MIB, 4096)]
    assert decoded_kinds == 3
    calls: list = []
    source = open_source(multi)
    try:
        assert source.regions() == regions
    finally:
        source.close()
    data, _ = decoded(multi, calls)
    assert data == raw.read_bytes()
    # The data pass decodes the data blocks only, each once.
    assert [b.offset for b in calls] == [index.blocks[i].offset for i in (0, 1, 2, 7)]


def test_a_compressible_block_that_is_not_zeros_is_data(tmp_path):
    raw = tmp_path / "ff.raw"
    raw.write_bytes(b"\xff" * (2 * MIB) + bytes(2 * MIB) + b"\xff" * MIB)
    path = xz(raw, tmp_path / "ff.raw.xz", "-T2", "--block-size=1MiB")
    source = open_source(path)
    try:
        assert source.regions() == [(0, 2 * MIB), (4 * MIB, MIB)]
    finally:
        source.close()
    assert decoded(path)[0] == raw.read_bytes()


def test_a_damaged_zero_block_fails_when_the_image_is_opened(multi, tmp_path):
    # the third zero block, identical to block 3 until damaged in its check
    path, offset = damaged_copy(multi, tmp_path, 5, lambda unpadded: unpadded - 2, 0x01)
    with pytest.raises(ImageFormatError, match=f"xz image: block at offset {offset}: "):
        open_source(path)


def test_an_image_over_the_size_limit_is_refused_before_any_block_is_read(multi, monkeypatch):
    import bundler.source

    monkeypatch.setattr(bundler.source, "MAX_IMAGE_SIZE", 4 * MIB)

    def no_blocks(*args):
        raise AssertionError("a block was read")

    monkeypatch.setattr(compressed, "data_regions", no_blocks)
    with pytest.raises(ImageError, match="over EC2's 10 GiB instance-store limit"):
        open_source(multi)
