"""``ImageTree``: an ext2/3/4 filesystem inside an image file, read through debugfs, never
mounted and never extracted.

One debugfs per tree, in catastrophic mode (``-c``: read-only, no bitmaps), answers commands
sent on a pipe; entries are addressed by inode number (``<12>``) so no file name is ever
parsed by debugfs's command line. A directory is listed (``ls -p``) when a lookup first needs
it — the boot rules of a 400 000-entry image read a few dozen — or a whole level per batch
when every entry is asked for; symlink targets follow in one more batch (``stat`` for fast
links, ``cat`` for the rest), and file contents are streamed from ``cat``, keeping only the
prefix each rule asks for.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ..concurrency import start_thread
from ..errors import BundlerError
from ..interrupts import critical
from ..volume import partition as partlib
from .tree import Entry, Tree, VolumeFacts, join, kind_of

log = logging.getLogger("bundler.check")

EXT_TYPES = ("ext2", "ext3", "ext4")
_LS_P = re.compile(rb"/(\d+)/([0-7]{6})/(\d+)/(\d+)/([^/]*)/(\d*)/\n")
_FAST_LINK = re.compile(rb'^\s*Fast link dest: "(.*)"\s*$', re.M)


class CheckSourceError(BundlerError):
    """The image cannot be read as a root filesystem."""


def debugfs_binary() -> str:
    for name in ("debugfs", "/sbin/debugfs", "/usr/sbin/debugfs"):
        found = shutil.which(name)
        if found:
            return found
    raise CheckSourceError("debugfs not found: install e2fsprogs (it reads the image without "
                           "mounting it)")


# ------------------------------------------------------------------------------ the disk

def disk_facts(image: Path, fs_types: tuple[str, ...] = EXT_TYPES) -> tuple[VolumeFacts, int]:
    """What the disk holds and where the root filesystem (one of ``fs_types``) starts:
    (facts, byte offset).

    The partition table and filesystems come from the image probe (``bundler.images.probe``);
    this adds what only booting cares about: the MBR's boot code and GRUB 2's core.img."""
    from ..images import probe_format
    from ..images.probe import probe

    fmt = probe_format(image)
    if fmt != "raw":
        raise CheckSourceError(f"{image} is a {fmt} image: check reads raw disks (check its "
                               "bundle, or qemu-img convert -O raw it first)")
    fd = os.open(image, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        size = os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
        layout = probe(lambda offset, length: os.pread(fd, length, offset), size)
        facts = VolumeFacts(kind="image", description=str(image), disk_bytes=size,
                            scheme=layout.table or "none")
        facts.partitions = [f"{p.number}: {p.type}"
                            + (f" ({p.filesystem.type})" if p.filesystem else "")
                            for p in layout.partitions]
        facts.bios_boot_partition = any(p.type == "BIOS boot" for p in layout.partitions)
        facts.esp = any(p.type == "EFI system" for p in layout.partitions)
        found = ([(0, layout.filesystem)] if layout.table is None else
                 [(p.start, p.filesystem) for p in layout.partitions])
        root = next(((start, fs) for start, fs in found
                     if fs is not None and fs.type in fs_types), None)
        if root is None:
            others = sorted({fs.type for _, fs in found if fs is not None})
            if others:
                raise CheckSourceError(f"{image}: the filesystem is {', '.join(others)}; check "
                                       "reads ext2/3/4 (check the root directory instead)")
            where = "" if layout.table is None else f" in its {layout.table.upper()} partitions"
            raise CheckSourceError(f"{image}: no ext2/3/4 filesystem found{where}")
        offset, fs = root
        facts.fs_type, facts.uuid, facts.label = fs.type, fs.uuid, fs.label
        if layout.table is not None:
            code = os.pread(fd, partlib.SECTOR, 0)[:440]
            facts.boot_code = ("none" if not code.strip(b"\0") else
                               "grub2" if b"GRUB" in code else "other")
            bios = [p for p in layout.partitions if p.type == "BIOS boot"]
            if layout.table == "gpt":
                core_at = bios[0].start if bios else None
            else:
                core_at = partlib.SECTOR
            facts.grub_core = core_at is not None and _grub_core(os.pread(fd, 1024, core_at))
        return facts, offset
    finally:
        os.close(fd)


def _grub_core(data: bytes) -> bool:
    """GRUB 2's core.img (diskboot.img, then lzma_decompress.img) in these two sectors."""
    # diskboot.img begins "push %dx; push %si; mov $..., %si" (52 56 be 1b) in GRUB 2.0x.
    return bool(data.strip(b"\0")) and (b"GRUB" in data or data[:4] == b"\x52\x56\xbe\x1b"
                                        or data[:2] == b"\x52\xe8")


# ------------------------------------------------------------------------------ the session

