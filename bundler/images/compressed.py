"""Compressed raw images (gzip, xz, zstd, bzip2) as streamed ImageSources.

A stream has no allocation map and its size is recorded only by some formats, while the tar
header (size and sparse map) must be written before the data. So:

* a multi-block xz (what ``xz -T`` writes): the index gives the size and the blocks; the
  all-zero blocks are found from it without decoding them all (xzblocks.data_regions), and
  only the data blocks are decoded (on several threads; blocks over XZ_MAX_BLOCK one at a
  time, in pieces) and stored sparsely;
* size known otherwise (``--image-size``, a one-block xz index): one pass, and the image is
  stored densely (zeros included), like ``-i -``;
* otherwise (gzip, whose ISIZE is modulo 4 GiB; bzip2; zstd, whose frame header size is only
  checked: it decodes zeros at memory speed, so finding them costs far less than hashing and
  compressing them): one extra decompression pass learns the size and where the zero runs
  are, and the second pass stores only the data, sparsely, as for a raw file.

Nothing is written to disk either way, and memory is one read buffer plus the region list.
"""

from __future__ import annotations

import bz2
import logging
import lzma
import os
import zlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, ClassVar, Protocol

from ..concurrency import ordered_window
from ..errors import ImageError
from ..source import MAX_IMAGE_SIZE, READ_SIZE, ZERO_GRANULE, FileStamp, check_size
from .bounded import BoundedFile, fail
from .xzblocks import XzBlock, XzIndex, block_pieces, data_regions, decode_block, read_index

log = logging.getLogger("bundler.images")

STREAM_FORMATS = ("gz", "xz", "zst", "bz2")
RECORDED_IN = {"xz": "the xz index", "zst": "the zstd frame header"}
_ZEROS = bytes(ZERO_GRANULE)
_ZERO_READ = bytes(READ_SIZE)


