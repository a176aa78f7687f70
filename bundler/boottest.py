"""Boot an image under qemu and wait for a console marker: ``ami-bundler boot-test``.

qemu-system-x86_64 with legacy BIOS (SeaBIOS, like the Xen HVM instance-store types), a
serial console to a log file, no network, and the image behind a qcow2 copy-on-write overlay
(qemu opens the image read-only: it is never modified). A partitionless image (PV-GRUB, AKI
kernels) has no boot code, so its menu.lst's kernel, initramfs and command line are taken out
of the image through debugfs and booted with ``-kernel`` (console=hvc0 becomes ttyS0: qemu
has no Xen console). KVM is used when ``/dev/kvm`` answers, else software emulation (TCG).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundlerError, UsageError
from .interrupts import critical
from .newfiles import private_directory

log = logging.getLogger("bundler.boottest")

DEFAULT_EXPECT = r"(?m)^\S+ login: |Reached target .*Multi-User System"
# Console text after which waiting is pointless: (regex, what it means).
FAILURES: tuple[tuple[str, str], ...] = (
    (r"Kernel panic - not syncing[^\n]*", "kernel panic"),
    (r"VFS: Unable to mount root[^\n]*", "unable to mount root"),
    (r"ALERT! [^\n]* does not exist\.[^\n]*", "root device not found (initramfs shell)"),
    (r"Gave up waiting for root[^\n]*", "root device not found"),
    (r"grub rescue> ?", "GRUB rescue prompt"),
    (r"You are in emergency mode[^\n]*", "systemd emergency mode"),
    (r"Give root password for maintenance[^\n]*", "maintenance shell"),
    (r"No bootable device[^\n]*", "no bootable device (no boot code)"),
    (r"Boot failed: not a bootable disk[^\n]*", "not a bootable disk (no boot code)"),
)
FAILURE_GRACE = 3.0     # seconds of console after a failure line (the rest of a panic)
TAIL_LINES = 25
KVM_GET_API_VERSION = 0xAE00


class BootTestError(BundlerError):
    """qemu is missing or cannot start."""


@dataclass
class BootConfig:
    expect: str = DEFAULT_EXPECT
    timeout: float = 300.0
    accel: str = "auto"                    # auto | kvm | tcg
    memory_mib: int = 1024
    console_log: Path | None = None
    extra_cmdline: str = ""                # -kernel boots (partitionless images) only
    work_dir: Path | None = None


@dataclass
class BootResult:
    booted: bool
    seconds: float
    accel: str
    marker: str | None = None              # the console text that matched --expect
    groups: tuple[str | None, ...] = ()
    reason: str | None = None              # why not
    tail: list[str] = field(default_factory=list)
    console_log: Path | None = None
    command: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"booted": self.booted, "seconds": round(self.seconds, 2), "accel": self.accel,
                "marker": self.marker, "reason": self.reason,
                "console_tail": self.tail if not self.booted else [],
                "console_log": str(self.console_log) if self.console_log else None}


def kvm_usable() -> bool:
    """/dev/kvm opens and answers the API version ioctl (KVM_API_VERSION is 12)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BootTestError(f"{name} not found: install {package}")
    return found


def _direct_kernel(image: Path, tmp: Path, extra: str) -> list[str]:
    """-kernel/-initrd/-append from a partitionless image's menu.lst (what PV-GRUB boots)."""
    from .check.boot_rules import BootContext
    from .check.debugfs import ImageTree, copy_out

    with ImageTree(image) as tree:
        entry = BootContext(tree).default_entry("pv-grub")
        if entry is None:
            raise BootTestError(f"{image} has no partition table and no /boot/grub/menu.lst: "
                                "nothing tells how to boot it (bundle-vol --generate-menu-lst)")
        text = tree.read_text(entry.config) or ""
        initrd = re.search(r"^\s*initrd\s+(?:\([^)]*\))?(\S+)", text, re.M)
        args = ["-kernel", str(copy_out(tree, entry.kernel, tmp / "kernel"))]
        if initrd:
            args += ["-initrd", str(copy_out(tree, initrd.group(1), tmp / "initrd"))]
    cmdline = re.sub(r"\bconsole=hvc0\b", "console=ttyS0", entry.cmdline)
    if "console=ttyS0" not in cmdline:
        cmdline += " console=ttyS0"
    return args + ["-append", f"{cmdline} {extra}".strip()]


# bundler.images format names → qemu's block driver names (what qemu reads natively).
QEMU_FORMATS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc", "vhdx": "vhdx"}


