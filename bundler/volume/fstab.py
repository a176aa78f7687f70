"""/etc/fstab for the image: generated text (pure) and installation into the staging tree.

Classic generated ``/dev/sda1 / ext3``; device names are not stable on current EC2 (NVMe, Xen
``xvda``), so the root is named by LABEL (or UUID when there is no label) and typed as the
image is (ext4, XFS or btrfs). The ephemeral ``/dev/sdb /mnt`` line of the classic default variant
is left out: on NVMe instance types that device never appears and the boot would wait for it.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError, VolumeError

FSTAB_CAP = 1024 * 1024
SUPPLIED_BY = "# Supplied by: ami-bundler (ec2-ami-tools-1.5-3 compatible)"


def root_spec(label: str | None, uuid: str | None) -> str:
    if label:
        return f"LABEL={label}"
    if uuid:
        return f"UUID={uuid}"
    return "/dev/sda1"


def generate_fstab(*, label: str | None, uuid: str | None, fstype: str = "ext4",
                   legacy: bool = False) -> str:
    """The generated fstab text (spec §8.7), root by LABEL/UUID. Pure."""
    root = root_spec(label, uuid)
    # fsck.xfs and fsck.btrfs do nothing at boot: their roots are passno 0.
    rows = [(root, "/", fstype, "defaults", "1" if fstype == "ext4" else "0",
             "1" if fstype == "ext4" else "0")]
    if legacy:
        # Classic legacy (i386) layout kept as is: paravirtual instances with sda2/sda3.
        rows += [("/dev/sda2", "/mnt", "ext3", "defaults,nofail", "0", "0"),
                 ("/dev/sda3", "swap", "swap", "defaults,nofail", "0", "0")]
    else:
        rows += [("none", "/dev/pts", "devpts", "gid=5,mode=620", "0", "0")]
    rows += [("none", "/proc", "proc", "defaults", "0", "0"),
             ("none", "/sys", "sysfs", "defaults", "0", "0")]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    head = "# Legacy /etc/fstab" if legacy else "# Default /etc/fstab"
    lines = [head, SUPPLIED_BY]
    for r in rows:
        lines.append(" ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + " " + r[5])
    return "\n".join(lines) + "\n"


def choose_fstab(*, fstab_file: Path | None, generate: bool, label: str | None,
                 uuid: str | None, legacy: bool = False, fstype: str = "ext4") -> bytes | None:
    """The fstab bytes to install, or None to keep the volume's own (classic default)."""
    if fstab_file is not None and generate:
        raise UsageError("--fstab and --generate-fstab are mutually exclusive")
    if fstab_file is not None:
        try:
            with open(fstab_file, "rb") as fh:
                data = fh.read(FSTAB_CAP + 1)
        except OSError as exc:
            raise UsageError(f"cannot read --fstab {fstab_file}: {exc.strerror}") from None
        if len(data) > FSTAB_CAP:
            raise UsageError(f"--fstab {fstab_file} is over {FSTAB_CAP // 1024} KiB: not an fstab")
        return data
    if generate:
        return generate_fstab(label=label, uuid=uuid, legacy=legacy, fstype=fstype).encode()
    return None


def install_fstab(staging: Path, content: bytes) -> None:
    """Write ``content`` as staging/etc/fstab, keeping the previous one as etc/fstab.old.

    ``staging.write_file`` writes into the real directory staging/etc only: a volume whose
    ``etc`` is a symlink (which could point at the build host's own /etc) is an error.
    """
    from .staging import write_file

    write_file(staging, "etc/fstab", content, mode=0o644, keep_old="fstab.old")


def check_root_entry(text: str, *, label: str | None, uuid: str | None) -> str | None:
    """A one-line warning when the fstab mounts / from something that is not the image's
    filesystem (a UUID/LABEL of the source system), else None. Pure."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith("#") or fields[1] != "/":
            continue
        spec = fields[0]
        key, _, value = spec.partition("=")
        key = key.upper()
        if key == "UUID" and uuid and value.strip("\"'").lower() != uuid.lower():
            return (f"/etc/fstab mounts / from {spec} but the image's filesystem is UUID={uuid}: "
                    "the boot will not find it (use --generate-fstab or --uuid)")
        if key == "LABEL" and value.strip("\"'") != (label or ""):
            have = f"LABEL={label}" if label else "unlabelled"
            return (f"/etc/fstab mounts / from {spec} but the image's filesystem is {have}: "
                    "the boot will not find it (use --generate-fstab or --label)")
        if key in ("PARTUUID", "PARTLABEL"):
            return (f"/etc/fstab mounts / from {spec}, which the image does not have "
                    "(use --generate-fstab)")
        return None
    return None


# ------------------------------------------------------------------ the kept fstab's root

# Mount options that mean the same on every Linux filesystem, plus ext4's own: a root entry
# retyped to ext4 keeps these and drops the rest (xfs's inode64/logbufs/allocsize/nouuid,
# btrfs's subvol/compress/space_cache...), which ext4 would refuse and so fail the boot.
_GENERIC_OPTIONS = frozenset("""
    defaults rw ro auto noauto user nouser users owner group exec noexec suid nosuid dev nodev
    sync async dirsync atime noatime relatime norelatime strictatime nostrictatime lazytime
    nolazytime diratime nodiratime iversion noiversion silent loud nofail _netdev
    acl noacl user_xattr nouser_xattr discard nodiscard barrier nobarrier quota noquota
    usrquota grpquota prjquota grpid bsdgroups nogrpid sysvgroups norecovery noload dax
    journal_checksum nojournal_checksum journal_async_commit delalloc nodelalloc
    auto_da_alloc noauto_da_alloc block_validity noblock_validity
