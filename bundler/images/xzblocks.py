"""The xz index of a single-stream .xz file, and its blocks decoded independently.

``xz -T`` (and every multi-threaded xz writer) cuts the stream into blocks that each hold their
own sizes in the index at the end of the file. A block can then be decoded on its own, so
the blocks of an image inflate on several cores at once, in guest order, where one LZMA
decoder would keep one core busy and leave the other to the rest of the pipeline.

Each block is decoded by liblzma itself as a one-block xz stream made from the file's stream
header, the block's bytes and a one-record index: liblzma checks the block's integrity check
(CRC32/CRC64/SHA-256) and that it decodes to exactly the size the index gives, so a hostile
index or block fails there, never silently. The index is parsed only as far as trusting
offsets and sizes inside the file: anything unusual returns None and the caller reads the
stream serially, which liblzma checks end to end.

An image is mostly zeros, and ``xz -T`` cuts them into blocks that are byte for byte alike (a
block is decoded from its own bytes and sizes alone, so alike blocks decode alike). The blocks
that are all zeros are found from the index by decoding only the first of each kind
(``data_regions``): they are holes, never decoded again, hashed or compressed, and the image
is bundled sparsely in one decoding of its data, where decoding every zero block costs more
than the data (liblzma writes zeros at ~0.5 GB/s).
"""

from __future__ import annotations

import itertools
import lzma
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from .bounded import BoundedFile

HEADER_MAGIC = b"\xfd7zXZ\x00"
FOOTER_MAGIC = b"YZ"
MAX_INDEX_BYTES = 16 << 20
MAX_BLOCKS = 1 << 20
PIECE = 1 << 20  # what block_pieces reads and yields at a time
# A block that may be all zeros: stored in at most 1/ZERO_RATIO of its size (a zero block is
# stored in ~1/4000-1/5000 at every xz level). Only such blocks are decoded to make the map:
# the first of each kind (remembered by its bytes, up to MAX_KINDS kinds), so at worst, an
# image of repetitive data, the map costs one more decoding of it, as a gzip image's does.
ZERO_RATIO = 1024
MAX_KINDS = 64


@dataclass(frozen=True)
class XzBlock:
    offset: int  # of the block header in the file
    unpadded: int  # header + compressed data + check, without the padding
    size: int  # uncompressed bytes

    @property
    def stored(self) -> int:
        return self.unpadded + (-self.unpadded % 4)


@dataclass(frozen=True)
class XzIndex:
    header: bytes  # the 12-byte stream header (magic, flags, CRC32)
    blocks: tuple[XzBlock, ...]

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def largest(self) -> int:
        return max((b.size for b in self.blocks), default=0)


def vli(data: bytes, pos: int) -> tuple[int, int]:
    """An xz variable-length integer at ``pos``: (value, position after it)."""
    value = 0
    for i in range(9):
        if pos >= len(data):
            raise ValueError("truncated")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, pos
    raise ValueError("overlong integer")


