"""GRUB 2 boot sector / core image patching, kernel discovery, config text, sanity checks."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from bundler.errors import UsageError, VolumeError
from bundler.volume import bootloader as bl
from bundler.volume import grubimg
from bundler.volume.fstab import check_root_entry
from bundler.volume.partition import layout_for, mbr_table

HOST_GRUB = Path("/usr/lib/grub/i386-pc")
UUID = "0f0e0d0c-0b0a-4908-8706-050403020100"


def fake_boot_img() -> bytes:
    img = bytearray(512)
    img[0:3] = b"\xeb\x63\x90"
    img[0x5C:0x64] = struct.pack("<Q", 1)
    img[0x64] = 0xFF
    img[0x66:0x68] = b"\xeb\x05"          # the drive check jump
    img[0x1B8:0x1FE] = b"\xcc" * (0x1FE - 0x1B8)  # floppy code that the table replaces
    img[510:512] = b"\x55\xaa"
    return bytes(img)


def fake_core_img(sectors: int = 60, tail: int = 100) -> bytes:
    core = bytearray(os.urandom(512 * sectors + tail))
    first = bytearray(b"\xfa" * 512)
    first[488:512] = bytes(12) + struct.pack("<QHH", 2, sectors, 0x820)  # as mkimage leaves it
    core[0:512] = first
    return bytes(core)


# ------------------------------------------------------------------------------ boot.img

def test_boot_img_points_at_core_and_keeps_table():
    existing = mbr_table(layout_for("mbr", 64), 0xDEADBEEF)
    existing = existing[:3] + b"B" * (0x5A - 3) + existing[0x5A:]
    out = grubimg.patch_boot_img(fake_boot_img(), existing, 2222080)
    assert len(out) == 512
    assert struct.unpack_from("<Q", out, 0x5C)[0] == 2222080
    assert out[0x64] == 0xFF
    assert out[0x66:0x68] == b"\x90\x90"           # hard disk: drive check disabled
    assert out[0x03:0x5A] == b"B" * (0x5A - 3)      # BPB area from the disk
    assert out[0:3] == b"\xeb\x63\x90"              # boot code from boot.img
    assert out[0x1B8:0x1BC] == struct.pack("<I", 0xDEADBEEF)  # disk signature kept
    assert out[446:510] == existing[446:510]        # partition table kept
    assert out[510:] == b"\x55\xaa"


def test_boot_img_rejects_foreign_images():
    mbr = bytes(510) + b"\x55\xaa"
    with pytest.raises(grubimg.GrubImageError, match="512"):
        grubimg.patch_boot_img(b"x" * 400, mbr, 1)
    bad = bytearray(fake_boot_img())
    bad[0x66:0x68] = b"\x12\x34"
    with pytest.raises(grubimg.GrubImageError, match="not a GRUB 2"):
        grubimg.patch_boot_img(bytes(bad), mbr, 1)
    no_sig = fake_boot_img()[:510] + b"\0\0"
    with pytest.raises(grubimg.GrubImageError, match="0x55AA"):
        grubimg.patch_boot_img(no_sig, mbr, 1)


@pytest.mark.skipif(not (HOST_GRUB / "boot.img").is_file(), reason="grub-pc-bin not installed")
def test_real_boot_img():
    boot = (HOST_GRUB / "boot.img").read_bytes()
    existing = mbr_table(layout_for("mbr", 64), 0x01020304)
    out = grubimg.patch_boot_img(boot, existing, 1)
    assert out[:0x03] == boot[:0x03] and out[0x5A:0x5C] == boot[0x5A:0x5C]
    assert out[0x68:0x1B8] == boot[0x68:0x1B8]     # the code itself untouched
    assert out[0x66:0x68] == b"\x90\x90" and out[446:] == existing[446:]


# ------------------------------------------------------------------------------ core.img

def test_core_blocklist_for_contiguous_placement():
    core = fake_core_img(sectors=60, tail=100)       # 60 sectors + 100 bytes → 61 sectors
    out = grubimg.patch_core_img(core, 2048 - 64)
    assert len(out) == 61 * 512
    assert out[len(core):] == bytes(len(out) - len(core))    # zero padding
    assert out[512:len(core)] == core[512:]                 # payload untouched
    assert grubimg.read_blocklist(out) == [grubimg.BlockEntry(2048 - 63, 60, 0x820)]
    assert out[488:500] == bytes(12)                        # terminator


def test_core_without_terminator_is_refused():
    core = bytearray(fake_core_img())
    core[488:500] = struct.pack("<QHH", 9, 9, 9)
    with pytest.raises(grubimg.GrubImageError, match="terminator"):
        grubimg.patch_core_img(bytes(core), 1)
    with pytest.raises(grubimg.GrubImageError, match="too small"):
        grubimg.patch_core_img(b"x" * 512, 1)


def test_boot_sectors_checks_the_space():
    mbr = mbr_table(layout_for("mbr", 64), 1)
    sector0, core = grubimg.boot_sectors(fake_boot_img(), fake_core_img(60, 0), mbr, 1, 2048)
    assert struct.unpack_from("<Q", sector0, 0x5C)[0] == 1 and len(core) == 60 * 512
    with pytest.raises(grubimg.GrubImageError, match="60 sectors but only 59"):
        grubimg.boot_sectors(fake_boot_img(), fake_core_img(60, 0), mbr, 1, 60)


def test_core_area():
    assert bl.core_area(layout_for("mbr", 64)) == (1, 2048)
    gpt = layout_for("gpt", 64)
    first, limit = bl.core_area(gpt)
    assert first == 2048 + gpt.fs_bytes // 512
    assert limit == gpt.sectors - 33                  # backup entries + header follow


# ------------------------------------------------------------------------------ tree lookups

def make_tree(root: Path, *, kernels=("6.1.0-9-amd64",), usrmerge: bool = True) -> Path:
    (root / "boot").mkdir(parents=True)
    for v in kernels:
        (root / f"boot/vmlinuz-{v}").write_bytes(b"k")
        (root / f"boot/initrd.img-{v}").write_bytes(b"i")
    if usrmerge:
        (root / "usr/lib/systemd").mkdir(parents=True)
        (root / "usr/lib/systemd/systemd").write_bytes(b"init")
        (root / "usr/sbin").mkdir(parents=True)
        os.symlink("usr/lib", root / "lib")
        os.symlink("usr/sbin", root / "sbin")
        os.symlink("/lib/systemd/systemd", root / "usr/sbin/init")
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('NAME="X"\nPRETTY_NAME="Test Linux 1"\n')
    return root


def test_find_kernels_newest_first(tmp_path: Path):
    tree = make_tree(tmp_path / "t", kernels=("6.1.0-9-amd64", "6.1.0-10-amd64",
                                              "0-rescue-abc"))
    (tree / "boot/vmlinuz-5.14.0-70.el9.x86_64").write_bytes(b"k")
    (tree / "boot/initramfs-5.14.0-70.el9.x86_64.img").write_bytes(b"i")
    os.symlink("vmlinuz-6.1.0-10-amd64", tree / "boot/vmlinuz")
    kernels = bl.find_kernels(tree)
    assert [k.version for k in kernels] == ["6.1.0-10-amd64", "6.1.0-9-amd64",
                                            "5.14.0-70.el9.x86_64", "0-rescue-abc"]
    assert kernels[0].path == "/boot/vmlinuz-6.1.0-10-amd64"
    assert kernels[0].initrd == "/boot/initrd.img-6.1.0-10-amd64"
    assert kernels[2].initrd == "/boot/initramfs-5.14.0-70.el9.x86_64.img"
    assert bl.find_kernels(tmp_path) == []


def test_tree_resolve_stays_inside(tmp_path: Path):
    tree = make_tree(tmp_path / "t")
    assert bl.tree_resolve(tree, "sbin/init") == tree / "usr/lib/systemd/systemd"
    os.symlink("/etc/passwd", tree / "etc/escape")      # absolute: the tree's /etc/passwd
    assert bl.tree_resolve(tree, "etc/escape") is None
    os.symlink("../../../../etc/hostname", tree / "etc/up")
    (tree / "etc/hostname").write_text("h\n")
    assert bl.tree_resolve(tree, "etc/up") == tree / "etc/hostname"
    os.symlink("loop", tree / "etc/loop")
    assert bl.tree_resolve(tree, "etc/loop") is None
    assert bl.os_name(tree) == "Test Linux 1"


# ------------------------------------------------------------------------------ config text

def test_grub_cfg():
    kernels = [bl.Kernel("6.2", "/boot/vmlinuz-6.2", "/boot/initrd.img-6.2"),
               bl.Kernel("6.1", "/boot/vmlinuz-6.1", None)]
    cfg = bl.grub_cfg(kernels, fs_uuid=UUID, scheme="gpt", title="Deb 'x'",
                      extra_cmdline=" nvme_core.io_timeout=4294967295 ")
    assert "insmod part_gpt" in cfg and "insmod ext2" in cfg
    assert f"search --no-floppy --fs-uuid --set=root {UUID}" in cfg
    assert "terminal_output serial console" in cfg
    linux = [ln.strip() for ln in cfg.splitlines() if ln.strip().startswith("linux ")]
    assert linux[0] == (f"linux /boot/vmlinuz-6.2 root=UUID={UUID} rootfstype=ext4 ro console=tty0 "
                        "console=ttyS0,115200n8 nvme_core.io_timeout=4294967295")
    assert linux[1].startswith("linux /boot/vmlinuz-6.1 ")
    assert cfg.count("initrd ") == 1
    assert "menuentry 'Deb x, Linux 6.2'" in cfg                  # quotes cannot break out
    assert "part_msdos" in bl.grub_cfg(kernels, fs_uuid=UUID, scheme="mbr", title="t")


def test_menu_lst():
    kernels = [bl.Kernel("6.1", "/boot/vmlinuz-6.1", "/boot/initrd.img-6.1")]
    text = bl.menu_lst(kernels, root="LABEL=cloudimg-rootfs", scheme="none", title="Deb")
    assert text.splitlines()[1:4] == ["default 0", "timeout 0", "hiddenmenu"]
    assert "title Deb (6.1)\nroot (hd0)\n" in text
    assert ("kernel /boot/vmlinuz-6.1 root=LABEL=cloudimg-rootfs rootfstype=ext4 "
            "ro console=hvc0\n") in text
    assert "initrd /boot/initrd.img-6.1\n" in text
    assert "root (hd0,0)" in bl.menu_lst(kernels, root="UUID=x", scheme="mbr", title="D")


def test_check_options():
    with pytest.raises(UsageError, match="-P mbr or -P gpt"):
        bl.check_options("none", bl.BootOptions(bootloader="grub2"))
    with pytest.raises(UsageError, match="one line"):
        bl.check_options("mbr", bl.BootOptions(kernel_cmdline="a\nb"))
    bl.check_options("none", bl.BootOptions(bootloader="auto", generate_menu_lst=True))


# ------------------------------------------------------------------------------ fstab

def test_check_root_entry():
    assert check_root_entry(f"UUID={UUID.upper()} / ext4 defaults 0 1\n", label=None,
                            uuid=UUID) is None
    assert check_root_entry("# c\nLABEL=cloudimg-rootfs / ext4 d 1 1\n", label="cloudimg-rootfs",
                            uuid=UUID) is None
    assert "LABEL=old" in check_root_entry("LABEL=old / ext4 d 1 1\n", label="new", uuid=UUID)
    assert "unlabelled" in check_root_entry("LABEL=old / ext4 d 1 1\n", label=None, uuid=UUID)
    assert "PARTUUID" in check_root_entry("PARTUUID=ab-01 / ext4 d 1 1\n", label=None, uuid=UUID)
    assert check_root_entry("/dev/xvda1 / ext4 d 1 1\nproc /proc proc d 0 0\n", label=None,
                            uuid=UUID) is None


# ------------------------------------------------------------------------------ prepare()

def prepare(tree: Path, scheme="mbr", **opts) -> bl.BootPlan:
    return bl.prepare(tree, layout_for(scheme, 64), bl.BootOptions(**opts), fs_uuid=UUID,
                      label="cloudimg-rootfs", workdir=tree.parent)


def fake_grub(tree: Path, *, skip: tuple[str, ...] = ()) -> Path:
    moddir = tree / bl.GRUB_DIR
    moddir.mkdir(parents=True)
    names = list(bl.GRUB_IMAGES) + [f"{m}.mod" for m in
                                    bl.CORE_MODULES["mbr"] + bl.CORE_MODULES["gpt"]
                                    + bl.RUNTIME_MODULES]
    for name in names:
        if name not in skip:
            (moddir / name).write_bytes(b"m")
    return moddir


def test_prepare_auto_without_grub_warns(tmp_path: Path):
    tree = make_tree(tmp_path / "t")
    plan = prepare(tree)
    assert plan.installed == "none"
    assert len(plan.warnings) == 1 and "will not boot by itself" in plan.warnings[0]
    assert "usr/lib/grub/i386-pc" in plan.warnings[0]
    assert not (tree / "boot/grub").exists()


def test_prepare_grub2_errors(tmp_path: Path):
    tree = make_tree(tmp_path / "t")
    with pytest.raises(VolumeError, match="no GRUB 2 for BIOS"):
        prepare(tree, bootloader="grub2")
    fake_grub(tree, skip=("ext2.mod",))
    with pytest.raises(VolumeError, match="ext2.mod.*ext4"):
        prepare(tree, bootloader="grub2")
    (tree / bl.GRUB_DIR / "ext2.mod").write_bytes(b"m")
    (tree / bl.GRUB_DIR / "normal.mod").unlink()
    (tree / bl.GRUB_DIR / "kernel.img").unlink()
    with pytest.raises(VolumeError, match="lacks kernel.img, normal.mod"):
        prepare(tree, bootloader="grub2")


def test_prepare_no_kernel(tmp_path: Path):
    tree = make_tree(tmp_path / "t", kernels=())
    fake_grub(tree)
    with pytest.raises(VolumeError, match="no kernel"):
        prepare(tree, bootloader="grub2")
    plan = prepare(tree, bootloader="auto")
    assert plan.installed == "none" and "no kernel" in plan.warnings[0]
    with pytest.raises(VolumeError, match="--generate-menu-lst: no kernel"):
        prepare(tree, scheme="none", generate_menu_lst=True)


def test_prepare_core_too_large(tmp_path: Path, monkeypatch):
    tree = make_tree(tmp_path / "t")
    fake_grub(tree)
    monkeypatch.setattr(bl, "build_core_img", lambda *a: (b"\0" * 2048 * 512, "test"))
    with pytest.raises(VolumeError, match="needs 2048 sectors but the MBR gap has only 2047"):
        prepare(tree)
    with pytest.raises(VolumeError, match="BIOS boot partition has only 2015"):
        prepare(tree, scheme="gpt")


def test_prepare_writes_grub_files_without_touching_links(tmp_path: Path, monkeypatch):
    source = tmp_path / "source.cfg"
    source.write_text("old config\n")
    tree = make_tree(tmp_path / "t")
    moddir = fake_grub(tree)
    (moddir / "command.lst").write_text("normal: normal\n")
    (tree / "boot/grub/i386-pc").mkdir(parents=True)
    (tree / "boot/grub/i386-pc/stale.mod").write_bytes(b"old")
    os.link(source, tree / "boot/grub/grub.cfg")        # a staged hard link to the volume
    monkeypatch.setattr(bl, "build_core_img", lambda *a: (fake_core_img(40), "test"))
    plan = prepare(tree, kernel_cmdline="quiet")
    assert plan.installed == "grub2" and plan.kernel.version == "6.1.0-9-amd64"
    assert source.read_text() == "old config\n"
    assert (tree / "boot/grub/grub.cfg.orig").read_text() == "old config\n"
    cfg = (tree / "boot/grub/grub.cfg").read_text()
    assert f"root=UUID={UUID} rootfstype=ext4 ro console=tty0 console=ttyS0,115200n8 quiet" in cfg
    mods = sorted(p.name for p in (tree / "boot/grub/i386-pc").iterdir())
    assert "stale.mod" not in mods and "normal.mod" in mods and "command.lst" in mods
    assert "boot.img" not in mods
    assert os.path.samefile(tree / "boot/grub/i386-pc/ext2.mod", moddir / "ext2.mod")


def test_prepare_menu_lst(tmp_path: Path):
    tree = make_tree(tmp_path / "t")
    plan = prepare(tree, scheme="none", generate_menu_lst=True)
    assert plan.menu_lst and plan.installed == "none" and plan.warnings == []
    text = (tree / "boot/grub/menu.lst").read_text()
    assert ("root=LABEL=cloudimg-rootfs rootfstype=ext4 ro console=hvc0" in text
            and "root (hd0)\n" in text)
    (tree / "boot/grub/menu.lst").write_text("mine\n")
    assert not prepare(tree, scheme="none", generate_menu_lst=True).menu_lst
    assert (tree / "boot/grub/menu.lst").read_text() == "mine\n"


def test_bootloader_none_on_partitioned_image_warns(tmp_path: Path):
    plan = prepare(make_tree(tmp_path / "t"), bootloader="none")
    assert plan.installed == "none" and "will not boot by itself" in plan.warnings[0]


def test_unsupported_filesystem_features(tmp_path: Path):
    sb = bytearray(1024)
    struct.pack_into("<H", sb, 0x38, 0xEF53)
    struct.pack_into("<I", sb, 0x60, 0x2 | 0x40 | 0x80 | 0x200)  # filetype extents 64bit flex_bg
    assert bl.unsupported_features(bytes(sb)) == []
    struct.pack_into("<I", sb, 0x60, 0x2 | 0x8000 | 0x20000)
    assert bl.unsupported_features(bytes(sb)) == ["inline_data", "casefold"]
    image = tmp_path / "img"
    image.write_bytes(bytes(2048) + bytes(sb))
    with pytest.raises(VolumeError, match="inline_data, casefold.*mke2fs.conf"):
        bl.check_filesystem(image, 1024, bl.BootPlan(installed="grub2"))
    bl.check_filesystem(image, 1024, bl.BootPlan(installed="none"))   # nothing to boot: no check
    with pytest.raises(VolumeError, match="not ext2/3/4"):
        bl.unsupported_features(bytes(1024))
