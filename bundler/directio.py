"""Direct I/O: files written with O_DIRECT, past the page cache."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path


class DirectWriter:
    """Writes files with O_DIRECT from one reused, page-aligned buffer.

    Copying into the kernel's page cache is most of what writing a part costs (more than
    hashing it, in a VM); direct I/O moves the bytes to the device without that copy. The
    aligned head of the file goes direct, an unaligned tail through a plain descriptor
    (different pages, so the two never overlap). Filesystems that refuse O_DIRECT raise
    EINVAL, and the caller falls back to plain writes.
    """

    ALIGN = 4096

    def __init__(self) -> None:
        self._buffer: mmap.mmap | None = None

    @staticmethod
    def available() -> bool:
        return hasattr(os, "O_DIRECT")

    def _aligned(self, size: int) -> mmap.mmap:
        want = -(-max(size, 1) // self.ALIGN) * self.ALIGN
        if self._buffer is None or len(self._buffer) < want:
            if self._buffer is not None:
                self._buffer.close()
            self._buffer = mmap.mmap(-1, want)  # anonymous maps are page-aligned
        return self._buffer

    @staticmethod
    def mapped(data: bytes | memoryview) -> bool:
        """Whether ``data`` may go to O_DIRECT as it is: a view into a mapping (the pipeline's
        part buffers are anonymous maps, so page-aligned). A view that starts inside a page
        fails with EINVAL, and the caller copies it."""
        return isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap)

    def open(self, path: Path) -> int:
        """A new file for direct writes (``write_at``, then ``finish``)."""
        return os.open(path, (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT
                              | getattr(os, "O_CLOEXEC", 0)), 0o666)

    def write_at(self, fd: int, view: memoryview, offset: int) -> None:
        """Aligned bytes at an aligned offset of a file from ``open`` (lseek and write, not
        pwrite: fake filesystems in users' tests fake only the former, and would hand a fake
        descriptor to the real pwrite)."""
        os.lseek(fd, offset, os.SEEK_SET)
        write_all(fd, view)

    def finish(self, path: Path, fd: int, data: memoryview, offset: int) -> None:
        """Write ``data[offset:]`` (the part after what ``write_at`` wrote) and close ``fd``:
        the aligned head direct, an unaligned tail through a plain descriptor."""
        rest = data[offset:]
        head = len(rest) - len(rest) % self.ALIGN
        try:
            if head and self.mapped(rest):
                try:
                    self.write_at(fd, rest[:head], offset)
                    head = -head  # written
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
            if head > 0:
                buffer = self._aligned(head)
                buffer[:head] = rest[:head]
                with memoryview(buffer) as copy:
                    self.write_at(fd, copy[:head], offset)
            head = abs(head)
        finally:
            os.close(fd)
        if head < len(rest):
            tail = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.lseek(tail, offset + head, os.SEEK_SET)
                write_all(tail, rest[head:])
            finally:
                os.close(tail)

    def write(self, path: Path, data: bytes | memoryview) -> None:
        if isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap):
            # A view of a mapping (the pipeline's part buffers are anonymous maps, so
            # page-aligned): straight from it, without the copy. EINVAL: not aligned after all
            # (or no direct I/O here, which the copy's attempt tells the caller).
            try:
                self._write_aligned(path, data)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        buffer = self._aligned(len(data))
        buffer[:len(data)] = data
        with memoryview(buffer) as view:
            self._write_aligned(path, view[:len(data)])

    def _write_aligned(self, path: Path, view: memoryview) -> None:
        head = len(view) - len(view) % self.ALIGN
        fd = os.open(path, (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT
                            | getattr(os, "O_CLOEXEC", 0)), 0o666)
        try:
            write_all(fd, view[:head])
        finally:
            os.close(fd)
        if head < len(view):
            fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.lseek(fd, head, os.SEEK_SET)
                write_all(fd, view[head:])
            finally:
                os.close(fd)


def write_all(fd: int, view: memoryview) -> None:
    """Write all of ``view`` to ``fd``, however many calls it takes."""
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "the write made no progress")
        view = view[written:]
