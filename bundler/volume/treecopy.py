"""Copy the staging tree into a mounted, empty filesystem, keeping everything.

Used for filesystems populated through the kernel (XFS on a loop device). The staging tree is
our own private copy, but it holds the volume's symlinks, which may point anywhere on the
host: every entry is reached through directory fds and nothing is followed. Kept: owner,
mode (setuid/setgid/sticky), every extended attribute (``security.selinux``, file
capabilities, POSIX ACLs), nanosecond mtimes, hard links, holes of sparse files, device
nodes, FIFOs and symlinks. Order per entry: owner first (chown clears setuid and file
capabilities), then mode, then xattrs, then times.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VolumeError
from .safefs import display
from .staging import copy_data, make_node

log = logging.getLogger("bundler.volume")

FS_IOC_SETFLAGS = 0x40086602
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class CopyStats:
    files: int = 0
    links: int = 0
    dirs: int = 0
    others: int = 0
    data_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def copy_tree(src: Path, dst: Path, *, root_uid: int, root_gid: int, root_mode: int
              ) -> CopyStats:
    """Copy the contents of ``src`` into the (empty) directory ``dst``; the root of ``dst``
    gets ``root_uid``/``root_gid``/``root_mode`` and ``src``'s xattrs and times."""
    stats = CopyStats()
    sfd = os.open(src, O_DIR)
    try:
        dfd = os.open(dst, O_DIR)
        try:
            seen: dict[tuple[int, int], str] = {}
            _copy_dir(sfd, dfd, "", dfd, seen, stats)
            os.chown(dfd, root_uid, root_gid)
            os.chmod(dfd, root_mode)
            _copy_xattrs(sfd, dfd, "", stats)
            st = os.fstat(sfd)
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    log.info("copied %d files (%d MiB), %d hard links, %d directories, %d others into the "
             "image", stats.files, stats.data_bytes >> 20, stats.links, stats.dirs, stats.others)
    return stats


def _copy_dir(sfd: int, dfd: int, rel: str, root_fd: int, seen: dict[tuple[int, int], str],
              stats: CopyStats) -> None:
    # Iterative over the directory's entries, recursive over depth (bounded by PATH_MAX).
    with os.scandir(sfd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        name = entry.name
        here = f"{rel}/{name}" if rel else name
        st = entry.stat(follow_symlinks=False)
        mode = st.st_mode
        try:
            if stat.S_ISDIR(mode):
                os.mkdir(name, 0o700, dir_fd=dfd)
                csfd = os.open(name, O_DIR, dir_fd=sfd)
                try:
                    cdfd = os.open(name, O_DIR, dir_fd=dfd)
                    try:
                        _copy_dir(csfd, cdfd, here, root_fd, seen, stats)
                        _meta_fd(csfd, cdfd, st, here, stats)
                    finally:
                        os.close(cdfd)
                finally:
                    os.close(csfd)
                stats.dirs += 1
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    os.link(seen[key], name, src_dir_fd=root_fd, dst_dir_fd=dfd,
                            follow_symlinks=False)
                    stats.links += 1
                    continue
                _copy_file(sfd, dfd, name, st, here, stats)
                if st.st_nlink > 1:
                    seen[key] = here
            else:
                _copy_special(sfd, dfd, name, st, here, stats)
        except OSError as exc:
            raise VolumeError(f"cannot copy /{display(here)} into the image: "
                              f"{exc.strerror or exc}") from exc


def _copy_file(sfd: int, dfd: int, name: str, st: os.stat_result, rel: str,
               stats: CopyStats) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dfd)
        try:
            _, n = copy_data(src, dst, st.st_size, st.st_blocks, clone=False)
            stats.data_bytes += n
            _meta_fd(src, dst, st, rel, stats)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    stats.files += 1


def _meta_fd(src: int, dst: int, st: os.stat_result, rel: str, stats: CopyStats) -> None:
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    _copy_xattrs(src, dst, rel, stats)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_special(sfd: int, dfd: int, name: str, st: os.stat_result, rel: str,
                  stats: CopyStats) -> None:
    if not make_node(sfd, dfd, name, st):   # a socket: the staging step left those out
        stats.warnings.append(f"/{display(rel)}: socket not copied")
        return
    # xattrs of a symlink or node: by path through /proc/self/fd (the last component is not
    # followed).
    _copy_xattrs(f"/proc/self/fd/{sfd}/{name}", f"/proc/self/fd/{dfd}/{name}", rel, stats)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
    stats.others += 1


def _copy_xattrs(src: int | str, dst: int | str, rel: str, stats: CopyStats) -> None:
    kw = {"follow_symlinks": False} if isinstance(src, str) else {}
    try:
        names = os.listxattr(src, **kw)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOENT):
            return
        raise
    for xname in names:
        value = os.getxattr(src, xname, **kw)
        try:
            os.setxattr(dst, xname, value, **kw)
        except OSError as exc:
            stats.warnings.append(f"/{display(rel)}: extended attribute {xname} not set in the "
                                  f"image ({exc.strerror})")


def set_xattr_from_file(root: Path, rel: str, name: str, value_file: Path) -> None:
    """Set one (large) attribute spooled by the staging step, on the copy under ``root``."""
    with open(value_file, "rb") as fh:
        value = fh.read()
    fd = _open_rel(root, rel)
    try:
        os.setxattr(fd, name, value)
    finally:
        os.close(fd)


def set_inode_flags(root: Path, rel: str, flags: int) -> None:
    """chattr flags (immutable, append-only, ...) on the copy of ``rel`` under ``root``."""
    fd = _open_rel(root, rel)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<i", flags - (1 << 32) if flags >= 1 << 31
                                                     else flags))
    finally:
        os.close(fd)


def _open_rel(root: Path, rel: str) -> int:
    """An fd (O_PATH-free, read-only) for root/rel, walking without following links."""
    fd = os.open(root, O_DIR)
    parts = [p for p in rel.split("/") if p]
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = (os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK) if last else O_DIR
            nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise
