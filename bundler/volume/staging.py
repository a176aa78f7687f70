"""The staging tree: the selection materialised as a private directory for ``mke2fs -d``.

Why a staging tree: ``mke2fs -d DIR`` (e2fsprogs 1.47.0 reads no tar) copies a directory as it
is, so the selection (excludes, secret filter, mount points) has to exist as a directory.
Populating from the source and deleting afterwards would leave excluded secrets in the image's
free blocks.

Why copies, not hard links (what this did before): a hard link changes the ctime of every
source inode (all of ``/`` for a live bundle — tripwire/AIDE and ctime-based backups notice),
and ``mke2fs -d`` looks every multiply-linked inode up in a linear list, so a tree of hard links
costs O(n²) in mke2fs. A copy is a new single-link inode: mke2fs stays linear. Data is
reflinked (``FICLONE``) where the filesystem can, else copied in the kernel
(``copy_file_range``) range by range, holes kept; copies run on a small thread pool (the
system calls release the GIL). Hard links *inside* the selection stay hard links in the image.

Every source entry is opened through directory fds and checked against the identity the
selection recorded (``safefs``): a directory swapped for a symlink, a file swapped for a FIFO
or for another file makes the run fail naming the path — never a silent substitution. The
staging area is created 0700 and every file in it 0600 until its own mode is set, and nothing
in it is ever written through a link.

What ``mke2fs -d`` cannot carry is returned in :class:`StageStats` for the filesystem step:
inode flags (``chattr +i/+a``...) and extended attributes too large for an ext4 inode plus
one block (``pending_xattrs``, spooled to files).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .. import signalsafe
from ..concurrency import Executor
from ..errors import VolumeError
from . import safefs
from .safefs import Identity, display, split_rel
from .selection import Entry, Selection

log = logging.getLogger("bundler.volume")

MIB = 1024 * 1024
COPY_WORKERS = 2
BATCH = 256              # files per pool task (one directory's, so workers rarely share one)
IN_FLIGHT = 8            # batches queued at most (each file in one holds two fds)
FICLONE = 0x40049409
FS_IOC_GETFLAGS = 0x80086601
# Inode flags worth carrying into the image (chattr letters S i a d A D T).
KEPT_FLAGS = 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x10000 | 0x20000
# Bytes of extended attributes an ext4 inode (256 bytes) plus one 4 KiB block can hold, less a
# safety margin: above this mke2fs -d fails ("No space left on device" on the whole run).
XATTR_INLINE_LIMIT = 3900

# Test hook: called with each entry's rel just before its source is opened, so tests can swap
# things at exactly that moment (deterministically, not by racing).
STAGE_HOOK: Callable[[str], None] | None = None


@dataclass
class PendingXattr:
    rel: str
    name: str
    value_file: Path


@dataclass
class StageStats:
    copied: int = 0
    copied_bytes: int = 0
    reflinked: int = 0
    linked: int = 0            # hard links among copies (links inside the selection)
    created: int = 0           # directories, symlinks, device nodes, FIFOs
    flags: list[tuple[str, int]] = field(default_factory=list)
    pending_xattrs: list[PendingXattr] = field(default_factory=list)
    oversize_xattr_files: list[str] = field(default_factory=list)
    dropped_xattrs: list[tuple[str, list[str]]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (rel, reason)
    fed: int = 0               # files the ext4 feed wrote from the source (no staging copy)
    fed_bytes: int = 0

    @property
    def linked_files(self) -> int:  # kept for callers of the previous API
        return self.linked


@dataclass
class XattrPolicy:
    """What to do with attributes too large for mke2fs -d: spool them for the filesystem step
    (``keep``, needs ext4 ``ea_inode``) or leave them out, reported per file (``drop``)."""

    keep: bool = True
    spool_dir: Path | None = None


def stage(selection: Selection, staging: Path, *, xattrs: XattrPolicy | None = None,
          workers: int = COPY_WORKERS) -> StageStats:
    """Materialise the selection at ``staging`` (created here, 0700; must not exist)."""
    return _Stager(selection, staging, xattrs or XattrPolicy(), workers).run()


class _Stager:
    def __init__(self, selection: Selection, staging: Path, xattrs: XattrPolicy,
                 workers: int) -> None:
        self.sel = selection
        self.staging = staging
        self.xattrs = xattrs
        self.workers = workers
        self.stats = StageStats()
        self.is_root = os.geteuid() == 0
        self.lock = threading.Lock()
        self.spooled = 0
        self.clone = True     # try FICLONE until it fails once

    def run(self) -> StageStats:
        os.mkdir(self.staging, 0o700)
        src = self.sel.open_cursor()
        src_root = src.root_fd
        dst = safefs.DirCursor(safefs.open_root(self.staging), owns_root=True)
        dst_root = dst.root_fd
        pool = Executor(max(1, self.workers), thread_name_prefix="stage-copy")
        pending: deque[Future] = deque()
        dirs: list[tuple[str, Entry]] = []
        # Files are opened, created and copied by the workers, a batch of one directory's
        # files per task with its own duplicates of the two directory fds (creating a file is
        # the slowest step: it must not be serial). Hard links to a copy are made at the end,
        # once every copy exists.
        batch: list[tuple[str, Entry]] = []
        batch_parent: str | None = None
        links: list[tuple[str, str]] = []

        def flush() -> None:
            nonlocal batch
            if batch:
                pending.append(safefs.submit_with_dups(
                    pool, (src.fd_for(batch_parent), dst.fd_for(batch_parent)),
                    partial(self.copy_batch, batch=batch)))
                batch = []
                while len(pending) > IN_FLIGHT:
                    signalsafe.result(pending.popleft())
        try:
            self.meta_from_fd(src_root, dst_root, "", self.sel.entries[0], owner_only=True)
            first_copy: dict[tuple[int, int], str] = {}
            for entry in self.sel.entries[1:]:
                parent, name = split_rel(entry.rel)
                if STAGE_HOOK is not None:
                    STAGE_HOOK(entry.rel)
                kind = entry.kind
                if kind == "file":
                    key = (entry.st_dev, entry.st_ino)
                    if entry.st_nlink > 1:
                        if key in first_copy:
                            links.append((first_copy[key], entry.rel))
                            continue
                        first_copy[key] = entry.rel
                    if parent != batch_parent or len(batch) >= BATCH:
                        flush()
                        batch_parent = parent
                    batch.append((name, entry))
                    continue
                sfd, dfd = src.fd_for(parent), dst.fd_for(parent)
                if kind == "dir":
                    self.make_dir(sfd, dfd, name, entry)
                    dirs.append((entry.rel, entry))
                else:
                    self.make_special(sfd, dfd, name, entry)
            flush()
            while pending:
                signalsafe.result(pending.popleft())
            for target, rel in links:
                parent, name = split_rel(rel)
                os.link(target, name, src_dir_fd=dst_root, dst_dir_fd=dst.fd_for(parent),
                        follow_symlinks=False)
                self.stats.linked += 1
            # Directory modes and times last, deepest first: a read-only mode must not block
            # creating children, and adding children would reset the mtime.
            for rel, entry in reversed(dirs):
                parent, name = split_rel(rel)
                pfd = dst.fd_for(parent)
                fd = safefs.open_dir(pfd, name, rel)
                try:
                    os.chmod(fd, stat.S_IMODE(entry.st_mode))
                    os.utime(fd, ns=(entry.st_atime_ns, entry.st_mtime_ns))
                finally:
                    os.close(fd)
            os.chmod(dst_root, 0o700)   # the staging root stays private; mke2fs sets the root
        finally:
            for f in pending:
                signalsafe.cancel(f)  # one that will never run has its fds closed (safefs)
            pool.shutdown(wait=True, cancel_futures=True)
            src.close()
            dst.close()
        s = self.stats
        log.info("staged %d copies (%d MiB, %d reflinked), %d hard links, %d dirs/symlinks/"
                 "nodes", s.copied, s.copied_bytes // MIB, s.reflinked, s.linked, s.created)
        return s

    # ------------------------------------------------------------------ entries

    def make_dir(self, sfd: int, dfd: int, name: str, entry: Entry) -> None:
        src = safefs.open_dir(sfd, name, entry.rel, entry.identity)
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
            dst = safefs.open_dir(dfd, name, entry.rel)
            try:
                self.meta_from_fd(src, dst, entry.rel, entry, owner_only=True)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.stats.created += 1

    def copy_batch(self, fds: tuple[int, ...], batch: list[tuple[str, Entry]]) -> None:
        """Open (checked against the selection), create and copy each file of one directory;
        the two directory fds are this task's own and closed here."""
        sfd, dfd = fds
        try:
            for name, entry in batch:
                src = safefs.open_file(sfd, name, entry.rel, entry.identity)
                try:
                    dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                except BaseException:
                    os.close(src)
                    raise
                self.copy(src, dst, entry)
        finally:
            os.close(sfd)
            os.close(dfd)

    def copy(self, src: int, dst: int, entry: Entry) -> None:
        try:
            reflinked, n = copy_data(src, dst, entry.st_size, entry.st_blocks, self.clone)
            if not reflinked:
                self.clone = False   # the filesystem has no reflinks: stop trying
            self.meta_from_fd(src, dst, entry.rel, entry)
            with self.lock:
                self.stats.copied += 1
                self.stats.copied_bytes += n
                self.stats.reflinked += reflinked
        except OSError as exc:
            raise VolumeError(f"cannot stage /{display(entry.rel)}: "
                              f"{exc.strerror or exc}") from exc
        finally:
            os.close(src)
            os.close(dst)

    def make_special(self, sfd: int, dfd: int, name: str, entry: Entry) -> None:
        safefs.check_same(sfd, name, entry.rel, entry.identity)
        if not make_node(sfd, dfd, name, entry, chown=self.is_root):
            self.stats.skipped.append((entry.rel, f"unsupported file type {entry.kind}"))
            return
        self.copy_xattrs(_proc_path(sfd, name), _proc_path(dfd, name), entry.rel)
        os.utime(name, ns=(entry.st_atime_ns, entry.st_mtime_ns), dir_fd=dfd,
                 follow_symlinks=False)
        self.stats.created += 1

    # ------------------------------------------------------------------ metadata

    def meta_from_fd(self, src: int, dst: int, rel: str, entry: Entry, *,
                     owner_only: bool = False) -> None:
        """Owner, xattrs, inode flags (and unless ``owner_only`` mode and times)."""
        if self.is_root and (entry.st_uid or entry.st_gid):   # created root's already
            os.chown(dst, entry.st_uid, entry.st_gid)
        self.copy_xattrs(src, dst, rel)
        flags = inode_flags(src) & KEPT_FLAGS
        if flags:
            with self.lock:
                self.stats.flags.append((rel, flags))
        if not owner_only:
            if stat.S_IMODE(entry.st_mode) != 0o600:
                os.chmod(dst, stat.S_IMODE(entry.st_mode))
            os.utime(dst, ns=(entry.st_atime_ns, entry.st_mtime_ns))

    def copy_xattrs(self, src: int | str | None, dst: int | str | None, rel: str) -> None:
        if src is None or dst is None:
            return
        nofollow = {"follow_symlinks": False} if isinstance(src, str) else {}
        try:
            names = os.listxattr(src, **nofollow)
        except OSError:
            return
        if not names:
            return
        values: list[tuple[str, bytes]] = []
        for name in names:
            try:
                values.append((name, os.getxattr(src, name, **nofollow)))
            except OSError as exc:
                log.debug("xattr %s of /%s unreadable: %s", name, display(rel), exc.strerror)
        if xattr_cost(values) > XATTR_INLINE_LIMIT:
            self.oversize(rel, values)
            return
        for name, value in values:
            try:
                os.setxattr(dst, name, value, **nofollow)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.E2BIG):
                    self.oversize(rel, values)
                    return
                log.debug("xattr %s of /%s not copied: %s", name, display(rel), exc.strerror)

    def oversize(self, rel: str, values: list[tuple[str, bytes]]) -> None:
        with self.lock:
            self.stats.oversize_xattr_files.append(rel)
            if not self.xattrs.keep or self.xattrs.spool_dir is None:
                self.stats.dropped_xattrs.append((rel, sorted(n for n, _ in values)))
                return
            for name, value in values:
                self.spooled += 1
                path = self.xattrs.spool_dir / f"xattr-{self.spooled}"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(value)
                self.stats.pending_xattrs.append(PendingXattr(rel, name, path))


