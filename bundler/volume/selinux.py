"""SELinux: labels travel as ``security.selinux`` xattrs; without them, a relabel at boot.

Every filesystem path keeps extended attributes (the staging copy, ``mke2fs -d``, ``treecopy``,
``mkfs.btrfs --rootdir``), so a labelled source gives a labelled image. A tree whose SELinux
policy is active (``/etc/selinux/config`` says enforcing or permissive and the policy is
there) but whose files carry no labels — built in a chroot, copied by a tool that drops
xattrs, a filesystem mounted without xattr support — would boot with everything
``unlabeled_t``: enforcing denies nearly all of it. The distributions' answer is
``/.autorelabel``, which makes the first boot run ``fixfiles`` and reboot; it is written
here and the run says so.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .safefs import display

log = logging.getLogger("bundler.volume")

XATTR = "security.selinux"
CONFIG = "etc/selinux/config"
# Where a label-less tree shows first: these exist in every distribution that ships a policy.
PROBES = ("", "etc", "etc/selinux/config", "etc/passwd", "usr", "usr/bin", "usr/lib",
          "usr/sbin", "bin", "sbin", "var", "boot")


@dataclass(frozen=True)
class SelinuxState:
    mode: str | None            # enforcing | permissive | disabled | None (no config)
    policy: str | None          # SELINUXTYPE whose directory exists, e.g. targeted
    labelled: int               # probed paths that carry a label
    unlabelled: list[str]       # probed paths without one
    autorelabel: bool = False   # /.autorelabel written

    @property
    def active(self) -> bool:
        return self.mode in ("enforcing", "permissive") and self.policy is not None

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "policy": self.policy,
                "labels": "missing" if self.unlabelled else ("present" if self.labelled
                                                              else "none"),
                "unlabelled": ["/" + display(p) for p in self.unlabelled],
                "autorelabel": self.autorelabel}


def parse_config(text: str) -> tuple[str | None, str | None]:
    """(SELINUX=, SELINUXTYPE=) of an /etc/selinux/config text. Pure."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip().upper()] = value.strip().strip("\"'").lower()
    return values.get("SELINUX"), values.get("SELINUXTYPE")


def _has_label(staging: Path, rel: str) -> bool | None:
    """True/False for a path of the staging tree, None when it does not exist."""
    try:
        os.getxattr(staging / rel if rel else staging, XATTR, follow_symlinks=False)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        return False   # ENODATA: no label (ENOTSUP: the staging filesystem keeps none)


def inspect(staging: Path) -> SelinuxState:
    """The tree's SELinux configuration and whether its files carry labels."""
    from .bootloader import read_text

    text = read_text(staging / CONFIG)
    mode, kind = parse_config(text) if text is not None else (None, None)
    policy = None
    if kind and "/" not in kind and kind not in (".", ".."):
        where = staging / "etc/selinux" / kind
        if where.is_dir() and not where.is_symlink():
            policy = kind
    labelled, unlabelled = 0, []
    for rel in PROBES:
        has = _has_label(staging, rel)
        if has is True:
            labelled += 1
        elif has is False:
            unlabelled.append(rel)
    return SelinuxState(mode, policy, labelled, unlabelled)


def prepare(staging: Path) -> SelinuxState:
    """Inspect the staged tree; with an active policy and labels missing, write
    ``/.autorelabel`` (through ``staging.write_file``: a real file at the root, never a link)."""
    from .staging import write_file

    state = inspect(staging)
    if state.active and state.unlabelled:
        write_file(staging, ".autorelabel", b"", mode=0o644)
        log.info("SELinux policy %s (%s) and unlabelled files: /.autorelabel written",
                 state.policy, state.mode)
        return SelinuxState(state.mode, state.policy, state.labelled, state.unlabelled, True)
    return state