class _Reader:
    """One ``outputs`` call: how much of each output it keeps, and those read for it."""

    def __init__(self, keep: int | None, sink: Callable[[bytes], object] | None) -> None:
        self.keep = keep
        self.sink = sink
        self.ready: collections.deque[tuple[bytes, int]] = collections.deque()


class Debugfs:
    """One read-only ``debugfs -c -f -`` session on a filesystem of an image.

    Commands go in on a pipe, each followed by a comment line holding a random token of this
    session; debugfs prints a comment as it reads it, after the output of the command before,
    so each output ends at the token (nothing in an image can hold a token it cannot know).
    At most ``WINDOW`` bytes of commands are in the pipe at once, less than it holds: a write
    never waits for this process to read."""

    WINDOW = 16 * 1024

    def __init__(self, image: Path, offset: int = 0) -> None:
        self.binary = debugfs_binary()
        self.target = f"{image}?offset={offset}" if offset else str(image)
        # started on first use: an object half-built by a signal owns no process
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = b""
        self.buf = b""
        self.owed: collections.deque[tuple[str, _Reader]] = collections.deque()
        self.errors: list[str] = []
        self._stderr: threading.Thread | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        with critical():  # started and recorded for close() at once
            if self.proc is None:
                self.token = f"#ami-bundler-{secrets.token_hex(16)}\n".encode()
                self.proc = subprocess.Popen([self.binary, "-c", "-f", "-", self.target],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE)
                self._stderr = threading.Thread(target=self._read_stderr, daemon=True,
                                                name="ami-bundler-check-debugfs")
                start_thread(self._stderr)
            return self.proc

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line and not line.startswith("debugfs ") and len(self.errors) < 20:
                self.errors.append(line)

    def close(self) -> None:
        with critical():
            proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        proc.stdout.close()    # output nobody read must not keep it blocked on the pipe
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._stderr is not None:
            self._stderr.join()

    def _failed(self, what: str) -> CheckSourceError:
        proc = self.proc
        if proc is not None:
            proc.kill()
            proc.wait()
            if self._stderr is not None:
                self._stderr.join()
        detail = "; ".join(self.errors[-3:])[-300:] or what
        self.owed.clear()
        self.close()
        return CheckSourceError(f"debugfs cannot read {self.target}: {detail}")

    def outputs(self, commands: list[str], keep: int | None = None,
                sink: Callable[[bytes], object] | None = None) -> Iterator[tuple[bytes, int]]:
        """(output, its length) of each command, in order: the first ``keep`` bytes of it
        (all when None), or nothing with every byte passed to ``sink``. Calls may nest (a
        lookup while reading files): outputs read for another call wait in its queue."""
        proc = self._start()
        assert proc.stdin is not None
        mine = _Reader(keep, sink)
        try:
            i = 0
            while i < len(commands):
                size = 0
                window: list[str] = []
                while i < len(commands) and size < self.WINDOW:
                    window.append(commands[i])
                    size += len(commands[i]) + len(self.token) + 1
                    i += 1
                self._catch_up()
                data = b"".join(c.encode() + b"\n" + self.token for c in window)
                try:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                except BrokenPipeError:
                    raise self._failed("it exited") from None
                self.owed.extend((c, mine) for c in window)
                for _ in window:
                    while not mine.ready:
                        command, reader = self.owed.popleft()
                        reader.ready.append(self._output(command, reader.keep, reader.sink))
                    yield mine.ready.popleft()
        finally:
            mine.keep, mine.sink = 0, None    # what is still owed to it is read and dropped
            mine.ready.clear()

    def _catch_up(self) -> None:
        """Read what is owed before writing more, so the pipe holds at most one window."""
        while self.owed:
            command, reader = self.owed.popleft()
            reader.ready.append(self._output(command, reader.keep, reader.sink))

    def _fill(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        chunk = os.read(self.proc.stdout.fileno(), 1024 * 1024)
        if not chunk:
            raise self._failed("it exited")
        self.buf += chunk

    def _output(self, command: str, keep: int | None,
                sink: Callable[[bytes], object] | None) -> tuple[bytes, int]:
        header = f"debugfs: {command}\n".encode()
        while len(self.buf) < len(header):
            self._fill()
        if not self.buf.startswith(header):
            raise self._failed(f"unexpected output for {command!r}")
        self.buf = self.buf[len(header):]
        token = self.token
        kept: list[bytes] = []
        room = -1 if keep is None else keep
        total = 0
        while True:
            at = self.buf.find(token)
            end = at if at >= 0 else max(0, len(self.buf) - len(token) + 1)
            piece = self.buf[:end]
            self.buf = self.buf[end + len(token):] if at >= 0 else self.buf[end:]
            total += len(piece)
            if sink is not None:
                sink(piece)
            elif room < 0:
                kept.append(piece)
            elif room:
                kept.append(piece[:room])
                room -= len(kept[-1])
            if at >= 0:
                return b"".join(kept), total
            self._fill()

    def cat_prefixes(self, files: list[tuple[int, int]], keep: int) -> Iterator[bytes | None]:
        """The first ``keep`` bytes of each (inode, size), streamed; None for a failed read."""
        for (_, size), (data, total) in zip(
                files, self.outputs([f"cat <{ino}>" for ino, _ in files], keep), strict=True):
            yield data if total == size else None


# ------------------------------------------------------------------------------ the tree

class ImageTree(Tree):
    """Directories are listed by inode (``ls -p <ino>``), the ones a lookup needs when it
    needs them, a whole level per batch for ``entries()``; the symlinks' targets of each
    batch follow in one more (``stat`` for fast links, ``cat`` for the rest)."""

    def __init__(self, image: Path, *, facts: VolumeFacts | None = None,
                 offset: int | None = None) -> None:
        image = Path(image)
        if facts is None or offset is None:
            facts, offset = disk_facts(image)
        self.debugfs = Debugfs(image, offset)
        self.seen = {2}     # directory inodes met: a corrupt or hostile cycle is listed once
        try:
            super().__init__(Entry("/", "dir", 0o40755, 0, 0, 0, ref=2), facts)
            self.listdir("/")     # an unreadable filesystem fails here, not in a rule
        except BaseException:
            self.debugfs.close()
            raise

    def close(self) -> None:
        self.debugfs.close()

    def _list_dirs(self, dirs: list[Entry]) -> Iterator[list[Entry]]:
        listed: list[list[Entry]] = []
        for parent, (out, _) in zip(dirs, self.debugfs.outputs(
                [f"ls -p <{d.ref}>" for d in dirs]), strict=True):
            found: list[Entry] = []
            if parent.ref == 2 and not _LS_P.search(out):   # not even "." and ".."
                raise self.debugfs._failed("no root directory")
            for m in _LS_P.finditer(out):
                ino, mode = int(m.group(1)), int(m.group(2), 8)
                name = m.group(5).decode("utf-8", "surrogateescape")
                if name in (".", "..") or not name or ino == 0:
                    continue
                kind = kind_of(mode)
                if kind == "dir":
                    if ino in self.seen:
                        continue
                    self.seen.add(ino)
                found.append(Entry(join(parent.path, name), kind, mode, int(m.group(3)),
                                   int(m.group(4)), int(m.group(6) or 0), ref=ino))
            listed.append(found)
        targets = self._targets([e for found in listed for e in found if e.kind == "symlink"])
        for found in listed:
            yield [_linked(e, targets[e.path]) if e.kind == "symlink" else e for e in found]

    def _targets(self, links: list[Entry]) -> dict[str, bytes | None]:
        fast = [e for e in links if e.size < 60]
        slow = [e for e in links if e.size >= 60]
        out: dict[str, bytes | None] = {}
        for e, (text, _) in zip(fast, self.debugfs.outputs([f"stat <{e.ref}>" for e in fast]),
                                strict=True):
            m = _FAST_LINK.search(text)
            if m is None:   # inline-data or a long link: read it like a slow one
                slow.append(e)
            else:
                out[e.path] = m.group(1)
        for e, data in zip(slow, self.debugfs.cat_prefixes([(int(e.ref), e.size) for e in slow],
                                                           4096), strict=True):
            out[e.path] = data
        return out

    def _read(self, entry: Entry, limit: int) -> bytes | None:
        return next(self.debugfs.cat_prefixes([(int(entry.ref), entry.size)], limit))

    def read_prefixes(self, entries: list[Entry],
                      limit: int) -> Iterator[tuple[Entry, bytes | None]]:
        yield from zip(entries, self.debugfs.cat_prefixes(
            [(int(e.ref), e.size) for e in entries], limit), strict=True)


def _linked(e: Entry, target: bytes | None) -> Entry:
    text = target.decode("utf-8", "surrogateescape") if target else None
    return Entry(e.path, e.kind, e.mode, e.uid, e.gid, e.size, text, e.ref)


def copy_out(tree: ImageTree, path: str, dest: Path) -> Path:
    """Copy one file of the image to ``dest`` (created 0600), streamed through debugfs."""
    e = tree.entry(path)
    if e is None or e.kind != "file":
        raise CheckSourceError(f"{path} is not a file in the image")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        for _, written in tree.debugfs.outputs([f"cat <{e.ref}>"], sink=out.write):
            if written != e.size:
                raise CheckSourceError(f"read {written} of {e.size} bytes of {path} from the "
                                       "image")
    return dest
