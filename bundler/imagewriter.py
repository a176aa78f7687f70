"""Image writers for unbundling: a sparse file that gets its name only on commit, or nothing.

Zero runs are skipped instead of written, so holes stay holes whether the archive stored a
sparse map or a plain member full of zeros.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

from .concurrency import BackgroundTask
from .destlock import DestinationLock
from .errors import OutputError
from .interrupts import critical
from .stale import remove_stale
from .tempnames import TEMP_MARK, UNBUNDLE_KIND, temp_name
from .writeerrors import why_write_failed

log = logging.getLogger("bundler.imagewriter")

HOLE_GRANULE = 64 * 1024
# Written data is flushed in the background every this many bytes, so the final fsync (which
# must happen before the rename) finds little left to write and disk I/O overlaps decompression.
FLUSH_EVERY = 64 * 1024 * 1024
_ZEROS = bytes(HOLE_GRANULE)


class ImageWriter(Protocol):
    def open(self, size: int, mode: int) -> None: ...

    def write_at(self, offset: int, data: bytes) -> None: ...

    def commit(self) -> Path | None: ...

    def abort(self) -> None: ...


class NullImageWriter:
    """Discards the image: ``verify --decrypt`` runs the whole pipeline to nowhere."""

    def open(self, size: int, mode: int) -> None:
        self.size = size

    def write_at(self, offset: int, data: bytes) -> None:
        pass

    def commit(self) -> Path | None:
        return None

    def abort(self) -> None:
        pass


def _umask() -> int:
    """The process umask, read without changing it (other threads may be creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _explain(exc: OSError, where: Path) -> str:
    return f"cannot write into {where}: {why_write_failed(exc)}"


class FileImageWriter:
    """Writes ``destination/name`` via a hidden temporary file, renamed only by ``commit``.

    The temporary file is ``.ami-bundler-unbundle-<pid>-<name>-<token>``: a run that finds one
    whose process is gone removes it. A lock on the image name, held from ``open`` to
    ``commit``/``abort``, makes a second unbundle of the same image into the same directory
    fail at once instead of racing.
    """

    TEMP_PREFIX = f"{TEMP_MARK}{UNBUNDLE_KIND}-"

    def __init__(self, destination: Path, name: str, *, overwrite: bool = False) -> None:
        self.destination = Path(destination)
        self.final = self.destination / name
        self.overwrite = overwrite
        self.temp: Path | None = None
        self.fd = -1
        self.size = 0
        self.mode = 0o600
        self._unflushed = 0
        # fdatasync in the background bounds the dirty page cache without stalling the writes.
        self._flusher = BackgroundTask(name="ami-bundler-flush")
        self._lock: DestinationLock | None = None

    def _background_flush(self) -> None:
        fd = self.fd
        # While the previous batch is still flushing, the next write tries again.
        if self._flusher.start(lambda: os.fdatasync(fd)):
            self._unflushed = 0

    def open(self, size: int, mode: int) -> None:
        if not self.destination.is_dir():
            raise OutputError(f"destination directory {self.destination} does not exist")
        lock = DestinationLock(self.destination, f"image-{self.final.name}",
                               f"image {self.final.name}")
        lock.acquire()
        try:
            with critical():
                self._lock = lock
            self._open_locked(size, mode, lock)
        except BaseException:
            self.abort()
            raise

    def _open_locked(self, size: int, mode: int, lock: DestinationLock) -> None:
        remove_stale(self.destination, held=[lock])
        if not self.overwrite and (self.final.exists() or self.final.is_symlink()):
            raise OutputError(f"{self.final} already exists: remove it, choose another -d, or pass "
                              "--force")
        self.size = size
        # The temporary file holds decrypted data: 0600 from creation; the image's own mode
        # (the archive's, narrowed by the umask as a create would) comes only with its name.
        self.mode = ((mode & 0o777) or 0o644) & ~_umask()
        temp = self.destination / temp_name(UNBUNDLE_KIND, self.final.name)
        try:
            with critical():  # created and recorded for clean-up as one step
                self.temp = temp
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                self.fd = os.open(temp, flags, 0o600)
        except OSError as exc:
            self.temp = None
            raise OutputError(_explain(exc, self.destination)) from exc

    def write_at(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        pos = 0
        end = len(view)
        try:
            while pos < end:
                # Skip granule-aligned runs of zeros so the output stays sparse.
                granule_end = min(end, pos + HOLE_GRANULE - (offset + pos) % HOLE_GRANULE)
                piece = view[pos:granule_end]
                if piece != _ZEROS[: len(piece)]:
                    self._pwrite_all(piece, offset + pos)
                    self._unflushed += len(piece)
                pos = granule_end
            if self._unflushed >= FLUSH_EVERY and hasattr(os, "fdatasync"):
                self._background_flush()
        except OSError as exc:
            raise OutputError(_explain(exc, self.destination)) from exc

    def _pwrite_all(self, piece: memoryview, at: int) -> None:
        # lseek+write rather than pwrite: fake filesystems in users' tests support only these.
        os.lseek(self.fd, at, os.SEEK_SET)
        while piece:
            n = os.write(self.fd, piece)
            piece = piece[n:]

    def wait_flushed(self) -> None:
        """Wait for the background flush; raise its failure (reported at commit, not at write)."""
        self._flusher.join()
        if self._flusher.error is not None:
            raise self._flusher.error

    def commit(self) -> Path:
        assert self.temp is not None
        try:
            self.wait_flushed()
            os.ftruncate(self.fd, self.size)
            os.fchmod(self.fd, self.mode)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            with critical():  # the image gets its name and loses its temporary one together
                if self.overwrite:
                    os.replace(self.temp, self.final)
                else:
                    os.link(self.temp, self.final)
                    os.unlink(self.temp)
                self.temp = None
        except FileExistsError:
            self.abort()
            raise OutputError(f"{self.final} appeared while unbundling (another run?); nothing was "
                              "overwritten") from None
        except OSError as exc:
            self.abort()
            raise OutputError(_explain(exc, self.destination)) from exc
        self._release()
        return self.final

    def abort(self) -> None:
        with critical():  # an interrupt waits for the roll-back
            self._flusher.join()
            if self.fd >= 0:
                try:
                    os.close(self.fd)
                except OSError:
                    pass
                self.fd = -1
            if self.temp is not None:
                try:
                    os.unlink(self.temp)
                except OSError:
                    pass
                self.temp = None
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
