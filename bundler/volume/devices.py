"""Block device names split into (disk, partition number). Pure.

The kernel names a partition by appending its number to the disk's name, with a ``p`` in
between when the disk's name already ends in a digit (``sda1`` but ``nvme0n1p1``,
``mmcblk0p1``, ``loop0p1``, ``md0p1``). Whole-disk names that end in a digit (``md0``,
``dm-0``, ``loop0``, ``nvme0n1``) are therefore never read as a partition. Device-mapper
names (``/dev/mapper/...``: LVM, LUKS) are whole devices, except kpartx's ``<disk>p<N>``
partition maps. Any other name is a whole device: an unknown naming is never an error, it
only means no partition number is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Disks named by letters (SCSI/SATA/USB, IDE, virtio, Xen): the partition number follows
# the letters directly.
_LETTER_DISK = re.compile(r"^((?:sd|hd|vd|xvd)[a-z]+)([1-9][0-9]*)?$")
# Disks whose name ends in a digit: a partition is "p<N>".
_DIGIT_DISK = re.compile(r"^(nvme[0-9]+n[0-9]+|mmcblk[0-9]+|loop[0-9]+|md[0-9]+|nbd[0-9]+"
                         r"|rbd[0-9]+|pmem[0-9]+|zd[0-9]+)(?:p([1-9][0-9]*))?$")
_KPARTX = re.compile(r"^(mapper/.*[0-9])p([1-9][0-9]*)$")


@dataclass(frozen=True)
class DeviceName:
    device: str             # as given
    disk: str               # the whole disk, in the same form (with /dev/ when given with it)
    partition: int | None   # None: a whole device (or a naming with no partition number)

    def summary(self) -> dict[str, str | int | None]:
        return {"device": self.device, "disk": self.disk, "partition": self.partition}


def split_device(device: str) -> DeviceName:
    """(disk, partition number) of a device path or kernel name, e.g. ``/dev/nvme0n1p1`` ->
    (``/dev/nvme0n1``, 1), ``xvda1`` -> (``xvda``, 1), ``dm-0`` -> (``dm-0``, None)."""
    prefix = "/dev/" if device.startswith("/dev/") else ""
    name = device[len(prefix):]
    for pattern in (_KPARTX, _LETTER_DISK, _DIGIT_DISK):
        m = pattern.match(name)
        if m:
            number = int(m.group(2)) if m.group(2) else None
            return DeviceName(device, prefix + m.group(1), number)
    # dm-N, mapper names, sr0, /dev/root, a by-uuid link, a future driver: a whole device.
    return DeviceName(device, device, None)
