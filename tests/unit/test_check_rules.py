"""check: every boot and sharing rule on fake trees (pyfakefs)."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest

from bundler.check import check_tree
from bundler.check import initramfs as initramfs_lib
from bundler.check.tree import DirTree, VolumeFacts
from bundler.cli.checking import report_lines
from tests.support import roots

ROOT = Path("/srv/root")


def image_facts(**kw) -> VolumeFacts:
    base = dict(kind="image", description="disk.img", disk_bytes=2 << 30, scheme="mbr",
                fs_type="ext4", uuid=roots.UUID, label=roots.LABEL, boot_code="grub2",
                grub_core=True)
    base.update(kw)
    return VolumeFacts(**base)


def ids(root: Path = ROOT, *, public: bool = False, facts: VolumeFacts | None = None,
        severity: str | None = None) -> set[str]:
    report = check_tree(DirTree(root, facts or image_facts()), public=public)
    return {f.id for f in report.findings if severity is None or f.severity == severity}


@pytest.fixture
def root(fs) -> Path:
    roots.write_clean_root(ROOT)
    roots.write_initramfs(ROOT, ["drivers/block/xen-blkfront.ko.xz"])
    return ROOT


def test_clean_tree_has_no_findings(root):
    report = check_tree(DirTree(root, image_facts()), public=True)
    assert report.findings == [] and report.ok


@pytest.mark.parametrize("problem", sorted(roots.PLANTED))
def test_each_planted_problem_is_found(root, problem):
    plant, rule_id = roots.PLANTED[problem]
    plant(root)
    assert rule_id in ids(), problem


@pytest.mark.parametrize("problem", [p for p in sorted(roots.PLANTED)
                                     if roots.PLANTED[p][1].startswith("share.")])
def test_sharing_rules_are_errors_only_with_public(root, problem):
    plant, rule_id = roots.PLANTED[problem]
    plant(root)
    assert rule_id in ids(severity="warning") and rule_id not in ids(severity="error")
    assert rule_id in ids(public=True, severity="error")


# ------------------------------------------------------------------------------ boot

def test_no_kernel_no_init(root):
    for f in (root / "boot").glob("vmlinuz-*"):
        f.unlink()
    (root / "usr/lib/systemd/systemd").unlink()
    assert {"boot.kernel", "boot.init"} <= ids(severity="error")


def test_kernel_without_initramfs(root):
    (root / f"boot/initrd.img-{roots.KERNEL}").unlink()
    assert "boot.initramfs" in ids(severity="warning")


def test_blkfront_module_missing_from_initramfs(root):
    roots.write_initramfs(root, ["drivers/net/xen-netfront.ko.xz"])
    report = check_tree(DirTree(root, image_facts()))
    [f] = [f for f in report.findings if f.id == "boot.xen-drivers"]
    assert f.severity == "error" and "not in its initramfs" in f.message
    assert f.path == f"/boot/initrd.img-{roots.KERNEL}"


def test_builtin_drivers_need_no_module(root):
    (root / f"boot/config-{roots.KERNEL}").write_text(
        "CONFIG_XEN_BLKDEV_FRONTEND=y\nCONFIG_XEN_NETDEV_FRONTEND=y\n")
    for rel in ("block/xen-blkfront.ko.xz", "net/xen-netfront.ko.xz"):
        (root / f"usr/lib/modules/{roots.KERNEL}/kernel/drivers/{rel}").unlink()
    roots.write_initramfs(root, [])
    assert "boot.xen-drivers" not in ids()


def test_unknown_kernel_configuration_is_a_warning(root):
    (root / f"boot/config-{roots.KERNEL}").unlink()
    (root / f"usr/lib/modules/{roots.KERNEL}").rename(root / "usr/lib/modules-gone")
    assert "boot.xen-drivers" in ids(severity="warning")


@pytest.mark.parametrize("machine,arch", [(0xB7, "arm64"), (0x03, "i386")])
def test_non_x86_64_has_no_instance_type(root, machine, arch):
    (root / "usr/lib/systemd/systemd").write_bytes(roots.elf(machine))
    report = check_tree(DirTree(root, image_facts()))
    [f] = [f for f in report.findings if f.id == "boot.arch"]
    assert f.severity == "error" and arch in f.message and "no instance type" in f.message


def test_manifest_arch_disagrees(root):
    assert "boot.arch" in ids(facts=image_facts(manifest_arch="i386"))


def test_image_over_10_gib(root):
    assert "boot.size" in ids(facts=image_facts(disk_bytes=11 << 30), severity="error")


def test_mbr_without_boot_code(root):
    assert "boot.bootloader" in ids(facts=image_facts(boot_code="none", grub_core=False),
                                    severity="error")


def test_gpt_without_bios_boot_partition(root):
    found = check_tree(DirTree(root, image_facts(scheme="gpt", boot_code="grub2",
                                                 grub_core=False))).findings
    [f] = [f for f in found if f.id == "boot.bootloader"]
    assert "BIOS boot partition" in f.message


def test_grub_in_mbr_but_no_grub_cfg(root):
    (root / "boot/grub/grub.cfg").unlink()
    assert "boot.bootloader" in ids(severity="error")


def test_partitionless_needs_menu_lst(root):
    facts = image_facts(scheme="none", boot_code=None, grub_core=None)
    assert "boot.bootloader" in ids(facts=facts, severity="error")
    (root / "boot/grub/menu.lst").write_text(
        f"default 0\ntitle Debian\nroot (hd0)\nkernel /boot/vmlinuz-{roots.KERNEL} "
        f"root=UUID={roots.UUID} ro console=hvc0\ninitrd /boot/initrd.img-{roots.KERNEL}\n")
    (root / "boot/grub/grub.cfg").unlink()
    assert ids(facts=facts) == set()


def test_pv_console_must_be_hvc0(root):
    (root / "boot/grub/grub.cfg").unlink()
    (root / "boot/grub/menu.lst").write_text(
        f"title Debian\nroot (hd0)\nkernel /boot/vmlinuz-{roots.KERNEL} root=UUID={roots.UUID}"
        " ro console=ttyS0\n")
    assert "boot.console" in ids(facts=image_facts(scheme="none"), severity="warning")


def test_uefi_only(root):
    facts = image_facts(scheme="gpt", esp=True, boot_code="none", grub_core=False)
    assert "boot.uefi-only" in ids(facts=facts, severity="error")


def test_cmdline_root_names_another_filesystem(root):
    roots.write_clean_root(Path("/other"), uuid=roots.FOREIGN_UUID)
    (root / "boot/grub/grub.cfg").write_bytes((Path("/other/boot/grub/grub.cfg")).read_bytes())
    assert "boot.cmdline-root" in ids(severity="error")


def test_no_serial_console(root):
    cfg = root / "boot/grub/grub.cfg"
    cfg.write_text(cfg.read_text().replace(" console=tty0 console=ttyS0,115200n8", ""))
    assert "boot.console" in ids(severity="warning")


def test_fstab_by_label_wrong_type_and_device_names(root):
    (root / "etc/fstab").write_text("LABEL=other / xfs defaults 0 1\n")
    assert {"boot.fstab-root", "boot.fstab-type"} <= ids(severity="error")
    (root / "etc/fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    assert "boot.fstab-device" in ids(severity="warning")
    (root / "etc/fstab").unlink()
    assert "boot.fstab" in ids(severity="warning")


def test_no_dhcp(root):
    (root / "etc/systemd/network/80-dhcp.network").unlink()
    (root / "usr/bin/cloud-init").unlink()
    assert "boot.network" in ids(severity="warning")
    (root / "etc/network").mkdir()
    (root / "etc/network/interfaces").write_text("auto eth0\niface eth0 inet dhcp\n")
    assert "boot.network" not in ids()


def test_directory_without_disk_facts(root):
    """A directory's filesystem UUID is not known: a UUID root is a warning, not an error."""
    report = check_tree(DirTree(root))
    by_id = {f.id: f for f in report.findings}
    assert by_id["boot.fstab-root"].severity == "warning"
    assert "--uuid" in by_id["boot.fstab-root"].fix
    assert report.ok


