"""Will it boot on the instance types that take instance-store roots?

Those are only C1, C3, D2, I2, M1, M2, M3, R3 and X1: Xen, x86_64, legacy BIOS (HVM through
GRUB 2 in the MBR gap or a BIOS boot partition) or paravirtual (PV-GRUB reading
``/boot/grub/menu.lst``). Every rule is pure logic over a ``Tree`` and its ``VolumeFacts``;
what a directory cannot tell (the disk, the filesystem's UUID) is taken from the facts the
caller knows (bundle-vol passes the image's) or left unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

from ..source import MAX_IMAGE_SIZE
from ..volume.bootloader import INIT_PATHS, INITRD_NAMES, KERNEL_GLOBS
from ..volume.fstab import check_root_entry
from . import initramfs
from .findings import Finding
from .tree import Tree

INSTANCE_TYPES = "C1, C3, D2, I2, M1, M2, M3, R3, X1"
ELF_MACHINES = {0x3E: "x86_64", 0x03: "i386", 0xB7: "arm64", 0x28: "arm", 0xF3: "riscv64",
                0x15: "ppc64", 0x16: "s390x"}
GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
MENU_LSTS = ("/boot/grub/menu.lst", "/boot/grub/grub.conf")
# (driver, CONFIG_ symbol, module path under /lib/modules/VERSION/kernel, needed in initramfs)
XEN_DRIVERS = (
    ("xen-blkfront", "CONFIG_XEN_BLKDEV_FRONTEND", "drivers/block/xen-blkfront.ko", True),
    ("xen-netfront", "CONFIG_XEN_NETDEV_FRONTEND", "drivers/net/xen-netfront.ko", False),
)
MODULE_SUFFIXES = ("", ".xz", ".zst", ".gz")


@dataclass(frozen=True)
class Kernel:
    version: str
    path: str
    initrd: str | None


@dataclass(frozen=True)
class BootEntry:
    """A bootloader menu entry: which config, which kernel, its command line."""

    config: str
    loader: str           # "grub2" | "pv-grub" | "bls"
    kernel: str
    cmdline: str

    def args(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for word in self.cmdline.split():
            key, _, value = word.partition("=")
            out[key] = value        # the kernel takes the last root=, init=, ...
        return out

    @property
    def consoles(self) -> list[str]:
        return [w.split("=", 1)[1].split(",", 1)[0] for w in self.cmdline.split()
                if w.startswith("console=")]


@dataclass
class BootContext:
    tree: Tree
    findings: list[Finding] = field(default_factory=list)

    @property
    def facts(self):
        return self.tree.facts

    @cached_property
    def kernels(self) -> list[Kernel]:
        found: dict[str, Kernel] = {}
        for pattern in KERNEL_GLOBS:
            for e in self.tree.glob("/boot", pattern):
                target = self.tree.entry(e.path)
                if target is None or target.kind != "file" or e.name.endswith((".hmac", ".sig")):
                    continue
                version = e.name.split("-", 1)[1]
                initrd = next((f"/boot/{n.format(v=version)}" for n in INITRD_NAMES
                               if self.tree.is_file(f"/boot/{n.format(v=version)}")), None)
                found.setdefault(version, Kernel(version, e.path, initrd))
        return sorted(found.values(), key=lambda k: ("rescue" not in k.version,
                                                     _version_key(k.version)), reverse=True)

    @cached_property
    def boot_entries(self) -> list[BootEntry]:
        entries: list[BootEntry] = []
        for cfg in GRUB_CFGS:
            text = self.tree.read_text(cfg)
            if text:
                entries += _grub_entries(cfg, text)
        for e in self.tree.glob("/boot/loader/entries", "*.conf"):
            text = self.tree.read_text(e.path) or ""
            kernel = re.search(r"^\s*linux\s+(\S+)", text, re.M)
            options = re.search(r"^\s*options\s+(.*)$", text, re.M)
            if kernel:
                entries.append(BootEntry(e.path, "bls", kernel.group(1),
                                         options.group(1).strip() if options else ""))
        for cfg in MENU_LSTS:
            text = self.tree.read_text(cfg)
            if text:
                entries += _menu_lst_entries(cfg, text)
        return entries

    def default_entry(self, loader: str | None = None) -> BootEntry | None:
        for e in self.boot_entries:
            if loader is None or e.loader == loader or (loader == "grub2" and e.loader == "bls"):
                return e
        return None

    @cached_property
    def default_kernel(self) -> Kernel | None:
        """The kernel the bootloader boots first, else the newest."""
        entry = self.default_entry()
        if entry is not None:
            name = entry.kernel.rsplit("/", 1)[-1]
            for k in self.kernels:
                if k.path.rsplit("/", 1)[-1] == name:
                    return k
        return self.kernels[0] if self.kernels else None

    @cached_property
    def fstab(self) -> str | None:
        return self.tree.read_text("/etc/fstab")

    @cached_property
    def fstab_root(self) -> tuple[str, str] | None:
        """(spec, fstype) of the fstab line that mounts /."""
        for line in (self.fstab or "").splitlines():
            fields = line.split()
            if len(fields) >= 3 and not fields[0].startswith("#") and fields[1] == "/":
                return fields[0], fields[2]
        return None

    def add(self, severity, rule_id: str, path: str | None, message: str, fix: str) -> None:
        self.findings.append(Finding(severity, rule_id, path, message, fix))


def _version_key(version: str) -> list[tuple[int, int | str]]:
    return [(1, int(t)) if t.isdigit() else (0, t) for t in re.findall(r"\d+|[a-z]+", version)]


def _grub_entries(cfg: str, text: str) -> list[BootEntry]:
    out = []
    for m in re.finditer(r"^\s*(linux|linux16|linuxefi)\s+(\S+)(.*)$", text, re.M):
        out.append(BootEntry(cfg, "grub2", m.group(2), m.group(3).strip()))
    return out


def _menu_lst_entries(cfg: str, text: str) -> list[BootEntry]:
    out = []
    for m in re.finditer(r"^\s*kernel\s+(?:\([^)]*\))?(\S+)(.*)$", text, re.M):
        out.append(BootEntry(cfg, "pv-grub", m.group(1), m.group(2).strip()))
    return out


# ------------------------------------------------------------------------------ rules

def rule_arch(ctx: BootContext) -> None:
    arch = None
    where = None
    for rel in ("/sbin/init", *(f"/{p}" for p in INIT_PATHS), "/bin/sh", "/usr/bin/env"):
        head = ctx.tree.read(rel, 20)
        if head and head[:4] == b"\x7fELF" and len(head) >= 20:
            machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
            arch, where = ELF_MACHINES.get(machine, f"ELF machine {machine:#x}"), rel
            break
    declared = ctx.facts.manifest_arch
    if arch is None:
        return
    if arch != "x86_64":
        ctx.add("error", "boot.arch", where,
                f"the image's programs are {arch}: instance-store AMIs launch only on "
                f"{INSTANCE_TYPES} (Xen, x86_64); no instance type takes an {arch} "
                "instance-store AMI",
                "build an x86_64 image, or make an EBS-backed AMI for this architecture")
    elif declared and declared != "x86_64":
        ctx.add("error", "boot.arch", None,
                f"the manifest says architecture {declared} but the image is x86_64",
                "bundle it again with -r x86_64")


def rule_size(ctx: BootContext) -> None:
    size = ctx.facts.disk_bytes
    what = "image"
    if size is None:
        size = sum(e.size for e in ctx.tree.entries() if e.kind == "file")
        what = "files in the tree"
    if size > MAX_IMAGE_SIZE:
        ctx.add("error", "boot.size", None,
                f"the {what} take {size / 1024 ** 3:.1f} GiB, over the 10 GiB limit of "
                "instance-store root devices",
                "remove or exclude files (bundle-vol -e) or use an EBS-backed AMI")


def rule_kernel(ctx: BootContext) -> None:
    if not ctx.kernels:
        ctx.add("error", "boot.kernel", "/boot",
                "no kernel in /boot (vmlinuz-*): the image will not boot",
                "install a kernel package in the image (e.g. linux-image-amd64)")
        return
    k = ctx.default_kernel
    if k is not None and k.initrd is None:
        ctx.add("warning", "boot.initramfs", k.path,
                f"kernel {k.version} has no initramfs in /boot: the Xen disk driver and ext4 "
                "must be built into the kernel to find the root filesystem",
                "install initramfs-tools or dracut and regenerate the initramfs")


def rule_init(ctx: BootContext) -> None:
    entry = ctx.default_entry()
    custom = entry.args().get("init") if entry else None
    paths = ([custom] if custom else []) + [f"/{p}" for p in INIT_PATHS]
    if not any(ctx.tree.is_file(p) for p in paths):
        ctx.add("error", "boot.init", custom or "/sbin/init",
                "the image has no init (/sbin/init or systemd): the kernel will panic at boot",
                "install an init system (e.g. systemd-sysv)")


def rule_bootloader(ctx: BootContext) -> None:
    facts = ctx.facts
    grub2 = ctx.default_entry("grub2")
    pv = ctx.default_entry("pv-grub")
    bios_grub = facts.boot_code == "grub2" and bool(facts.grub_core)
    if facts.esp and not bios_grub and pv is None:
        ctx.add("error", "boot.uefi-only", None,
                "the disk has an EFI system partition but no BIOS boot path: instance-store "
                "instance types boot with legacy BIOS (or PV-GRUB), never UEFI",
                "install GRUB 2 for BIOS (grub-pc: a BIOS boot partition on GPT) or build the "
                "image with bundle-vol -P gpt")
        return
    scheme = facts.scheme
    if scheme is None:      # a directory: what bundle-vol will need
        if grub2 is None and pv is None and not ctx.tree.is_dir("/usr/lib/grub/i386-pc"):
            ctx.add("warning", "boot.bootloader", "/boot/grub",
                    "no bootloader configuration (grub.cfg or menu.lst) and no GRUB 2 for BIOS "
                    "(/usr/lib/grub/i386-pc) in the tree",
                    "install grub-pc-bin and bundle with -P mbr|gpt, or bundle with -P none "
                    "--generate-menu-lst for PV-GRUB")
        return
    if scheme == "none":
        if pv is None:
            ctx.add("error", "boot.bootloader", MENU_LSTS[0],
                    "a partitionless image boots only through PV-GRUB, which reads "
                    "/boot/grub/menu.lst, and the image has none",
                    "bundle-vol -P none --generate-menu-lst writes it (or bundle with -P mbr)")
        return
    if pv is not None and scheme == "mbr":
        return      # PV-GRUB reads (hd0,0)
    if facts.boot_code != "grub2" or not facts.grub_core:
        where = "the MBR gap" if scheme == "mbr" else "a BIOS boot partition"
        missing = ("boot code in the MBR" if facts.boot_code != "grub2" else f"core.img in {where}")
        if scheme == "gpt" and not facts.bios_boot_partition:
            missing = "a BIOS boot partition (type EF02) for GRUB 2's core.img"
        ctx.add("error", "boot.bootloader", None,
                f"the {scheme.upper()} disk has no GRUB 2 for BIOS: {missing} is missing",
                "bundle-vol -P mbr|gpt installs GRUB 2 from the tree's grub-pc-bin "
                "(or run grub-install on the disk)")
    elif grub2 is None:
        ctx.add("error", "boot.bootloader", GRUB_CFGS[0],
                "GRUB 2 is in the MBR but the filesystem has no /boot/grub/grub.cfg: it stops "
                "at a grub> prompt", "run update-grub in the image, or bundle-vol -P mbr|gpt")


def _identity_problem(spec: str, facts, what: str) -> str | None:
    """Why ``spec`` (UUID=…, LABEL=…) does not name the image's filesystem, else None."""
    key, _, value = spec.partition("=")
    key, value = key.upper(), value.strip("\"'")
    if key == "UUID" and facts.uuid and value.lower() != facts.uuid.lower():
        return f"{what} names UUID={value} but the filesystem is UUID={facts.uuid}"
    if key == "LABEL" and facts.uuid is not None and value != (facts.label or ""):
        have = f"LABEL={facts.label}" if facts.label else "unlabelled"
        return f"{what} names LABEL={value} but the filesystem is {have}"
    if key in ("PARTUUID", "PARTLABEL") and facts.scheme == "none":
        return f"{what} names {spec} but the image has no partition table"
    return None


