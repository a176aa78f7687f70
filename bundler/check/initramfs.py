"""The file names in an initramfs (concatenated newc cpio archives, the last one usually
compressed), streamed: decompressed data is parsed as it comes and never kept.

Used to tell whether a driver the kernel has as a module (xen-blkfront) is in the initramfs
that must load it before the root filesystem can be mounted.
"""

from __future__ import annotations

import bz2
import lzma
import shutil
import subprocess
import threading
import zlib
from collections.abc import Iterator

from ..concurrency import start_thread

MAX_BYTES = 512 * 1024 * 1024     # an initramfs larger than this is not read
CHUNK = 1024 * 1024
_MAGICS = (b"070701", b"070702")


def _decompressor(head: bytes):
    if head[:2] == b"\x1f\x8b":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if head[:6] == b"\xfd7zXZ\x00" or head[:3] == b"\x5d\x00\x00":
        return lzma.LZMADecompressor().decompress
    if head[:3] == b"BZh":
        return bz2.BZ2Decompressor().decompress
    return None


def _chunks(data: memoryview) -> Iterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield bytes(data[i:i + CHUNK])


def _decompressed(data: memoryview) -> Iterator[bytes] | None:
    head = bytes(data[:6])
    decompress = _decompressor(head)
    if decompress is not None:
        def gen() -> Iterator[bytes]:
            for chunk in _chunks(data):
                try:
                    out = decompress(chunk)
                except (zlib.error, lzma.LZMAError, OSError, EOFError):
                    return
                if out:
                    yield out
        return gen()
    tool = {b"\x28\xb5\x2f\xfd": "zstd", b"\x02\x21\x4c\x18": "lz4", b"\x04\x22\x4d\x18": "lz4"}
    name = tool.get(head[:4])
    if name is None or shutil.which(name) is None:
        return None
    return _through_tool(name, data)


def _through_tool(name: str, data: memoryview) -> Iterator[bytes]:
    proc = subprocess.Popen([name, "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None

    def feed() -> None:
        try:
            proc.stdin.write(data)   # type: ignore[union-attr]
        except OSError:
            pass
        finally:
            try:
                proc.stdin.close()   # type: ignore[union-attr]
            except OSError:
                pass

    writer = threading.Thread(target=feed, daemon=True)
    start_thread(writer)
    try:
        while True:
            out = proc.stdout.read(CHUNK)
            if not out:
                break
            yield out
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
        writer.join()


class _Reader:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buf = b""
        self.done = False

    def need(self, n: int) -> bool:
        while len(self.buf) < n and not self.done:
            nxt = next(self.chunks, None)
            if nxt is None:
                self.done = True
            else:
                self.buf += nxt
        return len(self.buf) >= n

    def take(self, n: int) -> bytes:
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def skip(self, n: int) -> bool:
        while n:
            if not self.buf and not self.need(1):
                return False
            k = min(n, len(self.buf))
            self.buf = self.buf[k:]
            n -= k
        return True


def _parse(reader: _Reader, names: set[str]) -> bool:
    """Members up to TRAILER!!! into ``names``; False when the data is not a newc archive."""
    consumed = 0
    while True:
        if not reader.need(110) or reader.buf[:6] not in _MAGICS:
            return False
        header = reader.take(110)
        try:
            namesize = int(header[94:102], 16)
            filesize = int(header[54:62], 16)
        except ValueError:
            return False
        pad_name = (4 - (110 + namesize) % 4) % 4
        if not reader.need(namesize + pad_name):
            return False
        name = reader.take(namesize + pad_name)[:namesize].rstrip(b"\0").decode(
            "utf-8", "replace")
        consumed += 110 + namesize + pad_name
        if name == "TRAILER!!!":
            return True
        names.add(name.lstrip("./").lstrip("/"))
        if not reader.skip(filesize + (4 - filesize % 4) % 4):
            return False


def member_names(data: bytes) -> set[str] | None:
    """Every file name in the initramfs, or None when it cannot be read (unknown format)."""
    names: set[str] = set()
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        while pos < len(view) and view[pos] == 0:
            pos += 1
        if pos >= len(view):
            break
        if bytes(view[pos:pos + 6]) in _MAGICS:
            reader = _Reader(_chunks(view[pos:]))
            if not _parse(reader, names):
                return names or None
            pos = len(view) - len(reader.buf) - _remaining(reader)
            continue
        stream = _decompressed(view[pos:])
        if stream is None:
            return names or None
        reader = _Reader(stream)
        while reader.need(1):
            reader.buf = reader.buf.lstrip(b"\0")
            if not reader.buf:
                continue
            if not _parse(reader, names):
                break
        return names
    return names


def _remaining(reader: _Reader) -> int:
    """Bytes of the source not yet pulled into the reader's buffer."""
    rest = 0
    for chunk in reader.chunks:
        rest += len(chunk)
    return rest
