"""Filesystem image building: size estimate, ``mke2fs -d`` of the staging tree, debugfs
touch-ups.

The population step takes the staging tree (``staging``, a private copy of the selection) and
writes the filesystem: for ext4 ``mke2fs -d``, then debugfs for what mke2fs -d does not carry
(the root's mode, classic /dev nodes, inode flags such as ``chattr +i``, and extended attributes
too large for an inode and one block, which need ``ea_inode``). XFS and btrfs have modules
of their own (``xfs``: a loop-mounted image filled by ``treecopy``; ``btrfs``: ``mkfs.btrfs
--rootdir``); ``make_filesystem``, ``min_fs_mib`` and ``fsck`` dispatch on
``FsParams.fs_type``.
"""

from __future__ import annotations

import logging
import os
import stat
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import VolumeError
from ..source import MAX_IMAGE_SIZE
from ..tools import ToolError, run
from . import mke2fsconf
from .devices import DeviceName, split_device
from .safefs import display
from .selection import Selection
from .staging import StageStats

log = logging.getLogger("bundler.volume")

MIB = 1024 * 1024
BLOCK = 4096
INODE_SIZE = 256
MAX_IMAGE_MIB = MAX_IMAGE_SIZE // MIB
DEFAULT_LABEL = "cloudimg-rootfs"
FS_TYPE = "ext4"   # the default type (fstype.resolve picks the one a run makes)
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


