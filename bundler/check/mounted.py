"""``mounted_tree``: an XFS or btrfs image bundle-vol just built, read through a read-only mount.

debugfs reads ext2/3/4 only. For the images bundle-vol makes of other types — never for an
image from elsewhere: mounting an untrusted filesystem hands its parser in the kernel to
whoever made it — the filesystem is attached read-only to a loop device at its offset,
mounted ``ro,nosuid,nodev,noexec`` (XFS also ``nouuid,norecovery``: its UUID is the mounted
source's) and read as a directory (``DirTree``) with the disk's facts (partition table, boot
code, GRUB core) from ``disk_facts``. Unmounted and detached on every way out.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import VolumeError
from ..interrupts import critical
from .debugfs import CheckSourceError, disk_facts
from .tree import DirTree

MOUNTABLE = ("xfs", "btrfs")
OPTIONS = {"xfs": "ro,nosuid,nodev,noexec,nouuid,norecovery", "btrfs": "ro,nosuid,nodev,noexec"}


@contextmanager
def mounted_tree(image: Path, *, work_dir: Path | None = None) -> Iterator[DirTree]:
    from ..volume import loopdev

    facts, offset = disk_facts(Path(image), fs_types=MOUNTABLE)
    why = loopdev.unavailable_reason()
    if why is not None:
        raise CheckSourceError(f"{image}: the {facts.fs_type} filesystem is read through a "
                               f"mount, and {why}")
    fstype = facts.fs_type or ""
    where: Path | None = None
    try:
        with critical():    # made and recorded for the removal at once
            where = Path(tempfile.mkdtemp(prefix=".check-mnt-",
                                          dir=work_dir or Path(image).parent))
        with ExitStack() as stack:
            try:
                device = stack.enter_context(
                    loopdev.attached(Path(image), offset=offset, read_only=True))
                root = stack.enter_context(loopdev.mounted(device, where, fstype,
                                                           OPTIONS[fstype]))
            except VolumeError as exc:
                raise CheckSourceError(f"{image}: cannot mount its {fstype} filesystem to "
                                       f"check it: {exc}") from exc
            yield DirTree(root, facts)
    finally:
        if where is not None:
            os.rmdir(where)     # never rmtree: it may still be a mount point