def rule_fstab(ctx: BootContext) -> None:
    facts = ctx.facts
    if ctx.fstab is None:
        ctx.add("warning", "boot.fstab", "/etc/fstab",
                "no /etc/fstab: the root filesystem stays read-only after boot",
                "bundle-vol --generate-fstab writes one naming the image's filesystem")
        return
    root = ctx.fstab_root
    if root is None:
        ctx.add("warning", "boot.fstab", "/etc/fstab", "/etc/fstab has no entry for /",
                "add one naming the image's filesystem (bundle-vol --generate-fstab)")
        return
    spec, fstype = root
    if facts.uuid is not None:
        problem = check_root_entry(ctx.fstab, label=facts.label, uuid=facts.uuid)
        if problem:
            ctx.add("error", "boot.fstab-root", "/etc/fstab", problem,
                    "name the filesystem's UUID or LABEL in /etc/fstab (bundle-vol "
                    "--generate-fstab)")
    elif spec.upper().startswith("UUID="):
        ctx.add("warning", "boot.fstab-root", "/etc/fstab",
                f"/etc/fstab mounts / from {spec}: a filesystem bundle-vol makes from this "
                "directory gets a new UUID unless it is given that one",
                f"bundle-vol --uuid {spec.split('=', 1)[1]} or --generate-fstab")
    if spec.startswith("/dev/sd") or spec.startswith("/dev/hd"):
        ctx.add("warning", "boot.fstab-device", "/etc/fstab",
                f"/etc/fstab mounts / from {spec}: Xen names the disk /dev/xvda*, so device "
                "names are not stable", "name the root by LABEL= or UUID=")
    if facts.fs_type and fstype not in (facts.fs_type, "auto") and not (
            fstype == "ext4" and facts.fs_type in ("ext2", "ext3")):
        ctx.add("error", "boot.fstab-type", "/etc/fstab",
                f"/etc/fstab mounts / as {fstype} but the filesystem is {facts.fs_type}",
                f"use {facts.fs_type} (or auto) as the type of / in /etc/fstab")


