"""Which files of a volume go into the image, and why the others do not.

``select_files`` walks a directory tree (never following symlinks) and returns the kept entries
in parent-before-child order plus the exclusions with a reason each. It only reads the tree
(lstat, scandir and, for the secret filter, the first bytes of plausible key files), so it runs
unchanged under pyfakefs.

Rules, in order of strength:

1. *Hard* exclusions, which ``-i`` cannot override: the destination / image / staging paths,
   the contents of the virtual-filesystem directories (``dev proc sys media mnt``, plus ``run``
   and ``tmp`` for the live root) and of mount points the mount policy leaves out. The
   directories themselves are kept, empty, as mount points.
2. Sockets (stale in an image) and swap files (recognised by their signature).
3. User ``-e`` patterns, then the secret filter (unless ``--no-filter``).

``-i`` patterns override rule 3 for the paths they match (a whole directory when they match
one) and, unlike classic rsync, can also reach *into* a directory that rule 3 excludes: that
directory is then kept as a skeleton holding only the included paths.

Patterns are volume-relative paths (a leading ``/`` or the volume's own host path is stripped),
matched component by component with shell globs (``*`` never crosses ``/``).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from . import secrets_filter

log = logging.getLogger("bundler.volume")

VIRTUAL_DIRS: tuple[str, ...] = ("dev", "media", "mnt", "proc", "sys")
LIVE_VIRTUAL_DIRS: tuple[str, ...] = VIRTUAL_DIRS + ("run", "tmp")

# Filesystems that hold on-disk data of the system being imaged; mounts of these under the
# volume are copied (flattened) like classic did. Classic missed btrfs (spec §10 item 15).
LOCAL_FS_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "jfs", "reiserfs", "btrfs", "f2fs",
                            "vfat", "exfat"})

MountPolicy = Literal["local", "one-filesystem", "all"]

_SWAP_MAGIC_OFFSETS = (4086, 8182, 16374, 65526)  # page size - 10, for 4/8/16/64 KiB pages


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo that matters here."""

    mount_point: str
    fstype: str
    source: str = ""


@dataclass(frozen=True)
class Entry:
    """A kept path: ``rel`` is volume-relative without a leading slash ("" is the root)."""

    rel: str
    st: os.stat_result

    @property
    def kind(self) -> str:
        return _kind(self.st.st_mode)


@dataclass(frozen=True)
class Exclusion:
    rel: str
    reason: str

    def display(self) -> str:
        return f"/{self.rel}"


@dataclass
class SelectionConfig:
    volume: Path
    excludes: Sequence[str] = ()
    includes: Sequence[str] = ()
    secret_filter: bool = True
    # Host paths left out with their whole subtree (destination, image file, staging dir).
    hard_excludes: dict[Path, str] = field(default_factory=dict)
    virtual_dirs: Sequence[str] = VIRTUAL_DIRS
    mounts: Sequence[Mount] = ()
    mount_policy: MountPolicy = "local"
    # Host paths of active swap files (/proc/swaps), on top of signature detection.
    swap_files: Sequence[str] = ()


