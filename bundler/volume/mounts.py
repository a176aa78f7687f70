"""The host's mounts and file-backed swap areas, as /proc tells them.

``parse_mountinfo`` and ``parse_swaps`` are pure (text in, values out; mountinfo's octal
escapes decoded, bytes that are not UTF-8 kept as surrogate escapes so names compare equal to
``os.scandir``'s); ``host_mounts`` and ``host_swap_files`` read this process's /proc, at most
``MOUNTINFO_CAP`` bytes, and give an empty list where it cannot be read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO_CAP = 16 * 1024 * 1024


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo that matters here."""

    mount_point: str
    fstype: str
    source: str = ""
    root: str = "/"           # the mounted directory inside its filesystem; not "/" for binds

    @property
    def is_bind(self) -> bool:
        return self.root != "/"


_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(value: str | bytes) -> str:
    """mountinfo / swaps octal escapes (space, tab, newline, backslash) decoded; bytes that are
    not UTF-8 kept as surrogate escapes, so the result compares equal to scandir's names."""
    raw = value if isinstance(value, bytes) else os.fsencode(value)
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


def parse_mountinfo(text: str | bytes) -> list[Mount]:
    """Mount points, types, sources and roots from /proc/self/mountinfo. Pure."""
    raw = text if isinstance(text, bytes) else os.fsencode(text)
    mounts = []
    for line in raw.splitlines():
        fields = line.split()
        if b"-" not in fields or len(fields) < 7:
            continue
        sep = fields.index(b"-")
        if len(fields) < sep + 3:
            continue
        mounts.append(Mount(_unescape(fields[4]), os.fsdecode(fields[sep + 1]),
                            _unescape(fields[sep + 2]), _unescape(fields[3])))
    return mounts


def parse_swaps(text: str | bytes) -> list[str]:
    """File-backed swap areas from /proc/swaps text. Pure."""
    raw = text if isinstance(text, bytes) else os.fsencode(text)
    out = []
    for line in raw.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[1] == b"file":
            out.append(_unescape(fields[0]))
    return out


def _read_proc(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(MOUNTINFO_CAP)


def host_mounts(proc_root: Path = Path("/proc")) -> list[Mount]:
    try:
        return parse_mountinfo(_read_proc(proc_root / "self/mountinfo"))
    except OSError:
        return []


def host_swap_files(proc_root: Path = Path("/proc")) -> list[str]:
    try:
        return parse_swaps(_read_proc(proc_root / "swaps"))
    except OSError:
        return []
