"""The inode ratio and inode size ``mke2fs -t ext4`` will use for a filesystem of a given size.

The size estimate must count the inode tables mke2fs will really write, and those follow
``/etc/mke2fs.conf`` (or ``$MKE2FS_CONFIG``): below 512 MiB the "small" usage type has
``inode_ratio = 4096`` (four times the default's inodes) and below 3 MiB "floppy" 8192; above
4 TiB "big"/"huge" fewer. An estimate that assumed 16384 everywhere was short by megabytes
for small images and kept advising "+1 MiB". Parsing is bounded (64 KiB) and pure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CONF_CAP = 64 * 1024
MIB = 1024 * 1024
# What e2fsprogs itself falls back to without a config file (misc/mke2fs.conf.in).
BUILTIN = """
[defaults]
    base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
    blocksize = 4096
    inode_size = 256
    inode_ratio = 16384
[fs_types]
    ext4 = {
        features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
    }
    small = {
        blocksize = 1024
        inode_ratio = 4096
    }
    floppy = {
        blocksize = 1024
        inode_ratio = 8192
    }
    big = {
        inode_ratio = 32768
    }
    huge = {
        inode_ratio = 65536
    }
"""


@dataclass(frozen=True)
class InodeGeometry:
    ratio: int       # bytes per inode
    size: int        # bytes per inode table entry


def parse(text: str) -> dict[str, dict[str, str]]:
    """{"defaults": {...}, "<fs type>": {...}} from mke2fs.conf text (profile format). Pure."""
    out: dict[str, dict[str, str]] = {}
    section = ""
    stack: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            section, stack = m.group(1), []
            continue
        m = re.fullmatch(r"([\w.-]+)\s*=\s*\{", line)
        if m:
            stack.append(m.group(1))
            continue
        if line == "}":
            if stack:
                stack.pop()
            continue
        m = re.fullmatch(r"([\w.-]+)\s*=\s*(.*)", line)
        if not m:
            continue
        if section == "defaults" and not stack:
            out.setdefault("defaults", {})[m.group(1)] = m.group(2).strip()
        elif section == "fs_types" and len(stack) == 1:
            out.setdefault(stack[0], {})[m.group(1)] = m.group(2).strip()
    return out


def usage_type(fs_bytes: int) -> str:
    """mke2fs's size-based usage type (misc/mke2fs.c)."""
    if fs_bytes < 3 * MIB:
        return "floppy"
    if fs_bytes < 512 * MIB:
        return "small"
    if fs_bytes < 4 * 1024 ** 4:
        return "default"
    if fs_bytes < 16 * 1024 ** 4:
        return "big"
    return "huge"


def geometry(conf: dict[str, dict[str, str]], fs_bytes: int, fs_type: str = "ext4") \
        -> InodeGeometry:
    """Later types win (ext4, then the usage type), then [defaults]. Pure."""
    def lookup(key: str, fallback: int) -> int:
        for name in (usage_type(fs_bytes), fs_type):
            if key in conf.get(name, {}):
                return _int(conf[name][key], fallback)
        return _int(conf.get("defaults", {}).get(key, ""), fallback)

    return InodeGeometry(ratio=max(1024, lookup("inode_ratio", 16384)),
                         size=max(128, lookup("inode_size", 256)))


def _int(value: str, fallback: int) -> int:
    try:
        return int(value, 0)
    except ValueError:
        return fallback


def load() -> dict[str, dict[str, str]]:
    """The host's mke2fs configuration (what mke2fs will read), else e2fsprogs' built-in."""
    path = Path(os.environ.get("MKE2FS_CONFIG", "/etc/mke2fs.conf"))
    try:
        with open(path, "rb") as fh:
            return parse(fh.read(CONF_CAP).decode("utf-8", "replace"))
    except OSError:
        return parse(BUILTIN)
