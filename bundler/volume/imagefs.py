"""Filesystem image building: size estimate, ``mke2fs -d`` of the staging tree, debugfs
touch-ups.

The population step takes the staging tree (``staging``, a private copy of the selection) and
writes the filesystem: for ext4 ``mke2fs -d``, then debugfs for what mke2fs -d does not carry
(the root's mode, classic /dev nodes, inode flags such as ``chattr +i``, and extended attributes
too large for an inode and one block, which need ``ea_inode``). Another filesystem type plugs
in as another ``make_filesystem`` taking the same staging tree and ``StageStats``.
"""

from __future__ import annotations

import logging
import os
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import VolumeError
from ..tools import ToolError, run
from . import mke2fsconf
from .safefs import display
from .selection import Selection
from .staging import StageStats

log = logging.getLogger("bundler.volume")

MIB = 1024 * 1024
BLOCK = 4096
INODE_SIZE = 256
MAX_IMAGE_MIB = 10240
DEFAULT_LABEL = "cloudimg-rootfs"
# Classic device nodes every image gets in /dev (spec §8.5), for the boot before devtmpfs.
CLASSIC_DEV_NODES = (("null", "c", 1, 3, 0o666), ("zero", "c", 1, 5, 0o666),
                     ("tty", "c", 5, 0, 0o666), ("console", "c", 5, 1, 0o600))


# ------------------------------------------------------------------------------- size

def default_journal_bytes(fs_bytes: int) -> int:
    """ext2fs_default_journal_size() for 4 KiB blocks, in bytes."""
    blocks = fs_bytes // BLOCK
    if blocks < 2048:
        return 0
    if blocks < 32768:
        j = 1024
    elif blocks < 256 * 1024:
        j = 4096
    elif blocks < 512 * 1024:
        j = 8192
    elif blocks < 4096 * 1024:
        j = 16384
    elif blocks < 8192 * 1024:
        j = 32768
    elif blocks < 16384 * 1024:
        j = 65536
    else:
        j = 262144
    return j * BLOCK


def inodes_needed(selection: Selection) -> int:
    return selection.inode_count + 64


def inode_ratio(fs_bytes: int, conf: dict | None = None) -> int:
    """Bytes per inode mke2fs will use for this size (mke2fs.conf's usage types)."""
    return mke2fsconf.geometry(conf if conf is not None else mke2fsconf.load(), fs_bytes).ratio