""".split())
_GENERIC_VALUED = ("x-", "comment=", "context=", "fscontext=", "defcontext=", "rootcontext=",
                   "errors=", "data=", "commit=", "barrier=", "stripe=", "dax=",
                   "resuid=", "resgid=", "sb=", "journal_ioprio=", "init_itable",
                   "noinit_itable", "max_batch_time=", "min_batch_time=", "inode_readahead_blks=")
# Each type's own options: kept when the entry is (re)typed to that type.
_TYPE_OPTIONS: dict[str, frozenset[str]] = {
    "ext4": frozenset(),   # ext4's are in the generic lists above (the historical default)
    "xfs": frozenset("""
        inode32 inode64 largeio nolargeio swalloc noalign attr2 noattr2 ikeep noikeep wsync
        filestreams nouuid uqnoenforce gqnoenforce pqnoenforce qnoenforce norecovery
        uquota gquota pquota discard=async discard=sync
    """.split()),
    "btrfs": frozenset("""
        ssd nossd ssd_spread nossd_spread autodefrag noautodefrag space_cache nospace_cache
        datacow nodatacow datasum nodatasum compress compress-force degraded
        flushoncommit noflushoncommit treelog notreelog clear_cache rescan_uuid_tree
        skip_balance discard=async
    """.split()),
}
_TYPE_VALUED: dict[str, tuple[str, ...]] = {
    "ext4": (),
    "xfs": ("logbufs=", "logbsize=", "allocsize=", "sunit=", "swidth=", "logdev=", "rtdev=",
            "inode64=", "uquota=", "gquota="),
    "btrfs": ("subvol=", "subvolid=", "compress=", "compress-force=", "space_cache=",
              "thread_pool=", "commit=", "max_inline=", "metadata_ratio=", "device=",
              "fatal_errors=", "rescue="),
}
# Options only ext4 (and ext2/3) accept: dropped when the entry is typed to XFS or btrfs.
_EXT4_ONLY = frozenset("""
    user_xattr nouser_xattr grpid bsdgroups nogrpid sysvgroups noload journal_checksum
    nojournal_checksum journal_async_commit delalloc nodelalloc auto_da_alloc noauto_da_alloc
    block_validity noblock_validity init_itable noinit_itable