@dataclass
class Selection:
    volume: Path
    entries: list[Entry]
    excluded: list[Exclusion]
    warnings: list[str]
    unmatched_excludes: list[str]

    @property
    def used_bytes(self) -> int:
        """Bytes the kept data occupies (allocated blocks; hard-linked inodes counted once)."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for e in self.entries:
            if e.st.st_nlink > 1 and not stat.S_ISDIR(e.st.st_mode):
                key = (e.st.st_dev, e.st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            if stat.S_ISREG(e.st.st_mode) or stat.S_ISDIR(e.st.st_mode) or stat.S_ISLNK(e.st.st_mode):
                total += _allocated(e.st)
        return total

    @property
    def inode_count(self) -> int:
        return len({(e.st.st_dev, e.st.st_ino) for e in self.entries})


def _allocated(st: os.stat_result) -> int:
    blocks = getattr(st, "st_blocks", None)
    if blocks is None:  # pragma: no cover - non-POSIX
        return st.st_size
    return blocks * 512


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "chardev"), (stat.S_ISBLK, "blockdev"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "unknown"


# ---------------------------------------------------------------------------------- patterns

def split_patterns(values: Iterable[str]) -> list[str]:
    """Flatten ``-e a,b -e c`` (and shell-expanded word lists) into single patterns."""
    out: list[str] = []
    for value in values:
        out.extend(p.strip() for p in value.split(",") if p.strip())
    return out


def normalize_pattern(pattern: str, volume: Path) -> str:
    """A volume-relative pattern without leading/trailing slashes.

    An absolute pattern under the volume's host path is made relative to it (Packer passes
    host paths); any other absolute pattern is taken as relative to the volume root.
    """
    vol = str(volume).rstrip("/")
    p = pattern.strip()
    if vol and p.startswith(vol + "/"):
        p = p[len(vol):]
    elif vol and p == vol:
        p = ""
    p = "/".join(c for c in p.split("/") if c not in ("", "."))
    return p


def _components(rel: str) -> list[str]:
    return rel.split("/") if rel else []


def pattern_matches(pattern: str, rel: str) -> bool:
    pc, rc = _components(pattern), _components(rel)
    return len(pc) == len(rc) and all(fnmatchcase(r, p) for p, r in zip(pc, rc, strict=False))


def pattern_may_match_below(pattern: str, rel: str) -> bool:
    """Whether ``pattern`` could match a path strictly inside directory ``rel``."""
    pc, rc = _components(pattern), _components(rel)
    return len(pc) > len(rc) and all(fnmatchcase(r, p) for p, r in zip(pc, rc, strict=False))


def parse_mountinfo(text: str) -> list[Mount]:
    """Mount points and types from /proc/self/mountinfo text (octal escapes decoded). Pure."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 7:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 3:
            continue
        mounts.append(Mount(_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
    return mounts


def _unescape(value: str) -> str:
    return value.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in value else value


def parse_swaps(text: str) -> list[str]:
    """File-backed swap areas from /proc/swaps text. Pure."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "file":
            out.append(_unescape(fields[0]))
    return out


def host_mounts(proc_root: Path = Path("/proc")) -> list[Mount]:
    try:
        return parse_mountinfo((proc_root / "self/mountinfo").read_text())
    except OSError:
        return []


def host_swap_files(proc_root: Path = Path("/proc")) -> list[str]:
    try:
        return parse_swaps((proc_root / "swaps").read_text())
    except OSError:
        return []


# ---------------------------------------------------------------------------------- the walk

class _Walker:
    def __init__(self, config: SelectionConfig) -> None:
        self.c = config
        self.volume = Path(os.path.abspath(config.volume))
        self.excludes = [normalize_pattern(p, self.volume) for p in split_patterns(config.excludes)]
        self.includes = [normalize_pattern(p, self.volume) for p in split_patterns(config.includes)]
        self.exclude_hits = dict.fromkeys(self.excludes, 0)
        self.hard_by_path = {os.path.abspath(p): r for p, r in config.hard_excludes.items()}
        self.hard_by_inode: dict[tuple[int, int], str] = {}
        for p, reason in self.hard_by_path.items():
            try:
                st = os.stat(p)
            except OSError:
                continue
            self.hard_by_inode[(st.st_dev, st.st_ino)] = reason
        vol = str(self.volume).rstrip("/")
        self.mounts: dict[str, Mount] = {}
        for m in config.mounts:
            mp = m.mount_point.rstrip("/") or "/"
            if mp != "/" and mp.startswith(vol + "/"):
                self.mounts[mp[len(vol) + 1:]] = m
        self.swap_files = {os.path.abspath(p) for p in config.swap_files}
        self.entries: list[Entry] = []
        self.excluded: list[Exclusion] = []
        self.warnings: list[str] = []
        self.root_dev = 0

    def host(self, rel: str) -> str:
        return str(self.volume / rel) if rel else str(self.volume)

    def exclude(self, rel: str, reason: str) -> None:
        self.excluded.append(Exclusion(rel, reason))

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def included(self, rel: str) -> bool:
        return any(pattern_matches(p, rel) for p in self.includes)

    def include_below(self, rel: str) -> bool:
        return any(pattern_may_match_below(p, rel) for p in self.includes)

    def run(self) -> Selection:
        try:
            st = os.lstat(self.volume)
        except FileNotFoundError:
            from ..errors import VolumeError

            raise VolumeError(f"volume {self.volume} does not exist") from None
        if not stat.S_ISDIR(st.st_mode):
            from ..errors import VolumeError

            raise VolumeError(f"volume {self.volume} is not a directory")
        self.root_dev = st.st_dev
        self.entries.append(Entry("", st))
        self.walk_dir("", skeleton=False)
        unmatched = [p for p, n in self.exclude_hits.items() if n == 0]
        for p in unmatched:
            log.info("exclude pattern %r matched nothing under %s", p, self.volume)
        return Selection(self.volume, self.entries, self.excluded, self.warnings, unmatched)

    def walk_dir(self, rel: str, *, skeleton: bool) -> None:
        """Walk directory ``rel`` iteratively (deep trees must not hit the recursion limit)."""
        stack: list[tuple[str, bool]] = [(rel, skeleton)]
        while stack:
            d, skel = stack.pop()
            try:
                with os.scandir(self.host(d)) as it:
                    names = sorted(e.name for e in it)
            except OSError as exc:
                self.warn(f"cannot read directory /{d}: {exc.strerror}; kept empty")
                continue
            children: list[tuple[str, bool]] = []
            for name in names:
                child = f"{d}/{name}" if d else name
                descend = self.visit(child, skel)
                if descend is not None:
                    children.append((child, descend))
            # Reverse so the stack pops children in name order (parents always precede children).
            stack.extend(reversed(children))

    def visit(self, rel: str, skeleton: bool) -> bool | None:
        """Decide on one path; returns None (don't descend) or the skeleton flag for its walk."""
        host = self.host(rel)
        try:
            st = os.lstat(host)
        except OSError as exc:
            self.warn(f"cannot stat /{rel}: {exc.strerror}; left out")
            return None
        is_dir = stat.S_ISDIR(st.st_mode)

        # 1. hard exclusions
        reason = self.hard_by_path.get(host) or self.hard_by_inode.get((st.st_dev, st.st_ino))
        if reason:
            self.exclude(rel, reason)
            return None
        if rel in self.c.virtual_dirs and is_dir:
            self.keep_empty(rel, st, "virtual filesystem contents (directory kept as mount point)")
            return None
        if is_dir:
            mount = self.mounts.get(rel)
            policy = self.c.mount_policy
            if mount is not None and policy != "all" and (
                policy == "one-filesystem" or mount.fstype not in LOCAL_FS_TYPES):
                self.keep_empty(rel, st, f"mount point of {mount.fstype} {mount.source}".rstrip()
                                + " (directory kept; use --all to include)")
                return None
            if policy == "one-filesystem" and st.st_dev != self.root_dev:
                self.keep_empty(rel, st, "another filesystem (directory kept; use --all to include)")
                return None

        # 2. things that make no sense in an image
        if stat.S_ISSOCK(st.st_mode):
            self.exclude(rel, "socket")
            return None
        if stat.S_ISREG(st.st_mode) and (host in self.swap_files or _is_swap(host, st)):
            self.exclude(rel, "swap file")
            return None

        # 3. user excludes and the secret filter, which -i overrides
        if self.included(rel):
            self.entries.append(Entry(rel, st))
            # An included directory comes with everything below, minus the hard exclusions.
            return False if is_dir else None
        soft = self.soft_reason(rel, st)
        if soft is not None:
            if is_dir and self.include_below(rel):
                self.entries.append(Entry(rel, st))
                return True
            self.exclude(rel, soft)
            return None
        if skeleton:
            if is_dir and self.include_below(rel):
                self.entries.append(Entry(rel, st))
                return True
            self.exclude(rel, "inside an excluded directory (not matched by -i)")
            return None
        if stat.S_ISREG(st.st_mode) and self.c.secret_filter \
                and secrets_filter.worth_scanning(rel, st):
            try:
                kind = secrets_filter.scan_file(host, rel)
            except secrets_filter.UnreadableError as exc:
                self.warn(f"cannot read /{rel} ({exc}): left out, it could not be checked for keys")
                self.exclude(rel, f"unreadable ({exc})")
                return None
            if kind:
                self.exclude(rel, f"secret: {kind}")
                return None
        elif stat.S_ISREG(st.st_mode) and not os.access(host, os.R_OK):
            self.warn(f"cannot read /{rel} (permission denied): left out")
            self.exclude(rel, "unreadable (permission denied)")
            return None
        self.entries.append(Entry(rel, st))
        return False if is_dir else None

    def soft_reason(self, rel: str, st: os.stat_result) -> str | None:
        for p in self.excludes:
            if pattern_matches(p, rel):
                self.exclude_hits[p] += 1
                return f"excluded by -e {p}"
        if self.c.secret_filter and not stat.S_ISDIR(st.st_mode):
            reason = secrets_filter.secret_by_name(rel)
            if reason:
                return f"secret: {reason}"
        return None

    def keep_empty(self, rel: str, st: os.stat_result, reason: str) -> None:
        self.entries.append(Entry(rel, st))
        try:
            with os.scandir(self.host(rel)) as it:
                nonempty = any(True for _ in it)
        except OSError:
            nonempty = False
        if nonempty:
            self.exclude(rel + "/*", reason)


def _is_swap(host: str, st: os.stat_result) -> bool:
    """A swap area keeps its signature in the last 10 bytes of the first page."""
    # mkswap needs at least 10 pages and always writes whole pages.
    if st.st_size < 40 * 1024 or st.st_size % 4096:
        return False
    try:
        with open(host, "rb", buffering=0) as fh:
            for off in _SWAP_MAGIC_OFFSETS:
                if off + 10 > st.st_size:
                    break
                fh.seek(off)
                if fh.read(10) in (b"SWAPSPACE2", b"SWAP-SPACE"):
                    return True
    except OSError:
        return False
    return False


def select_files(config: SelectionConfig) -> Selection:
    """Walk ``config.volume`` and decide for every path whether it goes into the image."""
    selection = _Walker(config).run()
    log.info("selected %d entries from %s, left out %d", len(selection.entries),
             selection.volume, len(selection.excluded))
    return selection
