"""ext4 population without a copy of the tree: the selection streamed into one ``debugfs``.

Why not ``mke2fs -d``: it reads a directory, so the selection (excludes, secret filter, mount
points) had to exist as a staging copy first — temporary disk of the tree's size on top of the
image, and creating, copying and deleting every file cost more than mke2fs itself (e2fsprogs
1.47.0, what Debian 12 ships, reads no tarball). Here mke2fs makes the empty filesystem and one
``debugfs -w -f -`` receives commands on a pipe while this process walks the selection:
``mkdir``/``symlink``/``mknod``/``ln`` for entries, ``write`` for file data (the same libext2fs
code ``mke2fs -d`` runs: holes and zero blocks stay sparse), ``set_inode_field`` for owner,
mode, mtime (nanoseconds included) and inode flags, ``ea_set`` for extended attributes. atime
and ctime are the time of the build, as for any copy (one command less per file: a quarter of
debugfs's work).

No name in the tree is resolved by debugfs: each file is opened by this process through
directory fds and checked against the identity the selection recorded (``safefs``), and
debugfs reads it through ``/proc/PID/fd/N``, which reopens that very inode. The descriptor stays
open until debugfs has started the command after it: in ``-f`` mode debugfs echoes every
command unbuffered before running it, so the echo of command k+1 means command k is done.
Names are addressed as ``./NAME`` (a bare ``<12>`` would name inode 12) in double quotes
(``""`` is a literal quote).

The secret scan of each candidate runs here, on the descriptor already open for the copy,
while debugfs writes the previous files on the other core. Trees debugfs cannot take (a line
break in a name, a command line over its 8 KiB buffer, device numbers over 65535) get a reason
from :func:`unsupported`; the caller then builds a staging tree for ``mke2fs -d`` instead.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import stat
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..concurrency import join_thread, start_thread
from ..errors import VolumeError
from ..signalsafe import Condition
from ..tools import which
from . import safefs, secrets_filter
from . import staging as stagelib
from .safefs import display
from .selection import Entry, Exclusion, Selection
from .staging import (
    KEPT_FLAGS,
    XATTR_INLINE_LIMIT,
    PendingXattr,
    StageStats,
    XattrPolicy,
    inode_flags,
    xattr_cost,
)

log = logging.getLogger("bundler.volume")

LINE_MAX = 8000          # debugfs reads each command with fgets() into an 8 KiB (BUFSIZ) buffer
MAX_OPEN = 512           # source files open at once (written, debugfs not done with them yet)
REAP_AT = 32             # files written before the finished ones are looked for
FLUSH_BYTES = 1 << 15    # commands are written to the pipe in chunks of this size
EXTENTS_FL = 0x80000     # set on every extent-mapped inode; "sif flags" replaces the field
# Lines debugfs prints: the echo of each command, and "write"'s new inode number.
_OUTPUT = re.compile(rb"\n(?:debugfs: |Allocated inode: (\d+))")
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:/=+,@")


def quote(text: str) -> str:
    """One debugfs argument (``ss_parse``: inside double quotes ``""`` is a literal quote)."""
    return '"' + text.replace('"', '""') + '"'


def here(name: str) -> str:
    """A name in the current directory for commands that resolve it: never an ``<ino>``."""
    return quote("./" + name)


def escape_value(value: bytes) -> str:
    """An xattr value for ``ea_set`` (``parse_c_string``: ``\\xHH`` for anything unusual)."""
    return "".join(chr(b) if b in _SAFE else f"\\x{b:02x}" for b in value)


def time_extra(sec_ns: int) -> int:
    """ext4's ``*_extra`` field: nanoseconds << 2 | epoch bits (seconds beyond 32 bits)."""
    sec, ns = divmod(sec_ns, 1_000_000_000)
    low = ((sec + 2 ** 31) % 2 ** 32) - 2 ** 31
    return (ns << 2) | (((sec - low) >> 32) & 3)


def time_field(field: str, sec: int) -> str:
    """``FIELD @SECONDS`` (epoch bits included), but -1 is debugfs's parse error: its low word."""
    return f"{field} @{sec}" if sec != -1 else f"{field}_lo 0xffffffff"


