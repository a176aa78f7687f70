"""Which filesystem the image gets (``--fs-type``), and whether this host can make it.

``auto`` follows the classic tools: the image has the source root's type (XFS on Amazon Linux
2 and the RHEL family, btrfs on Fedora) when the volume is a mounted filesystem or the live
``/``; a plain directory (a chroot, a debootstrap tree) gets ext4. A type that cannot be made
here is an error naming the reason and the alternative, never a silent change of type.
"""

from __future__ import annotations

import shutil
from typing import Literal

from ..errors import VolumeError

FsType = Literal["ext4", "xfs", "btrfs"]
FsChoice = Literal["auto", "ext4", "xfs", "btrfs"]
FS_TYPES: tuple[FsType, ...] = ("ext4", "xfs", "btrfs")
CHOICES: tuple[FsChoice, ...] = ("auto", "ext4", "xfs", "btrfs")
# Source types an ``auto`` image keeps; ext2/ext3 roots become ext4 (a superset).
_AUTO: dict[str, FsType] = {"ext2": "ext4", "ext3": "ext4", "ext4": "ext4", "xfs": "xfs",
                            "btrfs": "btrfs"}
LABEL_LIMITS: dict[str, int] = {"ext4": 16, "xfs": 12, "btrfs": 255}
DEFAULT_LABELS: dict[str, str] = {"ext4": "cloudimg-rootfs", "xfs": "rootfs",
                                  "btrfs": "cloudimg-rootfs"}
# Host tools each type needs (fsck included: every image is checked before it is bundled).
TOOLS: dict[str, tuple[str, ...]] = {
    "ext4": ("mke2fs", "debugfs", "e2fsck"),
    "xfs": ("mkfs.xfs", "xfs_repair", "losetup", "mount", "umount"),
    "btrfs": ("mkfs.btrfs", "btrfs"),
}
PACKAGES = {"ext4": "e2fsprogs", "xfs": "xfsprogs", "btrfs": "btrfs-progs"}
NAMES = {"ext4": "ext4", "xfs": "XFS", "btrfs": "btrfs"}


def resolve(choice: str, source_type: str | None) -> tuple[FsType, str]:
    """(the type to make, why) for ``--fs-type choice``; ``source_type`` is the type of the
    filesystem mounted at the volume (None for a plain directory). Pure."""
    if choice != "auto":
        if choice not in FS_TYPES:
            raise VolumeError(f"--fs-type {choice!r}: choose one of {', '.join(CHOICES)}")
        return choice, "--fs-type"
    if source_type is None:
        return "ext4", "the volume is a directory, not a mounted filesystem"
    kept = _AUTO.get(source_type)
    if kept is None:
        return "ext4", f"the source filesystem is {source_type}, which images are not made of"
    return kept, f"the source filesystem is {source_type}"


def check_label(label: str, fs_type: str) -> str:
    limit = LABEL_LIMITS[fs_type]
    if len(label.encode()) > limit:
        raise VolumeError(f"filesystem label {label!r} is longer than {limit} bytes "
                          f"({NAMES[fs_type]} limit): pass a shorter --label")
    return label


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/local/sbin:/usr/sbin:/sbin")


def unavailable(fs_type: str, *, needs_loop: bool) -> str | None:
    """Why ``fs_type`` cannot be made on this host (None when it can)."""
    missing = [t for t in TOOLS[fs_type] if _which(t) is None]
    if missing:
        return (f"{', '.join(missing)} not found (install {PACKAGES[fs_type]}"
                + (" and util-linux" if fs_type == "xfs" else "") + ")")
    if needs_loop:
        from .loopdev import unavailable_reason

        return unavailable_reason()
    return None


def require(fs_type: FsType, why: str) -> None:
    """Raise the one-line error for a type this host cannot make: the reason and the way out."""
    reason = unavailable(fs_type, needs_loop=fs_type == "xfs")
    if reason is None:
        return
    alt = "--fs-type ext4" if fs_type != "ext4" else "install e2fsprogs"
    raise VolumeError(f"cannot make an {NAMES[fs_type]} image ({why}): {reason}; use {alt}"
                      + (" to build ext4 instead (fstab and bootloader follow the image)"
                         if fs_type != "ext4" else ""))