def _partitioned(image: Path) -> bool:
    from .images.probe import probe

    fd = os.open(image, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return probe(lambda offset, length: os.pread(fd, length, offset), size).table is not None
    finally:
        os.close(fd)


def boot_image(image: Path, config: BootConfig) -> BootResult:
    """Boot ``image`` and wait for ``config.expect`` on the serial console."""
    image = Path(image)
    try:
        expect = re.compile(config.expect)
    except re.error as exc:
        raise UsageError(f"--expect is not a valid regular expression: {exc}") from None
    if not image.is_file():
        raise UsageError(f"{image} is not an image file")
    from .images import probe_format

    fmt = probe_format(image)
    if fmt not in QEMU_FORMATS:
        raise UsageError(f"{image} is compressed ({fmt}): decompress it first")
    qemu = _tool("qemu-system-x86_64", "qemu-system-x86 (Debian/Ubuntu) or qemu-kvm / "
                                       "qemu-system-x86 (Fedora/RHEL)")
    qemu_img = _tool("qemu-img", "qemu-utils (Debian/Ubuntu) or qemu-img (Fedora/RHEL)")
    accel = config.accel
    if accel == "auto":
        accel = "kvm" if kvm_usable() else "tcg"
    elif accel == "kvm" and not kvm_usable():
        raise BootTestError("--accel kvm: /dev/kvm is not usable here (use --accel tcg)")
    with private_directory("ami-bundler-boot-", config.work_dir) as tmp:
        overlay = tmp / "overlay.qcow2"
        made = subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-F", QEMU_FORMATS[fmt],
                               "-b", str(image.resolve()), str(overlay)],
                              capture_output=True, text=True, umask=0o077)  # 0600 overlay
        if made.returncode:
            raise BootTestError(f"qemu-img cannot make an overlay on {image}: "
                                f"{made.stderr.strip()}")
        serial = tmp / "console.log"
        cmd = [qemu, "-machine", f"pc,accel={accel}", "-m", str(config.memory_mib),
               # -nodefaults: no floppy/CD-ROM/VGA for the initramfs to probe while it
               # waits for the root disk.
               "-smp", "1", "-nodefaults", "-nographic", "-monitor", "none",
               "-serial", f"file:{serial}",
               "-no-reboot", "-nic", "none",
               "-drive", f"file={overlay},format=qcow2,if=virtio"]
        if fmt == "raw" and not _partitioned(image):
            cmd += _direct_kernel(image, tmp, config.extra_cmdline)
        result = _run(cmd, serial, expect, config.timeout)
        result.accel = accel
        if config.console_log is not None:
            shutil.copyfile(serial, config.console_log)
            result.console_log = config.console_log
        return result


def _run(cmd: list[str], serial: Path, expect: re.Pattern[str], timeout: float) -> BootResult:
    log.info("qemu: %s", " ".join(cmd))
    started = time.monotonic()
    failures = [(re.compile(p), what) for p, what in FAILURES]
    found: re.Match[str] | None = None
    failed: tuple[float, str] | None = None
    text = ""
    proc: subprocess.Popen[bytes] | None = None
    try:
        with critical():  # started and recorded at once: killed on every path out
            # umask: the console log it writes is 0600 like everything in the directory
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, umask=0o077)
        while time.monotonic() - started < timeout:
            try:
                proc.wait(timeout=0.5)  # the wait is the poll interval
            except subprocess.TimeoutExpired:
                pass
            text = serial.read_text(errors="replace") if serial.exists() else ""
            found = expect.search(text)
            if found:
                break
            if failed is None:
                for pattern, what in failures:
                    m = pattern.search(text)
                    if m:
                        failed = (time.monotonic(), f"{what}: {m.group(0).strip()}")
                        break
            if failed is not None and time.monotonic() - failed[0] > FAILURE_GRACE:
                break
            if proc.returncode is not None:
                break
        elapsed = time.monotonic() - started
    finally:
        if proc is not None:
            with critical():
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    stderr = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    text = serial.read_text(errors="replace") if serial.exists() else text
    tail = [line.rstrip("\r") for line in text.splitlines()[-TAIL_LINES:]]
    if found:
        return BootResult(True, elapsed, "", found.group(0).strip(), found.groups(), tail=tail,
                          command=cmd)
    if failed is not None:
        reason = failed[1]
    elif proc.returncode not in (None, 0, -9) and stderr:
        reason = f"qemu exited ({proc.returncode}): {stderr.splitlines()[-1]}"
    elif proc.returncode is not None and time.monotonic() - started < timeout:
        reason = "the guest stopped before the marker (powered off or rebooted)"
    else:
        reason = f"no match for {expect.pattern!r} within {timeout:.0f} s"
    return BootResult(False, elapsed, "", reason=reason, tail=tail, command=cmd)