def rule_cmdline(ctx: BootContext) -> None:
    entry = ctx.default_entry()
    if entry is None:
        return
    args = entry.args()
    root = args.get("root")
    if not root:
        ctx.add("error", "boot.cmdline-root", entry.config,
                f"the default entry of {entry.config} has no root= on the kernel command line",
                "add root=UUID=… or root=LABEL=… naming the image's filesystem")
    else:
        problem = _identity_problem(root, ctx.facts, f"the kernel command line ({entry.config})")
        if problem:
            ctx.add("error", "boot.cmdline-root", entry.config,
                    f"{problem}: the kernel cannot find its root filesystem",
                    "name the image's filesystem in root= (bundle-vol rewrites grub.cfg for "
                    "-P mbr|gpt; --generate-menu-lst for PV-GRUB)")
        elif root.startswith(("/dev/sd", "/dev/hd")):
            ctx.add("warning", "boot.cmdline-root", entry.config,
                    f"root={root}: under Xen the disk is /dev/xvda*, so the kernel may not "
                    "find it", "use root=UUID=… or root=LABEL=…")
        fstab_root = ctx.fstab_root
        if (fstab_root and "=" in root and "=" in fstab_root[0] and ctx.facts.uuid is None
                and fstab_root[0].split("=", 1)[0].upper() == root.split("=", 1)[0].upper()
                and fstab_root[0].split("=", 1)[1].strip("\"'") != root.split("=", 1)[1]):
            ctx.add("error", "boot.cmdline-root", entry.config,
                    f"the kernel command line mounts root={root} but /etc/fstab says "
                    f"{fstab_root[0]}", "make them name the same filesystem")
    consoles = entry.consoles
    pv = entry.loader == "pv-grub" and ctx.facts.scheme in (None, "none", "mbr")
    wanted = "hvc0" if pv else "ttyS0"
    if wanted not in consoles:
        ctx.add("warning", "boot.console", entry.config,
                f"no console={wanted} on the kernel command line: the EC2 console output "
                "(the only boot log you get) will be empty",
                f"add console={wanted}" + ("" if pv else ",115200n8")
                + " to the kernel command line")


