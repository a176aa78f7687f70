"""--fs-type resolution, per-type fstab options and GRUB modules (pure logic)."""

from __future__ import annotations

import pytest

from bundler.errors import VolumeError
from bundler.volume import bootloader as bl
from bundler.volume import fstab, fstype
from bundler.volume.bootloader import Kernel

UUID = "6a1f2b3c-4d5e-4f60-8172-8394a5b6c7d8"


@pytest.mark.parametrize(("choice", "source", "want"), [
    ("auto", None, "ext4"),          # a plain directory
    ("auto", "xfs", "xfs"),          # Amazon Linux 2, RHEL
    ("auto", "btrfs", "btrfs"),      # Fedora
    ("auto", "ext3", "ext4"),
    ("auto", "overlay", "ext4"),     # not a type images are made of
    ("ext4", "xfs", "ext4"),
    ("xfs", None, "xfs"),
    ("btrfs", "ext4", "btrfs"),
])
def test_resolve(choice, source, want):
    got, why = fstype.resolve(choice, source)
    assert got == want and why


def test_resolve_rejects_unknown_and_labels_are_checked_per_type():
    with pytest.raises(VolumeError, match="--fs-type"):
        fstype.resolve("zfs", None)
    assert fstype.check_label("cloudimg-rootfs", "ext4")
    with pytest.raises(VolumeError, match="12 bytes"):
        fstype.check_label("cloudimg-rootfs", "xfs")
    assert all(len(fstype.DEFAULT_LABELS[t]) <= fstype.LABEL_LIMITS[t] for t in fstype.FS_TYPES)


def test_require_names_reason_and_alternative(monkeypatch):
    monkeypatch.setattr(fstype, "_which", lambda tool: None)
    with pytest.raises(VolumeError, match=r"mkfs\.xfs.*xfsprogs.*use --fs-type ext4"):
        fstype.require("xfs", "the source filesystem is xfs")


@pytest.mark.parametrize(("options", "to", "kept", "dropped"), [
    ("defaults,noatime,inode64", "ext4", "defaults,noatime", ["inode64"]),
    ("defaults,data=ordered,user_xattr,noatime", "xfs", "defaults,noatime",
     ["data=ordered", "user_xattr"]),
    ("rw,relatime,inode64,logbufs=8,uquota", "xfs", "rw,relatime,inode64,logbufs=8,uquota", []),
    ("defaults,subvol=root,compress=zstd:1,inode64", "btrfs",
     "defaults,subvol=root,compress=zstd:1", ["inode64"]),
    ("defaults,uquota", "ext4", "defaults,usrquota", []),
])
def test_options_for(options, to, kept, dropped):
    assert fstab.options_for(options, to) == (kept, dropped)


def test_retarget_to_xfs_and_generated_fstab():
    text = "UUID=1111 / ext4 errors=remount-ro,data=ordered 0 1\n"
    new, change = fstab.retarget_root(text, fstype="xfs", label=None, uuid=UUID)
    assert new.split("\n")[0].split() == [f"UUID={UUID}", "/", "xfs", "errors=remount-ro",
                                          "0", "0"]
    assert change is not None and change.dropped_options == ("data=ordered",)
    gen = fstab.generate_fstab(label="rootfs", uuid=UUID, fstype="xfs")
    assert "LABEL=rootfs / xfs defaults 0 0" in " ".join(gen.split())


def test_grub_follows_the_filesystem():
    kernels = [Kernel("6.1", "/boot/vmlinuz-6.1", None)]
    cfg = bl.grub_cfg(kernels, fs_uuid=UUID, scheme="mbr", title="t", fs_type="xfs")
    assert "insmod xfs" in cfg and "insmod ext2" not in cfg
    assert f"root=UUID={UUID} rootfstype=xfs ro" in cfg
    assert bl.core_modules("gpt", "btrfs") == ("biosdisk", "part_gpt", "btrfs")
    assert bl.core_modules("mbr") == ("biosdisk", "part_msdos", "ext2")
    lst = bl.menu_lst(kernels, root="UUID=x", scheme="none", title="t", fs_type="btrfs")
    assert "root=UUID=x rootfstype=btrfs ro" in lst


def test_kernel_lines_of_kept_menus_name_the_image():
    from bundler.volume import cmdline

    text = ("default 0\n"
            "title Amazon Linux 2\n"
            "  root (hd0)\n"
            "  kernel /boot/vmlinuz-4.14 root=UUID=11111111-2222 rootfstype=xfs ro quiet\n"
            "  kernel /boot/vmlinuz-old root=/dev/xvda1 ro\n"
            "\tlinux /vmlinuz root=LABEL=/ ro\n")
    new, changes = cmdline.retarget(text, path="/boot/grub/menu.lst", uuid=UUID,
                                    label="cloudimg-rootfs", fs_type="ext4")
    lines = new.split("\n")
    assert lines[3] == f"  kernel /boot/vmlinuz-4.14 root=UUID={UUID} rootfstype=ext4 ro quiet"
    assert lines[4] == "  kernel /boot/vmlinuz-old root=/dev/xvda1 ro"   # a device: kept
    assert lines[5] == "\tlinux /vmlinuz root=LABEL=cloudimg-rootfs ro"
    assert [c.old.split()[0] for c in changes] == ["kernel", "linux"]
    same, none = cmdline.retarget(new, path="x", uuid=UUID, label="cloudimg-rootfs",
                                  fs_type="ext4")
    assert same == new and none == []