# ------------------------------------------------------------------------------ sharing

def test_empty_authorized_keys_and_public_host_keys_are_fine(root):
    assert ids() == set()


def test_documentation_example_key_is_not_a_finding(root):
    (root / "etc/example.conf").write_text("key = AKIA" + "IOSFODNN7" + "EXAMPLE\n")
    assert ids() == set()


def test_secret_access_key_in_env_file(root):
    (root / "opt/app").mkdir(parents=True)
    (root / "opt/app/.env").write_text("aws_secret_access_key=" + "a1B2" * 10 + "\n")
    assert "share.aws-credentials" in ids()


def test_empty_root_password(root):
    (root / "etc/shadow").write_text("root::19000:0:99999:7:::\n")
    assert "share.root-password" in ids()


def test_sshd_first_value_wins(root):
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin no\nPermitRootLogin yes\n")
    assert "share.sshd-root-password" not in ids()
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin yes\nMatch User x\n"
                                              "PasswordAuthentication no\n")
    assert "share.sshd-root-password" in ids()


def test_machine_id_is_a_note(root):
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    report = check_tree(DirTree(root, image_facts()), public=True)
    assert [(f.id, f.severity) for f in report.findings] == [("share.machine-id", "note")]
    assert report.ok


def test_no_key_installer(root):
    (root / "usr/bin/cloud-init").unlink()
    assert "share.key-installer" in ids(public=True, severity="error")