def encode_vli(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_index(file: BoundedFile) -> XzIndex | None:
    """The blocks of a file holding exactly one xz stream, or None (several streams, stream
    padding, or an index that does not tile the file: the serial reader decides then)."""
    if file.size < 32:
        return None
    header = file.read(0, 12, "xz stream header")
    footer = file.read(file.size - 12, 12, "xz stream footer")
    if header[:6] != HEADER_MAGIC or footer[10:] != FOOTER_MAGIC or footer[8:10] != header[6:8]:
        return None
    backward = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
    index_at = file.size - 12 - backward
    if index_at < 12 or backward > MAX_INDEX_BYTES:
        return None
    index = file.read(index_at, backward, "xz index")
    if index[0] != 0 or struct.unpack("<I", index[-4:])[0] != zlib.crc32(index[:-4]):
        return None
    try:
        count, pos = vli(index, 1)
        if count > MAX_BLOCKS:
            return None
        blocks = []
        offset = 12
        for _ in range(count):
            unpadded, pos = vli(index, pos)
            size, pos = vli(index, pos)
            block = XzBlock(offset, unpadded, size)
            if unpadded < 5:  # the smallest block header plus nothing
                return None
            blocks.append(block)
            offset += block.stored
    except ValueError:
        return None
    if offset != index_at or pos + (-pos % 4) + 4 != backward:
        return None
    return XzIndex(header, tuple(blocks))


def _index_and_footer(index: XzIndex, block: XzBlock) -> bytes:
    """What follows the block in a stream holding only that block: a one-record index and
    the stream footer."""
    record = b"\x00" + encode_vli(1) + encode_vli(block.unpadded) + encode_vli(block.size)
    record += bytes(-len(record) % 4)
    record += struct.pack("<I", zlib.crc32(record))
    flags = index.header[6:8]
    tail = struct.pack("<I", len(record) // 4 - 1) + flags
    return record + struct.pack("<I", zlib.crc32(tail)) + tail + FOOTER_MAGIC


def decode_block(file: BoundedFile, index: XzIndex, block: XzBlock,
                 data: bytes | None = None) -> bytes:
    """One block's bytes, checked by liblzma (see the module's doc); ImageFormatError if not.
    ``data`` is the block as stored, if already read."""
    if data is None:
        data = file.read(block.offset, block.stored, "block")
    decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    try:
        out = decoder.decompress(index.header + data + _index_and_footer(index, block),
                                 block.size + 1)
    except lzma.LZMAError as exc:
        raise file.fail("block", block.offset, f"corrupt data ({exc})") from None
    if len(out) != block.size or not decoder.eof:
        raise file.fail("block", block.offset, f"decodes to {len(out)}+ bytes, the index says "
                        f"{block.size}")
    return out


def block_pieces(file: BoundedFile, index: XzIndex, block: XzBlock, piece: int = PIECE,
                 data: bytes | None = None) -> Iterator[bytes]:
    """One block's bytes in pieces of up to ``piece`` bytes, read from the file in pieces too:
    a block of any size in bounded memory. liblzma's checks (integrity, exact size) end the
    block, so its last piece is yielded only after them."""
    decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    if data is not None:
        feeds: Iterator[bytes] = iter((index.header, data))
    else:
        feeds = itertools.chain((index.header,), (
            file.read(at, min(piece, block.offset + block.stored - at), "block")
            for at in range(block.offset, block.offset + block.stored, piece)))
    feeds = itertools.chain(feeds, (_index_and_footer(index, block),))
    produced = 0
    held = b""
    try:
        for feed in feeds:
            while True:
                out = decoder.decompress(feed, piece)
                feed = b""
                if out:
                    produced += len(out)
                    if produced > block.size:
                        break
                    if held:
                        yield held
                    held = out
                if decoder.eof or decoder.needs_input:
                    break
            if decoder.eof or produced > block.size:
                break
    except lzma.LZMAError as exc:
        raise file.fail("block", block.offset, f"corrupt data ({exc})") from None
    if produced != block.size or not decoder.eof:
        raise file.fail("block", block.offset, f"decodes to {produced}+ bytes, the index says "
                        f"{block.size}")
    if held:
        yield held


def data_regions(file: BoundedFile, index: XzIndex) -> tuple[list[tuple[int, int]], int]:
    """The guest ranges of the blocks holding a non-zero byte (merged), and how many blocks
    were decoded to learn it. A block that may be all zeros (see ZERO_RATIO) is decoded and
    checked by liblzma once per kind: an identical later block (same stored bytes, same sizes
    in the index) decodes to the same bytes, so it is known without decoding. Every other block
    counts as data."""
    known: dict[tuple[int, int, bytes], bool] = {}
    regions: list[tuple[int, int]] = []
    decoded = pos = 0
    for block in index.blocks:
        zero = False
        if block.size and block.stored * ZERO_RATIO <= block.size:
            data = file.read(block.offset, block.stored, "block")
            key = (block.unpadded, block.size, data)
            seen = known.get(key)
            if seen is None:
                decoded += 1
                seen = all(out == bytes(len(out))
                           for out in block_pieces(file, index, block, data=data))
                if len(known) < MAX_KINDS:
                    known[key] = seen
            zero = seen
        if block.size and not zero:
            if regions and regions[-1][0] + regions[-1][1] == pos:
                regions[-1] = (regions[-1][0], regions[-1][1] + block.size)
            else:
                regions.append((pos, block.size))
        pos += block.size
    return regions, decoded