def min_fs_mib(selection: Selection, fs_type: str = FS_TYPE) -> int:
    """Smallest filesystem (MiB) of ``fs_type`` the selection fits in, estimated before
    running mkfs."""
    if fs_type == "xfs":
        from . import xfs
        return xfs.min_fs_mib(selection)
    if fs_type == "btrfs":
        from . import btrfs
        return btrfs.min_fs_mib(selection)
    used = selection.used_bytes
    inodes = inodes_needed(selection)
    conf = mke2fsconf.load()
    size = used
    for _ in range(12):  # fixed point: the overhead grows with the size
        size = used + fs_overhead(size, inodes, conf)
    # The usage type changes at 512 MiB: just below it inodes are four times denser, so a
    # size the loop settled on below the boundary is checked once more with its own ratio.
    return -(-max(size, used + fs_overhead(size, inodes, conf)) // MIB)


def default_fs_mib(selection: Selection, fs_type: str = FS_TYPE) -> int:
    """Used space plus headroom for the first boot (logs, package updates)."""
    used_mib = -(-selection.used_bytes // MIB)
    return max(min_fs_mib(selection, fs_type), -(-(used_mib * 12) // 10) + 256)


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
    fs_type: str = FS_TYPE     # ext4 | xfs | btrfs


def mke2fs_command(staging: Path | None, image: Path, p: FsParams) -> list[str]:
    """The mke2fs argv (pure): ext4, 4 KiB blocks, populated from the staging tree (empty
    without one: ``ext4feed`` populates it then)."""
    ext = [f"root_owner={p.root_uid}:{p.root_gid}"]
    if p.offset:
        ext.append(f"offset={p.offset}")
    # -I 256 whatever mke2fs.conf says for small sizes: 128-byte inodes have no room for
    # nanosecond timestamps or in-inode xattrs.
    cmd = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", str(INODE_SIZE),
           "-U", p.uuid, "-E", ",".join(ext)]
    if staging is not None:
        cmd += ["-d", str(staging)]
    if p.ea_inode:
        cmd += ["-O", "ea_inode"]
    if p.label:
        cmd += ["-L", p.label]
    if p.inodes and p.inodes > p.size_bytes // inode_ratio(p.size_bytes):
        cmd += ["-N", str(p.inodes)]
    cmd += [str(image), f"{p.size_bytes // 1024}k"]
    return cmd


def make_filesystem(staging: Path | None, image: Path, p: FsParams, *, min_mib: int,
                    stats: StageStats | None = None, workdir: Path | None = None,
                    dev_nodes: bool = False, check: bool = True,
                    selection: Selection | None = None) -> list[str]:
    """Write the filesystem ``p.fs_type`` of the staging tree into ``image`` (at
    ``p.offset``); 'no space' becomes a sizing message. Returns warnings (what the type could
    not keep). ext4's touch-up (``touch_up``) and check (``fsck``) are separate steps; XFS
    and btrfs are checked here (``check``), before the image leaves the loop device or the
    file it was built in. ``staging`` None: an empty ext4 filesystem, for ``ext4feed``."""
    if p.fs_type == "ext4":
        _mke2fs(staging, image, p, min_mib=min_mib)
        return []
    if staging is None:
        raise VolumeError(f"internal error: {p.fs_type} is populated from a staging tree")
    work = workdir or image.parent
    flags = list(stats.flags) if stats is not None else []
    pending = list(stats.pending_xattrs) if stats is not None else []
    if p.fs_type == "xfs":
        from . import xfs
        return xfs.make_filesystem(
            staging, image, offset=p.offset, size_bytes=p.size_bytes, uuid=p.uuid,
            label=p.label, root_uid=p.root_uid, root_gid=p.root_gid, root_mode=p.root_mode,
            min_mib=min_mib, workdir=work, flags=flags, pending_xattrs=pending,
            dev_nodes=dev_nodes, check=check)
    if p.fs_type == "btrfs":
        from . import btrfs
        entries = selection.entries if selection is not None else []
        ns = sum(1 for e in entries if e.st_mtime_ns % 1_000_000_000)
        sparse = sum(1 for e in entries if e.kind == "file" and e.st_blocks is not None
                     and e.st_blocks * 512 < e.st_size)
        nodes = sum(1 for e in entries if stat.S_ISCHR(e.st_mode) or stat.S_ISBLK(e.st_mode))
        return btrfs.make_filesystem(
            staging, image, offset=p.offset, size_bytes=p.size_bytes, uuid=p.uuid,
            label=p.label, root_uid=p.root_uid, root_gid=p.root_gid, root_mode=p.root_mode,
            min_mib=min_mib, workdir=work, flags=flags, pending_xattrs=pending,
            dev_nodes=dev_nodes, ns_mtimes=ns, sparse_files=sparse, device_nodes=nodes,
            check=check)
    raise VolumeError(f"unknown filesystem type {p.fs_type!r}")


def _mke2fs(staging: Path | None, image: Path, p: FsParams, *, min_mib: int) -> None:
    try:
        run(mke2fs_command(staging, image, p))
    except ToolError as exc:
        full = explain_full(exc.stderr, image, p, min_mib=min_mib)
        if full is not None:
            raise full from exc
        raise


def explain_full(stderr: str, image: Path, p: FsParams, *, min_mib: int) -> VolumeError | None:
    """The sizing message for a population that ran out of space (mke2fs -d or the ext4 feed),
    or None when ``stderr`` says something else."""
    low = stderr.lower()
    if "no space left on device" in low or "file too large" in low:
        # The disk holding the image file is full (or ulimit -f): no -s helps.
        return VolumeError(
            f"no space left in {image.parent} for the {p.size_bytes // MIB} MiB image file: "
            "free space there or put it elsewhere with --image-dir")
    if any(s in low for s in ("could not allocate block", "no space left",
                              "could not allocate inode", "no free space")):
        need = max(min_mib, -(-(p.size_bytes * 11 // 10) // MIB))
        return VolumeError(
            f"image too small: the {p.size_bytes // MIB} MiB filesystem filled up; the image "
            f"needs at least {need} MiB (use -s/--size)")
    return None


# ext4 inode flag that mke2fs sets on every extent-mapped file and directory; ``sif flags``
# replaces the whole field, so it is kept alongside the copied flags.
EXTENTS_FL = 0x80000


DEBUGFS_LINE_MAX = 4000   # debugfs reads its script with a fixed-size line buffer


def debugfs_quote(path: str) -> str | None:
    """A path as one debugfs argument, or None when debugfs cannot take it (a double quote or
    a line break in the name)."""
    if '"' in path or "\n" in path or "\r" in path:
        return None
    return f'"{path}"'


def time_extra(sec_ns: int) -> int:
    """ext4's *_extra field: nanoseconds << 2 | epoch bits (seconds beyond 32 bits)."""
    sec, ns = divmod(sec_ns, 1_000_000_000)
    low = ((sec + 2 ** 31) % 2 ** 32) - 2 ** 31
    return (ns << 2) | (((sec - low) >> 32) & 3)


def debugfs_lines(*, root_mode: int, dev_nodes: bool, selection: Selection | None = None,
                  stats: StageStats | None = None, unwritable: list[str] | None = None):
    """debugfs commands (text lines) for what mke2fs -d does not do: the root's mode, classic
    /dev nodes, nanoseconds of mtimes (mke2fs -d keeps whole seconds), inode flags and oversize
    xattrs. Entries debugfs cannot name go to ``unwritable``. Pure, a generator: at 400 000
    entries the script is tens of MiB and is streamed to a file."""
    bad = unwritable if unwritable is not None else []
    if stats is not None and stats.pending_xattrs:
        yield "feature ea_inode"    # mke2fs -O set it already; the ext4 feed finds them late
    if root_mode != 0o755:
        yield f"sif / mode 0{0o40000 | root_mode:o}"
    if dev_nodes:
        yield "cd /dev"
        for name, kind, major, minor, mode in CLASSIC_DEV_NODES:
            yield f"mknod {name} {kind} {major} {minor}"
            yield f"sif {name} mode 0{0o20000 | mode:o}"
        yield "cd /"
    flags = dict(stats.flags) if stats is not None else {}
    skipped = {rel for rel, _ in stats.skipped} if stats is not None else set()
    if selection is not None:
        cwd = None
        for e in selection.entries:
            if e.rel in skipped:
                continue
            ns = e.st_mtime_ns % 1_000_000_000
            f = flags.pop(e.rel, 0)
            if not ns and not f and e.st_mtime_ns >= 0 and e.st_mtime_ns < 2 ** 31 * 10 ** 9:
                continue
            parent, _, name = e.rel.rpartition("/")
            target = debugfs_quote("./" + name if e.rel else "/")
            if parent != cwd and e.rel:
                where = debugfs_quote("/" + parent)
                if where is None or len(where) > DEBUGFS_LINE_MAX:
                    bad.append(e.rel)
                    continue
                yield f"cd {where}"
                cwd = parent
            if target is None or len(target) > DEBUGFS_LINE_MAX:
                bad.append(e.rel)
                continue
            if ns or e.st_mtime_ns >= 2 ** 31 * 10 ** 9 or e.st_mtime_ns < 0:
                yield f"sif {target} mtime_extra {time_extra(e.st_mtime_ns):#x}"
            if f:
                yield f"sif {target} flags {f | EXTENTS_FL:#x}"
        yield "cd /"
    for rel, f in flags.items():   # without a selection (tests): absolute paths
        q = debugfs_quote("/" + rel)
        if q is None:
            bad.append(rel)
            continue
        yield f"sif {q} flags {f | EXTENTS_FL:#x}"
    if stats is not None:
        for x in stats.pending_xattrs:
            q = debugfs_quote("/" + x.rel)
            if q is None or '"' in x.name or len(q) > DEBUGFS_LINE_MAX:
                bad.append(x.rel)
                continue
            yield f'ea_set -f "{x.value_file}" {q} "{x.name}"'


def debugfs_script(*, root_mode: int, dev_nodes: bool) -> str:
    """The root-mode and /dev part of the script as text (kept for callers and tests). Pure."""
    lines = list(debugfs_lines(root_mode=root_mode, dev_nodes=dev_nodes))
    return "\n".join(lines) + ("\n" if lines else "")


def touch_up(image: Path, *, offset: int, root_mode: int, dev_nodes: bool,
             selection: Selection | None = None, stats: StageStats | None = None,
             workdir: Path | None = None) -> list[str]:
    """Run the debugfs script; returns warnings (paths whose metadata could not be set)."""
    unwritable: list[str] = []
    target = f"{image}?offset={offset}" if offset else str(image)
    script = Path(workdir or image.parent) / "debugfs.script"
    count = 0
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
        for line in debugfs_lines(root_mode=root_mode, dev_nodes=dev_nodes, selection=selection,
                                  stats=stats, unwritable=unwritable):
            fh.write(os.fsencode(line) + b"\n")
            count += 1
    warnings = [f"/{display(rel)}: mtime nanoseconds, inode flags or extended attributes not "
                "set in the image (debugfs cannot name this path)"
                for rel in dict.fromkeys(unwritable)]
    try:
        if count:
            out = run(["debugfs", "-w", "-f", str(script), target])
            # debugfs reports failed commands on stderr but exits 0.
            err = out.stderr.decode(errors="replace") if out.stderr else ""
            bad = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
            if bad:
                # Entries the bootloader step replaced in the staging tree are gone; anything
                # else is reported rather than failing an otherwise complete image.
                warnings.append(f"debugfs could not set {len(bad)} metadata item(s) in the "
                                "image: " + "; ".join(bad[:3]))
    finally:
        script.unlink()
    if stats is not None and stats.pending_xattrs:
        # debugfs 1.47.0's ea_set miscounts i_blocks for ea_inode values; e2fsck's preen mode
        # corrects exactly that kind of accounting (and refuses anything that is not safe).
        proc = run(["e2fsck", "-f", "-p", target], check=False)
        if proc.returncode not in (0, 1):
            raise VolumeError("e2fsck could not correct the image after setting large "
                              f"extended attributes (exit {proc.returncode})")
    return warnings


def fsck(image: Path, *, offset: int = 0, fs_type: str = FS_TYPE) -> None:
    """e2fsck -fn the fresh filesystem: a failure here is our bug, not the user's. XFS and
    btrfs were checked by make_filesystem (xfs_repair -n / btrfs check)."""
    if fs_type != "ext4":
        return
    target = f"{image}?offset={offset}" if offset else str(image)
    run(["e2fsck", "-f", "-n", target])


# ------------------------------------------------------------------------------- identity

@dataclass(frozen=True)
class FsIdentity:
    label: str | None
    uuid: str | None
    fstype: str | None
    device: str | None

    @property
    def device_name(self) -> DeviceName | None:
        """The source device split into disk and partition (any naming: NVMe, Xen, md, dm)."""
        return split_device(self.device) if self.device else None


def source_identity(volume: Path, mounts: list) -> FsIdentity:
    """Label/UUID of the filesystem mounted *at* the volume (classic clones them); a plain
    directory gets nothing, so it never clones the UUID of the host filesystem holding it."""
    real = os.path.realpath(volume)
    mount = next((m for m in reversed(mounts) if m.mount_point == real), None)
    if mount is None or not mount.source.startswith("/dev/"):
        return FsIdentity(None, None, getattr(mount, "fstype", None), None)
    try:
        # -p: the device's own superblock, not the blkid cache (a loop device reused since
        # the cache was written names another filesystem there).
        out = run(["blkid", "-p", "-o", "export", mount.source], timeout=10).stdout.decode()
    except VolumeError as exc:
        log.info("no filesystem label/UUID for %s: %s", mount.source, exc)
        return FsIdentity(None, None, mount.fstype, mount.source)
    tags = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    name = split_device(mount.source)
    log.info("source filesystem on %s: disk %s, %s", mount.source, name.disk,
             f"partition {name.partition}" if name.partition else "whole device")
    # The type the kernel mounted is the truth; blkid's answer only where /proc has none.
    return FsIdentity(tags.get("LABEL"), tags.get("UUID"), mount.fstype or tags.get("TYPE"),
                      mount.source)


def check_label(label: str, fs_type: str = FS_TYPE) -> str:
    from .fstype import check_label as check

    return check(label, fs_type)


def check_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise VolumeError(f"--uuid {value!r} is not a UUID") from None
