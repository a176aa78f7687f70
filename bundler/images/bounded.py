"""Bounds-checked reads from an untrusted image file: the one owner of "is this range inside
the file, is this table a sane size".

Every format reader goes through ``BoundedFile``: an offset or length taken from the image
is checked against the file's size and the metadata limit before anything is allocated or
read, and a failure is one ImageFormatError naming the format, the structure and its offset.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ImageError, ImageFormatError
from ..source import FileStamp

# Metadata (L1/L2 tables, grain directories, BATs) held in memory at once. A 10 GiB image
# needs at most ~1.3 MiB of qcow2 L2 entries at 64 KiB clusters and 160 MiB at qcow2's
# smallest 512-byte clusters, so this admits every sane layout of a 10 GiB image and refuses
# tables that exist only to exhaust memory.
MAX_TABLE_BYTES = 256 * 1024 * 1024


def fail(fmt: str, structure: str, offset: int, problem: str) -> ImageFormatError:
    return ImageFormatError(f"{fmt} image: {structure} at offset {offset}: {problem}")


class BoundedFile:
    """A read-only image file whose every read is checked against its size."""

    def __init__(self, path: Path, fmt: str, fd: int | None = None) -> None:
        self.path = Path(path)
        self.fmt = fmt
        self._own = fd is None
        if fd is None:
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise ImageError(f"image {self.path} does not exist") from None
            except IsADirectoryError:
                raise ImageError(f"image {self.path} is a directory: use bundle-vol for a root "
                                 "filesystem tree") from None
            except PermissionError:
                raise ImageError(f"image {self.path} is not readable (permission denied)") from None
            except OSError as exc:
                raise ImageError(f"cannot open image {self.path}: {exc.strerror}") from exc
        self.fd = fd
        try:
            st = os.fstat(fd)
            self.size = os.lseek(fd, 0, os.SEEK_END)
            self.mtime = int(st.st_mtime)
            self.stamp = FileStamp.of(fd, self.path)
        except OSError as exc:
            self.close()
            raise ImageError(f"cannot read image {self.path}: {exc.strerror}") from exc
        if stat.S_ISDIR(st.st_mode):
            self.close()
            raise ImageError(f"image {self.path} is a directory: use bundle-vol for a root "
                             "filesystem tree")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            self.close()
            raise ImageError(f"image {self.path} is not a regular file or block device: use -i - "
                             "with --image-size for a stream")

    def fail(self, structure: str, offset: int, problem: str) -> ImageFormatError:
        return fail(self.fmt, structure, offset, problem)

    def check(self, offset: int, length: int, structure: str) -> None:
        """The range must lie inside the file."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise self.fail(structure, offset, f"{length} bytes there run past the end of the "
                            f"{self.size}-byte file (truncated or corrupt image)")

    def check_table(self, offset: int, length: int, structure: str) -> None:
        """A metadata table: inside the file and within the memory limit."""
        if length > MAX_TABLE_BYTES:
            raise self.fail(structure, offset,
                            f"{length} bytes is over the {MAX_TABLE_BYTES >> 20} MiB "
                            "limit for metadata held in memory")
        self.check(offset, length, structure)

    def read(self, offset: int, length: int, structure: str) -> bytes:
        """Exactly ``length`` bytes at ``offset``, or an error naming ``structure``."""
        self.check(offset, length, structure)
        out = bytearray()
        while len(out) < length:
            try:
                data = os.pread(self.fd, length - len(out), offset + len(out))
            except OSError as exc:
                raise ImageError(f"cannot read {self.path} at offset {offset}: "
                                 f"{exc.strerror}") from exc
            if not data:
                raise self.fail(structure, offset,
                                "the file ended early (it shrank while being read?)")
            out += data
        return bytes(out)

    def read_table(self, offset: int, length: int, structure: str) -> bytes:
        self.check_table(offset, length, structure)
        return self.read(offset, length, structure)

    def check_unchanged(self) -> None:
        """ImageError if the file changed since it was opened (see FileStamp)."""
        if self.fd >= 0:
            self.stamp.check(self.fd)

    def close(self) -> None:
        if self._own and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
