"""bundle-vol: a root filesystem directory (or the live ``/``) → ext4/XFS/btrfs disk image →
bundle.

Steps: select files (``selection``), copy them into a private staging tree (``staging``;
reflinks where possible), install fstab, write the filesystem of the type ``fstype`` chose
(``imagefs.make_filesystem``: ext4 by ``mke2fs -d`` and btrfs by ``mkfs.btrfs --rootdir``
without devices or mounts, XFS through a loop-mounted image, see ``xfs``) into a sparse
image file (at 1 MiB when a partition table is asked for, written by ``partition``), check
it (``e2fsck -fn`` / ``xfs_repair -n`` / ``btrfs check``), then stream the image through the
core pipeline into parts. The image is a temporary file in the image directory, kept as
DEST/PREFIX only with ``keep_image``/``clone_only``.

Default partitioning is ``none``: a plain filesystem image, what PV-GRUB / ``--kernel`` style
instance-store AMIs use (``--generate-menu-lst`` writes PV-GRUB's menu.lst). With ``mbr``/``gpt``
the volume's own GRUB 2 is installed when it has one and a kernel (``bootloader``): grub.cfg and
modules go into the staging tree before mke2fs, boot.img/core.img into the disk image after the
partition table, without a loop device. First-boot problems (no kernel, no init, no DHCP
configuration, an fstab naming another filesystem, ...) are ``bundler.check``'s: the CLI runs
its boot rules on the finished image through ``on_image``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The run itself lives in ``bundle_vol``; importing one of bundle-vol's building blocks
# (``bundler.check`` reads ``bootloader``, ``fstab``, ``partition``, ``secrets_filter``) must
# not load every other one with it, so the package's names are loaded on first use.
if TYPE_CHECKING:
    from .bundle_vol import (
        VolumeConfig,
        VolumeResult,
        bundle_volume,
        check_preconditions,
        is_live_root,
        plan_size,
        select_volume,
    )

__all__ = ["VolumeConfig", "VolumeResult", "bundle_volume", "select_volume", "plan_size",
           "check_preconditions", "is_live_root"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import bundle_vol

        return getattr(bundle_vol, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