def unsupported(selection: Selection) -> str | None:
    """Why debugfs cannot take this selection (the caller stages it for mke2fs -d), or None."""
    for e in selection.entries:
        if "\n" in e.rel or "\r" in e.rel:
            return f"/{display(e.rel)}: a line break in the name"
        # A path is quoted in full by "cd" and "ln"; each quote doubles in the worst case.
        if 2 * len(os.fsencode(e.rel)) + 64 > LINE_MAX:
            return f"/{display(e.rel)}: a path longer than debugfs commands can hold"
        if stat.S_ISCHR(e.st_mode) or stat.S_ISBLK(e.st_mode):
            if os.major(e.st_rdev) > 65535 or os.minor(e.st_rdev) > 65535:
                return f"/{display(e.rel)}: a device number debugfs cannot make"
    return None


class DebugfsError(VolumeError):
    """debugfs reported failed commands (``stderr`` holds the first of them)."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


class Debugfs:
    """One ``debugfs -w -f -`` fed through a pipe; counts the commands it has started."""

    def __init__(self, target: str) -> None:
        self.proc = subprocess.Popen([which("debugfs"), "-w", "-f", "-", target],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.sent = 0
        self.started = 0
        self.inodes: dict[int, int] = {}    # command number of a "write" -> its new inode
        self.eof = False
        self.errors: list[str] = []
        self.error_count = 0
        # The main thread waits for and reads what the readers record: a lock that a signal
        # cannot leave held, and a condition for the waits only (signalsafe).
        self.lock = threading.Lock()
        self.changed = Condition(self.lock)
        self.buf: list[str] = []
        self.buf_len = 0
        self.threads = [threading.Thread(target=f, name=f"ami-bundler-debugfs-{n}", daemon=True)
                        for n, f in (("out", self._read_out), ("err", self._read_err))]
        for t in self.threads:
            start_thread(t)

    def send(self, line: str) -> int:
        """Queue one command; returns its number."""
        # A character is at most 4 bytes of UTF-8 (a surrogate escape is 1).
        if 4 * len(line) >= LINE_MAX and len(line.encode("utf-8", "surrogateescape")) >= LINE_MAX:
            raise VolumeError(f"internal error: a debugfs command of {len(line)} characters")
        self.buf.append(line)
        self.buf_len += len(line)
        self.sent += 1
        if self.buf_len >= FLUSH_BYTES:
            self.flush()
        return self.sent - 1

    def send_fixed(self, text: str, n: int) -> None:
        """``n`` short commands of fixed form (numbers, no names) joined by line breaks."""
        self.buf.append(text)
        self.buf_len += len(text)
        self.sent += n
        if self.buf_len >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        self.buf.append("")
        data = "\n".join(self.buf).encode("utf-8", "surrogateescape")
        self.buf.clear()
        self.buf_len = 0
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.proc.wait()
            raise self.failure() from None

    def done(self, index: int) -> bool:
        """Whether command ``index`` has finished (debugfs started the next one or exited)."""
        return self.started > index + 1 or self.eof

    def wait_done(self, index: int) -> None:
        if index + 1 >= self.sent:
            self.send("cd .")    # a command after it, whose echo says it is done
        self.flush()
        with self.lock:
            while not self.done(index):
                self.changed.wait(1.0)

    def close(self) -> None:
        """Send the rest, let debugfs finish; raise when any command failed."""
        self.flush()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self.proc.wait()
        for t in self.threads:  # debugfs has exited: its readers end at the pipes' EOF
            join_thread(t)
        if code or self.error_count:
            raise self.failure()

    def failure(self) -> DebugfsError:
        return DebugfsError(f"debugfs could not populate the image ({self.error_count} "
                            f"error(s)): {self.error_summary()}", "\n".join(self.errors))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for t in self.threads:
            join_thread(t)

    def error_summary(self) -> str:
        return "; ".join(self.errors[:3]) or f"exit {self.proc.returncode}"

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        carry = b"\n"
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            # Whole lines only; names hold no line break (unsupported()), so a line that
            # starts with "debugfs: " is an echo.
            data = carry + chunk
            end = data.rfind(b"\n")
            carry = data[end:]
            started = self.started
            found: list[tuple[int, int]] = []
            for m in _OUTPUT.finditer(data, 0, end):
                if m.group(1) is None:
                    started += 1
                else:
                    found.append((started - 1, int(m.group(1))))
            with self.lock:
                self.inodes.update(found)
                self.started = started
                self.changed.notify_all()
        with self.lock:
            self.eof = True
            self.changed.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            if not line or line.startswith("debugfs "):   # the version banner
                continue
            self.error_count += 1
            if len(self.errors) < 20:
                self.errors.append(line)


class Feed:
    """Writes entries of a tree into the image through :class:`Debugfs`."""

    def __init__(self, db: Debugfs, stats: StageStats, xattrs: XattrPolicy) -> None:
        self.db = db
        self.stats = stats
        self.xattrs = xattrs
        self.write_cmd = f"write /proc/{os.getpid()}/fd/"
        # (command number, fd, entry, inode flags, xattrs) of each write not yet done
        self.pending: collections.deque[tuple[int, int, Entry, int, list[tuple[str, bytes]]]] = \
            collections.deque()
        self.cwd: str | None = None
        self.spooled = 0
        self.excluded: list[Exclusion] = []
        self.warnings: list[str] = []

    def run(self, selection: Selection, *, skip: Callable[[str, bool], bool] | None = None,
            existing: Callable[[str, bool], bool] | None = None, count: bool = True) -> None:
        """Feed ``selection`` (read from its volume). ``skip(rel, is_dir)``: entries another
        feed writes; ``existing(rel, is_dir)``: directories already in the image."""
        src = selection.open_cursor()
        root = src.root_fd
        first: dict[tuple[int, int], str] = {}
        links: dict[str, int] = {}
        try:
            if existing is None or not existing("", True):
                self.meta_root(selection.entries[0], root)
            self.cwd = None         # "cd" first, and the parent's fd with it
            pfd = root
            pending = self.pending
            for e in selection.entries[1:]:
                mode = e.st_mode
                is_dir = stat.S_ISDIR(mode)
                rel = e.rel
                if skip is not None and skip(rel, is_dir):
                    continue
                if is_dir and existing is not None and existing(rel, True):
                    continue
                parent, _, name = rel.rpartition("/")
                if count and stagelib.STAGE_HOOK is not None:
                    stagelib.STAGE_HOOK(rel)     # tests: swap things at exactly this moment
                if parent != self.cwd:
                    self.db.send(f"cd {quote('/' + parent)}")
                    self.cwd = parent
                    pfd = src.fd_for(parent)
                if is_dir:
                    self.directory(pfd, name, e)
                elif stat.S_ISREG(mode):
                    key = (e.st_dev, e.st_ino)
                    if e.st_nlink > 1 and key in first:
                        self.db.send(f"ln {quote('/' + first[key])} {quote(name)}")
                        links[first[key]] += 1
                        self.stats.linked += count
                        continue
                    if self.file(pfd, name, e, count) and e.st_nlink > 1:
                        first[key] = e.rel
                        links[e.rel] = 1
                else:
                    self.special(pfd, name, e)
                # Every few entries: a failed command is noticed a few commands late at most.
                if len(pending) >= REAP_AT or self.db.error_count:
                    self.reap()
            self.drain()
            # debugfs "ln" leaves the link count alone.
            for rel, n in links.items():
                if n > 1:
                    self.db.send(f"sif {quote('/' + rel)} links_count {n}")
            self.db.send("cd /")
            self.cwd = ""
            self.db.flush()
        finally:
            src.close()

    def finish(self) -> None:
        self.db.close()
        self.close_all()

    def close_all(self) -> None:
        while self.pending:
            os.close(self.pending.popleft()[1])

    def reap(self) -> None:
        """Close the files debugfs is done with; wait when too many are open. A failed
        command stops the feed (debugfs would go on with the rest)."""
        db = self.db
        if db.error_count:
            db.flush()
            raise db.failure()
        pending = self.pending
        if pending and db.done(pending[0][0]):
            done = []
            with db.lock:       # once for all of them
                while pending and db.done(pending[0][0]):
                    item = pending.popleft()
                    done.append((db.inodes.pop(item[0], None), item))
            for ino, item in done:
                self.written(ino, *item)
        if len(pending) >= MAX_OPEN:
            db.wait_done(pending[0][0])
            self.reap()

    def drain(self) -> None:
        """Wait for every pending write and send its metadata."""
        while self.pending:
            self.db.wait_done(self.pending[-1][0])
            self.reap()

    def written(self, ino: int | None, index: int, fd: int, e: Entry, flags: int,
                values: list[tuple[str, bytes]]) -> None:
        os.close(fd)
        if ino is None:
            self.db.flush()
            raise self.db.failure()
        if e.st_uid or e.st_gid or flags or values:
            self.meta(f"<{ino}>", e, mode=False, flags=flags, values=values, named=False)
        else:                    # most files: the times only, as one string
            self.times(f"<{ino}>", e)

    # ------------------------------------------------------------------ entries

    def meta_root(self, e: Entry, fd: int) -> None:
        self.db.send("cd /")
        self.cwd = ""
        self.times("/", e)
        # The root directory's own label (security.selinux) and flags, like any directory's.
        flags = inode_flags(fd) & KEPT_FLAGS
        if flags:
            self.db.send(f"sif / flags {flags | EXTENTS_FL:#x}")
        values = read_xattrs(fd, "")
        if values:
            self.set_xattrs("/", "", values)

    def directory(self, pfd: int, name: str, e: Entry) -> None:
        fd = safefs.open_dir(pfd, name, e.rel, e.identity)
        try:
            values = read_xattrs(fd, e.rel)
            flags = inode_flags(fd) & KEPT_FLAGS
        finally:
            os.close(fd)
        if e.rel == "lost+found":
            pass                    # mke2fs made it; its metadata is the tree's below
        else:
            self.db.send(f"mkdir {quote(name)}")
        self.stats.created += 1
        self.meta(name, e, mode=True, flags=flags, values=values)

    def file(self, pfd: int, name: str, e: Entry, count: bool) -> bool:
        """Write one regular file; False when it is left out (a secret, or unreadable)."""
        try:
            fd = safefs.open_file(pfd, name, e.rel, e.identity)
        except PermissionError as exc:
            if not getattr(e, "scan", False):
                raise VolumeError(f"cannot read /{display(e.rel)}: {exc.strerror}") from None
            return self.leave_out(e.rel, exc.strerror or "permission denied")
        try:
            if e.scan:
                try:
                    # What the selection saw plus one byte, not a whole prefix buffer for the
                    # small files most are; a file that grew since is read up to the prefix.
                    prefix = secrets_filter.SCAN_PREFIX
                    want = min(prefix, e.st_size + 1)
                    data = os.pread(fd, want, 0)
                    if len(data) == want < prefix:
                        data += os.pread(fd, prefix - want, want)
                except OSError as exc:
                    return self.leave_out(e.rel, exc.strerror or str(exc))
                kind = secrets_filter.private_key_in(data, name.lower())
                if kind:
                    self.excluded.append(Exclusion(e.rel, f"secret: {kind}"))
                    return False
            values = read_xattrs(fd, e.rel)
            flags = inode_flags(fd) & KEPT_FLAGS
            if self.lost_found_clash(e.rel):
                self.db.send('rmdir "lost+found"')
            index = self.db.send(f"{self.write_cmd}{fd} {quote(name)}")
        except BaseException:
            os.close(fd)
            raise
        # Its metadata follows once debugfs has said which inode it made: addressed as <ino>,
        # set_inode_field skips the name lookup, most of its cost in a large directory.
        self.pending.append((index, fd, e, flags, values))
        if count:
            self.stats.fed += 1
            self.stats.fed_bytes += e.st_size
        return True

    def special(self, pfd: int, name: str, e: Entry) -> None:
        safefs.check_same(pfd, name, e.rel, e.identity)
        mode = e.st_mode
        if self.lost_found_clash(e.rel):
            self.db.send('rmdir "lost+found"')
        if stat.S_ISLNK(mode):
            target = os.readlink(name, dir_fd=pfd)
            line = f"symlink {quote(name)} {quote(target)}"
            if "\n" in target or "\r" in target or len(os.fsencode(line)) + 1 > LINE_MAX:
                raise VolumeError(f"/{display(e.rel)}: a symlink target debugfs cannot take "
                                  "(a line break or over 4000 bytes)")
            self.db.send(line)
        elif stat.S_ISFIFO(mode):
            self.db.send(f"mknod {quote(name)} p")
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = "c" if stat.S_ISCHR(mode) else "b"
            self.db.send(f"mknod {quote(name)} {kind} {os.major(e.st_rdev)} "
                         f"{os.minor(e.st_rdev)}")
        else:
            self.stats.skipped.append((e.rel, f"unsupported file type {e.kind}"))
            return
        path = f"/proc/self/fd/{pfd}/{name}"
        values = read_xattrs(path, e.rel)
        self.stats.created += 1
        self.meta(name, e, mode=not stat.S_ISLNK(mode), flags=0, values=values)

    def lost_found_clash(self, rel: str) -> bool:
        return rel == "lost+found"      # a non-directory of that name replaces mke2fs's

    def leave_out(self, rel: str, error: str) -> bool:
        """A scan candidate that cannot be read is left out, as the selection's scan does."""
        self.warnings.append(f"cannot read /{display(rel)} ({error}): left out, it could not "
                             "be checked for keys")
        self.excluded.append(Exclusion(rel, f"unreadable ({error})"))
        return False

    # ------------------------------------------------------------------ metadata

    def meta(self, name: str, e: Entry, *, mode: bool, flags: int,
             values: list[tuple[str, bytes]], named: bool = True) -> None:
        t = here(name) if named else name
        send = self.db.send
        if mode:
            send(f"sif {t} mode 0{e.st_mode:o}")
        if e.st_uid:
            send(f"sif {t} uid {e.st_uid}")
        if e.st_gid:
            send(f"sif {t} gid {e.st_gid}")
        self.times(t, e)
        if flags:
            send(f"sif {t} flags {flags | EXTENTS_FL:#x}")
        if values:
            self.set_xattrs(t, e.rel, values)

    def times(self, t: str, e: Entry) -> None:
        mtime = e.st_mtime_ns
        sec, ns = divmod(mtime, 1_000_000_000)
        if not ns and 0 <= sec < 2 ** 31:
            self.db.send_fixed(f"sif {t} mtime @{sec}", 1)
        elif 0 < sec < 2 ** 31:
            self.db.send_fixed(f"sif {t} mtime @{sec}\nsif {t} mtime_extra {ns << 2:#x}", 2)
        else:
            self.db.send(f"sif {t} {time_field('mtime', sec)}")
            self.db.send(f"sif {t} mtime_extra {time_extra(mtime):#x}")

    def set_xattrs(self, t: str, rel: str, values: list[tuple[str, bytes]]) -> None:
        if xattr_cost(values) > XATTR_INLINE_LIMIT:
            self.oversize(rel, values)
            return
        for name, value in values:
            line = f"ea_set {t} {quote(name)} {quote(escape_value(value))}"
            if len(line) + 1 > LINE_MAX:
                path = self.spool(value)
                line = f"ea_set -f {quote(str(path))} {t} {quote(name)}"
            self.db.send(line)

    def oversize(self, rel: str, values: list[tuple[str, bytes]]) -> None:
        """Too large for an inode and one block: set later with ea_inode, or reported."""
        self.stats.oversize_xattr_files.append(rel)
        if not self.xattrs.keep or self.xattrs.spool_dir is None:
            self.stats.dropped_xattrs.append((rel, sorted(n for n, _ in values)))
            return
        for name, value in values:
            self.stats.pending_xattrs.append(PendingXattr(rel, name, self.spool(value)))

    def spool(self, value: bytes) -> Path:
        if self.xattrs.spool_dir is None:
            raise VolumeError("internal error: no directory for extended attribute values")
        self.spooled += 1
        path = self.xattrs.spool_dir / f"feed-xattr-{self.spooled}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(value)
        return path