class Reader(Protocol):
    """What the decompressing readers have in common."""

    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def open_stream(fmt: str, raw: BinaryIO) -> Reader:
    """A reader of the decompressed bytes of ``raw``."""
    if fmt == "gz":
        try:
            from isal import igzip

            return igzip.IGzipFile(fileobj=raw, mode="rb")  # the fast inflater the bundler uses
        except ImportError:  # pragma: no cover - isal is a dependency
            import gzip

            return gzip.GzipFile(fileobj=raw, mode="rb")
    if fmt == "xz":
        return lzma.LZMAFile(raw, "rb")
    if fmt == "bz2":
        return bz2.BZ2File(raw, "rb")
    if fmt == "zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    raise ValueError(fmt)


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What the decompressors raise on corrupt or truncated input."""
    errors: list[type[BaseException]] = [OSError, EOFError, lzma.LZMAError, ValueError, zlib.error]
    try:
        from isal import isal_zlib

        errors.append(getattr(isal_zlib, "error"))  # noqa: B009 - typed as an instance in the stubs
    except ImportError:  # pragma: no cover
        pass
    import zstandard

    errors.append(zstandard.ZstdError)
    return tuple(errors)


_ERRORS: tuple[type[BaseException], ...] = ()


def _read(stream: Reader, fmt: str, n: int, where: int) -> bytes:
    global _ERRORS
    if not _ERRORS:
        _ERRORS = _stream_errors()
    try:
        return stream.read(n)
    except _ERRORS as exc:
        raise fail(fmt, "compressed stream", where, f"corrupt or truncated data ({exc})") from None


def recorded_size(fmt: str, file: BoundedFile) -> int | None:
    """The uncompressed size where the format records it reliably, else None."""
    if fmt == "xz":
        return _xz_size(file)
    if fmt == "zst":
        try:
            import zstandard

            head = file.read(0, min(file.size, 18), "zstd frame header")
            size = zstandard.get_frame_parameters(head).content_size
        except Exception:
            return None
        # One frame holding the whole file is what zstd(1) writes for a file; a size that
        # turns out wrong is caught at the end of the pass.
        return size if 0 < size < zstandard.CONTENTSIZE_UNKNOWN else None
    return None


def _xz_size(file: BoundedFile) -> int | None:
    """Sum of the uncompressed sizes in the xz index of a single-stream file."""
    index = read_index(file)
    return index.size if index is not None and index.size else None


@dataclass
class CompressedImageSource:
    path: Path
    fmt: str
    name: str
    size: int
    mode: int = 0o644
    mtime: int = 0
    sparse: bool = False
    size_from: str = ""
    rereadable: ClassVar[bool] = True  # re-runs compare it with a bundle, then bundle it
    _regions: list[tuple[int, int]] = field(default_factory=list, repr=False)
    # The file as first opened: the size pass, the compare of a re-run and the data pass must
    # all read that file, unchanged.
    stamp: FileStamp | None = field(default=None, repr=False)
    # A multi-block xz: its blocks are decoded on threads, those outside the regions never.
    xz_index: XzIndex | None = field(default=None, repr=False)

    def regions(self) -> list[tuple[int, int]] | None:
        if not self.sparse or self._regions == [(0, self.size)] or self.size < 512:
            self._regions = [(0, self.size)]
            return None
        return self._regions

    def _open(self) -> tuple[BinaryIO, Reader]:
        try:
            raw = open(self.path, "rb")  # noqa: SIM115 - closed with the stream
        except OSError as exc:
            raise ImageError(f"cannot open image {self.path}: {exc.strerror}") from exc
        try:
            self._check(raw)
        except BaseException:
            raw.close()
            raise
        return raw, open_stream(self.fmt, raw)

    def _check(self, raw: BinaryIO) -> None:
        if self.stamp is not None:
            self.stamp.check(raw.fileno())

    def chunks(self) -> Iterator[bytes]:
        if self.xz_index is not None:
            file = BoundedFile(self.path, self.fmt)
            try:
                if self.stamp is not None:
                    self.stamp.check(file.fd)
                if _parallel_blocks(self.xz_index):
                    yield from _xz_blocks(file, self.xz_index, self._regions)
                else:
                    yield from _xz_pieces(file, self.xz_index, self._regions)
                if self.stamp is not None:
                    self.stamp.check(file.fd)
            finally:
                file.close()
            return
        raw, stream = self._open()
        try:
            pos = 0
            for offset, length in self._regions:
                while pos < offset:  # a hole: decompressed, not stored
                    data = _read(stream, self.fmt, min(READ_SIZE, offset - pos), raw.tell())
                    if not data:
                        break
                    pos += len(data)
                end = offset + length
                while pos < end:
                    data = _read(stream, self.fmt, min(READ_SIZE, end - pos), raw.tell())
                    if not data:
                        raise ImageError(f"{self.path}: the {self.fmt} stream ended after {pos} "
                                         f"bytes; {self.size_from} said {self.size} (changed while "
                                         "being read?)")
                    pos += len(data)
                    yield data
            while True:
                more = _read(stream, self.fmt, READ_SIZE, raw.tell())
                if not more:
                    break
                pos += len(more)
                if pos > self.size:
                    raise ImageError(f"{self.path}: the {self.fmt} stream holds more than the "
                                     f"{self.size} bytes {self.size_from} said")
            self._check(raw)
        finally:
            stream.close()
            raw.close()

    def close(self) -> None:
        pass


# Blocks decoded at once: each is one decoder's output held in memory until the pipeline has
# it, so their number falls as blocks grow (xz -T0 at level 6 writes 24 MiB blocks).
XZ_THREADS = max(1, min(4, os.cpu_count() or 1))
XZ_WINDOW_BYTES = 64 << 20
XZ_MAX_BLOCK = 32 << 20
XZ_PIECE = READ_SIZE  # what a larger block is decoded in


def _block_map_fits(index: XzIndex, size: int) -> bool:
    """Whether the blocks can be read one by one: several, adding up to the size the source
    declared (else the serial reader reports the mismatch)."""
    return len(index.blocks) > 1 and index.size == size


def _parallel_blocks(index: XzIndex) -> bool:
    """Whether decoding whole blocks on several threads pays and stays within memory (else
    they are decoded one at a time, in pieces)."""
    return XZ_THREADS > 1 and index.largest <= XZ_MAX_BLOCK


def xz_block_map(file: BoundedFile, size: int | None = None, *, allow_large: bool = True
                 ) -> tuple[XzIndex, list[tuple[int, int]], int] | None:
    """A multi-block xz's index, the ranges its data blocks hold and the blocks decoded to
    learn it (xzblocks.data_regions), if its blocks are read in parallel (``size``, when
    given, must be the index's); else None. The size is checked before any block is read."""
    index = read_index(file)
    if (index is None or not index.size
            or not _block_map_fits(index, index.size if size is None else size)):
        return None
    check_size(index.size, file.path, allow_large)
    regions, decoded = data_regions(file, index)
    return index, regions, decoded


def _xz_blocks(file: BoundedFile, index: XzIndex,
               regions: list[tuple[int, int]]) -> Iterator[bytes]:
    """The bytes of ``regions``, from the blocks that overlap them (the others are never read)."""
    window = max(XZ_THREADS, min(2 * XZ_THREADS, XZ_WINDOW_BYTES // max(1, index.largest)))
    wanted = _cuts(index.blocks, regions)
    with closing(ordered_window(lambda item: decode_block(file, index, item[0]), wanted,
                                jobs=XZ_THREADS, window=window, name="ami-bundler-xz")) as done:
        for (_block, cuts), data in done:
            for lo, hi in cuts:
                yield data if (lo, hi) == (0, len(data)) else data[lo:hi]


def _xz_pieces(file: BoundedFile, index: XzIndex,
               regions: list[tuple[int, int]]) -> Iterator[bytes]:
    """The bytes of ``regions``, from the blocks that overlap them, one block at a time, each
    decoded in pieces (blocks too large to hold whole)."""
    for block, cuts in _cuts(index.blocks, regions):
        pos = 0
        for piece in block_pieces(file, index, block, XZ_PIECE):
            end = pos + len(piece)
            for lo, hi in cuts:
                lo, hi = max(lo, pos), min(hi, end)
                if lo < hi:
                    yield piece if (lo, hi) == (pos, end) else piece[lo - pos:hi - pos]
            pos = end


def _cuts(blocks: tuple[XzBlock, ...], regions: list[tuple[int, int]]
          ) -> Iterator[tuple[XzBlock, list[tuple[int, int]]]]:
    """Each block overlapping the sorted ``regions``, with the ranges of its output inside them."""
    pos = r = 0
    for block in blocks:
        lo, hi = pos, pos + block.size
        pos = hi
        if lo == hi:
            continue
        while r < len(regions) and regions[r][0] + regions[r][1] <= lo:
            r += 1
        cuts = []
        k = r
        while k < len(regions) and regions[k][0] < hi:
            start, end = regions[k][0], regions[k][0] + regions[k][1]
            cuts.append((max(lo, start) - lo, min(hi, end) - lo))
            k += 1
        if cuts:
            yield block, cuts


def decompressed(path: Path, fmt: str) -> Iterator[bytes]:
    """The decompressed stream of ``path`` in pieces of up to READ_SIZE bytes."""
    with open(path, "rb") as raw:
        stream = open_stream(fmt, raw)
        try:
            while data := _read(stream, fmt, READ_SIZE, raw.tell()):
                yield data
        finally:
            stream.close()


def nonzero_granules(data: bytes, at: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each 64 KiB granule of ``data`` (found at offset ``at``) that holds a
    non-zero byte."""
    if len(data) == READ_SIZE and data == _ZERO_READ:
        return  # one memcmp for the common case: a whole read of zeros
    # bytes slices (a copy, then memcmp) compare ~100x faster than memoryview slices, which
    # compare item by item.
    data = bytes(data)
    for start in range(0, len(data), ZERO_GRANULE):
        piece = data[start:start + ZERO_GRANULE]
        if piece != _ZEROS[:len(piece)]:
            yield at + start, len(piece)


def scan(path: Path, fmt: str, limit: int | None) -> tuple[int, list[tuple[int, int]]]:
    """One decompression pass: the size and the non-zero regions (64 KiB granules)."""
    regions: list[tuple[int, int]] = []
    pos = 0
    for data in decompressed(path, fmt):
        for at, length in nonzero_granules(data, pos):
            if regions and regions[-1][0] + regions[-1][1] == at:
                regions[-1] = (regions[-1][0], regions[-1][1] + length)
            else:
                regions.append((at, length))
        pos += len(data)
        if limit is not None and pos > limit:
            raise ImageError(f"image {path} decompresses to over {limit} bytes, over EC2's 10 GiB "
                             "instance-store limit (pass --no-size-checks to bundle it anyway)")
    return pos, regions


def open_compressed(path: Path, fmt: str, *, name: str, image_size: int | None = None,
                    allow_large: bool = False) -> CompressedImageSource:
    file = BoundedFile(path, fmt)
    try:
        recorded = recorded_size(fmt, file)
        mtime = file.mtime
        mode = os.fstat(file.fd).st_mode & 0o7777
        stamp = file.stamp
        sparse_xz = xz_block_map(file, image_size, allow_large=allow_large) if fmt == "xz" else None
        if sparse_xz is not None:
            index, regions, decoded = sparse_xz
            stamp.check(file.fd)
            log.info("xz image %s: %d bytes (from the xz index) in %d blocks; %d bytes in data "
                     "blocks, stored sparsely (%d block(s) decoded to find the zero ones)",
                     path, index.size, len(index.blocks), sum(n for _, n in regions), decoded)
            return CompressedImageSource(path, fmt, name, index.size, mode, mtime, True,
                                         RECORDED_IN[fmt], regions, stamp, index)
    finally:
        file.close()
    size: int | None = None
    if image_size is not None:
        size, size_from = image_size, "--image-size"
    elif recorded is not None and fmt == "xz":
        # One xz block: a second decoding would cost more than storing the zeros.
        size, size_from = recorded, RECORDED_IN[fmt]
    if size is not None:
        check_size(size, path, allow_large)
        log.info("%s image %s: %d bytes (from %s), stored densely in one pass", fmt, path, size,
                 size_from)
        return CompressedImageSource(path, fmt, name, size, mode, mtime, False, size_from,
                                     [(0, size)], stamp)
    if recorded is not None:
        # zstd decodes zeros at memory speed: finding the holes costs far less than hashing
        # and compressing them.
        check_size(recorded, path, allow_large)
        log.info("%s image %s: %d bytes (from %s); one extra decompression pass finds its holes",
                 fmt, path, recorded, RECORDED_IN[fmt])
    else:
        log.info("%s image %s: size not recorded; one extra decompression pass learns it and its "
                 "holes", fmt, path)
    size, regions = scan(path, fmt, None if allow_large else MAX_IMAGE_SIZE)
    if recorded is not None and size != recorded:
        raise fail(fmt, RECORDED_IN[fmt], 0, f"says {recorded} bytes, the stream holds {size}")
    check_size(size, path, allow_large)
    return CompressedImageSource(path, fmt, name, size, mode, mtime, True, "the first pass",
                                 regions, stamp)


class CheckedStream:
    """A decompressing reader whose corrupt-input errors are ImageFormatErrors (for ``-i -``)."""

    def __init__(self, stream: Reader, fmt: str) -> None:
        self._stream = stream
        self._fmt = fmt
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        data = _read(self._stream, self._fmt, n, self._pos)
        self._pos += len(data)
        return data
