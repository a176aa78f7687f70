"""Bootable bundle-vol images.

Quick tests (CI, no qemu): a tiny fake tree carrying the host's GRUB i386-pc modules and a fake
kernel, bundle-vol -P mbr|gpt, then check the disk as firmware and GRUB would see it: sfdisk,
the MBR bytes, core.img in its sectors with a blocklist pointing at itself, grub.cfg and the
modules in the filesystem (debugfs). They need grub-pc-bin and grub-common on the host.

Boot tests (marker ``boot``, opt-in with AMI_BUNDLER_BOOT_TEST=1, root, debootstrap, qemu):
scripts/boot_test.py builds a Debian tree, bundles, unbundles and boots it under qemu.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bundler.cli import main
from bundler.volume import VolumeConfig, bundle_volume, grubimg
from bundler.volume.partition import MIB, gpt_partitions, layout_for

HOST_GRUB = Path("/usr/lib/grub/i386-pc")
HAVE_GRUB = (HOST_GRUB / "boot.img").is_file() and (
    shutil.which("grub-mkimage") is not None or shutil.which("grub2-mkimage") is not None)
HAVE_E2FS = shutil.which("mke2fs") is not None or Path("/sbin/mke2fs").exists()
needs_grub = pytest.mark.skipif(not (HAVE_GRUB and HAVE_E2FS),
                                reason="needs grub-pc-bin + grub-common and e2fsprogs on the host")
UUID = "3a1e2f4c-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
KERNEL = "6.1.0-99-amd64"


def debugfs(image: Path, request: str, offset: int = MIB) -> str:
    return subprocess.run(["debugfs", "-R", request, f"{image}?offset={offset}"],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "boot/grub").mkdir(parents=True)
    (root / f"boot/vmlinuz-{KERNEL}").write_bytes(b"\x4d\x5a" + os.urandom(4000))
    (root / f"boot/initrd.img-{KERNEL}").write_bytes(os.urandom(3000))
    (root / "boot/grub/grub.cfg").write_text("# the source system's own config\n")
    (root / "usr/lib/grub").mkdir(parents=True)
    if HOST_GRUB.is_dir():
        shutil.copytree(HOST_GRUB, root / "usr/lib/grub/i386-pc")
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/systemd").write_bytes(b"\x7fELF")
    (root / "sbin").mkdir()
    os.symlink("/usr/lib/systemd/systemd", root / "sbin/init")
    (root / "etc/systemd/network").mkdir(parents=True)
    (root / "etc/systemd/network/80-dhcp.network").write_text(
        "[Match]\nName=en*\n[Network]\nDHCP=yes\n")
    (root / "etc/os-release").write_text('PRETTY_NAME="Fake Linux 9"\n')
    return root


def build(tree: Path, dest: Path, scheme: str, **kw):
    dest.mkdir(exist_ok=True)
    return bundle_volume(VolumeConfig(volume=tree, destination=dest, clone_only=True,
                                      partition=scheme, size_mib=48, uuid=UUID,
                                      generate_fstab=True, **kw))


def check_core(disk: bytes, first: int, limit: int) -> int:
    """core.img at ``first``: diskboot's blocklist continues at first+1; returns its sectors."""
    entries = grubimg.read_blocklist(disk[first * 512:(first + 1) * 512])
    assert len(entries) == 1
    entry = entries[0]
    assert (entry.start, entry.segment) == (first + 1, 0x820)
    assert first + 1 + entry.sectors <= limit
    diskboot = (HOST_GRUB / "diskboot.img").read_bytes()
    assert disk[first * 512:first * 512 + 0x1F4] == diskboot[:0x1F4]
    lzma = (HOST_GRUB / "lzma_decompress.img").read_bytes()
    # lzma_decompress.img follows (its size fields are filled in by grub-mkimage).
    assert disk[(first + 1) * 512:(first + 1) * 512 + 8] == lzma[:8]
    return entry.sectors + 1


def check_mbr_code(sector0: bytes, core_lba: int) -> None:
    boot = (HOST_GRUB / "boot.img").read_bytes()
    assert sector0[:3] == boot[:3] and sector0[0x68:0x1B8] == boot[0x68:0x1B8]
    assert struct.unpack_from("<Q", sector0, 0x5C)[0] == core_lba
    assert sector0[510:] == b"\x55\xaa"


