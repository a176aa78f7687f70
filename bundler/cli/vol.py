"""bundle-vol (ec2-bundle-vol): a root filesystem directory or the live ``/`` → image → bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MetadataError, UsageError
from ..volume.safefs import display
from .checking import add_no_check_option
from .common import Printer, count, ensure_directory, remove_if_empty
from .inputs import add_bundle_options, add_cert_region_option, bundle_human

if TYPE_CHECKING:  # the volume package loads only when bundle-vol runs
    from ..bundlerun import BundleOptions
    from ..volume.bundle_vol import VolumeConfig
    from ..volume.selection import Selection


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bundle-vol", help="build an image from a root filesystem and bundle it",
        description="Build an ext4, XFS or btrfs image from a root filesystem directory (or the "
                    "running system, -v /), leaving out virtual filesystems, other mounts and "
                    "secrets, and bundle it (ec2-bundle-vol). ext4 and btrfs need no loop "
                    "devices or mounts; XFS needs root and a loop device.")
    g = p.add_argument_group("volume")
    g.add_argument("-v", "--volume", type=Path, default=Path("/"),
                   help="root filesystem directory to image (default: / , the running system; "
                        "needs root)")
    g.add_argument("-d", "--destination", type=Path, default=Path("/tmp"),
                   help="output directory for parts, manifest and a kept image, created when "
                        "missing (default: %(default)s)")
    # nargs="+" and commas: Packer's `-e {{.PrivatePath}}/*` arrives glob-expanded or not.
    g.add_argument("-e", "--exclude", action="extend", nargs="+", default=[], metavar="PATH",
                   help="paths/globs (relative to the volume, or absolute under it) to leave out; "
                        "comma-separated lists and repeats allowed")
    g.add_argument("-i", "--include", action="extend", nargs="+", default=[], metavar="PATH",
                   help="paths/globs to keep despite -e or the secret filter (may reach into an "
                        "excluded directory)")
    g.add_argument("-a", "--all", action="store_true",
                   help="also copy every mount under the volume: bind mounts, tmpfs, NFS, FUSE...")
    g.add_argument("-x", "--one-file-system", action="store_true",
                   help="copy only the volume's own filesystem, no mount under it (the default)")
    g.add_argument("--local-mounts", action="store_true",
                   help="also copy local disk filesystems mounted under the volume (bind mounts "
                        "only with --all); by default only the volume's own filesystem is read")
    g.add_argument("--no-filter", action="store_true",
                   help="do not leave out private keys, histories and other secrets")
    g.add_argument("--list-excluded", action="store_true", help="print every left-out path and why")
    g.add_argument("-s", "--size", type=count(1, 10 << 20, "size in MiB"), metavar="MiB",
                   help="image size in MiB (default: used space ×1.2 + 256 MiB; max 10240)")
    g.add_argument("-P", "--partition", choices=["none", "mbr", "gpt"], default="none",
                   help="partition table; the filesystem starts at 1 MiB for mbr/gpt, which get "
                        "the volume's GRUB 2 (default: none — a plain filesystem for PV-GRUB)")
    g.add_argument("--bootloader", choices=["auto", "grub2", "none"], default="auto",
                   help="for -P mbr/gpt: install the volume's GRUB 2 for BIOS (auto: when the "
                        "volume has GRUB 2 and a kernel, else warn that the image will not boot; "
                        "grub2: fail instead) (default: %(default)s)")
    g.add_argument("--kernel-cmdline", default="", metavar="ARGS",
                   help="extra kernel arguments for the generated grub.cfg / menu.lst")
    g.add_argument("--generate-menu-lst", action="store_true",
                   help="write /boot/grub/menu.lst for PV-GRUB (AKI kernels) from the newest "
                        "kernel when the volume has none")
    g.add_argument("--fstab", type=Path, help="file to install as the image's /etc/fstab")
    g.add_argument("--generate-fstab", action="store_true",
                   help="install a generated /etc/fstab (root by LABEL/UUID)")
    g.add_argument("--fs-type", choices=["auto", "ext4", "xfs", "btrfs"], default="auto",
                   help="the image's filesystem (default: auto — the source root's type when the "
                        "volume is a mounted filesystem or /, ext4 for a plain directory); fstab "
                        "and bootloader follow it")
    g.add_argument("--label", help="filesystem label (default: the source's, else "
                                   "cloudimg-rootfs; rootfs for XFS)")
    g.add_argument("--uuid", help="filesystem UUID (default: the source's, else a new one)")
    g.add_argument("--image-dir", type=Path,
                   help="where the temporary image and staging tree go, in a private 0700 "
                        "directory (default: the destination; on a filesystem with reflinks "
                        "the staging copy takes no space)")
    g.add_argument("--keep-image", action="store_true",
                   help="keep the (unencrypted, mode 0600) image as DEST/PREFIX")
    g.add_argument("--drop-oversize-xattrs", action="store_true",
                   help="leave out extended attributes too large for an ext4 inode and one "
                        "block, reporting each file (default: keep them with ext4 ea_inode when "
                        "no GRUB 2 is installed, else fail)")
    g.add_argument("--clone-only", action="store_true",
                   help="only build the image DEST/PREFIX; no keys needed")
    g.add_argument("--inherit", action=argparse.BooleanOptionalAction, default=None,
                   help="take kernel, ramdisk, product codes, block device mapping and ancestry "
                        "from instance metadata (default: when on EC2)")
    add_cert_region_option(g)
    add_no_check_option(g, what="the image (boot rules; with --clone-only they only warn)")
    g.add_argument("-S", "--script", help=argparse.SUPPRESS)
    g.add_argument("--grub-config", help=argparse.SUPPRESS)
    add_bundle_options(p, image_flag=False)
    p.set_defaults(func=run_bundle_vol)


def config_from_args(args: argparse.Namespace) -> VolumeConfig:
    from ..volume.bundle_vol import VolumeConfig

    if args.script:
        raise UsageError("-S/--script is not supported: there is no mounted image to run it on; "
                         "customise the volume before bundling")
    if args.grub_config:
        raise UsageError("--grub-config (a GRUB Legacy menu) is not supported: -P mbr/gpt get a "
                         "generated GRUB 2 grub.cfg (add arguments with --kernel-cmdline), -P none "
                         "a PV-GRUB menu.lst with --generate-menu-lst")
    if args.fstab is not None and args.generate_fstab:
        raise UsageError("--fstab and --generate-fstab are mutually exclusive")
    if args.all and args.one_file_system:
        raise UsageError("-a/--all and -x/--one-file-system are mutually exclusive")
    if args.local_mounts and (args.all or args.one_file_system):
        raise UsageError("--local-mounts goes with neither -a/--all nor -x/--one-file-system")
    return VolumeConfig(
        volume=args.volume,
        destination=args.destination,
        prefix=args.prefix or "image",
        image_dir=args.image_dir,
        size_mib=args.size,
        partition=args.partition,
        excludes=list(args.exclude),
        includes=list(args.include),
        secret_filter=not args.no_filter,
        mount_policy=mount_policy(args),  # type: ignore[arg-type]  # one of MountPolicy's values
        fstab=args.fstab,
        generate_fstab=args.generate_fstab,
        # Classic: the legacy table only when -r i386 was given explicitly.
        legacy_fstab=args.arch == "i386",
        label=args.label,
        uuid=args.uuid,
        size_checks=not args.no_size_checks,
        keep_image=args.keep_image,
        clone_only=args.clone_only,
        bootloader=args.bootloader,
        kernel_cmdline=args.kernel_cmdline,
        generate_menu_lst=args.generate_menu_lst,
        drop_oversize_xattrs=args.drop_oversize_xattrs,
        fs_type=args.fs_type,
    )


def inherit_options(args: argparse.Namespace, options: BundleOptions,
                    printer: Printer) -> BundleOptions:
    """Merge instance metadata into the bundle options per spec §8.11 (--inherit/--no-inherit)."""
    from ..volume.imds import fetch_metadata, merge_inherited

    if args.inherit is False:
        return options
    try:
        md = fetch_metadata()
    except MetadataError as exc:
        if args.inherit:
            raise
        printer.note(f"not inheriting instance metadata ({exc})")
        return options
    for what in md.unreadable:
        printer.note(f"Unable to read instance meta-data for {what}")
    return merge_inherited(options, md, kernel_given=bool(args.kernel),
                           ramdisk_given=bool(args.ramdisk),
                           productcodes_given=bool(args.productcodes),
                           bdm_given=bool(args.block_device_mapping))


def run_bundle_vol(args: argparse.Namespace, printer: Printer) -> int:
    created = ensure_directory(args.destination, "-d/--destination")
    try:
        return _run_bundle_vol(args, printer)
    except BaseException:
        if created:
            remove_if_empty(args.destination)
        raise


def _run_bundle_vol(args: argparse.Namespace, printer: Printer) -> int:
    from ..volume.bundle_vol import bundle_volume, check_preconditions

    config = config_from_args(args)
    check_preconditions(config)
    keys = options = None
    if not config.clone_only:
        from .inputs import bundle_options_from_args, resolve_bundle_keys

        keys = resolve_bundle_keys(args)
        options = bundle_options_from_args(args, config.prefix)
        options = inherit_options(args, options, printer)

    listed: list[dict[str, str]] = []

    def on_selection(selection: Selection) -> None:
        printer.note(f"Selected {len(selection.entries)} entries from "
                     f"{display(str(selection.volume))}; left out {len(selection.excluded)}")
        for warning in selection.warnings:
            printer.warn(warning)
        if args.list_excluded:
            for ex in selection.excluded:
                # display(): printable and lossless for names that are not UTF-8.
                listed.append({"path": ex.display(), "reason": ex.reason})
                if not printer.json_mode:
                    print(f"excluded {ex.display()}: {ex.reason}", file=printer.stdout)

    checked: list[Any] = []

    def on_image(image: Path) -> None:
        from .checking import check_image_file

        checked.append(check_image_file(image, printer, what="bundle-vol",
                                        no_check=args.no_check, stop=not config.clone_only,
                                        built_here=True))

    result = bundle_volume(config, keys=keys, options=options, progress=printer.progress(),
                           on_selection=on_selection, on_image=on_image)
    data = result.summary()
    if checked and checked[0] is not None:
        data["check"] = checked[0].summary()
    if keys is not None and keys.ec2_certificate is not None:  # where every bundling result has it
        data["ec2_certificate"] = keys.ec2_certificate.as_json()
    if args.list_excluded:
        data["excluded_paths"] = listed
    human = [f"Image: {result.disk_bytes // (1024 * 1024)} MiB {result.fs_type} "
             f"({result.partition}), label {result.label}, UUID {result.uuid}"
             + (f" ({result.fs_type_reason})" if result.fs_type_reason else "")]
    if result.fstab_change is not None:
        change = result.fstab_change
        human.append(f"/etc/fstab root entry rewritten ({'; '.join(change.reasons)}):")
        human.append(f"  was: {change.old}")
        human.append(f"  now: {change.new}")
        if change.dropped_options:
            human.append(f"  dropped options {result.fs_type} does not accept: "
                         f"{','.join(change.dropped_options)}")
    for mc in result.menu_changes:
        human.append(f"{mc.path}: kernel line now names the image's filesystem:")
        human.append(f"  was: {mc.old}")
        human.append(f"  now: {mc.new}")
    se = result.selinux
    if se is not None and se.autorelabel:
        missing = ", ".join("/" + display(r) for r in se.unlabelled[:4])
        human.append(f"SELinux: policy {se.policy} ({se.mode}) but no labels on {missing}: "
                     "/.autorelabel written, the first boot relabels and reboots once")
    elif se is not None and se.active:
        human.append(f"SELinux: labels kept (policy {se.policy}, {se.mode})")
    if result.bootloader == "grub2":
        human.append(f"Bootloader: GRUB 2 (kernel {result.kernel}, serial console ttyS0)")
    if result.menu_lst:
        human.append(f"PV-GRUB menu.lst written (kernel {result.kernel})")
    if result.image_path:
        human.append(f"Image kept: {result.image_path}")
    if result.bundle is not None:
        manifest_path = Path(config.destination) / result.bundle.manifest_name
        data["manifest_path"] = str(manifest_path)
        human += bundle_human(result.bundle, str(manifest_path))
    printer.result(data, human)
    return 0


def mount_policy(args: argparse.Namespace) -> str:
    """Which mounts under the volume are copied.

    By default none (a built tree and the live / alike): a mount below the volume holds
    something else (the host's state, a scratch disk, a bind mount of a host directory or
    file) and is left out — an empty directory for a directory mount point, nothing for a
    file — and named in --list-excluded. --local-mounts crosses local disk filesystems (not
    bind mounts), --all everything.
    """
    if args.all:
        return "all"
    if args.local_mounts:
        return "local"
    return "one-filesystem"