def test_proc_contents_are_not_read(root):
    (root / "proc/1").mkdir(parents=True)
    (root / "proc/1/environ").write_text(roots.private_key_text())
    assert ids() == set()


# ------------------------------------------------------------------------------ pieces

def test_initramfs_names_through_compressions():
    names = ["usr/lib/modules/x/kernel/drivers/block/xen-blkfront.ko.zst"]
    main = roots.newc(names)
    for packed in (gzip.compress(main), lzma.compress(main), roots.newc(["early"]) + main):
        found = initramfs_lib.member_names(roots.newc(["kernel/x86/microcode/x.bin"]) + packed)
        assert found is not None and names[0] in found
    assert initramfs_lib.member_names(b"not an archive") is None


def test_report_lines_table_and_plain(root):
    roots.plant_history(root)
    report = check_tree(DirTree(root, image_facts()), public=True)
    table = report_lines(report, tty=True)
    assert table[0].split() == ["SEVERITY", "ID", "PATH", "MESSAGE"]
    assert table[1].startswith("ERROR") and "/root/.bash_history" in table[1]
    assert "fix: delete it" in table[2]
    plain = report_lines(report, tty=False)
    assert plain[0].startswith("error: share.shell-history: /root/.bash_history: ")
    assert "NOT READY: 1 error(s)" in plain[-1]


def test_last_root_on_the_command_line_wins(root):
    cfg = root / "boot/grub/grub.cfg"
    cfg.write_text(cfg.read_text().replace(" ro ", f" ro root=UUID={roots.FOREIGN_UUID} "))
    assert "boot.cmdline-root" in ids(severity="error")


@pytest.mark.parametrize("rel,content,expect", [
    ("etc/systemd/network/10-eth.network", "[Match]\nName=eth0\n[Network]\nDHCP=ipv4\n",
     "systemd-networkd"),
    ("etc/network/interfaces", "auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n",
     "ifupdown"),
    ("etc/network/interfaces.d/eth0", "iface eth0 inet6 auto\n", "ifupdown"),
    ("etc/netplan/50-cloud.yaml", "network:\n  ethernets:\n    eth0:\n      dhcp4: true\n",
     "netplan"),
    ("etc/sysconfig/network-scripts/ifcfg-eth0", 'DEVICE=eth0\nBOOTPROTO="dhcp"\n', "ifcfg"),
    ("usr/sbin/NetworkManager", "elf", "NetworkManager"),
    ("usr/bin/cloud-init", "#!", "cloud-init"),
])
def test_network_config_found(fs, rel: str, content: str, expect: str):
    from bundler.check.boot_rules import network_config

    fs.create_file(ROOT / rel, contents=content)
    assert expect in (network_config(DirTree(ROOT)) or "")


def test_network_config_missing(fs):
    from bundler.check.boot_rules import network_config

    fs.create_file(ROOT / "etc/network/interfaces", contents="auto lo\niface lo inet loopback\n")
    fs.create_file(ROOT / "etc/systemd/network/x.network",
                   contents="[Network]\nAddress=10.0.0.2/24\n")
    assert network_config(DirTree(ROOT)) is None


def test_tree_resolves_symlinks_inside_the_tree(fs):
    fs.create_file(ROOT / "usr/lib/systemd/systemd", contents="x")
    fs.create_file(ROOT / "etc/hostname", contents="h\n")
    fs.create_symlink(ROOT / "sbin", "usr/sbin")
    fs.create_symlink(ROOT / "usr/sbin/init", "/usr/lib/systemd/systemd")
    fs.create_symlink(ROOT / "etc/escape", "/etc/passwd")    # absolute: the tree's /etc/passwd
    fs.create_symlink(ROOT / "etc/up", "../../../../etc/hostname")
    fs.create_symlink(ROOT / "etc/loop", "loop")
    tree = DirTree(ROOT)
    assert tree.resolve("/sbin/init") == "/usr/lib/systemd/systemd"
    assert tree.is_file("/sbin/init") and tree.entry("/sbin/init", follow=False).kind == "symlink"
    assert tree.resolve("/etc/escape") is None
    assert tree.read("/etc/up") == b"h\n"
    assert tree.resolve("/etc/loop") is None