""".split())
_EXT4_ONLY_VALUED = ("data=", "journal_ioprio=", "resuid=", "resgid=", "sb=", "stripe=",
                     "max_batch_time=", "min_batch_time=", "inode_readahead_blks=")
# Same meaning, other spelling.
_RENAMED = {"uquota": "usrquota", "gquota": "grpquota", "pquota": "prjquota",
            "discard=async": "discard", "discard=sync": "discard"}


@dataclass(frozen=True)
class RootEntryChange:
    """The root line of the volume's own fstab, rewritten to mount the image's filesystem."""
    old: str
    new: str
    reasons: tuple[str, ...]
    dropped_options: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {"path": "/etc/fstab", "old": self.old, "new": self.new,
                "reasons": list(self.reasons), "dropped_options": list(self.dropped_options)}


def ext4_options(options: str) -> tuple[str, list[str]]:
    """(options ext4 accepts, the ones dropped) for an entry written for another type. Pure."""
    return options_for(options, "ext4")


def options_for(options: str, fstype: str) -> tuple[str, list[str]]:
    """(options ``fstype`` accepts, the ones dropped) for an entry written for another type.
    Pure."""
    kept: list[str] = []
    dropped: list[str] = []
    own = _TYPE_OPTIONS.get(fstype, frozenset())
    own_valued = _TYPE_VALUED.get(fstype, ())
    for opt in options.split(","):
        if not opt:
            continue
        if fstype == "ext4":
            opt = _RENAMED.get(opt, opt)
        ext4_only = fstype != "ext4" and (opt in _EXT4_ONLY or opt.startswith(_EXT4_ONLY_VALUED))
        generic = opt in _GENERIC_OPTIONS or opt.startswith(_GENERIC_VALUED)
        if (generic and not ext4_only) or opt in own or opt.startswith(own_valued):
            if opt not in kept:
                kept.append(opt)
        else:
            dropped.append(opt)
    return ",".join(kept) or "defaults", dropped


def _names_image(spec: str, *, label: str | None, uuid: str) -> bool:
    key, _, value = spec.partition("=")
    value = value.strip("\"'")
    if key.upper() == "UUID":
        return value.lower() == uuid.lower()
    if key.upper() == "LABEL":
        return bool(label) and value == label
    return False


def retarget_root(text: str, *, fstype: str, label: str | None, uuid: str
                  ) -> tuple[str, RootEntryChange | None]:
    """``text`` with its root entry mounting the image's filesystem: type ``fstype``, named by
    its UUID (or LABEL, in the style the entry already used). Every other line, comments and
    spacing are kept. Returns the text and the change, None when the entry already matched
    (or there is no root entry to fix). Pure."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        tokens = re.split(r"(\s+)", line.strip())
        fields = tokens[::2]
        if len(fields) < 3 or fields[0].startswith("#") or fields[1] != "/":
            continue
        spec, kind = fields[0], fields[2]
        reasons: list[str] = []
        dropped: list[str] = []
        if not _names_image(spec, label=label, uuid=uuid):
            use_label = spec.upper().startswith("LABEL=") and bool(label)
            fields[0] = f"LABEL={label}" if use_label else f"UUID={uuid}"
            reasons.append(f"the image's filesystem is {fields[0]}, not {spec}")
        if kind not in (fstype, "auto"):
            fields[2] = fstype
            reasons.append(f"the image's filesystem is {fstype}, not {kind}")
            options, dropped = options_for(fields[3] if len(fields) > 3 else "defaults", fstype)
            fields[3:4] = [options]
            while len(fields) < 6:
                fields.append("0")
            if fstype == "ext4" and fields[5] == "0":
                fields[5] = "1"  # xfs/btrfs roots say 0 (no boot-time fsck); ext4's is 1
            elif fstype != "ext4" and fields[5] != "0":
                fields[5] = "0"  # fsck.xfs/fsck.btrfs do nothing at boot: the usual 0
        if not reasons:
            return text, None
        seps = tokens[1::2] + [" "] * (len(fields) - 1 - len(tokens[1::2]))
        indent = line[:len(line) - len(line.lstrip())]
        trailing = line[len(line.rstrip()):]  # a CRLF file keeps its "\r"
        new = indent + "".join(f + s for f, s in zip(fields, seps + [""], strict=False))
        lines[i] = new + trailing
        change = RootEntryChange(line.strip(), new.strip(), tuple(reasons), tuple(dropped))
        return "\n".join(lines), change
    return text, None


def rewrite_root_entry(staging: Path, *, fstype: str, label: str | None, uuid: str
                       ) -> tuple[RootEntryChange | None, str | None]:
    """Make the staged (volume's own) /etc/fstab mount the image's filesystem.

    Returns (the change made or None, a warning or None). The file is read without following
    a link and written through ``staging.write_file`` (real directories only), keeping the
    volume's version as etc/fstab.old like an installed fstab.
    """
    from . import safefs
    from .staging import private_dir, write_file

    if not os.path.lexists(staging / "etc"):
        return None, None  # a tree without /etc: no fstab to fix
    try:
        dfd = private_dir(staging, "etc", create=False)
    except VolumeError as exc:
        # /etc is a symlink (which may name the build host's /etc) or not a directory.
        return None, f"{exc}; /etc/fstab not checked against the image's filesystem"
    try:
        try:
            st = os.lstat("fstab", dir_fd=dfd)
        except FileNotFoundError:
            return None, None
        if stat.S_ISLNK(st.st_mode):
            return None, ("/etc/fstab is a symlink: not checked against the image's filesystem "
                          "(make it a file, or pass --fstab/--generate-fstab)")
        data = safefs.read_capped(dfd, "fstab", FSTAB_CAP + 1, "etc/fstab")
    finally:
        os.close(dfd)
    if data is None or len(data) > FSTAB_CAP:
        return None, ("/etc/fstab is not a readable regular file of at most "
                      f"{FSTAB_CAP // 1024} KiB: not checked against the image's filesystem")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "/etc/fstab not checked against the image's filesystem: not UTF-8 text"
    new_text, change = retarget_root(text, fstype=fstype, label=label, uuid=uuid)
    if change is not None:
        write_file(staging, "etc/fstab", new_text.encode(), mode=0o644, keep_old="fstab.old")
    return change, None
