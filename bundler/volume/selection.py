"""Which files of a volume go into the image, and why the others do not.

``select_files`` walks a directory tree and returns the kept entries in parent-before-child
order (each directory's children together) plus the exclusions with a reason each. It reads
the tree only through directory file descriptors (``safefs``): no symlink is followed at any
component, and the identity (device, inode, type) of every entry is recorded for the staging
step to check against. Reads are lstat, scandir and, for the secret filter and the swap check,
a bounded prefix of a file. It runs unchanged under pyfakefs.

Rules, in order of strength:

1. *Hard* exclusions, which ``-i`` cannot override: the destination / image / staging paths,
   the contents of the virtual-filesystem directories (``dev proc sys``, plus ``media mnt run
   tmp`` for the live root) and of every mount below the volume the mount policy leaves out. A
   directory mount point is kept, empty; a *file* mount point (``mount --bind FILE``) is left
   out. Bind mounts (mountinfo's root field is not ``/``) are only crossed with ``--all``.
2. Sockets (stale in an image) and swap files (recognised by their signature).
3. User ``-e`` patterns, then the secret filter (unless ``--no-filter``).

``-i`` patterns override rule 3 for the paths they match (a whole directory when they match
one) and, unlike classic rsync, can also reach *into* a directory that rule 3 excludes: that
directory is then kept as a skeleton holding only the included paths.

Patterns are volume-relative paths (a leading ``/`` or the volume's own host path, as given or
resolved, is stripped), matched component by component with shell globs (``*`` never crosses
``/``). A pattern that matches nothing is a warning.

Names are ``str`` with Python's surrogate escapes for bytes that are not UTF-8 (what
``os.scandir`` returns); ``safefs.display`` is their printable, lossless form.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from typing import Literal

from .. import signalsafe
from ..concurrency import Executor
from ..errors import VolumeError
from . import safefs, secrets_filter
from .mounts import Mount
from .safefs import Identity, display

log = logging.getLogger("bundler.volume")

VIRTUAL_DIRS: tuple[str, ...] = ("dev", "proc", "sys")
LIVE_VIRTUAL_DIRS: tuple[str, ...] = VIRTUAL_DIRS + ("media", "mnt", "run", "tmp")

# Filesystems that hold on-disk data of the system being imaged; with --local-mounts, mounts of
# these under the volume are copied (flattened) like classic did. Classic missed btrfs.
LOCAL_FS_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "jfs", "reiserfs", "btrfs", "f2fs",
                            "vfat", "exfat"})

MountPolicy = Literal["local", "one-filesystem", "all"]

_SWAP_MAGIC_OFFSETS = (4086, 8182, 16374, 65526)  # page size - 10, for 4/8/16/64 KiB pages
SCAN_WORKERS = 4          # the secret scan's readers (I/O overlaps; the regex holds the GIL)
SCAN_QUEUE = 256          # directories with a scan in flight, at most


_PACK = struct.Struct("<qqQqqQ")   # atime_ns mtime_ns ino size blocks rdev
_DEVS: dict[int, int] = {}         # one int object per device number


class Entry:
    """A kept path: ``rel`` is volume-relative without a leading slash ("" is the root).

    Memory matters at 400 000 entries (an ``os.stat_result`` is ~1 KiB): the fields are slots,
    the large numbers packed into one bytes object; ``st`` is the entry itself, which has the
    ``st_*`` attributes the rest of the code reads.
    """

    __slots__ = ("rel", "st_mode", "st_uid", "st_gid", "st_nlink", "st_dev", "_packed", "scan")

    def __init__(self, rel: str, st) -> None:
        self.rel = rel
        self.scan = False      # a secret-scan candidate not scanned yet (defer_scan)
        self.st_mode = st.st_mode
        self.st_uid = st.st_uid
        self.st_gid = st.st_gid
        self.st_nlink = st.st_nlink
        self.st_dev = _DEVS.setdefault(st.st_dev, st.st_dev)
        blocks = getattr(st, "st_blocks", None)
        self._packed = _PACK.pack(st.st_atime_ns, st.st_mtime_ns, st.st_ino, st.st_size,
                                  -1 if blocks is None else blocks, getattr(st, "st_rdev", 0))

    @property
    def st_atime_ns(self) -> int:
        return _PACK.unpack(self._packed)[0]

    @property
    def st_mtime_ns(self) -> int:
        return _PACK.unpack(self._packed)[1]

    @property
    def st_ino(self) -> int:
        return _PACK.unpack(self._packed)[2]

    @property
    def st_size(self) -> int:
        return _PACK.unpack(self._packed)[3]

    @property
    def st_blocks(self) -> int | None:
        blocks = _PACK.unpack(self._packed)[4]
        return None if blocks < 0 else blocks

    @property
    def st_rdev(self) -> int:
        return _PACK.unpack(self._packed)[5]

    @property
    def st(self) -> Entry:
        return self

    @property
    def kind(self) -> str:
        return _kind(self.st_mode)

    @property
    def identity(self) -> Identity:
        return Identity(self.st_dev, _PACK.unpack(self._packed)[2], stat.S_IFMT(self.st_mode))

    def __repr__(self) -> str:
        return f"Entry({self.rel!r}, {self.kind})"


@dataclass(frozen=True)
class Exclusion:
    rel: str
    reason: str

    def display(self) -> str:
        """Printable and lossless (see ``safefs.display``)."""
        return "/" + display(self.rel)


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
    mount_policy: MountPolicy = "one-filesystem"
    # Host paths of active swap files (/proc/swaps), on top of signature detection.
    swap_files: Sequence[str] = ()
    # Other spellings of the volume's host path (as the user gave it, before symlinks were
    # resolved) that absolute patterns may start with.
    volume_aliases: Sequence[Path] = ()
    # Mark secret-scan candidates (Entry.scan) instead of reading them here: the ext4 feed scans
    # each on the descriptor it opens for the copy anyway (or scan_deferred() does).
    defer_scan: bool = False


@dataclass
class Selection:
    volume: Path
    entries: list[Entry]
    excluded: list[Exclusion]
    warnings: list[str]
    unmatched_excludes: list[str]
    unmatched_includes: list[str] = field(default_factory=list)

    @property
    def used_bytes(self) -> int:
        """Bytes the kept data occupies (allocated blocks; hard-linked inodes counted once)."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for e in self.entries:
            if e.st_nlink > 1 and not stat.S_ISDIR(e.st_mode):
                key = (e.st_dev, e.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            if stat.S_ISREG(e.st_mode) or stat.S_ISDIR(e.st_mode) or stat.S_ISLNK(e.st_mode):
                total += _allocated(e)
        return total

    def open_cursor(self) -> safefs.DirCursor:
        """Directory fds into the volume for a walk over the entries, each checked against
        the identity the selection recorded, the volume's top directory first; ``close()``
        closes them all."""
        dir_ids = {e.rel: e.identity for e in self.entries if stat.S_ISDIR(e.st_mode)}
        cursor = safefs.DirCursor(safefs.open_root(self.volume), dir_ids.get, owns_root=True)
        if not dir_ids[""].matches(os.fstat(cursor.root_fd)):
            cursor.close()
            raise safefs.TreeChanged("", "the volume's top directory was replaced")
        return cursor

    @property
    def inode_count(self) -> int:
        links = {(e.st_dev, e.st_ino) for e in self.entries
                 if e.st_nlink > 1 and not stat.S_ISDIR(e.st_mode)}
        singles = sum(1 for e in self.entries if e.st_nlink <= 1 or stat.S_ISDIR(e.st_mode))
        return singles + len(links)


def _allocated(st) -> int:
    blocks = st.st_blocks
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


def normalize_pattern(pattern: str, volume: Path, aliases: Sequence[Path] = ()) -> str:
    """A volume-relative pattern without leading/trailing slashes.

    An absolute pattern under the volume's host path (or one of its ``aliases``, e.g. the
    path as given before symlinks were resolved) is made relative to it (Packer passes host
    paths); any other absolute pattern is taken as relative to the volume root.
    """
    p = pattern.strip()
    for root in (volume, *aliases):
        vol = str(root).rstrip("/")
        if vol and p.startswith(vol + "/"):
            p = p[len(vol):]
            break
        if vol and p == vol:
            p = ""
            break
    return "/".join(c for c in p.split("/") if c not in ("", "."))


def _components(rel: str) -> list[str]:
    return rel.split("/") if rel else []


def pattern_matches(pattern: str, rel: str) -> bool:
    pc, rc = _components(pattern), _components(rel)
    return len(pc) == len(rc) and all(fnmatchcase(r, p) for p, r in zip(pc, rc, strict=False))


def pattern_may_match_below(pattern: str, rel: str) -> bool:
    """Whether ``pattern`` could match a path strictly inside directory ``rel``."""
    pc, rc = _components(pattern), _components(rel)
    return len(pc) > len(rc) and all(fnmatchcase(r, p) for p, r in zip(pc, rc, strict=False))


# ---------------------------------------------------------------------------------- the walk

class _Walker:
    def __init__(self, config: SelectionConfig) -> None:
        self.c = config
        self.volume = Path(os.path.abspath(config.volume))
        aliases = [Path(os.path.abspath(a)) for a in config.volume_aliases]
        self.excludes = [normalize_pattern(p, self.volume, aliases)
                         for p in split_patterns(config.excludes)]
        self.includes = [normalize_pattern(p, self.volume, aliases)
                         for p in split_patterns(config.includes)]
        self.exclude_hits = dict.fromkeys(self.excludes, 0)
        self.include_hits = dict.fromkeys(self.includes, 0)
        vol = str(self.volume).rstrip("/")
        self.hard_by_rel: dict[str, str] = {}
        self.hard_by_inode: dict[tuple[int, int], str] = {}
        for p, reason in config.hard_excludes.items():
            ap = os.path.abspath(p)
            if ap.startswith(vol + "/"):
                self.hard_by_rel[ap[len(vol) + 1:]] = reason
            try:
                st = os.stat(ap)
            except OSError:
                continue
            self.hard_by_inode[(st.st_dev, st.st_ino)] = reason
        self.mounts: dict[str, Mount] = {}
        for m in config.mounts:
            mp = m.mount_point.rstrip("/") or "/"
            if mp != "/" and mp.startswith(vol + "/"):
                self.mounts[mp[len(vol) + 1:]] = m   # the last (topmost) mount wins
        self.swap_rels = set()
        for sp in config.swap_files:
            ap = os.path.abspath(sp)
            if ap.startswith(vol + "/"):
                self.swap_rels.add(ap[len(vol) + 1:])
        self.entries: list[Entry] = []
        self.excluded: list[Exclusion] = []
        self.warnings: list[str] = []
        self.root_dev = 0
        self.dir_ids: dict[str, Identity] = {}
        self.pool: Executor | None = None
        self.scans: deque[Future] = deque()
        self.scan_results: list[tuple[str, str | None, str | None]] = []

    def exclude(self, rel: str, reason: str) -> None:
        self.excluded.append(Exclusion(rel, reason))

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def included(self, rel: str) -> bool:
        hit = False
        for p in self.includes:
            if pattern_matches(p, rel):
                self.include_hits[p] += 1
                hit = True
        return hit

    def include_below(self, rel: str) -> bool:
        return any(pattern_may_match_below(p, rel) for p in self.includes)

    def run(self) -> Selection:
        try:
            root_fd = safefs.open_root(self.volume)
        except VolumeError:
            if not os.path.lexists(self.volume):
                raise VolumeError(f"volume {self.volume} does not exist") from None
            raise VolumeError(f"volume {self.volume} is not a directory") from None
        try:
            st = os.fstat(root_fd)
            self.root_dev = st.st_dev
            self.entries.append(Entry("", st))
            self.dir_ids[""] = Identity.of(st)
            cursor = safefs.DirCursor(root_fd, self.dir_ids.get)
            if self.c.secret_filter:
                self.pool = Executor(SCAN_WORKERS, thread_name_prefix="secret-scan")
            try:
                self.walk(cursor)
                self.finish_scans()
            finally:
                cursor.close()
                if self.pool is not None:
                    self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            os.close(root_fd)
        unmatched = [p for p, n in self.exclude_hits.items() if n == 0]
        for p in unmatched:
            self.warn(f"-e {display(p)} matched nothing under {display(str(self.volume))}")
        unmatched_inc = [p for p, n in self.include_hits.items() if n == 0]
        for p in unmatched_inc:
            self.warn(f"-i {display(p)} matched nothing under {display(str(self.volume))}")
        return Selection(self.volume, self.entries, self.excluded, self.warnings, unmatched,
                         unmatched_inc)

    def walk(self, cursor: safefs.DirCursor) -> None:
        """Walk iteratively (deep trees must not hit the recursion limit)."""
        stack: list[tuple[str, bool]] = [("", False)]
        while stack:
            d, skel = stack.pop()
            try:
                fd = cursor.fd_for(d)
                with os.scandir(fd) as it:
                    names = sorted(e.name for e in it)
            except OSError as exc:
                self.warn(f"cannot read directory /{display(d)}: {exc.strerror}; kept empty")
                continue
            children: list[tuple[str, bool]] = []
            scan: list[tuple[str, str, Identity]] = []
            parent_dev = os.fstat(fd).st_dev
            for name in names:
                child = f"{d}/{name}" if d else name
                descend = self.visit(fd, parent_dev, name, child, skel, scan)
                if descend is not None:
                    children.append((child, descend))
            if scan:
                self.submit_scan(fd, scan)
            # Reverse so the stack pops children in name order (parents always precede children).
            stack.extend(reversed(children))

    def visit(self, dir_fd: int, parent_dev: int, name: str, rel: str, skeleton: bool,
              scan: list[tuple[str, str, Identity]]) -> bool | None:
        """Decide on one path; returns None (don't descend) or the skeleton flag for its walk."""
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except OSError as exc:
            self.warn(f"cannot stat /{display(rel)}: {exc.strerror}; left out")
            self.exclude(rel, f"cannot stat ({exc.strerror})")
            return None
        is_dir = stat.S_ISDIR(st.st_mode)

        # 1. hard exclusions
        reason = self.hard_by_rel.get(rel) or self.hard_by_inode.get((st.st_dev, st.st_ino))
        if reason:
            self.exclude(rel, reason)
            return None
        if rel in self.c.virtual_dirs and is_dir:
            self.keep_empty(dir_fd, name, rel, st,
                            "virtual filesystem contents (directory kept as mount point)")
            return None
        mount = self.mounts.get(rel)
        policy = self.c.mount_policy
        if mount is not None and not (policy == "all" or (
                policy == "local" and mount.fstype in LOCAL_FS_TYPES and not mount.is_bind)):
            what = (f"bind mount of {display(mount.root)} from {mount.fstype} "
                    f"{display(mount.source)}" if mount.is_bind
                    else f"mount point of {mount.fstype} {display(mount.source)}".rstrip())
            if is_dir:
                self.keep_empty(dir_fd, name, rel, st, what + " (directory kept; use "
                                + ("--all" if mount.is_bind or mount.fstype not in LOCAL_FS_TYPES
                                   else "--local-mounts or --all") + " to include)")
            else:
                self.exclude(rel, what + " (a file mount: left out; use --all to include)")
            return None
        if is_dir and policy != "all" and st.st_dev != parent_dev and mount is None:
            self.keep_empty(dir_fd, name, rel, st,
                            "another filesystem (directory kept; use --all to include)")
            return None

        # 2. things that make no sense in an image
        if stat.S_ISSOCK(st.st_mode):
            self.exclude(rel, "socket")
            return None
        if stat.S_ISREG(st.st_mode) and (rel in self.swap_rels or _is_swap(dir_fd, name, st)):
            self.exclude(rel, "swap file")
            return None

        # 3. user excludes and the secret filter, which -i overrides
        if self.included(rel):
            self.keep(rel, st)
            # An included directory comes with everything below, minus the hard exclusions.
            return False if is_dir else None
        soft = self.soft_reason(rel, st)
        if soft is not None:
            if is_dir and self.include_below(rel):
                self.keep(rel, st)
                return True
            self.exclude(rel, soft)
            return None
        if skeleton:
            if is_dir and self.include_below(rel):
                self.keep(rel, st)
                return True
            self.exclude(rel, "inside an excluded directory (not matched by -i)")
            return None
        if stat.S_ISREG(st.st_mode) and self.c.secret_filter \
                and secrets_filter.worth_scanning(rel, st):
            if self.c.defer_scan:
                self.keep(rel, st)
                self.entries[-1].scan = True
                return None
            scan.append((name, rel, Identity.of(st)))   # decided when the scan returns
        elif stat.S_ISREG(st.st_mode) and not _readable(dir_fd, name):
            self.warn(f"cannot read /{display(rel)} (permission denied): left out")
            self.exclude(rel, "unreadable (permission denied)")
            return None
        self.keep(rel, st)
        return False if is_dir else None

    def keep(self, rel: str, st) -> None:
        self.entries.append(Entry(rel, st))
        if stat.S_ISDIR(st.st_mode):
            self.dir_ids[rel] = Identity.of(st)

    def soft_reason(self, rel: str, st) -> str | None:
        for p in self.excludes:
            if pattern_matches(p, rel):
                self.exclude_hits[p] += 1
                return f"excluded by -e {display(p)}"
        if self.c.secret_filter and not stat.S_ISDIR(st.st_mode):
            reason = secrets_filter.secret_by_name(rel)
            if reason:
                return f"secret: {reason}"
        return None

    def keep_empty(self, dir_fd: int, name: str, rel: str, st, reason: str) -> None:
        self.keep(rel, st)
        try:
            fd = safefs.open_dir(dir_fd, name, rel)
            try:
                with os.scandir(fd) as it:
                    nonempty = any(True for _ in it)
            finally:
                os.close(fd)
        except OSError:
            nonempty = False
        if nonempty:
            self.exclude(rel + "/*", reason)

    # ------------------------------------------------------------------ the secret scan

    def submit_scan(self, dir_fd: int, jobs: list[tuple[str, str, Identity]]) -> None:
        """Scan one directory's candidates on the pool (its own fd: the walk moves on)."""
        if self.pool is None:
            self.scan_results.extend(_scan_batch(dir_fd, jobs, close=False))
            return
        self.scans.append(safefs.submit_with_dups(self.pool, (dir_fd,),
                                                  partial(_scan_dups, jobs=jobs)))
        while len(self.scans) > SCAN_QUEUE:
            self.scan_results.extend(signalsafe.result(self.scans.popleft()))

    def finish_scans(self) -> None:
        while self.scans:
            self.scan_results.extend(signalsafe.result(self.scans.popleft()))
        self.scans.clear()
        drop: set[str] = set()
        for rel, kind, error in self.scan_results:
            if error is not None:
                self.warn(f"cannot read /{display(rel)} ({error}): left out, it could not be "
                          "checked for keys")
                self.exclude(rel, f"unreadable ({error})")
                drop.add(rel)
            elif kind:
                self.exclude(rel, f"secret: {kind}")
                drop.add(rel)
        if drop:
            self.entries = [e for e in self.entries if e.rel not in drop]


def _scan_dups(fds: tuple[int, ...], jobs: list[tuple[str, str, Identity]]
               ) -> list[tuple[str, str | None, str | None]]:
    """``_scan_batch`` on the one directory fd a task owns (``safefs.submit_with_dups``)."""
    return _scan_batch(fds[0], jobs)


def _scan_batch(dir_fd: int, jobs: list[tuple[str, str, Identity]], *,
                close: bool = True) -> list[tuple[str, str | None, str | None]]:
    """(rel, secret kind or None, error or None) for each candidate of one directory."""
    out: list[tuple[str, str | None, str | None]] = []
    try:
        for name, rel, ident in jobs:
            try:
                kind = secrets_filter.scan_file(dir_fd, name, rel, ident)
            except secrets_filter.UnreadableError as exc:
                out.append((rel, None, str(exc)))
                continue
            if kind:    # only what must be left out is kept (memory at 400 000 files)
                out.append((rel, kind, None))
    finally:
        if close:
            os.close(dir_fd)
    return out


def _readable(dir_fd: int, name: str) -> bool:
    try:
        return os.access(name, os.R_OK, dir_fd=dir_fd, follow_symlinks=False)
    except (OSError, NotImplementedError):  # pragma: no cover - faccessat without AT_SYMLINK
        return os.access(name, os.R_OK, dir_fd=dir_fd)


def _is_swap(dir_fd: int, name: str, st) -> bool:
    """A swap area keeps its signature in the last 10 bytes of the first page."""
    # mkswap needs at least 10 pages and always writes whole pages.
    if st.st_size < 40 * 1024 or st.st_size % 4096:
        return False
    try:
        fd = safefs.open_file(dir_fd, name, name, Identity.of(st))
    except OSError:
        return False
    try:
        for off in _SWAP_MAGIC_OFFSETS:
            if off + 10 > st.st_size:
                break
            os.lseek(fd, off, os.SEEK_SET)
            if os.read(fd, 10) in (b"SWAPSPACE2", b"SWAP-SPACE"):
                return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def scan_deferred(selection: Selection, wanted=None) -> None:
    """Run the secret scan for the candidates a ``defer_scan`` selection marked (those whose
    rel ``wanted`` accepts, default all): secrets and unreadable candidates move from the
    entries to the exclusions, as the scan during the walk does."""
    jobs = [e for e in selection.entries if e.scan and (wanted is None or wanted(e.rel))]
    if not jobs:
        return
    cursor = selection.open_cursor()
    drop: set[str] = set()
    try:
        for e in jobs:
            parent, _, name = e.rel.rpartition("/")
            for rel, kind, error in _scan_batch(cursor.fd_for(parent), [(name, e.rel, e.identity)],
                                                close=False):
                if error is not None:
                    msg = (f"cannot read /{display(rel)} ({error}): left out, it could not be "
                           "checked for keys")
                    log.warning("%s", msg)
                    selection.warnings.append(msg)
                    selection.excluded.append(Exclusion(rel, f"unreadable ({error})"))
                else:
                    selection.excluded.append(Exclusion(rel, f"secret: {kind}"))
                drop.add(rel)
            e.scan = False
    finally:
        cursor.close()
    if drop:
        selection.entries = [e for e in selection.entries if e.rel not in drop]


def select_files(config: SelectionConfig) -> Selection:
    """Walk ``config.volume`` and decide for every path whether it goes into the image."""
    selection = _Walker(config).run()
    log.info("selected %d entries from %s, left out %d", len(selection.entries),
             display(str(selection.volume)), len(selection.excluded))
    return selection
