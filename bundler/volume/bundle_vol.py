"""bundle-vol's run: its configuration and result, the preconditions, the file selection, and
the build from staging to the finished image streamed into parts (the steps the package's
docstring gives)."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..concurrency import start_thread
from ..dirsink import DirectorySink
from ..errors import OutputError, UsageError, VolumeError
from ..newfiles import private_directory
from ..progress import NULL_PROGRESS, ProgressListener
from ..stale import remove_stale
from ..tempnames import VOLUME_KIND, temp_name
from . import bootloader as bootlib
from . import ext4feed, imagefs, loopdev, partition
from . import fstab as fstablib
from . import fstype as fstypelib
from . import selinux as selinuxlib
from . import staging as stagelib
from .devices import DeviceName
from .mounts import host_mounts, host_swap_files
from .partition import MIB, Scheme
from .safefs import display
from .selection import (
    LIVE_VIRTUAL_DIRS,
    VIRTUAL_DIRS,
    MountPolicy,
    Selection,
    SelectionConfig,
    scan_deferred,
    select_files,
)

log = logging.getLogger("bundler.volume")

__all__ = ["VolumeConfig", "VolumeResult", "bundle_volume", "select_volume", "plan_size",
           "check_preconditions", "is_live_root"]


@dataclass
class VolumeConfig:
    """Everything bundle-vol needs to know about the image (not about keys/manifest)."""

    volume: Path = Path("/")
    destination: Path = Path("/tmp")
    prefix: str = "image"
    image_dir: Path | None = None          # where the temporary image and staging tree go
    size_mib: int | None = None            # whole disk image; default: used + headroom
    partition: Scheme = "none"
    excludes: list[str] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)
    secret_filter: bool = True
    mount_policy: MountPolicy = "one-filesystem"
    fstab: Path | None = None
    generate_fstab: bool = False
    legacy_fstab: bool = False
    label: str | None = None
    uuid: str | None = None
    size_checks: bool = True
    keep_image: bool = False
    clone_only: bool = False
    drop_oversize_xattrs: bool = False     # else kept with ea_inode (no GRUB 2) or refused
    fsck: bool = True
    bootloader: bootlib.Bootloader = "auto"  # GRUB 2 for mbr/gpt: auto | grub2 | none
    kernel_cmdline: str = ""               # extra kernel arguments (grub.cfg / menu.lst)
    generate_menu_lst: bool = False        # /boot/grub/menu.lst for PV-GRUB when missing
    fs_type: fstypelib.FsChoice = "auto"   # auto = the source root's type, ext4 for a directory
    # ext4 population: "auto" streams the selection into debugfs (ext4feed) where it can,
    # "staging" always copies the selection into a staging tree for mke2fs -d.
    population: str = "auto"

    @property
    def boot_options(self) -> bootlib.BootOptions:
        return bootlib.BootOptions(bootloader=self.bootloader,
                                   kernel_cmdline=self.kernel_cmdline,
                                   generate_menu_lst=self.generate_menu_lst)

    @property
    def work_dir(self) -> Path:
        return Path(self.image_dir or self.destination)

    @property
    def kept_image_path(self) -> Path:
        return Path(self.destination) / self.prefix


@dataclass
class VolumeResult:
    selection: Selection
    image_path: Path | None     # the kept image (DEST/PREFIX), else None
    disk_bytes: int
    fs_bytes: int
    partition: Scheme
    label: str | None
    uuid: str
    stage: imagefs.StageStats
    bundle: Any = None          # pipeline.BundleResult unless clone_only
    timings: dict[str, float] = field(default_factory=dict)
    bootloader: str = "none"    # what was installed: "grub2" or "none"
    kernel: str | None = None   # version of the kernel the bootloader boots by default
    menu_lst: bool = False      # a PV-GRUB menu.lst was generated
    warnings: list[str] = field(default_factory=list)
    fs_type: str = imagefs.FS_TYPE
    fs_type_reason: str = ""    # why this type (--fs-type, the source's type, a directory)
    fstab_change: fstablib.RootEntryChange | None = None  # the kept fstab's root line, fixed
    source_device: DeviceName | None = None               # the device the volume is mounted from
    selinux: selinuxlib.SelinuxState | None = None        # policy, labels, /.autorelabel
    menu_changes: list[Any] = field(default_factory=list)  # the volume's boot menus, retargeted

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for ex in self.selection.excluded:
            key = ex.reason.split(" (", 1)[0]
            key = key if not key.startswith("excluded by -e") else "excluded by -e"
            reasons[key] = reasons.get(key, 0) + 1
        for _, why in self.stage.skipped:
            reasons[why] = reasons.get(why, 0) + 1
        data: dict[str, Any] = {
            # Paths are text with non-UTF-8 bytes as \xNN and "\" as "\\" (docs/json.md).
            "volume": display(str(self.selection.volume)),
            "entries": len(self.selection.entries) - len(self.stage.skipped),
            "excluded": len(self.selection.excluded) + len(self.stage.skipped),
            "excluded_reasons": reasons,
            "unmatched_excludes": [display(p) for p in self.selection.unmatched_excludes],
            "unmatched_includes": [display(p) for p in self.selection.unmatched_includes],
            "staged": {"copied": self.stage.copied, "reflinked": self.stage.reflinked,
                       "hard_links": self.stage.linked, "bytes": self.stage.copied_bytes,
                       # written straight from the source by the ext4 feed (no copy)
                       "fed": self.stage.fed, "fed_bytes": self.stage.fed_bytes,
                       "inode_flags": len(self.stage.flags),
                       "oversize_xattrs_kept": len({x.rel for x in self.stage.pending_xattrs}),
                       "oversize_xattrs_dropped": [
                           {"path": "/" + display(r), "xattrs": n}
                           for r, n in self.stage.dropped_xattrs]},
            "image": str(self.image_path) if self.image_path else None,
            "image_size": self.disk_bytes,
            "filesystem_size": self.fs_bytes,
            "partition": self.partition,
            "label": self.label,
            "uuid": self.uuid,
            "filesystem": self.fs_type,
            "filesystem_reason": self.fs_type_reason,
            "source_device": self.source_device.summary() if self.source_device else None,
            "fstab_root_changed": self.fstab_change.summary() if self.fstab_change else None,
            "selinux": self.selinux.summary() if self.selinux else None,
            "boot_menu_changed": [c.summary() for c in self.menu_changes],
            "bootloader": self.bootloader,
            "kernel": self.kernel,
            "menu_lst_generated": self.menu_lst,
            "warnings": list(self.warnings),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }
        if self.bundle is not None:
            data["bundle"] = self.bundle.summary()
        return data


def is_live_root(volume: Path) -> bool:
    return os.path.realpath(volume) == "/"


def check_preconditions(config: VolumeConfig) -> None:
    """Fail early, with one actionable line, on everything knowable before reading the tree."""
    volume = Path(config.volume)
    if not volume.exists():
        raise VolumeError(f"volume {volume} does not exist")
    if not volume.is_dir():
        raise VolumeError(f"volume {volume} is not a directory")
    if is_live_root(volume) and os.geteuid() != 0:
        raise VolumeError("bundling the running system (-v /) needs root: run it with sudo")
    if not config.prefix or "/" in config.prefix or config.prefix in (".", ".."):
        raise UsageError(f"prefix {config.prefix!r} must be a plain file name")
    if config.fstab is not None and config.generate_fstab:
        raise UsageError("--fstab and --generate-fstab are mutually exclusive")
    for d, what in ((config.destination, "destination"), (config.work_dir, "image directory")):
        if not Path(d).is_dir():
            raise OutputError(f"{what} {d} does not exist or is not a directory")
    if (config.keep_image or config.clone_only) and os.path.lexists(config.kept_image_path):
        raise OutputError(f"image file {config.kept_image_path} already exists: remove it or "
                          "choose another -p/--prefix")
    if config.size_mib is not None:
        if config.size_mib <= 0:
            raise UsageError("-s/--size must be a positive number of MiB")
        if config.size_mib > imagefs.MAX_IMAGE_MIB and config.size_checks:
            raise UsageError(f"-s {config.size_mib} MiB is over EC2's {imagefs.MAX_IMAGE_MIB} MiB "
                             "instance-store limit (pass --no-size-checks to build it anyway)")
    if config.fs_type not in fstypelib.CHOICES:
        raise UsageError(f"--fs-type {config.fs_type!r}: choose one of "
                         f"{', '.join(fstypelib.CHOICES)}")
    if config.label:
        # With auto the type is known once the source is looked at; the loosest limit here.
        imagefs.check_label(config.label, "btrfs" if config.fs_type == "auto" else config.fs_type)
    if config.uuid:
        imagefs.check_uuid(config.uuid)
    bootlib.check_options(config.partition, config.boot_options)


def select_volume(config: VolumeConfig, *, extra_hard_excludes: dict[Path, str] | None = None,
                  mounts=None, swap_files=None, defer_scan: bool = False) -> Selection:
    """Run the file selection for ``config`` (host mounts and swaps read from /proc)."""
    live = is_live_root(config.volume)
    hard = {Path(config.destination).resolve(): "destination directory"}
    if config.image_dir:
        hard[Path(config.image_dir).resolve()] = "image directory"
    hard.update(extra_hard_excludes or {})
    sel_config = SelectionConfig(
        volume=Path(os.path.realpath(config.volume)),
        excludes=config.excludes,
        includes=config.includes,
        secret_filter=config.secret_filter,
        hard_excludes=hard,
        virtual_dirs=LIVE_VIRTUAL_DIRS if live else VIRTUAL_DIRS,
        volume_aliases=[Path(os.path.abspath(config.volume))],
        mounts=host_mounts() if mounts is None else mounts,
        mount_policy=config.mount_policy,
        swap_files=host_swap_files() if swap_files is None else swap_files,
        defer_scan=defer_scan,
    )
    return select_files(sel_config)


def plan_size(config: VolumeConfig, selection: Selection,
              fs_type: str = imagefs.FS_TYPE) -> tuple[int, int]:
    """(disk MiB, minimum disk MiB) for the selection; raises when -s is too small/large."""
    overhead = partition.overhead_bytes(config.partition) // MIB
    min_disk = imagefs.min_fs_mib(selection, fs_type) + overhead
    if config.size_mib is not None:
        if config.size_mib < min_disk:
            raise VolumeError(f"image size {config.size_mib} MiB is too small: the image needs at "
                              f"least {min_disk} MiB for the selected files (use -s {min_disk} or "
                              "more)")
        return config.size_mib, min_disk
    disk = imagefs.default_fs_mib(selection, fs_type) + overhead
    if disk > imagefs.MAX_IMAGE_MIB and config.size_checks:
        raise VolumeError(f"the selected files need a {disk} MiB image, over EC2's "
                          f"{imagefs.MAX_IMAGE_MIB} MiB instance-store limit: exclude more (-e) or "
                          "pass --no-size-checks")
    return disk, min_disk


def bundle_volume(config: VolumeConfig, *, keys=None, options=None, sink=None,
                  progress: ProgressListener = NULL_PROGRESS,
                  on_selection=None, on_image=None) -> VolumeResult:
    """Build the image for ``config`` and (unless clone_only) bundle it with ``keys``/``options``.

    ``sink`` defaults to a DirectorySink on the destination; ``on_selection(selection)`` is
    called once the file selection is known (the CLI prints --list-excluded there);
    ``on_image(path)`` once the image is complete, before it is bundled or kept: raising
    there (the CLI's boot check) stops the run with nothing written.
    """
    check_preconditions(config)
    if not config.clone_only and (keys is None or options is None):
        raise UsageError("bundling needs keys and bundle options (or use clone_only)")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    work = config.work_dir.resolve()
    # Work files carry our PID, so a run that died (kill -9, power loss) leaves entries the
    # next run in the same directory recognises and removes.
    loopdev.release_stale(work)   # a killed XFS run's mount, before its directory goes
    remove_stale(work)
    if not config.clone_only and sink is None:
        DirectorySink(Path(config.destination)).check_clear(config.prefix)  # fail before the work
    # One private directory (0700 from creation) holds the unencrypted image, the staging
    # tree and spooled xattrs: nothing in it is readable by other users even in /tmp. It is
    # removed on every way out, a signal at any point included.
    with private_directory("", work, name=temp_name(VOLUME_KIND, f"{config.prefix}.work"),
                           remove=stagelib.remove_tree) as private:
        return _build(config, private, timings, t0, keys=keys, options=options, sink=sink,
                      progress=progress, on_selection=on_selection, on_image=on_image)


def _build(config: VolumeConfig, private: Path, timings: dict[str, float], t0: float, *,
           keys, options, sink, progress: ProgressListener, on_selection,
           on_image) -> VolumeResult:
    tmp_image = private / "image"
    staging = private / "staging"
    mounts = host_mounts()
    identity = imagefs.source_identity(Path(config.volume), mounts)
    fs_type, fs_why = fstypelib.resolve(config.fs_type, identity.fstype)
    fstypelib.require(fs_type, fs_why)   # before reading the tree: the type is never changed
    log.info("image filesystem: %s (%s)", fs_type, fs_why)
    # The ext4 feed writes a plain ext4 image (no GRUB: its files need the whole tree staged)
    # and scans for secrets on the descriptors it opens for the copy.
    feed = config.population != "staging" and config.partition == "none" and fs_type == "ext4"
    selection = select_volume(config, mounts=mounts, defer_scan=feed,
                              extra_hard_excludes={private: "bundle-vol work directory"})
    why_not = ext4feed.unsupported(selection) if feed else None
    if why_not is not None:
        log.info("populating through a staging tree: %s", why_not)
        feed = False
    if not feed:
        scan_deferred(selection)
    timings["select"] = time.monotonic() - t0
    log.info("%d entries selected, %d left out", len(selection.entries), len(selection.excluded))
    if on_selection is not None and not feed:
        on_selection(selection)

    disk_mib, min_disk = plan_size(config, selection, fs_type)
    layout = partition.layout_for(config.partition, disk_mib)
    label = config.label if config.label is not None else (
        identity.label or fstypelib.DEFAULT_LABELS[fs_type])
    label = imagefs.check_label(label, fs_type) if label else None
    fs_uuid = imagefs.check_uuid(config.uuid or identity.uuid or str(uuidlib.uuid4()))
    fstab_bytes = fstablib.choose_fstab(fstab_file=config.fstab, generate=config.generate_fstab,
                                        label=label, uuid=fs_uuid, legacy=config.legacy_fstab,
                                        fstype=fs_type)
    root_st = selection.entries[0].st
    kept = config.keep_image or config.clone_only
    result: VolumeResult | None = None
    cleaner: threading.Thread | None = None
    # GRUB 2 cannot read ea_inode filesystems; without it, oversize xattrs are kept that way.
    grub_possible = (config.partition != "none" and config.bootloader != "none"
                     and fs_type == "ext4")
    try:
        t = time.monotonic()
        spool = private / "xattrs"
        os.mkdir(spool, 0o700)
        xpolicy = stagelib.XattrPolicy(keep=not config.drop_oversize_xattrs, spool_dir=spool)
        # Only what the tool reads or rewrites is staged (with the files hard-linked to
        # those); the feed writes the rest.
        which = ext4feed.split(selection) if feed else None
        if which is not None:
            scan_deferred(selection, lambda rel: which(rel, False))
            stats = stagelib.stage(ext4feed.staged_subset(selection, which), staging,
                                   xattrs=xpolicy)
        else:
            stats = stagelib.stage(selection, staging, xattrs=xpolicy)
        check_staged(stats, config, grub_possible)
        fstab_change = fstab_warning = None
        if fstab_bytes is not None:
            fstablib.install_fstab(staging, fstab_bytes)
        else:
            # The volume's own fstab names the source's filesystem (xfs on Amazon Linux 2 and
            # RHEL, another UUID for a plain directory): the image's root must mount anyway.
            fstab_change, fstab_warning = fstablib.rewrite_root_entry(
                staging, fstype=fs_type, label=label, uuid=fs_uuid)
        # Labels travel as xattrs on every path; an active policy without them needs a
        # relabel at first boot, or enforcing mode denies nearly everything.
        selinux_state = selinuxlib.prepare(staging)
        timings["stage"] = time.monotonic() - t

        t = time.monotonic()
        boot_plan = bootlib.prepare(staging, layout, config.boot_options, fs_uuid=fs_uuid,
                                    label=label, workdir=private, fs_type=fs_type)
        if fstab_warning:
            boot_plan.warn(fstab_warning)
        # The volume's own menus boot when bundle-vol wrote none (a generated grub.cfg or
        # menu.lst is right already, and --kernel-cmdline's root= is the user's to choose).
        menu_changes = [] if boot_plan.installed == "grub2" or boot_plan.menu_lst else (
            bootlib.retarget_menus(staging, fs_uuid=fs_uuid, label=label, fs_type=fs_type))
        for rel, names in stats.dropped_xattrs:
            boot_plan.warn(f"/{display(rel)}: extended attributes {', '.join(names)} left out "
                           "(too large for an ext4 inode and one block; --drop-oversize-xattrs)")
        timings["bootloader"] = time.monotonic() - t

        t = time.monotonic()
        fd = os.open(tmp_image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, layout.disk_bytes)
        finally:
            os.close(fd)
        params = imagefs.FsParams(
            size_bytes=layout.fs_bytes, label=label, uuid=fs_uuid,
            root_uid=root_st.st_uid, root_gid=root_st.st_gid,
            root_mode=root_st.st_mode & 0o7777, offset=layout.fs_offset,
            inodes=imagefs.inodes_needed(selection) + 1024,
            ea_inode=bool(stats.pending_xattrs) and fs_type == "ext4", fs_type=fs_type)
        dev_nodes = any(e.rel == "dev" and e.kind == "dir" for e in selection.entries)
        for warning in imagefs.make_filesystem(None if feed else staging, tmp_image, params,
                                               min_mib=min_disk, stats=stats, workdir=private,
                                               dev_nodes=dev_nodes, check=config.fsck,
                                               selection=selection):
            boot_plan.warn(warning)
        if which is not None:
            try:
                left_out, warnings = ext4feed.populate(selection, staging, tmp_image,
                                                       offset=layout.fs_offset, stats=stats,
                                                       xattrs=xpolicy, which=which)
            except ext4feed.DebugfsError as exc:
                full = imagefs.explain_full(exc.stderr, tmp_image, params, min_mib=min_disk)
                if full is not None:
                    raise full from exc
                raise
            drop_entries(selection, left_out, warnings)
            check_staged(stats, config, grub_possible)
            if on_selection is not None:
                on_selection(selection)
        if fs_type == "ext4":
            # The feed set mtimes and flags itself; the staged ones' flags are in stats.
            for warning in imagefs.touch_up(tmp_image, offset=layout.fs_offset,
                                            root_mode=params.root_mode, dev_nodes=dev_nodes,
                                            selection=None if feed else selection, stats=stats,
                                            workdir=private):
                boot_plan.warn(warning)
        partition.write_table(tmp_image, layout, disk_id=uuidlib.UUID(fs_uuid))
        bootlib.check_filesystem(tmp_image, layout.fs_offset, boot_plan, fs_type=fs_type)
        bootlib.install(tmp_image, layout, boot_plan)
        timings["mkfs"] = time.monotonic() - t
        # Removing thousands of staged entries is slow metadata I/O; let it overlap with the
        # CPU-bound bundling instead of adding to the wall time.
        cleaner = threading.Thread(target=stagelib.remove_tree, args=(staging,),
                                   name="staging-cleanup", daemon=True)
        start_thread(cleaner)
        if config.fsck:
            t = time.monotonic()
            imagefs.fsck(tmp_image, offset=layout.fs_offset, fs_type=fs_type)
            timings["fsck"] = time.monotonic() - t
        log.info("image built: %d MiB %s (%s), label %s, UUID %s", disk_mib, fs_type,
                 layout.scheme, label, fs_uuid)

        if on_image is not None:
            on_image(tmp_image)
        result = VolumeResult(selection, None, layout.disk_bytes, layout.fs_bytes,
                              layout.scheme, label, fs_uuid, stats, timings=timings,
                              bootloader=boot_plan.installed,
                              kernel=boot_plan.kernel.version if boot_plan.kernel else None,
                              menu_lst=boot_plan.menu_lst, warnings=boot_plan.warnings,
                              fstab_change=fstab_change, source_device=identity.device_name,
                              fs_type=fs_type, fs_type_reason=fs_why,
                              selinux=selinux_state, menu_changes=menu_changes)
        if not config.clone_only:
            from ..bundling import bundle
            from ..source import open_image

            t = time.monotonic()
            source = open_image(tmp_image, name=config.prefix, allow_large=not config.size_checks)
            result.bundle = bundle(source, sink if sink is not None else DirectorySink(
                Path(config.destination)), keys, options, progress)
            timings["bundle"] = time.monotonic() - t
        if kept:
            keep_image_file(tmp_image, config.kept_image_path)
            result.image_path = config.kept_image_path
    finally:
        t = time.monotonic()
        if cleaner is not None:
            cleaner.join()
        stagelib.remove_tree(private)
        timings["cleanup"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t0
    return result


def drop_entries(selection: Selection, left_out: list, warnings: list[str]) -> None:
    """Entries the population left out (the feed's secret scan) move to the exclusions."""
    for message in warnings:
        log.warning("%s", message)
    selection.warnings.extend(warnings)
    if left_out:
        selection.excluded.extend(left_out)
        drop = {x.rel for x in left_out}
        selection.entries = [e for e in selection.entries if e.rel not in drop]


def check_staged(stats: stagelib.StageStats, config: VolumeConfig, grub_possible: bool) -> None:
    """Oversize xattrs need ext4 ea_inode, which GRUB 2 cannot read: refuse to build an image
    that would not boot, naming the files, unless told to drop them."""
    if stats.pending_xattrs and grub_possible:
        files = stats.oversize_xattr_files
        names = ", ".join("/" + display(r) for r in files[:5]) + (" ..." if len(files) > 5 else "")
        raise VolumeError(f"{len(files)} file(s) have extended attributes too large for an "
                          f"ext4 inode and one block ({names}): keeping them needs the ea_inode "
                          "feature, which GRUB 2 cannot read; pass --drop-oversize-xattrs to "
                          "leave those attributes out (each file is reported), or "
                          "--bootloader none")


def keep_image_file(tmp_image: Path, final: Path) -> None:
    """Give the finished image its final name without ever replacing a file; across
    filesystems (--image-dir elsewhere) it is copied to a temporary name first, so a
    visible DEST/PREFIX is always complete. The image stays 0600."""
    try:
        os.link(tmp_image, final)  # never replaces an existing file
        return
    except FileExistsError:
        raise OutputError(f"image file {final} appeared while bundling; the bundle is complete "
                          "but the image was not kept") from None
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise OutputError(f"cannot keep the image as {final}: {exc.strerror}") from None
    temp = final.parent / temp_name(VOLUME_KIND, final.name)
    src = os.open(tmp_image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            stagelib.copy_data(src, dst)
            os.fsync(dst)
        finally:
            os.close(dst)
    except OSError as exc:
        if os.path.lexists(temp):
            os.unlink(temp)
        raise OutputError(f"cannot copy the image to {final}: {exc.strerror}") from None
    finally:
        os.close(src)
    try:
        os.link(temp, final)
    except FileExistsError:
        raise OutputError(f"image file {final} appeared while bundling; the bundle is complete "
                          "but the image was not kept") from None
    finally:
        os.unlink(temp)
