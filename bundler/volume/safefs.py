"""Reading a hostile tree and writing a private one through directory file descriptors.

The tree bundle-vol reads may be changed while it runs by whoever owns a directory in it
(``/home/*`` and ``/tmp`` of the live ``/``, or the program that built the tree). A path name is
resolved afresh on every use, so a directory swapped for a symlink between two uses would take
a name-based open anywhere on the host. Everything here therefore goes one component at a time:
``openat(parent_fd, name, O_NOFOLLOW)``, so no symlink is followed at any component, and every
open is checked with ``fstat`` against the (device, inode, type) recorded when the entry was
selected. A mismatch is :class:`TreeChanged`, naming the path: the run fails rather than copy
something it did not select. Regular files are opened ``O_NONBLOCK`` so a FIFO or device swapped
in cannot block the open, and ``O_NOCTTY`` so a tty cannot become the controlling terminal.

Path names are never joined to a host path, so a tree deeper than ``PATH_MAX`` is no problem.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import NamedTuple, TypeVar

from ..concurrency import Executor
from ..errors import VolumeError
from ..interrupts import critical

T = TypeVar("T")

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC
FILE_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
              | getattr(os, "O_NOCTTY", 0) | _CLOEXEC)
_NOATIME = getattr(os, "O_NOATIME", 0)
CWD = None    # as a parent fd: names are resolved from the working directory (own paths only)


class TreeChanged(VolumeError):
    """An entry of the tree is no longer what the selection recorded."""

    def __init__(self, rel: str, what: str) -> None:
        super().__init__(f"/{display(rel)} changed while bundling ({what}): nothing from it was "
                         "copied; stop whatever modifies the volume and run again")
        self.rel = rel


class Identity(NamedTuple):
    """What the selection saw of an entry (a tuple: one is made for every file opened)."""

    dev: int
    ino: int
    fmt: int   # stat.S_IFMT of the mode

    @classmethod
    def of(cls, st) -> Identity:
        return cls(st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode))

    def matches(self, st) -> bool:
        return (st.st_ino == self.ino and st.st_dev == self.dev
                and stat.S_IFMT(st.st_mode) == self.fmt)


def display(rel: str) -> str:
    """A path as printable text, losslessly: bytes that are not UTF-8 (Python's surrogate
    escapes) become ``\\xNN``, control characters ``\\xNN`` too, and a backslash ``\\\\``."""
    if rel.isprintable() and "\\" not in rel:
        return rel
    out = []
    for ch in rel:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif not ch.isprintable():
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def undisplay(text: str) -> str:
    """The inverse of :func:`display` (``\\xNN`` ≥ 0x80 back to a surrogate escape)."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1:i + 2] == "\\":
            out.append("\\")
            i += 2
        elif ch == "\\" and text[i + 1:i + 2] in ("x", "u"):
            width = 2 if text[i + 1] == "x" else 4
            code = int(text[i + 2:i + 2 + width], 16)
            out.append(chr(0xDC00 + code) if width == 2 and code >= 0x80 else chr(code))
            i += 2 + width
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def open_root(path: os.PathLike | str) -> int:
    """The volume's (or staging area's) top directory; the path itself is the user's choice."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    except OSError as exc:
        raise VolumeError(f"cannot open {path}: {exc.strerror}") from None


def open_dir(parent_fd: int, name: str, rel: str, expect: Identity | None = None) -> int:
    """Directory ``name`` of ``parent_fd``, never through a symlink; checked against ``expect``."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        if expect is not None and not _still(parent_fd, name, expect):
            raise TreeChanged(rel, "no longer the same directory") from None
        raise
    if expect is not None:
        st = os.fstat(fd)
        if not expect.matches(st):
            os.close(fd)
            raise TreeChanged(rel, "replaced by another directory")
    return fd


def _still(parent_fd: int | None, name: str, expect: Identity) -> bool:
    try:
        return expect.matches(os.lstat(name, dir_fd=parent_fd))
    except OSError:
        return False


def check_same(parent_fd: int, name: str, rel: str, expect: Identity) -> None:
    """``name`` of ``parent_fd`` (an entry never opened: a symlink, device or FIFO) must still be
    the inode the selection saw, else :class:`TreeChanged`."""
    try:
        st = os.lstat(name, dir_fd=parent_fd)
    except FileNotFoundError:
        raise TreeChanged(rel, "removed") from None
    if not expect.matches(st):
        raise TreeChanged(rel, "replaced")