def _config_value(config: str | None, symbol: str) -> str | None:
    if config is None:
        return None
    m = re.search(rf"^{symbol}=(\w)\s*$", config, re.M)
    return m.group(1) if m else ("n" if re.search(rf"^# {symbol} is not set", config, re.M)
                                 else None)


def rule_xen_drivers(ctx: BootContext) -> None:
    kernel = ctx.default_kernel
    if kernel is None:
        return
    v = kernel.version
    config = ctx.tree.read_text(f"/boot/config-{v}")
    moddir = f"/lib/modules/{v}"
    builtin = ctx.tree.read_text(f"{moddir}/modules.builtin") or ""
    initrd_names: set[str] | None = None
    for driver, symbol, module, early in XEN_DRIVERS:
        value = _config_value(config, symbol)
        if value == "y" or re.search(rf"^kernel/{re.escape(module)}$", builtin, re.M):
            continue
        module_file = next((f"{moddir}/kernel/{module}{s}" for s in MODULE_SUFFIXES
                            if ctx.tree.is_file(f"{moddir}/kernel/{module}{s}")), None)
        if module_file is None:
            if value is None and config is None and not builtin:
                ctx.add("warning", "boot.xen-drivers", kernel.path,
                        f"cannot tell whether kernel {v} has the Xen {driver} driver (no "
                        f"/boot/config-{v}, no {moddir}/modules.builtin)",
                        "use a distribution kernel, or make sure it has "
                        f"{symbol}=y")
                continue
            ctx.add("error", "boot.xen-drivers", f"/boot/config-{v}" if config else kernel.path,
                    f"kernel {v} has no Xen {driver} driver ({symbol} "
                    f"{'is not set' if value in (None, 'n') else '=m but the module is missing'}"
                    f"): on Xen the instance {'has no disk' if early else 'has no network'}",
                    f"use a kernel with {symbol}=y or =m (e.g. Debian's linux-image-amd64)")
            continue
        if early and kernel.initrd is not None and module_file is not None:
            if initrd_names is None:
                data = ctx.tree.read(kernel.initrd, initramfs.MAX_BYTES)
                initrd_names = initramfs.member_names(data) if data else set()
            if initrd_names is not None and initrd_names and not any(
                    n.endswith(f"/{driver}.ko") or f"/{driver}.ko." in n for n in initrd_names):
                ctx.add("error", "boot.xen-drivers", kernel.initrd,
                        f"{driver} is a module of kernel {v} but not in its initramfs: the "
                        "kernel cannot read the root disk on Xen",
                        "add xen-blkfront to /etc/initramfs-tools/modules (or dracut "
                        "--add-drivers) and regenerate the initramfs")


