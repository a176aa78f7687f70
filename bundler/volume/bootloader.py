"""Make the image boot: GRUB 2 for BIOS (HVM, ``-P mbr|gpt``) and menu.lst for PV-GRUB.

Classic bundle-vol chrooted into a loop-mounted image and ran GRUB Legacy's shell (spec
§8.9); current distributions ship GRUB 2 and we have neither loop devices nor mounts. GRUB 2
for BIOS is three things, none of which needs a block device:

1. files in the filesystem: ``/boot/grub/grub.cfg`` and the modules ``/boot/grub/i386-pc``.
   They are written into the *staging tree* before ``mke2fs -d``, so they are ordinary
   files of the image. The modules are the volume's own (``usr/lib/grub/i386-pc``),
   hard-linked, so core.img and the modules it loads come from the same GRUB build.
2. core.img, built by the *host's* ``grub-mkimage`` from the volume's module directory, with
   the modules to read the partition table and ext4 and a prefix ``(,msdos1)/boot/grub`` /
   ``(,gpt1)/boot/grub``: the empty drive means "the disk the BIOS booted from", so the
   image does not depend on how many disks the instance has. Nothing from the volume is ever
   executed on the host (an earlier version ran the volume's grub-mkimage through the
   volume's own dynamic loader, as root: a planted ``ld-linux`` ran with host privileges);
   the volume's modules are only data to grub-mkimage (docs/security.md).
3. boot.img in sector 0 and core.img in the MBR gap (mbr) or the BIOS boot partition (gpt),
   patched as grub-bios-setup does (``grubimg``), written into the image file after the
   partition table.

For ``-P none`` (paravirtual: an Amazon kernel image, AKI, runs PV-GRUB, which reads the
image's ``/boot/grub/menu.lst``), ``--generate-menu-lst`` writes that file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import UsageError, VolumeError
from ..tools import ToolError, run
from . import grubimg
from .partition import SECTOR, DiskLayout, Scheme, gpt_partitions

log = logging.getLogger("bundler.volume.boot")

Bootloader = Literal["auto", "grub2", "none"]

GRUB_DIR = "usr/lib/grub/i386-pc"
GRUB_IMAGES = ("boot.img", "diskboot.img", "kernel.img", "lzma_decompress.img")
# Modules in core.img: BIOS disk access, the partition table, the filesystem (ext4's is
# ext2; FS_MODULES for the others — grub-mkimage adds what they depend on, e.g. btrfs's
# decompressors).
CORE_MODULES: dict[str, tuple[str, ...]] = {
    "mbr": ("biosdisk", "part_msdos", "ext2"),
    "gpt": ("biosdisk", "part_gpt", "ext2"),
}
FS_MODULES = {"ext4": "ext2", "xfs": "xfs", "btrfs": "btrfs"}


def core_modules(scheme: str, fs_type: str = "ext4") -> tuple[str, ...]:
    """core.img's modules for ``scheme`` and the image's filesystem type. Pure."""
    return tuple(FS_MODULES[fs_type] if m == "ext2" else m for m in CORE_MODULES[scheme])
PART_NAME = {"mbr": "msdos", "gpt": "gpt"}
# Loaded from /boot/grub/i386-pc after core.img found the filesystem: without them no menu.
RUNTIME_MODULES = ("normal", "linux", "serial", "terminal", "search", "search_fs_uuid", "gzio")
MKIMAGE_NAMES = ("grub-mkimage", "grub2-mkimage")
KERNEL_GLOBS = ("vmlinuz-*", "vmlinux-*", "kernel-*")
INITRD_NAMES = ("initrd.img-{v}", "initramfs-{v}.img", "initrd-{v}", "initrd-{v}.img",
                "initramfs-{v}")
INIT_PATHS = ("sbin/init", "lib/systemd/systemd", "usr/lib/systemd/systemd")
SERIAL_CONSOLE = "console=tty0 console=ttyS0,115200n8"
PV_CONSOLE = "console=hvc0"
MAX_SYMLINK_HOPS = 40
# Caps on what is parsed from the tree (os-release, network configs, grub images).
TEXT_CAP = 1024 * 1024
IMAGE_CAP = 4 * 1024 * 1024


@dataclass(frozen=True)
class Kernel:
    version: str
    path: str                  # absolute path inside the image, e.g. /boot/vmlinuz-6.1.0-9-amd64
    initrd: str | None         # likewise, or None


@dataclass(frozen=True)
class BootOptions:
    bootloader: Bootloader = "auto"
    kernel_cmdline: str = ""
    generate_menu_lst: bool = False


@dataclass
class BootPlan:
    """What prepare() decided and built; install() writes the sectors from it."""

    installed: str = "none"            # "grub2" or "none"
    kernel: Kernel | None = None
    boot_img: bytes = b""
    core_img: bytes = b""
    mkimage: str | None = None         # which grub-mkimage made core.img
    menu_lst: bool = False             # generated /boot/grub/menu.lst
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)


def check_options(scheme: Scheme, options: BootOptions) -> None:
    """Inconsistent combinations, before any work is done."""
    if options.bootloader == "grub2" and scheme == "none":
        raise UsageError("--bootloader grub2 needs a partitioned image (-P mbr or -P gpt); "
                         "-P none images boot through PV-GRUB (--generate-menu-lst)")
    if "\n" in options.kernel_cmdline or "'" in options.kernel_cmdline:
        raise UsageError("--kernel-cmdline must be one line without single quotes")


# ------------------------------------------------------------------------------ tree lookups

def tree_resolve(root: Path, rel: str) -> Path | None:
    """``rel`` inside the tree ``root`` with symlinks resolved *inside* the tree (an absolute
    link target means the tree's root, not the host's); None when it does not exist."""
    parts = [p for p in rel.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, name)
        if os.path.islink(candidate):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        if not os.path.lexists(candidate):
            return None
        resolved.append(name)
    return root.joinpath(*resolved)


def read_capped(path: Path, cap: int = TEXT_CAP) -> bytes | None:
    """At most ``cap`` bytes of the regular file ``path`` of the (private) staging tree; None
    when it is not a regular file. Opened without following a symlink or blocking on a FIFO."""
    from . import safefs

    try:
        return safefs.read_capped(safefs.CWD, str(path), cap)
    except OSError:
        return None


def read_text(path: Path, cap: int = TEXT_CAP) -> str | None:
    data = read_capped(path, cap)
    return None if data is None else data.decode("utf-8", "replace")


def _version_key(version: str) -> list[tuple[int, int | str]]:
    # Numeric runs compare as numbers so 6.1.10 > 6.1.9; text sorts below numbers.
    return [(1, int(t)) if t.isdigit() else (0, t) for t in re.findall(r"\d+|[a-z]+", version)]


def find_kernels(tree: Path) -> list[Kernel]:
    """Kernels in the tree's /boot, newest first (rescue kernels last)."""
    boot = tree_resolve(tree, "boot")
    if boot is None or not boot.is_dir():
        return []
    kernels: dict[str, Kernel] = {}
    for pattern in KERNEL_GLOBS:
        for path in boot.glob(pattern):
            if path.is_symlink() or not path.is_file() or path.suffix in (".hmac", ".sig"):
                continue
            version = path.name.split("-", 1)[1]
            if version in kernels:
                continue
            initrd = next((n.format(v=version) for n in INITRD_NAMES
                           if (boot / n.format(v=version)).is_file()), None)
            kernels[version] = Kernel(version, f"/boot/{path.name}",
                                      f"/boot/{initrd}" if initrd else None)
    return sorted(kernels.values(),
                  key=lambda k: ("rescue" not in k.version, _version_key(k.version)),
                  reverse=True)


