"""Kernel command lines of the volume's own boot menus, made to name the image's filesystem.

A PV-GRUB image (``-P none``) boots the volume's own ``/boot/grub/menu.lst`` (or
``grub.conf``) when bundle-vol does not generate one. Its ``kernel`` lines still say
``root=UUID=<source>`` or ``rootfstype=xfs`` from the system it was written on: with another
UUID (a plain directory, ``--uuid``) or another type (``--fs-type``) the initramfs waits for a
root that never appears. Like the fstab root entry, the ``root=`` and ``rootfstype=`` arguments
are rewritten (device names such as ``/dev/xvda1`` are left alone: they name no filesystem),
the rest of each line and of the file is kept, and each change is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KERNEL_WORDS = ("kernel", "linux", "linux16", "linuxefi")


@dataclass(frozen=True)
class CmdlineChange:
    path: str
    old: str
    new: str

    def summary(self) -> dict[str, Any]:
        return {"path": self.path, "old": self.old, "new": self.new}


def _root_value(value: str, *, uuid: str, label: str | None) -> str:
    key, sep, name = value.partition("=")
    if not sep:
        return value            # /dev/xvda1, /dev/sda1: a device, not a filesystem name
    key = key.upper()
    name = name.strip("\"'")
    if key == "UUID":
        return value if name.lower() == uuid.lower() else f"UUID={uuid}"
    if key == "LABEL":
        if label and name == label:
            return value
        return f"LABEL={label}" if label else f"UUID={uuid}"
    if key in ("PARTUUID", "PARTLABEL"):
        return f"UUID={uuid}"
    return value


def retarget(text: str, *, path: str, uuid: str, label: str | None, fs_type: str
             ) -> tuple[str, list[CmdlineChange]]:
    """``text`` (a menu.lst/grub.conf/grub.cfg) with every kernel line's ``root=`` and
    ``rootfstype=`` naming the image's filesystem. Pure."""
    lines = text.split("\n")
    changes: list[CmdlineChange] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        words = stripped.split()
        if not words or words[0] not in KERNEL_WORDS:
            continue
        new_words = []
        for w in words:
            if w.startswith("root="):
                w = "root=" + _root_value(w[5:], uuid=uuid, label=label)
            elif w.startswith("rootfstype=") and w[11:] != fs_type:
                w = f"rootfstype={fs_type}"
            new_words.append(w)
        if new_words != words:
            indent = line[:len(line) - len(line.lstrip())]
            trailing = line[len(line.rstrip()):]
            lines[i] = indent + " ".join(new_words) + trailing
            changes.append(CmdlineChange(path, stripped, " ".join(new_words)))
    return "\n".join(lines), changes
