"""Loop devices and mounts for the filesystems only the kernel can populate (XFS).

ext4 is written by mke2fs/debugfs and btrfs by ``mkfs.btrfs --rootdir`` without a device; XFS
has no userspace writer that keeps hard links, xattrs and ownership, so its image is attached
to a loop device and mounted. Whatever happens — an error, Ctrl-C, SIGTERM — the mount is
undone and the device detached before the run goes on: attaching and recording the device is
one critical section (``interrupts.critical``), so a signal cannot fall between them, and the
release runs in ``finally``. A run killed outright (kill -9) leaves a mount under its work
directory; :func:`release_stale` undoes those before the stale work directory is removed.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import VolumeError
from ..interrupts import critical
from ..tools import ToolError, run
from .mounts import host_mounts

log = logging.getLogger("bundler.volume")

LOOP_CONTROL = "/dev/loop-control"


def unavailable_reason() -> str | None:
    """Why a loop device cannot be attached here (None when it can): not root, no loop
    driver, no free device."""
    if os.geteuid() != 0:
        return "it needs root (a loop device and a mount)"
    if not os.path.exists(LOOP_CONTROL) and not os.path.exists("/dev/loop0"):
        return "this host has no loop devices (/dev/loop-control missing; modprobe loop)"
    try:
        run(["losetup", "--find"], timeout=30)
    except VolumeError as exc:
        return f"no free loop device ({exc})"
    return None


@contextmanager
def attached(image: Path, *, offset: int = 0, size: int | None = None,
             read_only: bool = False) -> Iterator[str]:
    """The loop device for ``size`` bytes of ``image`` at ``offset``; detached on exit."""
    argv = ["losetup", "--find", "--show"]
    if offset:
        argv += ["--offset", str(offset)]
    if size is not None:
        argv += ["--sizelimit", str(size)]
    if read_only:
        argv.append("--read-only")
    device = None
    try:
        with critical():
            out = run(argv + [str(image)], timeout=60)
            device = out.stdout.decode().strip()
        if not device.startswith("/dev/loop"):
            raise VolumeError(f"losetup attached {image} as {device!r}, not a loop device")
        log.info("%s attached as %s", image.name, device)
        yield device
    finally:
        if device:
            detach(device)


def detach(device: str) -> None:
    with critical():
        proc = run(["losetup", "--detach", device], check=False, timeout=60)
    if proc.returncode:
        log.warning("could not detach %s: %s", device,
                    proc.stderr.decode(errors="replace").strip())


@contextmanager
def mounted(device: str, mountpoint: Path, fstype: str, options: str = "") -> Iterator[Path]:
    """``device`` mounted at ``mountpoint`` (an existing empty private directory); unmounted on
    exit. A failed unmount is an error: the image would not be complete."""
    argv = ["mount", "-t", fstype]
    if options:
        argv += ["-o", options]
    done = False
    try:
        with critical():
            run(argv + [device, str(mountpoint)], timeout=120)
            done = True
        yield mountpoint
    finally:
        if done:
            unmount(mountpoint)


def unmount(mountpoint: Path) -> None:
    with critical():
        try:
            run(["umount", str(mountpoint)], timeout=600)
        except ToolError as first:
            # Something (a scanner, udev) still holds it: a lazy unmount lets the detach go
            # ahead; the error stands, as the image may not be fully written.
            run(["umount", "--lazy", str(mountpoint)], check=False, timeout=60)
            raise VolumeError(f"cannot unmount the image at {mountpoint}: {first}") from first


def release_stale(work: Path) -> None:
    """Unmount what killed bundle-vol runs left mounted in their work directories under
    ``work`` (``.ami-bundler-vol-PID-...``, PID gone) and detach the loop devices backing
    files there, so removing those directories removes nothing but our own files."""
    from ..stale import pid_alive
    from ..tempnames import TEMP_MARK, VOLUME_KIND

    if os.geteuid() != 0:
        return
    mark = f"{TEMP_MARK}{VOLUME_KIND}-"
    try:
        names = [n for n in os.listdir(work) if n.startswith(mark)]
    except OSError:
        return
    stale = []
    for name in names:
        pid = name[len(mark):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.append(os.path.join(os.path.realpath(work), name) + "/")
    if not stale:
        return
    for mount in reversed(host_mounts()):
        point = mount.mount_point
        if any(point.startswith(p) for p in stale):
            log.info("unmounting %s left by an interrupted run", point)
            run(["umount", "--lazy", point], check=False, timeout=60)
    for device, backing in _loop_backing():
        if any(backing.startswith(p) for p in stale):
            detach(device)


def _loop_backing() -> list[tuple[str, str]]:
    found = []
    base = Path("/sys/block")
    try:
        names = [n for n in os.listdir(base) if n.startswith("loop")]
    except OSError:
        return []
    for name in names:
        try:
            backing = (base / name / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        dev = f"/dev/{name}"
        if os.path.exists(dev) and stat.S_ISBLK(os.stat(dev).st_mode):
            found.append((dev, backing))
    return found