def read_xattrs(src: int | str, rel: str) -> list[tuple[str, bytes]]:
    """(name, value) of every readable extended attribute (a path is not followed)."""
    nofollow = {"follow_symlinks": False} if isinstance(src, str) else {}
    try:
        names = os.listxattr(src, **nofollow)
    except OSError:
        return []
    values: list[tuple[str, bytes]] = []
    for name in names:
        try:
            values.append((name, os.getxattr(src, name, **nofollow)))
        except OSError as exc:
            log.debug("xattr %s of /%s unreadable: %s", name, display(rel), exc.strerror)
    return values


def image_target(image: Path, offset: int) -> str:
    return f"{image}?offset={offset}" if offset else str(image)


# ------------------------------------------------------------------------------ the staged part

# What the tool reads or rewrites (fstab, os-release, kernels, menu.lst, /.autorelabel) lives in
# a small staging tree of the same kind mke2fs -d reads: the tops below and every root-level
# non-directory. The feed writes those entries from there; everything else from the source.
STAGED_TOPS = ("etc", "boot")
STAGED_FILES = ("usr/lib/os-release",)


def staged(rel: str, is_dir: bool) -> bool:
    """Whether ``rel`` is one of the paths the tool may read or rewrite (see ``Split``)."""
    if not rel:
        return False
    if rel.split("/", 1)[0] in STAGED_TOPS or rel in STAGED_FILES:
        return True
    return "/" not in rel and not is_dir