def xattr_cost(values: list[tuple[str, bytes]]) -> int:
    """On-disk bytes of ext4 xattr entries (16-byte entry + name + value, 4-byte aligned)."""
    return sum(16 + _round4(len(n)) + _round4(len(v)) for n, v in values) + 32


def _round4(n: int) -> int:
    return (n + 3) & ~3


def _proc_path(dir_fd: int, name: str) -> str | None:
    """A name in an open directory for the calls that take no dir_fd (xattrs of symlinks and
    device nodes): /proc/self/fd resolves to that very directory, and the last component is
    not followed."""
    base = f"/proc/self/fd/{dir_fd}"
    return f"{base}/{name}" if os.path.isdir(base) else None


def make_node(sfd: int, dfd: int, name: str, st, *, chown: bool = True) -> bool:
    """A copy of the symlink, FIFO or device node ``name`` of ``sfd`` in ``dfd`` (created 0600,
    then its owner and mode); False for a type that is not copied (a socket). Times and xattrs
    are the caller's: they must come after the attributes are set."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(name, 0o600, dir_fd=dfd)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dfd)
    else:
        return False
    if chown:
        os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
    if not stat.S_ISLNK(mode):
        os.chmod(name, stat.S_IMODE(mode), dir_fd=dfd)
    return True


def inode_flags(fd: int) -> int:
    buf = bytearray(8)
    try:
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
    except OSError:
        return 0
    return struct.unpack_from("<i", buf)[0] & 0xFFFFFFFF


def copy_data(src: int, dst: int, size: int | None = None, blocks: int | None = None,
              clone: bool = True) -> tuple[int, int]:
    """(1 if reflinked else 0, bytes copied): data ranges only, holes stay holes."""
    size = os.fstat(src).st_size if size is None else size
    if size == 0:
        return 0, 0
    if clone:
        try:
            fcntl.ioctl(dst, FICLONE, src)
            return 1, size
        except OSError:
            pass
    if blocks is not None and blocks * 512 >= size and hasattr(os, "copy_file_range"):
        # Not sparse (the common case): one kernel copy, no hole search.
        return 0, _copy_range(src, dst, 0, size)
    copied = 0
    pos = 0
    kernel_copy = hasattr(os, "copy_file_range")
    while pos < size:
        try:
            data = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            data = pos  # SEEK_DATA unsupported: copy everything
        try:
            hole = min(os.lseek(src, data, os.SEEK_HOLE), size)
        except OSError:
            hole = size
        off = data
        while off < hole:
            n = 0
            if kernel_copy:
                try:
                    n = os.copy_file_range(src, dst, hole - off, off, off)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                         errno.EOPNOTSUPP, errno.EPERM):
                        raise
                    kernel_copy = False
                    continue
            else:
                chunk = os.pread(src, min(hole - off, 4 * MIB), off)
                n = os.pwrite(dst, chunk, off) if chunk else 0
            if n == 0:
                break   # the file shrank: what is there is copied
            off += n
            copied += n
        pos = hole
    os.ftruncate(dst, size)
    return 0, copied


def _copy_range(src: int, dst: int, off: int, end: int) -> int:
    copied = 0
    while off < end:
        try:
            n = os.copy_file_range(src, dst, end - off, off, off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                                 errno.EPERM):
                raise
            chunk = os.pread(src, min(end - off, 4 * MIB), off)
            n = os.pwrite(dst, chunk, off) if chunk else 0
        if n == 0:
            break   # the file shrank: what is there is copied
        off += n
        copied += n
    return copied


def remove_tree(path: Path) -> None:
    """Remove a staging tree even where a read-only directory mode was copied onto it."""
    if not os.path.lexists(path):
        return
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                try:
                    os.chmod(p, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ files the tool writes

def private_dir(staging: Path, rel: str, *, create: bool = True) -> int:
    """An fd for the *real* directory staging/rel, creating missing components (0755, root's).

    A component that is a symlink (a copy of the volume's, which may point anywhere on the
    host) or not a directory is an error naming it: files the tool writes into the image go
    into real directories, never through a link.
    """
    fd = safefs.open_root(staging)
    done: list[str] = []
    try:
        for name in [n for n in rel.split("/") if n]:
            done.append(name)
            here = "/".join(done)
            try:
                st = os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise VolumeError(f"/{display(here)} does not exist in the volume") from None
                os.mkdir(name, 0o755, dir_fd=fd)
                if os.geteuid() == 0:
                    os.chown(name, 0, 0, dir_fd=fd, follow_symlinks=False)
                st = os.lstat(name, dir_fd=fd)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=fd)
                raise VolumeError(f"/{display(here)} in the volume is a symlink (to "
                                  f"{display(target)}), not a directory: bundle-vol writes "
                                  f"files there and will not follow it; make /{display(here)} "
                                  "a real directory in the volume")
            if not stat.S_ISDIR(st.st_mode):
                raise VolumeError(f"/{display(here)} in the volume is not a directory: "
                                  "bundle-vol needs to write files into it")
            sub = safefs.open_dir(fd, name, here, Identity.of(st))
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_file(staging: Path, rel: str, content: bytes, *, mode: int = 0o644,
               keep_old: str | None = None) -> None:
    """Write staging/rel anew (in a real directory, never through a link); an existing entry
    is renamed to ``keep_old`` (a name in the same directory) or removed first."""
    parent, name = split_rel(rel)
    dfd = private_dir(staging, parent)
    try:
        try:
            st = os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            st = None
        if st is not None:
            if keep_old:
                os.rename(name, keep_old, src_dir_fd=dfd, dst_dir_fd=dfd)
            elif stat.S_ISDIR(st.st_mode):
                raise VolumeError(f"/{display(rel)} in the volume is a directory")
            else:
                os.unlink(name, dir_fd=dfd)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            if os.geteuid() == 0:
                os.fchown(fd, 0, 0)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
