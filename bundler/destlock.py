"""The destination lock: one run at a time writes a given bundle (or image) into a directory."""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

from .errors import OutputError
from .interrupts import critical
from .tempnames import LOCK_KIND, TEMP_MARK, short_name
from .writeerrors import why_write_failed


def try_flock(fd: int) -> bool | None:
    """An exclusive ``flock`` on ``fd``, taken now or not at all: True taken, False another
    process holds it, None this system or filesystem has no locking (the caller decides what
    that means: the destination lock goes on unlocked, the stale clean-up removes nothing)."""
    if fcntl is None:  # pragma: no cover - not on Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is the file ``path`` names now (not one removed since)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class DestinationLock:
    """An exclusive ``flock`` on ``DIR/.ami-bundler-lock-<what>`` from begin to commit.

    Two runs writing the same bundle (or image) into the same directory would otherwise only
    collide at the very end; the second one now fails at once. The file is removed by its
    holder on release; a racing opener that locked the removed inode notices and retries.
    The kernel drops the lock when the holder dies, so a crash never leaves it held.
    """

    def __init__(self, directory: Path, what: str, display: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{TEMP_MARK}{LOCK_KIND}-{short_name(what)}"
        self.display = display
        self._fd = -1

    def try_acquire(self) -> bool:
        """Acquire if free; False if another run holds it."""
        try:
            self.acquire()
        except OutputError:
            return False
        return True

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        try:
            with critical():  # an interrupt must not fall between creating and recording
                self._acquire()
        except BaseException:
            self.release()
            raise

    def _acquire(self) -> None:
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            except OSError as exc:
                raise OutputError(f"cannot write to {self.directory}: "
                                  f"{why_write_failed(exc)}") from exc
            taken = try_flock(fd)
            if taken is False:
                os.close(fd)
                raise OutputError(
                    f"another ami-bundler run is writing {self.display} in {self.directory}; "
                    "wait for it to finish or choose another name/destination"
                )
            if taken is None:
                # No locking on this filesystem: go on unlocked; link() still refuses clashes.
                self._fd = fd
                return
            if same_file(fd, self.path):
                self._fd = fd
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError:
                    pass  # the PID is for people; the lock works without it
                return
            os.close(fd)  # we locked a file its holder had just removed; lock the new one
        raise OutputError(f"cannot lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        with critical():
            if self._fd < 0:
                return
            try:
                if same_file(self._fd, self.path):
                    os.unlink(self.path)
            except OSError:
                pass
            finally:
                os.close(self._fd)
                self._fd = -1
