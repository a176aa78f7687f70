"""/etc/fstab for the image: generated text (pure) and installation into the staging tree.

Classic generated ``/dev/sda1 / ext3``; device names are not stable on current EC2 (NVMe, Xen
``xvda``), so the root is named by LABEL (or UUID when there is no label) and typed ext4, which
is what this tool creates. The ephemeral ``/dev/sdb /mnt`` line of the classic default variant
is left out: on NVMe instance types that device never appears and the boot would wait for it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError

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
    rows = [(root, "/", fstype, "defaults", "1", "1")]
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
                 uuid: str | None, legacy: bool = False) -> bytes | None:
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
        return generate_fstab(label=label, uuid=uuid, legacy=legacy).encode()
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
