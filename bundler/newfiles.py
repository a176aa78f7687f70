"""New files and private directories that no interrupt, crash or race leaves half-made.

``write_new_file`` writes a small file (a key, a certificate, a manifest) under a temporary
name beside its target, created with its final mode (0600 for keys: never wider, whatever the
umask), synced, then linked (refusing an existing target) or renamed into place. The whole
write is one critical section (``bundler.interrupts``): a signal arriving meanwhile is raised
once the file is either complete under its name or gone, never between, and the temporary
name is unlinked on every path out. ``private_directory`` is ``mkdtemp`` (mode 0700) with the
same guarantee for its removal.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .interrupts import critical


def temporary_name(path: Path) -> Path:
    """The hidden name beside ``path`` that a write goes through."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def write_new_file(path: Path, data: bytes, mode: int, *, replace: bool = False,
                   umask: bool = False) -> None:
    """Create ``path`` holding ``data`` with exactly ``mode`` (``umask``: narrowed by the
    umask, as open() does); FileExistsError if it exists (unless ``replace``). OSErrors
    propagate; nothing is left under the temporary name."""
    path = Path(path)
    with critical():
        tmp = temporary_name(path)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
        try:
            try:
                if not umask:
                    os.fchmod(fd, mode)  # the umask may have narrowed it: exactly ``mode``
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, path)
            else:
                _link_new(tmp, path)
        finally:
            discard(tmp)
        sync_directory(path.parent)


def _link_new(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # fails if the target exists: a racing writer is never clobbered
    except FileExistsError:
        raise
    except OSError:
        # Some filesystems (vfat, some FUSE) have no hard links.
        if path.exists() or path.is_symlink():
            raise FileExistsError(path) from None
        os.rename(tmp, path)


def discard(path: Path) -> None:
    """Remove ``path`` if it is there; never fails (on a read-only filesystem even removing a
    file that was never created is an error, and it must not hide the real one)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def sync_directory(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable (best effort: not every filesystem can)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def private_directory(prefix: str, parent: Path | None = None, *, name: str | None = None,
                      remove: Callable[[Path], object] | None = None) -> Iterator[Path]:
    """A new mode-0700 directory under ``parent`` (default: $TMPDIR), named ``prefix`` and a
    random suffix, or exactly ``name`` (which must not exist); removed with all it holds on
    every path out, by ``remove`` when given (a signal during the removal waits until it is
    done)."""
    path: Path | None = None
    try:
        with critical():
            if name is None:
                path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            else:
                target = Path(parent or tempfile.gettempdir()) / name
                os.mkdir(target, 0o700)
                path = target
        yield path
    finally:
        if path is not None:
            with critical():
                if remove is not None:
                    remove(path)
                shutil.rmtree(path, ignore_errors=True)