def os_name(tree: Path) -> str:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = tree_resolve(tree, rel)
        text = read_text(path) if path is not None else None
        if text is not None:
            for line in text.splitlines():
                if line.startswith("PRETTY_NAME="):
                    name = line.split("=", 1)[1].strip().strip("\"'")
                    if name:
                        return name
    return "Linux"


# ------------------------------------------------------------------------------ config text

def kernel_args(*, root: str, console: str, extra: str, fs_type: str = "ext4") -> str:
    return " ".join(a for a in (f"root={root}", f"rootfstype={fs_type}", "ro", console,
                                extra.strip()) if a)


def grub_cfg(kernels: list[Kernel], *, fs_uuid: str, scheme: Scheme, title: str,
             extra_cmdline: str = "", fs_type: str = "ext4") -> str:
    """The image's /boot/grub/grub.cfg: serial + VGA console, newest kernel first. Pure."""
    args = kernel_args(root=f"UUID={fs_uuid}", console=SERIAL_CONSOLE, extra=extra_cmdline,
                       fs_type=fs_type)
    lines = [
        "# Written by ami-bundler bundle-vol. update-grub / grub-mkconfig may replace it.",
        "set default=0",
        "set timeout=1",
        "serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1",
        "terminal_input serial console",
        "terminal_output serial console",
        f"insmod part_{PART_NAME[scheme]}",
        f"insmod {FS_MODULES[fs_type]}",
        # The prefix already names the boot disk's partition; searching by UUID also finds
        # the filesystem when the firmware numbers the disks differently.
        f"search --no-floppy --fs-uuid --set=root {fs_uuid}",
    ]
    for k in kernels:
        name = f"{title}, Linux {k.version}".replace("'", "")
        lines += ["", f"menuentry '{name}' --id 'linux-{k.version}' {{",
                  "\tinsmod gzio", f"\tlinux {k.path} {args}"]
        if k.initrd:
            lines.append(f"\tinitrd {k.initrd}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def menu_lst(kernels: list[Kernel], *, root: str, scheme: Scheme, title: str,
             extra_cmdline: str = "", fs_type: str = "ext4") -> str:
    """/boot/grub/menu.lst for PV-GRUB (AWS "user provided kernels" layout). Pure.

    ``root (hd0)`` for a partitionless image, ``(hd0,0)`` for the first partition; the kernel
    console of a Xen PV guest is hvc0.
    """
    grub_root = "(hd0)" if scheme == "none" else "(hd0,0)"
    args = kernel_args(root=root, console=PV_CONSOLE, extra=extra_cmdline, fs_type=fs_type)
    lines = ["# Written by ami-bundler bundle-vol for PV-GRUB.", "default 0", "timeout 0",
             "hiddenmenu"]
    for k in kernels:
        lines += ["", f"title {title} ({k.version})", f"root {grub_root}",
                  f"kernel {k.path} {args}"]
        if k.initrd:
            lines.append(f"initrd {k.initrd}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ staging writes

def install_grub_files(staging: Path, moddir: Path, cfg: str) -> int:
    """/boot/grub/grub.cfg (previous one kept as grub.cfg.orig) and the modules; returns the
    number of module files."""
    from .staging import private_dir, write_file

    gfd = private_dir(staging, "boot/grub")
    try:
        try:
            st = os.lstat("i386-pc", dir_fd=gfd)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            # The staging tree is private and boot/grub a real directory: a path is safe here.
            shutil.rmtree(staging / "boot/grub/i386-pc")
        elif st is not None:
            os.unlink("i386-pc", dir_fd=gfd)
        os.mkdir("i386-pc", 0o755, dir_fd=gfd)
        tfd = os.open("i386-pc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=gfd)
    finally:
        os.close(gfd)
    count = 0
    try:
        for src in sorted(moddir.iterdir()):
            if src.suffix not in (".mod", ".lst") or src.is_symlink() or not src.is_file():
                continue
            # A staging-internal hard link: same data, no space used in the image.
            os.link(src, src.name, dst_dir_fd=tfd, follow_symlinks=False)
            count += 1
    finally:
        os.close(tfd)
    write_file(staging, "boot/grub/grub.cfg", cfg.encode(), keep_old="grub.cfg.orig")
    return count


def install_menu_lst(staging: Path, text: str) -> bool:
    """Write /boot/grub/menu.lst unless the volume has one (or grub.conf); True if written."""
    from .staging import private_dir, write_file

    gfd = private_dir(staging, "boot/grub")
    try:
        for name in ("menu.lst", "grub.conf"):
            try:
                os.lstat(name, dir_fd=gfd)
            except FileNotFoundError:
                continue
            log.info("keeping the volume's /boot/grub/%s for PV-GRUB", name)
            return False
    finally:
        os.close(gfd)
    write_file(staging, "boot/grub/menu.lst", text.encode())
    return True


# The volume's own boot menus: kept when bundle-vol installs no grub.cfg of its own.
VOLUME_MENUS = ("boot/grub/menu.lst", "boot/grub/grub.conf", "boot/grub/grub.cfg",
                "boot/grub2/grub.cfg")


def retarget_menus(staging: Path, *, fs_uuid: str, label: str | None, fs_type: str) -> list:
    """Make the kernel lines of the volume's own menus (``VOLUME_MENUS``; a symlinked
    menu.lst -> grub.conf once) name the image's filesystem; the old file is kept as
    ``NAME.orig``. Returns the ``cmdline.CmdlineChange``s."""
    from . import cmdline
    from .staging import write_file

    changes: list = []
    done: set[Path] = set()
    for rel in VOLUME_MENUS:
        path = tree_resolve(staging, rel)
        if path is None or path in done:
            continue
        done.add(path)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        text = read_text(path)
        if text is None:
            continue
        target = str(path.relative_to(staging))   # tree_resolve's answer has no links
        new, found = cmdline.retarget(text, path="/" + target, uuid=fs_uuid, label=label,
                                      fs_type=fs_type)
        if found:
            write_file(staging, target, new.encode(), mode=stat.S_IMODE(st.st_mode),
                       keep_old=os.path.basename(target) + ".orig")
            changes += found
    return changes


# ------------------------------------------------------------------------------ core image

def mkimage_commands() -> list[tuple[str, list[str]]]:
    """(description, argv) of the host's grub-mkimage. Never the volume's: running the tree's
    binary (or its loader) would run the tree's code with the host's privileges."""
    for name in MKIMAGE_NAMES:
        host = shutil.which(name)
        if host:
            return [(f"the host's {name}", [host])]
    return []


def build_core_img(tree: Path, moddir: Path, scheme: Scheme, workdir: Path,
                   fs_type: str = "ext4") -> tuple[bytes, str]:
    """core.img for ``scheme`` from the volume's modules; (bytes, which grub-mkimage)."""
    commands = mkimage_commands()
    if not commands:
        raise VolumeError("grub-mkimage not found on this host (the volume's own is never run "
                          "on the host): install grub-common (Debian/Ubuntu) or grub2-tools "
                          "(RPM) on the host")
    prefix = f"(,{PART_NAME[scheme]}1)/boot/grub"
    errors = []
    with tempfile.TemporaryDirectory(prefix=".grub-", dir=workdir) as tmp:
        out = Path(tmp) / "core.img"
        for what, argv in commands:
            try:
                run(argv + ["-O", "i386-pc", "-d", str(moddir), "-o", str(out), "-p", prefix,
                            *core_modules(scheme, fs_type)], timeout=120)
                data = read_capped(out, IMAGE_CAP) or b""
                log.info("core.img (%d bytes) built with %s", len(data), what)
                return data, what
            except ToolError as exc:
                log.info("%s could not build core.img: %s", what, exc)
                errors.append(f"{what}: {exc}")
    raise VolumeError("cannot build GRUB's core.img: " + "; ".join(errors))


def core_area(layout: DiskLayout) -> tuple[int, int]:
    """(first LBA, exclusive limit LBA) where core.img goes for ``layout``."""
    if layout.scheme == "mbr":
        return 1, layout.fs_offset // SECTOR
    if layout.scheme == "gpt":
        dummy = (uuidlib.UUID(int=1), uuidlib.UUID(int=2))
        bios = gpt_partitions(layout, dummy)[1]
        return bios.first_lba, bios.last_lba + 1
    raise ValueError("no core.img area without a partition table")


# ------------------------------------------------------------------------------ prepare/install

def missing_grub_parts(moddir: Path, scheme: Scheme, fs_type: str = "ext4") -> list[str]:
    wanted = list(GRUB_IMAGES) + [f"{m}.mod" for m in core_modules(scheme, fs_type)
                                  + RUNTIME_MODULES]
    return [name for name in wanted if not (moddir / name).is_file()]


def prepare(staging: Path, layout: DiskLayout, options: BootOptions, *, fs_uuid: str,
            label: str | None, workdir: Path, fs_type: str = "ext4") -> BootPlan:
    """Decide what to install, write grub.cfg/modules/menu.lst into the staging tree and
    build core.img. Raises VolumeError when ``--bootloader grub2`` cannot be honoured."""
    from .fstab import root_spec

    plan = BootPlan()
    scheme = layout.scheme
    kernels = find_kernels(staging)
    plan.kernel = kernels[0] if kernels else None
    title = os_name(staging)

    if options.generate_menu_lst:
        if not kernels:
            raise VolumeError("--generate-menu-lst: no kernel in the volume's /boot "
                              "(vmlinuz-*): install one (e.g. linux-image-amd64)")
        root = root_spec(label, fs_uuid) if scheme == "none" else f"UUID={fs_uuid}"
        plan.menu_lst = install_menu_lst(staging, menu_lst(
            kernels, root=root, scheme=scheme, title=title,
            extra_cmdline=options.kernel_cmdline, fs_type=fs_type))

    if scheme == "none" or options.bootloader == "none":
        if scheme != "none":
            plan.warn(f"no bootloader installed (--bootloader none): the -P {scheme} image "
                      "will not boot by itself")
        return plan

    strict = options.bootloader == "grub2"
    moddir = tree_resolve(staging, GRUB_DIR)

    def cannot(reason: str) -> BootPlan:
        if strict:
            raise VolumeError(f"cannot install GRUB 2: {reason}")
        plan.warn(f"no bootloader installed, the -P {scheme} image will not boot by itself: "
                  f"{reason}")
        return plan

    if moddir is None or not moddir.is_dir():
        return cannot(f"the volume has no GRUB 2 for BIOS (/{GRUB_DIR}): install grub-pc-bin "
                      "(Debian/Ubuntu) or grub2-pc-modules (RPM) in it")
    missing = missing_grub_parts(moddir, scheme, fs_type)
    if missing:
        fsmod = f"{FS_MODULES[fs_type]}.mod"
        if fsmod in missing:
            return cannot(f"/{GRUB_DIR} has no {fsmod}, so GRUB could not read the image's "
                          f"{fs_type} filesystem")
        return cannot(f"/{GRUB_DIR} lacks {', '.join(missing)}")
    if not kernels:
        return cannot("no kernel in the volume's /boot (vmlinuz-*): install one "
                      "(e.g. linux-image-amd64)")

    core, plan.mkimage = build_core_img(staging, moddir, scheme, workdir, fs_type)
    first, limit = core_area(layout)
    needed = grubimg.sectors_for(len(core))
    if needed > limit - first:
        where = "MBR gap" if scheme == "mbr" else "BIOS boot partition"
        raise VolumeError(f"GRUB's core.img needs {needed} sectors but the {where} has only "
                          f"{limit - first}")
    plan.core_img = core
    plan.boot_img = read_capped(moddir / "boot.img", SECTOR + 1) or b""
    n = install_grub_files(staging, moddir, grub_cfg(
        kernels, fs_uuid=fs_uuid, scheme=scheme, title=title,
        extra_cmdline=options.kernel_cmdline, fs_type=fs_type))
    plan.installed = "grub2"
    log.info("GRUB 2 prepared: %d modules, kernel %s", n, plan.kernel.version)
    return plan


# ext4 incompatible features GRUB's ext2 driver refuses ("filesystem has unsupported
# incompatible features"): mke2fs only sets them when the host's mke2fs.conf asks for them.
GRUB_UNSUPPORTED_INCOMPAT = {0x0001: "compression", 0x0400: "ea_inode", 0x1000: "dirdata",
                             0x8000: "inline_data", 0x20000: "casefold"}
EXT4_MAGIC = 0xEF53


def unsupported_features(superblock: bytes) -> list[str]:
    """Names of the features in an ext2/3/4 superblock (1024 bytes) GRUB cannot read. Pure."""
    magic = int.from_bytes(superblock[0x38:0x3A], "little")
    if magic != EXT4_MAGIC:
        raise VolumeError("the image's filesystem is not ext2/3/4: GRUB 2 cannot be installed")
    incompat = int.from_bytes(superblock[0x60:0x64], "little")
    return [name for bit, name in GRUB_UNSUPPORTED_INCOMPAT.items() if incompat & bit]


def check_filesystem(image: Path, fs_offset: int, plan: BootPlan,
                     fs_type: str = "ext4") -> None:
    """Refuse an ext4 image whose features GRUB could not read (call after mke2fs). XFS and
    btrfs are made with their tools' default features, which GRUB 2.06+ reads."""
    if plan.installed != "grub2" or fs_type != "ext4":
        return
    with open(image, "rb") as fh:
        fh.seek(fs_offset + 1024)
        bad = unsupported_features(fh.read(1024))
    if bad:
        raise VolumeError(f"GRUB 2 cannot read the image's ext4 filesystem: feature(s) "
                          f"{', '.join(bad)} (remove them from the ext4 features in "
                          "/etc/mke2fs.conf, or use --bootloader none)")


def install(image: Path, layout: DiskLayout, plan: BootPlan) -> None:
    """Write boot.img into sector 0 (table and disk signature kept) and core.img into its area.
    Call after partition.write_table."""
    if plan.installed != "grub2":
        return
    first, limit = core_area(layout)
    fd = os.open(image, os.O_RDWR)
    try:
        mbr = os.pread(fd, SECTOR, 0)
        try:
            sector0, core = grubimg.boot_sectors(plan.boot_img, plan.core_img, mbr, first, limit)
        except grubimg.GrubImageError as exc:
            raise VolumeError(f"cannot install GRUB 2: {exc}") from None
        os.pwrite(fd, core, first * SECTOR)
        os.pwrite(fd, sector0, 0)
    finally:
        os.close(fd)
    log.info("GRUB 2 boot code written: core.img at sector %d (%d sectors)", first,
             len(plan.core_img) // SECTOR + 1)