_DHCP_VALUE = re.compile(r"^\s*DHCP\s*=\s*(yes|true|ipv4|both|1)\s*$", re.I | re.M)


def network_config(tree: Tree) -> str | None:
    """What would configure the first interface by DHCP at first boot, or None."""
    for e in tree.glob("/etc/systemd/network", "*.network"):
        if _DHCP_VALUE.search(tree.read_text(e.path) or ""):
            return f"systemd-networkd ({e.name})"
    for path in ["/etc/network/interfaces"] + [
            e.path for e in tree.listdir("/etc/network/interfaces.d")]:
        if re.search(r"^\s*iface\s+(?!lo\b)\S+\s+inet6?\s+(dhcp|auto)",
                     tree.read_text(path) or "", re.M):
            return "ifupdown (/etc/network/interfaces)"
    for e in tree.glob("/etc/netplan", "*.y*ml"):
        if re.search(r"dhcp4\s*:\s*(true|yes|on)", tree.read_text(e.path) or "", re.I):
            return f"netplan ({e.name})"
    for d in ("/etc/sysconfig/network-scripts", "/etc/sysconfig/network"):
        for e in tree.glob(d, "ifcfg-*"):
            if e.name != "ifcfg-lo" and re.search(r"BOOTPROTO\s*=\s*['\"]?dhcp",
                                                  tree.read_text(e.path) or "", re.I):
                return f"ifcfg ({e.name})"
    # Programs that configure DHCP on every Ethernet interface without a file of their own.
    for path, what in (("/usr/bin/cloud-init", "cloud-init"),
                       ("/usr/sbin/NetworkManager", "NetworkManager"),
                       ("/usr/sbin/dhcpcd", "dhcpcd"), ("/sbin/dhcpcd", "dhcpcd"),
                       ("/usr/sbin/wicked", "wicked")):
        if tree.is_file(path):
            return what
    return None


def rule_network(ctx: BootContext) -> None:
    if network_config(ctx.tree) is None:
        ctx.add("warning", "boot.network", "/etc/network",
                "no DHCP network configuration (systemd-networkd .network, "
                "/etc/network/interfaces, netplan, ifcfg, NetworkManager, cloud-init): the "
                "instance may be unreachable",
                "configure DHCP on the first interface (e.g. a systemd-networkd .network file "
                "with DHCP=yes) or install cloud-init")


RULES: tuple[Callable[[BootContext], None], ...] = (
    rule_arch, rule_size, rule_kernel, rule_init, rule_bootloader, rule_fstab, rule_cmdline,
    rule_xen_drivers, rule_network)


def boot_findings(tree: Tree, rules: Iterable[Callable[[BootContext], None]] = RULES
                  ) -> list[Finding]:
    ctx = BootContext(tree)
    for rule in rules:
        rule(ctx)
    return ctx.findings