def open_file(parent_fd: int | None, name: str, rel: str, expect: Identity | None = None) -> int:
    """Regular file ``name`` of ``parent_fd`` for reading: no symlink, no blocking open, and
    (with ``expect``) the very inode the selection saw, else :class:`TreeChanged`."""
    try:
        fd = os.open(name, FILE_FLAGS | _NOATIME, dir_fd=parent_fd)
    except PermissionError:
        fd = os.open(name, FILE_FLAGS, dir_fd=parent_fd)  # O_NOATIME needs ownership
    except OSError as exc:
        if exc.errno == errno.ELOOP and expect is not None:
            raise TreeChanged(rel, "replaced by a symlink") from None
        if exc.errno == errno.ENOENT and expect is not None:
            raise TreeChanged(rel, "removed") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (expect is not None and not expect.matches(st)):
        os.close(fd)
        if expect is None:
            raise OSError(errno.EINVAL, "not a regular file")
        raise TreeChanged(rel, "replaced by another file" if stat.S_ISREG(st.st_mode)
                          else "no longer a regular file")
    # O_NONBLOCK only had to protect the open itself; on a regular file it changes nothing.
    return fd


def read_capped(parent_fd: int | None, name: str, cap: int, rel: str = "") -> bytes | None:
    """At most ``cap`` bytes of regular file ``name`` (None when it is not one, or unreadable).
    Every file bundle-vol parses is read through here or another capped read."""
    try:
        fd = open_file(parent_fd, name, rel or name)
    except OSError:
        return None
    try:
        chunks, left = [], cap
        while left > 0:
            data = os.read(fd, min(left, 1 << 20))
            if not data:
                break
            chunks.append(data)
            left -= len(data)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


class DirCursor:
    """Open directory fds along the current path of a walk, reopened only where it moves.

    ``fd_for(rel)`` returns an fd for directory ``rel`` (``""`` is the root), opening the
    components that differ from the previous call one by one with :func:`open_dir`;
    ``identities`` (rel → Identity, optional) are checked on every open.
    """

    def __init__(self, root_fd: int, identities=None, *, owns_root: bool = False) -> None:
        self.root_fd = root_fd
        self.identities = identities
        self.owns_root = owns_root                # close() closes the root fd too
        self.stack: list[tuple[str, int]] = []   # (name, fd) below the root

    def fd_for(self, rel: str) -> int:
        names = rel.split("/") if rel else []
        keep = 0
        while keep < len(self.stack) and keep < len(names) and self.stack[keep][0] == names[keep]:
            keep += 1
        for _, fd in self.stack[keep:]:
            os.close(fd)
        del self.stack[keep:]
        for i in range(keep, len(names)):
            parent = self.stack[-1][1] if self.stack else self.root_fd
            sub = "/".join(names[:i + 1])
            expect = self.identities(sub) if self.identities is not None else None
            self.stack.append((names[i], open_dir(parent, names[i], sub, expect)))
        return self.stack[-1][1] if self.stack else self.root_fd

    def close(self) -> None:
        for _, fd in self.stack:
            os.close(fd)
        self.stack.clear()
        if self.owns_root and self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1


def split_rel(rel: str) -> tuple[str, str]:
    """(parent rel, name) of a volume-relative path."""
    parent, _, name = rel.rpartition("/")
    return parent, name


def submit_with_dups(pool: Executor, fds: Sequence[int],
                     task: Callable[[tuple[int, ...]], T]) -> Future[T]:
    """``task(dups)`` on ``pool``, where ``dups`` are duplicates of ``fds`` that the task owns
    (closes). A task cancelled before it ran (a failed run's clean-up, a pool shut down with
    ``cancel_futures``) never closes them: its future's done callback does. The duplicates,
    the submit and the callback are one critical section, which closes the duplicates if the
    submit fails: a signal never leaves them with no owner."""
    dups: list[int] = []
    with critical():
        try:
            for fd in fds:
                dups.append(os.dup(fd))
            owned = tuple(dups)
            future = pool.submit(task, owned)
        except BaseException:
            for fd in dups:
                os.close(fd)
            raise

        def close_if_cancelled(done: Future[T]) -> None:
            if done.cancelled():
                for fd in owned:
                    os.close(fd)

        future.add_done_callback(close_if_cancelled)
    return future
