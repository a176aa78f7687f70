"""Small root filesystems for the check tests: a clean one that passes every rule, and the
problems the tests plant in it. Works on real directories and under pyfakefs.

Key-shaped strings are assembled at run time: the repository holds no key-like literal.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

KERNEL = "6.1.0-9-amd64"
UUID = "0b7c3a52-9f0e-4d1a-8c55-2e4f6a7b8c9d"
LABEL = "cloudimg-rootfs"
FOREIGN_UUID = "11111111-2222-4333-8444-555555555555"


def elf(machine: int = 0x3E) -> bytes:
    """An ELF header for ``machine`` (0x3E x86_64, 0xB7 arm64, 0x03 i386)."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHI", 2, machine, 1) + bytes(40)


def private_key_text() -> str:
    begin = "-----BEGIN " + "OPENSSH PRIVATE" + " KEY-----"
    end = "-----END " + "OPENSSH PRIVATE" + " KEY-----"
    return f"{begin}\n{'b3BlbnNzaC1rZXktdjEAAAAABG5vbmU' * 3}\n{end}\n"


def access_key_id() -> str:
    return "AK" + "IA" + "QWERTYUIOPASDFGH"


def _write(root: Path, rel: str, data: bytes | str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def _link(root: Path, rel: str, target: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def write_clean_root(root: Path, *, uuid: str = UUID, console: str = "console=tty0 "
                     "console=ttyS0,115200n8", pv: bool = False) -> Path:
    """A tree every rule passes, for an image with filesystem ``uuid`` and GRUB 2 in the MBR
    (or, with ``pv``, a partitionless image booted by PV-GRUB through menu.lst)."""
    root.mkdir(parents=True, exist_ok=True)
    _write(root, "usr/lib/systemd/systemd", elf(), 0o755)
    _link(root, "lib", "usr/lib")
    _link(root, "sbin", "usr/sbin")
    _link(root, "usr/sbin/init", "../lib/systemd/systemd")
    _write(root, "bin/sh", elf(), 0o755)
    _write(root, f"boot/vmlinuz-{KERNEL}", b"MZ" + bytes(2000))
    _write(root, f"boot/initrd.img-{KERNEL}", bytes(1000))
    _write(root, f"boot/config-{KERNEL}", "CONFIG_XEN=y\nCONFIG_XEN_BLKDEV_FRONTEND=m\n"
           "CONFIG_XEN_NETDEV_FRONTEND=m\nCONFIG_EXT4_FS=y\n")
    moddir = f"usr/lib/modules/{KERNEL}"
    _write(root, f"{moddir}/modules.builtin", "kernel/fs/ext4/ext4.ko\n")
    _write(root, f"{moddir}/kernel/drivers/block/xen-blkfront.ko.xz", b"\xfd7zXZ\x00")
    _write(root, f"{moddir}/kernel/drivers/net/xen-netfront.ko.xz", b"\xfd7zXZ\x00")
    if pv:
        _write(root, "boot/grub/menu.lst",
               f"default 0\ntimeout 0\ntitle Debian\nroot (hd0)\nkernel /boot/vmlinuz-{KERNEL} "
               f"root=UUID={uuid} ro console=hvc0\ninitrd /boot/initrd.img-{KERNEL}\n")
    else:
        _write(root, "boot/grub/grub.cfg",
               f"set default=0\nmenuentry 'Debian' {{\n\tlinux /boot/vmlinuz-{KERNEL} "
               f"root=UUID={uuid} ro {console}\n\tinitrd /boot/initrd.img-{KERNEL}\n}}\n")
    _write(root, "etc/fstab", f"UUID={uuid} / ext4 defaults 1 1\n")
    _write(root, "etc/systemd/network/80-dhcp.network", "[Match]\nName=en*\n[Network]\n"
           "DHCP=yes\n")
    _write(root, "etc/shadow", "root:*:19000:0:99999:7:::\nadmin:!:19000:0:99999:7:::\n", 0o640)
    _write(root, "etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\n"
           "PermitRootLogin prohibit-password\nPasswordAuthentication yes\n")
    _write(root, "etc/ssh/sshd_config.d/50-cloud.conf", "PasswordAuthentication no\n")
    _write(root, "etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAAC3Nza root@build\n")
    _write(root, "etc/machine-id", "")
    _write(root, "etc/hostname", "localhost\n")
    _write(root, "usr/bin/cloud-init", "#!/usr/bin/python3\n", 0o755)
    _write(root, "root/.ssh/authorized_keys", "")
    _write(root, "home/admin/.profile", "umask 022\n")
    _write(root, "etc/ssl/certs/ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n"
           "-----END CERTIFICATE-----\n")
    (root / "proc").mkdir(exist_ok=True)
    return root


# The problems the issue names, planted one at a time: name -> (function, expected rule id).
def plant_authorized_keys(root: Path) -> None:
    _write(root, "home/admin/.ssh/authorized_keys", "ssh-ed25519 AAAAC3Nza builder@laptop\n")


def plant_host_key(root: Path) -> None:
    _write(root, "etc/ssh/ssh_host_ed25519_key", private_key_text(), 0o600)


def plant_root_password(root: Path) -> None:
    _write(root, "etc/shadow", "root:$6$salt$" + "x" * 86 + ":19000:0:99999:7:::\n", 0o640)


def plant_history(root: Path) -> None:
    _write(root, "root/.bash_history", "export AWS_SECRET_ACCESS_KEY=...\n", 0o600)


def plant_aws_credentials(root: Path) -> None:
    _write(root, "root/.aws/credentials",
           f"[default]\naws_access_key_id = {access_key_id()}\n", 0o600)


def plant_access_key_in_config(root: Path) -> None:
    _write(root, "etc/default/uploader", f"KEY_ID={access_key_id()}\n")


def plant_private_key(root: Path) -> None:
    _write(root, "opt/app/deploy.key", private_key_text(), 0o600)


def plant_no_xen_kernel(root: Path) -> None:
    _write(root, f"boot/config-{KERNEL}", "CONFIG_XEN=n\n# CONFIG_XEN_BLKDEV_FRONTEND is not "
           "set\n# CONFIG_XEN_NETDEV_FRONTEND is not set\n")
    for rel in ("block/xen-blkfront.ko.xz", "net/xen-netfront.ko.xz"):
        (root / f"usr/lib/modules/{KERNEL}/kernel/drivers/{rel}").unlink()


def plant_foreign_fstab(root: Path) -> None:
    _write(root, "etc/fstab", f"UUID={FOREIGN_UUID} / ext4 defaults 1 1\n")


def plant_sshd_root_password(root: Path) -> None:
    _write(root, "etc/ssh/sshd_config.d/50-cloud.conf", "PermitRootLogin yes\n")


PLANTED = {
    "authorized_keys": (plant_authorized_keys, "share.authorized-keys"),
    "host key": (plant_host_key, "share.ssh-host-key"),
    "root password": (plant_root_password, "share.root-password"),
    "bash history": (plant_history, "share.shell-history"),
    "aws credentials file": (plant_aws_credentials, "share.aws-credentials"),
    "access key in config": (plant_access_key_in_config, "share.aws-credentials"),
    "private key": (plant_private_key, "share.private-key"),
    "kernel without xen": (plant_no_xen_kernel, "boot.xen-drivers"),
    "foreign fstab uuid": (plant_foreign_fstab, "boot.fstab-root"),
    "sshd root password": (plant_sshd_root_password, "share.sshd-root-password"),
}


def newc(names: list[str]) -> bytes:
    """An uncompressed newc cpio archive holding empty files ``names``."""
    out = bytearray()
    for i, name in enumerate([*names, "TRAILER!!!"]):
        raw = name.encode() + b"\0"
        fields = [i + 1, 0o100644, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(raw), 0]
        out += b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
        out += raw + bytes((4 - (110 + len(raw)) % 4) % 4)
    return bytes(out + bytes((512 - len(out) % 512) % 512))


def initramfs(modules: list[str], *, early: bool = True) -> bytes:
    """A Debian-style initramfs: an uncompressed early archive, then a gzipped main one."""
    import gzip

    main = newc(["init", "usr", *(f"usr/lib/modules/{KERNEL}/kernel/{m}" for m in modules)])
    return (newc(["kernel/x86/microcode/GenuineIntel.bin"]) if early else b"") + \
        gzip.compress(main)


def write_initramfs(root: Path, modules: list[str]) -> None:
    _write(root, f"boot/initrd.img-{KERNEL}", initramfs(modules))


def dirty_tree(base: Path) -> Path:
    """A clean root with every PLANTED problem in it."""
    tree = write_clean_root(base, pv=True)
    write_initramfs(tree, ["drivers/block/xen-blkfront.ko.xz"])
    for plant, _ in PLANTED.values():
        plant(tree)
    return tree
