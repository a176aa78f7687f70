"""btrfs images: as root on a loop device (``loopfill``), else ``mkfs.btrfs --rootdir``.

``mkfs.btrfs --rootdir`` writes the tree without a device or a mount, keeping owners, modes,
hard links and extended attributes (``security.selinux``, capabilities, ACLs), but — checked
on btrfs-progs 6.2 — not nanoseconds of timestamps, inode flags, holes (a sparse file is
written out in full) or the device numbers of device nodes, and it grows the image file when
the tree does not fit. So where a loop device can be had (root), the filesystem is made
empty and filled through a mount like XFS, keeping everything; the kernel must accept
mounting a filesystem whose UUID is mounted already (the live root's: Linux 6.7+ gives the
clone a temporary fsid), else --rootdir is used. Without a loop device the filesystem is
built by --rootdir in a file of its own, checked, measured against the planned size and
only then copied (holes kept) to its offset in the disk image; what it dropped is reported.

mkfs.btrfs before 6.7 refuses a UUID that any device on the host has ("non-unique UUID"),
which is always the case when the source is mounted here: it is then run where it cannot
see the host's devices (``_mkfs``).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ..errors import VolumeError
from ..tools import ToolError, run
from . import loopdev, loopfill
from .selection import Selection

log = logging.getLogger("bundler.volume")

MIB = 1024 * 1024
MIN_MIB = 256          # mkfs.btrfs's floor with DUP metadata is ~110 MiB; leave room to grow
META_PER_INODE = 2048  # inode, refs, dir items and extents, twice (DUP metadata)


def data_bytes(selection: Selection) -> int:
    """Bytes --rootdir writes: whole files (holes filled), 4 KiB rounded, inodes once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for e in selection.entries:
        if not stat.S_ISREG(e.st_mode):
            continue
        if e.st_nlink > 1:
            key = (e.st_dev, e.st_ino)
            if key in seen:
                continue
            seen.add(key)
        total += max(-(-e.st_size // 4096) * 4096, (e.st_blocks or 0) * 512)
    return total


def min_fs_mib(selection: Selection) -> int:
    fixed = data_bytes(selection) + (selection.inode_count + 64) * META_PER_INODE + 64 * MIB
    return max(MIN_MIB, -(-(fixed * 110 // 100) // MIB))


def mkfs_command(staging: Path, target: Path, *, uuid: str, label: str | None) -> list[str]:
    """The mkfs.btrfs argv (pure)."""
    cmd = ["mkfs.btrfs", "-q", "-f", "-U", uuid]
    if label:
        cmd += ["-L", label]
    return cmd + ["--rootdir", str(staging), str(target)]


def make_filesystem(staging: Path, image: Path, *, offset: int, size_bytes: int, uuid: str,
                    label: str | None, root_uid: int, root_gid: int, root_mode: int,
                    min_mib: int, workdir: Path, flags=(), pending_xattrs=(),
                    dev_nodes: bool = False, ns_mtimes: int = 0, sparse_files: int = 0,
                    device_nodes: int = 0, check: bool = True) -> list[str]:
    """Make the btrfs of ``staging`` at ``offset`` in ``image``; returns warnings."""
    why_not = loopdev.unavailable_reason()
    if why_not is None:
        def mkfs(device: str) -> None:
            argv = ["mkfs.btrfs", "-q", "-f", "-U", uuid] + (["-L", label] if label else [])
            _mkfs(argv + [device], workdir)

        try:
            return loopfill.build(staging, image, fstype="btrfs", mkfs=mkfs, mount_options="",
                                  check=(lambda dev: fsck(Path(dev))) if check else None,
                                  offset=offset, size_bytes=size_bytes, root_uid=root_uid,
                                  root_gid=root_gid, root_mode=root_mode, min_mib=min_mib,
                                  workdir=workdir, flags=flags, pending_xattrs=pending_xattrs,
                                  dev_nodes=dev_nodes)
        except ToolError as exc:
            if not exc.cmd or os.path.basename(exc.cmd[0]) != "mount":
                raise
            log.warning("the kernel would not mount the new btrfs (%s): using mkfs.btrfs "
                        "--rootdir", exc)
            why_not = f"the kernel refused to mount it: {exc}"
    log.info("btrfs by mkfs.btrfs --rootdir (no loop device: %s)", why_not)
    warnings = _rootdir(staging, image, offset=offset, size_bytes=size_bytes, uuid=uuid,
                        label=label, root_mode=root_mode, min_mib=min_mib, workdir=workdir,
                        check=check)
    if ns_mtimes:
        warnings.append(f"{ns_mtimes} timestamp(s) rounded to whole seconds (mkfs.btrfs "
                        "--rootdir keeps no nanoseconds; as root with a loop device they are "
                        "kept)")
    if sparse_files:
        warnings.append(f"{sparse_files} sparse file(s) written out in full (mkfs.btrfs "
                        "--rootdir keeps no holes)")
    if device_nodes:
        warnings.append(f"{device_nodes} device node(s) written by mkfs.btrfs --rootdir, "
                        "which loses their device numbers (btrfs-progs 6.2); bundle as root "
                        "with a loop device to keep them")
    for rel, f in flags:
        warnings.append(f"/{rel}: inode flags {f:#x} not set (mkfs.btrfs --rootdir cannot)")
    for rel in dict.fromkeys(x.rel for x in pending_xattrs):
        warnings.append(f"/{rel}: extended attributes over 3.9 KiB left out of the btrfs image")
    return warnings


def _rootdir(staging: Path, image: Path, *, offset: int, size_bytes: int, uuid: str,
             label: str | None, root_mode: int, min_mib: int, workdir: Path,
             check: bool) -> list[str]:
    # The root directory's mode comes from the staging root, which stays 0700 until here;
    # the directory holding it (the work directory) is 0700 as well.
    os.chmod(staging, root_mode)
    target = workdir / "fs.btrfs"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size_bytes)
    finally:
        os.close(fd)
    try:
        try:
            _mkfs(mkfs_command(staging, target, uuid=uuid, label=label), workdir)
        except ToolError as exc:
            if "no space" in exc.stderr.lower():
                raise _too_small(size_bytes, min_mib) from exc
            raise
        built = os.stat(target).st_size
        if built > size_bytes:   # --rootdir grew the file: the tree does not fit
            raise _too_small(size_bytes, max(min_mib, -(-built // MIB)))
        if check:
            fsck(target)
        if offset == 0 and target != image:
            os.replace(target, image)
        else:
            _place(target, image, offset)
    finally:
        if os.path.lexists(target):
            os.unlink(target)
    return []


# Runs its arguments with the host's block devices hidden (libblkid's probe reads
# /proc/partitions and /sys/block), in a mount namespace of its own: a fixed script; the
# empty file, the empty directory and the command come in as arguments, never parsed.
_HIDE_DEVICES = ('mount --bind "$0" /proc/partitions && mount --bind "$1" /sys/block '
                 '&& shift && exec "$@"')


def _mkfs(argv: list[str], workdir: Path) -> None:
    """mkfs.btrfs; when it refuses the cloned UUID as "non-unique" — the source filesystem
    it was cloned from is on this host, mounted, or in the blkid cache — run it again where
    it cannot see the host's devices (a private mount namespace hiding /proc/partitions, an
    empty blkid cache). The image is a file and is never scanned by the kernel, so two
    filesystems with one UUID never meet on this host; on the instance there is one."""
    try:
        run(argv, timeout=3600)
        return
    except ToolError as exc:
        if "non-unique uuid" not in exc.stderr.lower() or os.geteuid() != 0:
            raise
        log.info("mkfs.btrfs refused the cloned UUID (in use on this host): retrying with "
                 "the host's devices hidden")
    empty = workdir / "blkid.tab"
    empty_dir = workdir / "no-devices"
    fd = os.open(empty, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    os.mkdir(empty_dir, 0o700)
    try:
        run(["env", f"BLKID_FILE={empty}", "unshare", "--mount", "--propagation", "private",
             "sh", "-c", _HIDE_DEVICES, str(empty), str(empty_dir), *argv], timeout=3600)
    finally:
        os.unlink(empty)
        os.rmdir(empty_dir)


def _too_small(size_bytes: int, need_mib: int) -> VolumeError:
    need = max(need_mib, -(-(size_bytes * 11 // 10) // MIB))
    return VolumeError(f"image too small: the {size_bytes // MIB} MiB btrfs filesystem cannot "
                       f"hold the tree; the image needs at least {need} MiB (use -s/--size)")


def _place(fs_file: Path, image: Path, offset: int) -> None:
    """Copy the filesystem file into the disk image at ``offset``, holes kept."""
    src = os.open(fs_file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(image, os.O_WRONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(src).st_size
            pos = 0
            while pos < size:
                try:
                    data = os.lseek(src, pos, os.SEEK_DATA)
                except OSError:
                    break   # only a hole remains
                hole = min(os.lseek(src, data, os.SEEK_HOLE), size)
                off = data
                while off < hole:
                    chunk = os.pread(src, min(hole - off, 8 * MIB), off)
                    if not chunk:
                        break
                    os.pwrite(dst, chunk, offset + off)
                    off += len(chunk)
                pos = hole
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def fsck(target: Path) -> None:
    try:
        run(["btrfs", "check", "--readonly", str(target)], timeout=3600)
    except ToolError as exc:
        raise VolumeError(f"btrfs check found problems in the new btrfs image: {exc}") from exc

