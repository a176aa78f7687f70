"""XFS images: ``mkfs.xfs`` on a loop device, populated through a mount, ``xfs_repair -n``.

Why not a protofile (``mkfs.xfs -p``): the protofile of xfsprogs 6.1 (Debian 12, RHEL 9 ship
5.x/6.x) expresses owners, modes, symlinks and device nodes, but no extended attributes (so
no SELinux labels, file capabilities or ACLs), no hard links (each name becomes its own
inode) and no timestamps. The image is therefore attached to a loop device (at the
partition's offset inside the disk image), made with ``mkfs.xfs``, mounted (``nouuid``: the
cloned UUID is mounted already when the source is the live root), filled from the staging
tree (``loopfill``), unmounted and checked with ``xfs_repair -n`` before it is detached.
This needs root and a free loop device; ``fstype.require`` says so up front.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import VolumeError
from ..tools import ToolError, run
from . import loopdev, loopfill
from .selection import Selection

log = logging.getLogger("bundler.volume")

MIB = 1024 * 1024
MIN_MIB = 300             # mkfs.xfs (xfsprogs >= 5.19): "Filesystem must be larger than 300MB"
LOG_BYTES = 64 * MIB      # the internal log mkfs.xfs gives filesystems up to a few GiB
INODE_BYTES = 512 + 64    # an inode plus its share of inode btree / directory blocks


def min_fs_mib(selection: Selection) -> int:
    """Smallest XFS (MiB) holding the selection: data, inodes, the log and the ~3% mkfs.xfs
    keeps for allocation groups and reserves; never under mkfs.xfs's own minimum."""
    fixed = selection.used_bytes + (selection.inode_count + 64) * INODE_BYTES + LOG_BYTES
    return max(MIN_MIB, -(-(fixed * 100 // 97 + 16 * MIB) // MIB))


def mkfs_command(device: str, *, uuid: str, label: str | None) -> list[str]:
    """The mkfs.xfs argv (pure): the cloned UUID and label, no discard (the image is sparse)."""
    cmd = ["mkfs.xfs", "-q", "-f", "-K", "-m", f"uuid={uuid}"]
    if label:
        cmd += ["-L", label]
    return cmd + [device]


def make_filesystem(staging: Path, image: Path, *, offset: int, size_bytes: int, uuid: str,
                    label: str | None, root_uid: int, root_gid: int, root_mode: int,
                    min_mib: int, workdir: Path, flags=(), pending_xattrs=(),
                    dev_nodes: bool = False, check: bool = True) -> list[str]:
    """Make and fill the XFS at ``offset`` in ``image``; returns warnings."""
    def mkfs(device: str) -> None:
        run(mkfs_command(device, uuid=uuid, label=label), timeout=600)

    return loopfill.build(staging, image, fstype="xfs", mkfs=mkfs, mount_options="nouuid",
                          check=repair if check else None, offset=offset,
                          size_bytes=size_bytes, root_uid=root_uid, root_gid=root_gid,
                          root_mode=root_mode, min_mib=min_mib, workdir=workdir, flags=flags,
                          pending_xattrs=pending_xattrs, dev_nodes=dev_nodes)


def repair(device: str) -> None:
    """``xfs_repair -n``: the fresh filesystem must be clean; a failure here is our bug."""
    try:
        run(["xfs_repair", "-n", device], timeout=3600)
    except ToolError as exc:
        raise VolumeError(f"xfs_repair -n found problems in the new XFS image: {exc}") from exc


def check_image(image: Path, *, offset: int, size_bytes: int) -> None:
    """``xfs_repair -n`` of the XFS at ``offset`` of a finished image (read-only loop)."""
    with loopdev.attached(image, offset=offset, size=size_bytes, read_only=True) as device:
        repair(device)