@needs_grub
def test_mbr_image_has_grub(tree: Path, tmp_path: Path):
    result = build(tree, tmp_path / "out", "mbr", kernel_cmdline="nvme_core.io_timeout=255")
    assert result.bootloader == "grub2" and result.kernel == KERNEL
    assert result.warnings == []
    image = result.image_path
    dump = subprocess.run(["sfdisk", "--dump", str(image)], capture_output=True, text=True,
                          check=True).stdout
    assert "label: dos" in dump and f"label-id: 0x{UUID[6:8]}{UUID[4:6]}{UUID[2:4]}{UUID[0:2]}" \
        in dump
    assert "start=        2048, size=       96256, type=83, bootable" in dump
    disk = image.read_bytes()
    check_mbr_code(disk[:512], 1)
    used = check_core(disk, 1, 2048)
    # nothing else in the gap
    assert disk[(1 + used) * 512:2048 * 512] == bytes((2047 - used) * 512)
    cfg = debugfs(image, "cat /boot/grub/grub.cfg")
    assert f"search --no-floppy --fs-uuid --set=root {UUID}" in cfg and "insmod part_msdos" in cfg
    assert (f"linux /boot/vmlinuz-{KERNEL} root=UUID={UUID} rootfstype=ext4 ro console=tty0 "
            "console=ttyS0,115200n8 nvme_core.io_timeout=255") in cfg
    assert f"initrd /boot/initrd.img-{KERNEL}" in cfg
    assert debugfs(image, "cat /boot/grub/grub.cfg.orig") == "# the source system's own config\n"
    mods = debugfs(image, "ls -l /boot/grub/i386-pc")
    for name in ("normal.mod", "linux.mod", "ext2.mod", "part_msdos.mod", "command.lst"):
        assert name in mods
    assert "LABEL=cloudimg-rootfs /" in debugfs(image, "cat /etc/fstab")
    # The source tree was staged by hard links: its own files are untouched.
    assert (tree / "boot/grub/grub.cfg").read_text() == "# the source system's own config\n"
    assert not (tree / "boot/grub/i386-pc").exists()
    fsck = subprocess.run(["e2fsck", "-fn", f"{image}?offset={MIB}"], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout


@needs_grub
def test_gpt_image_has_grub_in_bios_boot_partition(tree: Path, tmp_path: Path):
    result = build(tree, tmp_path / "out", "gpt")
    assert result.bootloader == "grub2"
    image = result.image_path
    verify = subprocess.run(["sfdisk", "--verify", str(image)], capture_output=True, text=True)
    assert verify.returncode == 0 and "No errors detected" in verify.stdout, verify.stdout
    layout = layout_for("gpt", 48)
    bios = gpt_partitions(layout, (uuid.uuid4(), uuid.uuid4()))[1]  # only the LBAs matter
    disk = image.read_bytes()
    check_mbr_code(disk[:512], bios.first_lba)
    assert disk[446 + 4] == 0xEE                         # protective MBR entry intact
    check_core(disk, bios.first_lba, bios.last_lba + 1)
    assert disk[512:520] == b"EFI PART"
    assert "insmod part_gpt" in debugfs(image, "cat /boot/grub/grub.cfg")


@needs_grub
def test_menu_lst_for_pv(tree: Path, tmp_path: Path):
    (tree / "boot/grub/grub.cfg").unlink()
    result = build(tree, tmp_path / "out", "none", generate_menu_lst=True)
    assert result.bootloader == "none" and result.menu_lst and result.warnings == []
    text = subprocess.run(["debugfs", "-R", "cat /boot/grub/menu.lst", str(result.image_path)],
                          capture_output=True, text=True, check=True).stdout
    assert "root (hd0)\n" in text
    assert (f"kernel /boot/vmlinuz-{KERNEL} root=LABEL=cloudimg-rootfs rootfstype=ext4 "
            "ro console=hvc0") in text
    assert result.image_path.read_bytes()[:1024] == bytes(1024)  # no boot code: plain ext4


def test_auto_without_grub_warns_and_leaves_mbr_empty(tree: Path, tmp_path: Path):
    if HAVE_GRUB:
        shutil.rmtree(tree / "usr/lib/grub/i386-pc")
    if not HAVE_E2FS:
        pytest.skip("e2fsprogs not installed")
    result = build(tree, tmp_path / "out", "mbr")
    assert result.bootloader == "none"
    assert any("will not boot by itself" in w and "usr/lib/grub/i386-pc" in w
               for w in result.warnings)
    assert result.image_path.read_bytes()[:440] == bytes(440)


def test_cli_bad_input(tree: Path, tmp_path: Path, capsys):
    if not HAVE_E2FS:
        pytest.skip("e2fsprogs not installed")
    for f in (tree / "boot").glob("vmlinuz-*"):
        f.unlink()
    out = tmp_path / "out"
    out.mkdir()
    base = ["bundle-vol", "-v", str(tree), "-d", str(out), "--clone-only", "-s", "48"]
    assert main(base + ["-P", "none", "--bootloader", "grub2"]) == 2
    assert "needs a partitioned image" in capsys.readouterr().err
    if HAVE_GRUB:
        assert main(base + ["-P", "mbr", "--bootloader", "grub2"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("ami-bundler: error: cannot install GRUB 2: no kernel")
    assert main(base + ["-P", "none", "--generate-menu-lst", "-p", "pv"]) == 1
    assert "--generate-menu-lst: no kernel" in capsys.readouterr().err
    assert not any(out.iterdir())


# ------------------------------------------------------------------------------ qemu boot

def _boot_test_module():
    path = Path(__file__).resolve().parents[2] / "scripts" / "boot_test.py"
    spec = importlib.util.spec_from_file_location("boot_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.boot
@pytest.mark.skipif(os.environ.get("AMI_BUNDLER_BOOT_TEST") != "1",
                    reason="qemu boot test: set AMI_BUNDLER_BOOT_TEST=1 (root, debootstrap, qemu)")
@pytest.mark.skipif(os.geteuid() != 0, reason="the boot test needs root")
@pytest.mark.parametrize("scheme", ["mbr", "gpt", "none", "mbr-xfs"])
def test_boots_under_qemu(scheme: str):
    boot_test = _boot_test_module()
    timeout = float(os.environ.get("AMI_BUNDLER_BOOT_TIMEOUT", "600"))
    [result] = boot_test.run_boot_test([scheme], timeout=timeout)
    assert result.booted, result.detail
    print(f"-P {scheme} booted in {result.seconds:.1f} s")


@pytest.mark.boot
@pytest.mark.skipif(os.environ.get("AMI_BUNDLER_BOOT_TEST") != "1",
                    reason="qemu boot test: set AMI_BUNDLER_BOOT_TEST=1 (root, debootstrap, qemu)")
@pytest.mark.skipif(os.geteuid() != 0, reason="the boot test needs root")
def test_boot_test_command_shows_why_a_wrong_root_does_not_boot(tmp_path: Path):
    """boot-test on the same Debian tree built with a root= naming another filesystem: the
    initramfs gives up, and the command says so with the console lines (nothing is waited for
    until the timeout)."""
    boot_test = _boot_test_module()
    timeout = float(os.environ.get("AMI_BUNDLER_BOOT_TIMEOUT", "600"))
    tree = boot_test.build_rootfs(boot_test.DEFAULT_CACHE)
    boot_test.customize(tree)
    out = tmp_path / "out"
    out.mkdir()
    foreign = "11111111-2222-4333-8444-555555555555"
    built = subprocess.run([sys.executable, "-m", "bundler", "bundle-vol", "-v", str(tree),
                            "-d", str(out), "--image-dir", str(tree.parent), "-p", "badroot",
                            "-P", "none", "--generate-fstab", "--generate-menu-lst",
                            "--kernel-cmdline", f"root=UUID={foreign}", "--clone-only",
                            "--no-inherit", "--batch", "-q"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert "boot.cmdline-root: /boot/grub/menu.lst: the kernel command line" in built.stderr
    log = tmp_path / "console.log"
    proc = subprocess.run([sys.executable, "-m", "bundler", "boot-test", str(out / "badroot"),
                           "--expect", r"BOOT-OK (\S+)", "--timeout", str(timeout),
                           "--accel", boot_test.DEFAULT_ACCEL, "--console-log", str(log)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "did not boot (root device not found" in proc.stdout
    assert f"ALERT!  UUID={foreign} does not exist" in proc.stdout
    assert "BOOT-OK" not in log.read_text(errors="replace")
