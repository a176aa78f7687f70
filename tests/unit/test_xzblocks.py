"""Multi-block .xz images decode block by block on several threads (bundler/images/xzblocks.py):
the same bytes as one serial decoder, in order; a damaged block or a lying index is one
ImageFormatError naming the block; what does not fit the parallel path reads serially."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import pytest

from bundler.errors import ImageFormatError
from bundler.images import compressed, open_source
from bundler.images.bounded import BoundedFile
from bundler.images.xzblocks import encode_vli, read_index, vli

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


def decoded(path: Path) -> tuple[bytes, set[str]]:
    """The source's bytes, and the names of the threads that decoded blocks."""
    threads: set[str] = set()
    decode = compressed.decode_block

    def spy(*args):
        threads.add(threading.current_thread().name)
        return decode(*args)

    compressed.decode_block = spy
    try:
        source = open_source(path)
        try:
            assert source.regions() is None  # the size is in the index: one dense pass
            return b"".join(source.chunks()), threads
        finally:
            source.close()
    finally:
        compressed.decode_block = decode


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
    monkeypatch.setattr(compressed, "XZ_MAX_BLOCK", MIB - 1)
    data, threads = decoded(multi)
    assert data == raw.read_bytes() and not threads


def test_a_damaged_block_names_it(multi, tmp_path):
    path = Path(shutil.copy(multi, tmp_path / "disk.raw.xz"))
    file = BoundedFile(path, "xz")
    index = read_index(file)
    file.close()
    assert index is not None
    block = index.blocks[3]
    data = bytearray(path.read_bytes())
    data[block.offset + block.unpadded // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    where = f"xz image: block at offset {block.offset}: corrupt"
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
