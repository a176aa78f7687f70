"""Build a filesystem on a loop device and fill it through a mount (XFS; btrfs as root).

For filesystems whose userspace tools cannot write a tree with everything kept: the
filesystem's region of the disk image is attached to a loop device, made by the type's mkfs,
mounted, filled from the staging tree by ``treecopy`` (owners, modes, hard links, xattrs,
nanosecond times, holes, device nodes), completed with what the staging step set aside
(inode flags, large xattrs, the classic /dev nodes), unmounted and checked by the type's
fsck while still attached. ``loopdev`` undoes the mount and the device on every way out.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import VolumeError
from . import loopdev, treecopy
from .safefs import display

log = logging.getLogger("bundler.volume")

MIB = 1024 * 1024
# Classic device nodes every image gets in /dev (the same list as ext4's debugfs step).
CLASSIC_DEV_NODES = (("null", "c", 1, 3, 0o666), ("zero", "c", 1, 5, 0o666),
                     ("tty", "c", 5, 0, 0o666), ("console", "c", 5, 1, 0o600))


def build(staging: Path, image: Path, *, fstype: str, mkfs: Callable[[str], None],
          mount_options: str, check: Callable[[str], None] | None, offset: int,
          size_bytes: int, root_uid: int, root_gid: int, root_mode: int, min_mib: int,
          workdir: Path, flags: Iterable[tuple[str, int]] = (), pending_xattrs=(),
          dev_nodes: bool = False) -> list[str]:
    """Make (``mkfs(device)``) and fill the ``fstype`` filesystem at ``offset`` in ``image``;
    ``check(device)`` runs after the unmount. Returns warnings."""
    mountpoint = workdir / f"mnt-{fstype}"
    os.mkdir(mountpoint, 0o700)
    try:
        with loopdev.attached(image, offset=offset, size=size_bytes) as device:
            mkfs(device)
            try:
                with loopdev.mounted(device, mountpoint, fstype, mount_options) as root:
                    warnings = fill(staging, root, root_uid=root_uid, root_gid=root_gid,
                                    root_mode=root_mode, flags=flags,
                                    pending_xattrs=pending_xattrs, dev_nodes=dev_nodes)
            except VolumeError as exc:
                cause = exc.__cause__
                if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                    need = max(min_mib, -(-(size_bytes * 11 // 10) // MIB))
                    raise VolumeError(f"image too small: the {size_bytes // MIB} MiB {fstype} "
                                      f"filesystem filled up; the image needs at least {need} "
                                      "MiB (use -s/--size)") from exc
                raise
            if check is not None:
                check(device)
    finally:
        os.rmdir(mountpoint)
    return warnings


def fill(staging: Path, root: Path, *, root_uid: int, root_gid: int, root_mode: int,
         flags: Iterable[tuple[str, int]] = (), pending_xattrs=(),
         dev_nodes: bool = False) -> list[str]:
    """Copy the staging tree into the mounted ``root`` and finish it; returns warnings."""
    stats = treecopy.copy_tree(staging, root, root_uid=root_uid, root_gid=root_gid,
                               root_mode=root_mode)
    warnings = list(stats.warnings)
    if dev_nodes:
        classic_dev_nodes(root)
    for x in pending_xattrs:
        # XFS and btrfs keep values far larger than what ext4 needs ea_inode for.
        try:
            treecopy.set_xattr_from_file(root, x.rel, x.name, x.value_file)
        except OSError as exc:
            warnings.append(f"/{display(x.rel)}: extended attribute {x.name} not set in the "
                            f"image ({exc.strerror})")
    # Flags last: an immutable or append-only file refuses the changes made above.
    for rel, f in flags:
        try:
            treecopy.set_inode_flags(root, rel, f)
        except OSError as exc:
            warnings.append(f"/{display(rel)}: inode flags {f:#x} not set in the image "
                            f"({exc.strerror})")
    return warnings   # the unmount writes everything back


def classic_dev_nodes(root: Path) -> None:
    """/dev/null, zero, tty and console unless the volume has its own."""
    try:
        fd = os.open(root / "dev", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return   # /dev in the volume is not a directory: nothing to add to
    try:
        for name, kind, major, minor, mode in CLASSIC_DEV_NODES:
            try:
                os.lstat(name, dir_fd=fd)
                continue
            except FileNotFoundError:
                pass
            ftype = 0o020000 if kind == "c" else 0o060000
            os.mknod(name, ftype | mode, os.makedev(major, minor), dir_fd=fd)
            os.chmod(name, mode, dir_fd=fd)
    finally:
        os.close(fd)