@dataclass(frozen=True)
class Split:
    """Which entries are written from the small staging tree rather than from the source: the
    ``staged`` paths, and every other member of a hard-link group that has one (``linked``),
    so the group stays one inode — the staging tree holds it the way ``mke2fs -d`` of a full
    staging copy would see it, the tool's rewrites included."""

    linked: frozenset[str] = frozenset()

    def __call__(self, rel: str, is_dir: bool) -> bool:
        return staged(rel, is_dir) or (not is_dir and rel in self.linked)


def split(selection: Selection) -> Split:
    groups: dict[tuple[int, int], list[str]] = {}
    for e in selection.entries:
        if e.st_nlink > 1 and stat.S_ISREG(e.st_mode):
            groups.setdefault((e.st_dev, e.st_ino), []).append(e.rel)
    linked = {rel for rels in groups.values() if any(staged(r, False) for r in rels)
              for rel in rels if not staged(rel, False)}
    return Split(frozenset(linked))


def staged_subset(selection: Selection, which: Split | None = None) -> Selection:
    """The entries to stage: the root, the staged ones and the directories above them."""
    which = which or Split()
    parents: set[str] = set()
    for rel in (*STAGED_FILES, *which.linked):
        while rel:
            rel = rel.rpartition("/")[0]
            parents.add(rel)
    entries = [e for e in selection.entries
               if not e.rel or e.rel in parents or which(e.rel, stat.S_ISDIR(e.st_mode))]
    return Selection(selection.volume, entries, [], [], [])


def populate(selection: Selection, staging: Path, image: Path, *, offset: int,
             stats: StageStats, xattrs: XattrPolicy,
             which: Split | None = None) -> tuple[list[Exclusion], list[str]]:
    """Write the selection into the empty ext4 filesystem of ``image``: the staged entries
    from ``staging``, the rest from the source. Returns the entries the secret scan left out
    and warnings; ``stats`` gets the counts, flags and oversize xattrs."""
    from .selection import SelectionConfig, select_files

    db = Debugfs(image_target(image, offset))
    feed = Feed(db, stats, xattrs)
    try:
        which = which or Split()
        feed.run(selection, skip=which if which.linked else staged)
        ours = select_files(SelectionConfig(volume=staging, secret_filter=False,
                                            mount_policy="all", virtual_dirs=()))
        feed.run(ours, existing=lambda rel, is_dir: is_dir and not staged(rel, True),
                 count=False)
        feed.finish()
    except BaseException:
        db.kill()
        feed.close_all()
        raise
    log.info("fed %d files (%d MiB) to debugfs, %d hard links, %d dirs/symlinks/nodes",
             stats.fed, stats.fed_bytes // (1024 * 1024), stats.linked, stats.created)
    return feed.excluded, feed.warnings
