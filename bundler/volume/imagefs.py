"""Filesystem image building: staging tree, size estimate, ``mke2fs -d``, debugfs touch-ups.

Why a staging tree: ``mke2fs -d DIR`` copies a directory as is, so the selection (excludes,
secret filter, mount points) has to exist as a directory. The alternatives were worse:
populating from the source and deleting afterwards would leave excluded secrets in the image's
free blocks; a userspace ext4 writer is a project of its own. The staging tree is built from
*hard links* to the source files (no data copied, owner/mode/xattrs/times are the source's own
inode) with fresh directories and symlinks; only where a link is impossible (another
filesystem, ``fs.protected_hardlinks`` for a non-root user) is a file copied, sparsely. Files
are never written through a staged link: fstab edits rename the link away and create a new
file. Side effect: linking updates the source inodes' ctime (as any ``ln`` would).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VolumeError
from ..tools import ToolError, run
from .selection import Entry, Selection

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


def fs_overhead(fs_bytes: int, inodes: int) -> int:
    """Metadata mke2fs spends on a filesystem of ``fs_bytes`` (journal, inode tables, bitmaps,
    group descriptors and resize reserve), slightly overestimated."""
    inode_count = max(fs_bytes // 16384, inodes)
    groups = max(1, fs_bytes // (128 * MIB) + 1)
    return (default_journal_bytes(fs_bytes) + inode_count * INODE_SIZE
            + groups * 3 * BLOCK + fs_bytes // 256 + 4 * MIB)


def min_fs_mib(selection: Selection) -> int:
    """Smallest filesystem (MiB) the selection fits in, estimated before running mke2fs."""
    used = selection.used_bytes
    inodes = inodes_needed(selection)
    size = used
    for _ in range(6):  # fixed point: the overhead grows with the size
        size = used + fs_overhead(size, inodes)
    return -(-size // MIB)


def default_fs_mib(selection: Selection) -> int:
    """Used space plus headroom for the first boot (logs, package updates)."""
    used_mib = -(-selection.used_bytes // MIB)
    return max(min_fs_mib(selection), -(-(used_mib * 12) // 10) + 256)


# ------------------------------------------------------------------------------- staging

@dataclass
class StageStats:
    linked: int = 0
    copied: int = 0
    copied_bytes: int = 0
    created: int = 0
    skipped: list[str] = field(default_factory=list)


def stage(selection: Selection, staging: Path, *, link: bool = True) -> StageStats:
    """Materialise the selection as a directory tree at ``staging`` (which must not exist)."""
    stats = StageStats()
    volume = selection.volume
    staging.mkdir(mode=0o700)
    root_dev = os.stat(staging).st_dev
    is_root = os.geteuid() == 0
    copied_inodes: dict[tuple[int, int], Path] = {}
    dirs: list[tuple[Path, Path, os.stat_result]] = []
    for entry in selection.entries:
        if not entry.rel:
            continue
        src = volume / entry.rel
        dst = staging / entry.rel
        mode = entry.st.st_mode
        try:
            if stat.S_ISDIR(mode):
                os.mkdir(dst, 0o700)
                dirs.append((src, dst, entry.st))
                stats.created += 1
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(src), dst)
                _copy_meta(src, dst, entry.st, is_root, symlink=True)
                stats.created += 1
            elif link and entry.st.st_dev == root_dev and _try_link(src, dst):
                stats.linked += 1
            else:
                _copy_entry(src, dst, entry, copied_inodes, is_root, stats)
        except OSError as exc:
            if stat.S_ISDIR(mode):
                raise VolumeError(f"cannot stage directory /{entry.rel}: {exc.strerror}") from exc
            log.warning("cannot stage /%s (%s): left out", entry.rel, exc.strerror)
            stats.skipped.append(entry.rel)
    # Directory metadata last (deepest first): a read-only mode must not block creating
    # children, and adding children would reset the mtime.
    for src, dst, st in reversed(dirs):
        _copy_meta(src, dst, st, is_root, symlink=False)
    if stats.copied:
        log.warning("staging copied %d files (%d MiB) instead of hard-linking them: put the "
                    "image directory on the volume's filesystem to avoid the copy",
                    stats.copied, stats.copied_bytes // MIB)
    log.info("staged %d links, %d copies, %d dirs/symlinks", stats.linked, stats.copied,
             stats.created)
    return stats


def _try_link(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst, follow_symlinks=False)
        return True
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP):
            return False
        raise


def _copy_entry(src: Path, dst: Path, entry: Entry, copied: dict[tuple[int, int], Path],
                is_root: bool, stats: StageStats) -> None:
    st = entry.st
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in copied:
        os.link(copied[key], dst)  # keep hard links among copied files
        stats.linked += 1
        return
    mode = st.st_mode
    if stat.S_ISREG(mode):
        stats.copied_bytes += copy_sparse(src, dst)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst, 0o600)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
    else:
        raise OSError(errno.ENOTSUP, "unsupported file type")
    _copy_meta(src, dst, st, is_root, symlink=False)
    copied[key] = dst
    stats.copied += 1


def copy_sparse(src: Path, dst: Path) -> int:
    """Copy a regular file's data ranges only (holes stay holes); returns bytes copied."""
    copied = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        size = os.fstat(fin.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole remains
                    break
                data = pos  # SEEK_DATA unsupported: copy everything
            try:
                hole = os.lseek(fin.fileno(), data, os.SEEK_HOLE)
            except OSError:
                hole = size
            fin.seek(data)
            fout.seek(data)
            remaining = hole - data
            while remaining > 0:
                chunk = fin.read(min(remaining, 4 * MIB))
                if not chunk:
                    break
                fout.write(chunk)
                remaining -= len(chunk)
                copied += len(chunk)
            pos = hole
        fout.truncate(size)
    return copied


def _copy_meta(src: Path, dst: Path, st: os.stat_result, is_root: bool, *, symlink: bool) -> None:
    """Owner, mode, xattrs and times of ``st`` onto a freshly created staging entry."""
    if is_root:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not symlink:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        names = []
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError as exc:
            log.debug("xattr %s of %s not copied: %s", name, src, exc.strerror)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def remove_tree(path: Path) -> None:
    """Remove a staging tree even where a read-only directory mode was copied onto it."""
    if not path.exists():
        return
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                try:
                    os.chmod(p, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)


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


def mke2fs_command(staging: Path, image: Path, p: FsParams) -> list[str]:
    """The mke2fs argv (pure): ext4, 4 KiB blocks, populated from the staging tree."""
    ext = [f"root_owner={p.root_uid}:{p.root_gid}"]
    if p.offset:
        ext.append(f"offset={p.offset}")
    cmd = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-U", p.uuid,
           "-E", ",".join(ext), "-d", str(staging)]
    if p.label:
        cmd += ["-L", p.label]
    if p.inodes and p.inodes > p.size_bytes // 16384:
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
            raise VolumeError(
                f"image too small: the {p.size_bytes // MIB} MiB filesystem filled up; the image "
                f"needs at least {max(min_mib, p.size_bytes // MIB + 1)} MiB (use -s/--size)"
            ) from exc
        raise


def debugfs_script(*, root_mode: int, dev_nodes: bool) -> str:
    """debugfs commands for what mke2fs -d does not do: root mode, classic /dev nodes. Pure."""
    lines = []
    if root_mode != 0o755:
        lines.append(f"sif / mode 0{0o40000 | root_mode:o}")
    if dev_nodes:
        lines.append("cd /dev")
        for name, kind, major, minor, mode in CLASSIC_DEV_NODES:
            lines.append(f"mknod {name} {kind} {major} {minor}")
            lines.append(f"sif {name} mode 0{0o20000 | mode:o}")
        lines.append("cd /")
    return "\n".join(lines) + ("\n" if lines else "")


def touch_up(image: Path, *, offset: int, root_mode: int, dev_nodes: bool) -> None:
    script = debugfs_script(root_mode=root_mode, dev_nodes=dev_nodes)
    if not script:
        return
    target = f"{image}?offset={offset}" if offset else str(image)
    run(["debugfs", "-w", "-f", "-", target], input=script.encode())


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