def fs_overhead(fs_bytes: int, inodes: int, conf: dict | None = None) -> int:
    """Metadata mke2fs spends on a filesystem of ``fs_bytes`` (journal, inode tables, bitmaps,
    group descriptors and resize reserve), slightly overestimated."""
    inode_count = max(fs_bytes // inode_ratio(fs_bytes, conf), inodes)
    groups = max(1, fs_bytes // (128 * MIB) + 1)
    return (default_journal_bytes(fs_bytes) + inode_count * INODE_SIZE
            + groups * 3 * BLOCK + fs_bytes // 256 + 4 * MIB)


def min_fs_mib(selection: Selection) -> int:
    """Smallest filesystem (MiB) the selection fits in, estimated before running mke2fs."""
    used = selection.used_bytes
    inodes = inodes_needed(selection)
    conf = mke2fsconf.load()
    size = used
    for _ in range(12):  # fixed point: the overhead grows with the size
        size = used + fs_overhead(size, inodes, conf)
    # The usage type changes at 512 MiB: just below it inodes are four times denser, so a
    # size the loop settled on below the boundary is checked once more with its own ratio.
    return -(-max(size, used + fs_overhead(size, inodes, conf)) // MIB)


def default_fs_mib(selection: Selection) -> int:
    """Used space plus headroom for the first boot (logs, package updates)."""
    used_mib = -(-selection.used_bytes // MIB)
    return max(min_fs_mib(selection), -(-(used_mib * 12) // 10) + 256)


# ------------------------------------------------------------------------------- mke2fs

@dataclass(frozen=True)
class FsParams:
    size_bytes: int
    label: str | None
    uuid: str
    root_uid: int = 0
    root_gid: int = 0
    root_mode: int = 0o755
    offset: int = 0
    inodes: int | None = None
    ea_inode: bool = False     # xattrs larger than a block (GRUB cannot read such a filesystem)


def mke2fs_command(staging: Path, image: Path, p: FsParams) -> list[str]:
    """The mke2fs argv (pure): ext4, 4 KiB blocks, populated from the staging tree."""
    ext = [f"root_owner={p.root_uid}:{p.root_gid}"]
    if p.offset:
        ext.append(f"offset={p.offset}")
    # -I 256 whatever mke2fs.conf says for small sizes: 128-byte inodes have no room for
    # nanosecond timestamps or in-inode xattrs.
    cmd = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", str(INODE_SIZE),
           "-U", p.uuid, "-E", ",".join(ext), "-d", str(staging)]
    if p.ea_inode:
        cmd += ["-O", "ea_inode"]
    if p.label:
        cmd += ["-L", p.label]
    if p.inodes and p.inodes > p.size_bytes // inode_ratio(p.size_bytes):
        cmd += ["-N", str(p.inodes)]
    cmd += [str(image), f"{p.size_bytes // 1024}k"]
    return cmd


def make_filesystem(staging: Path, image: Path, p: FsParams, *, min_mib: int) -> None:
    """Run mke2fs -d into ``image`` (at ``p.offset``); 'no space' becomes a sizing message."""
    try:
        run(mke2fs_command(staging, image, p))
    except ToolError as exc:
        low = exc.stderr.lower()
        if "no space left on device" in low or "file too large" in low:
            # The disk holding the image file is full (or ulimit -f): no -s helps.
            raise VolumeError(
                f"no space left in {image.parent} for the {p.size_bytes // MIB} MiB image file: "
                "free space there or put it elsewhere with --image-dir"
            ) from exc
        if any(s in low for s in ("could not allocate block", "no space left",
                                  "could not allocate inode", "no free space")):
            need = max(min_mib, -(-(p.size_bytes * 11 // 10) // MIB))
            raise VolumeError(
                f"image too small: the {p.size_bytes // MIB} MiB filesystem filled up; the image "
                f"needs at least {need} MiB (use -s/--size)") from exc
        raise


# ext4 inode flag that mke2fs sets on every extent-mapped file and directory; ``sif flags``
# replaces the whole field, so it is kept alongside the copied flags.
EXTENTS_FL = 0x80000


def debugfs_quote(rel: str) -> str | None:
    """An image path as one debugfs argument, or None when debugfs cannot take it (a double
    quote or a line break in the name)."""
    path = "/" + rel
    if '"' in path or "\n" in path or "\r" in path:
        return None
    return f'"{path}"'


def debugfs_script(*, root_mode: int, dev_nodes: bool, stats: StageStats | None = None,
                   unwritable: list[str] | None = None) -> bytes:
    """debugfs commands for what mke2fs -d does not do: root mode, classic /dev nodes, inode
    flags and oversize xattrs. Paths that debugfs cannot name go to ``unwritable``. Pure."""
    lines: list[str] = []
    if root_mode != 0o755:
        lines.append(f"sif / mode 0{0o40000 | root_mode:o}")
    if dev_nodes:
        lines.append("cd /dev")
        for name, kind, major, minor, mode in CLASSIC_DEV_NODES:
            lines.append(f"mknod {name} {kind} {major} {minor}")
            lines.append(f"sif {name} mode 0{0o20000 | mode:o}")
        lines.append("cd /")
    if stats is not None:
        for rel, name, value_file in ((x.rel, x.name, x.value_file) for x in stats.pending_xattrs):
            q = debugfs_quote(rel)
            if q is None or '"' in name or '"' in str(value_file):
                (unwritable if unwritable is not None else []).append(rel)
                continue
            lines.append(f'ea_set -f "{value_file}" {q} "{name}"')
        for rel, flags in stats.flags:
            q = debugfs_quote(rel)
            if q is None:
                (unwritable if unwritable is not None else []).append(rel)
                continue
            lines.append(f"sif {q} flags {flags | EXTENTS_FL:#x}")
    text = "\n".join(lines) + ("\n" if lines else "")
    return os.fsencode(text)


def touch_up(image: Path, *, offset: int, root_mode: int, dev_nodes: bool,
             stats: StageStats | None = None) -> list[str]:
    """Run the debugfs script; returns warnings (paths whose flags/xattrs could not be set)."""
    unwritable: list[str] = []
    script = debugfs_script(root_mode=root_mode, dev_nodes=dev_nodes, stats=stats,
                            unwritable=unwritable)
    warnings = [f"/{display(rel)}: inode flags or extended attributes not set in the image "
                "(debugfs cannot name this path)" for rel in dict.fromkeys(unwritable)]
    if not script:
        return warnings
    target = f"{image}?offset={offset}" if offset else str(image)
    out = run(["debugfs", "-w", "-f", "-", target], input=script)
    # debugfs reports failed commands on stderr but exits 0.
    err = out.stderr.decode(errors="replace") if out.stderr else ""
    bad = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if bad:
        raise VolumeError("debugfs could not finish the image: " + "; ".join(bad[:3]))
    return warnings


def fsck(image: Path, *, offset: int = 0) -> None:
    """e2fsck -fn the fresh filesystem: a failure here is our bug, not the user's."""
    target = f"{image}?offset={offset}" if offset else str(image)
    run(["e2fsck", "-f", "-n", target])


# ------------------------------------------------------------------------------- identity

@dataclass(frozen=True)
class FsIdentity:
    label: str | None
    uuid: str | None
    fstype: str | None
    device: str | None


def source_identity(volume: Path, mounts: list) -> FsIdentity:
    """Label/UUID of the filesystem mounted *at* the volume (classic clones them); a plain
    directory gets nothing, so it never clones the UUID of the host filesystem holding it."""
    real = os.path.realpath(volume)
    mount = next((m for m in reversed(mounts) if m.mount_point == real), None)
    if mount is None or not mount.source.startswith("/dev/"):
        return FsIdentity(None, None, getattr(mount, "fstype", None), None)
    try:
        out = run(["blkid", "-o", "export", mount.source], timeout=10).stdout.decode()
    except VolumeError as exc:
        log.info("no filesystem label/UUID for %s: %s", mount.source, exc)
        return FsIdentity(None, None, mount.fstype, mount.source)
    tags = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return FsIdentity(tags.get("LABEL"), tags.get("UUID"), tags.get("TYPE", mount.fstype),
                      mount.source)


def check_label(label: str) -> str:
    if len(label.encode()) > 16:
        raise VolumeError(f"filesystem label {label!r} is longer than 16 bytes (ext4 limit)")
    return label


def check_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise VolumeError(f"--uuid {value!r} is not a UUID") from None
