"""``ImageTree``: an ext2/3/4 filesystem inside an image file, read through debugfs, never
mounted and never extracted.

debugfs runs in catastrophic mode (``-c``: read-only, no bitmaps) with a command file, so one
process answers a whole batch; entries are addressed by inode number (``<12>``) so no file
name is ever parsed by debugfs's command line. The index is built level by level (one debugfs
run per directory depth: ``ls -p`` of every directory of that depth), symlink targets in one
more run (``stat`` for fast links, ``cat`` for the rest), and file contents are streamed from
``cat`` in batches, keeping only the prefix each rule asks for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import BundlerError
from ..interrupts import critical
from ..newfiles import private_directory
from ..volume import partition as partlib
from .tree import Entry, Tree, VolumeFacts, join, kind_of

log = logging.getLogger("bundler.check")

EXT_TYPES = ("ext2", "ext3", "ext4")
_LS_P = re.compile(rb"/(\d+)/([0-7]{6})/(\d+)/(\d+)/([^/]*)/(\d*)/\n")
_FAST_LINK = re.compile(rb'^\s*Fast link dest: "(.*)"\s*$', re.M)
BATCH = 2000          # commands per debugfs run


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


# ------------------------------------------------------------------------------ debugfs runs

class _Stream:
    """A debugfs stdout with lookahead: each command's output follows ``debugfs: CMD\\n``."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.buf = b""
        self.eof = False

    def _fill(self, n: int) -> None:
        while len(self.buf) < n and not self.eof:
            chunk = self.fh.read1(1024 * 1024) if hasattr(self.fh, "read1") else self.fh.read(65536)
            if not chunk:
                self.eof = True
            self.buf += chunk

    def take_header(self, header: bytes) -> bool:
        self._fill(len(header))
        if self.buf.startswith(header):
            self.buf = self.buf[len(header):]
            return True
        return False

    def until(self, header: bytes | None) -> bytes:
        """Everything up to the next ``header`` (or the end)."""
        while True:
            at = self.buf.find(header) if header else -1
            if at >= 0:
                out, self.buf = self.buf[:at], self.buf[at:]
                return out
            if self.eof:
                out, self.buf = self.buf, b""
                return out
            self._fill(len(self.buf) + 1024 * 1024)

    def exactly(self, n: int, keep: int, header: bytes | None) -> bytes | None:
        """n bytes of a file's contents, keeping the first ``keep``; None when debugfs printed
        fewer (an error went to stderr) — then resynchronised on the next header."""
        kept = b""
        remaining = n
        while remaining:
            self._fill(min(remaining, 1024 * 1024))
            if not self.buf:
                return None
            piece = self.buf[:remaining]
            if header is not None and header in piece and not self._at(header, len(piece)):
                at = piece.find(header)
                self.buf = self.buf[at:]
                return None
            self.buf = self.buf[len(piece):]
            if len(kept) < keep:
                kept += piece[:keep - len(kept)]
            remaining -= len(piece)
        return kept

    def _at(self, header: bytes, pos: int) -> bool:
        self._fill(pos + len(header))
        return self.buf[pos:pos + len(header)] == header or (self.eof and len(self.buf) == pos)


class Debugfs:
    """Batches of debugfs commands against one filesystem of an image."""

    def __init__(self, image: Path, offset: int = 0) -> None:
        self.binary = debugfs_binary()
        self.target = f"{image}?offset={offset}" if offset else str(image)
        self._tmp = contextlib.ExitStack()
        # made on first use: an object half-built by a signal owns none
        self.tmp: Path | None = None

    def _dir(self) -> Path:
        with critical():  # made and recorded for close() at once
            if self.tmp is None:
                self.tmp = self._tmp.enter_context(private_directory("ami-bundler-check-"))
            return self.tmp

    def close(self) -> None:
        self._tmp.close()
        self.tmp = None

    def _popen(self, commands: list[str]) -> subprocess.Popen[bytes]:
        cmdfile = self._dir() / "commands"
        cmdfile.write_text("".join(c + "\n" for c in commands))
        return subprocess.Popen([self.binary, "-c", "-f", str(cmdfile), self.target],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def _finish(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read()
        err = proc.stderr.read().decode(errors="replace")
        proc.wait()
        if proc.returncode:
            raise CheckSourceError(f"debugfs cannot read {self.target}: {err.strip()[-300:]}")

    def outputs(self, commands: list[str]) -> Iterator[bytes]:
        """Each command's whole output, in order."""
        for start in range(0, len(commands), BATCH):
            batch = commands[start:start + BATCH]
            proc = self._popen(batch)
            assert proc.stdout is not None
            stream = _Stream(proc.stdout)
            for i, cmd in enumerate(batch):
                if not stream.take_header(f"debugfs: {cmd}\n".encode()):
                    proc.kill()
                    self._finish(proc)
                    raise CheckSourceError(f"unexpected output from debugfs for {cmd!r}")
                nxt = f"debugfs: {batch[i + 1]}\n".encode() if i + 1 < len(batch) else None
                yield stream.until(nxt)
            self._finish(proc)

    def cat_prefixes(self, files: list[tuple[int, int]], keep: int) -> Iterator[bytes | None]:
        """The first ``keep`` bytes of each (inode, size), streamed; None for a failed read."""
        for start in range(0, len(files), BATCH):
            batch = files[start:start + BATCH]
            cmds = [f"cat <{ino}>" for ino, _ in batch]
            proc = self._popen(cmds)
            assert proc.stdout is not None
            stream = _Stream(proc.stdout)
            for i, (_, size) in enumerate(batch):
                nxt = f"debugfs: {cmds[i + 1]}\n".encode() if i + 1 < len(batch) else None
                if not stream.take_header(f"debugfs: {cmds[i]}\n".encode()):
                    stream.until(f"debugfs: {cmds[i]}\n".encode())
                    if not stream.take_header(f"debugfs: {cmds[i]}\n".encode()):
                        yield None
                        continue
                yield stream.exactly(size, keep, nxt)
            self._finish(proc)


# ------------------------------------------------------------------------------ the tree

class ImageTree(Tree):
    def __init__(self, image: Path, *, facts: VolumeFacts | None = None,
                 offset: int | None = None) -> None:
        image = Path(image)
        if facts is None or offset is None:
            facts, offset = disk_facts(image)
        self.debugfs = Debugfs(image, offset)
        try:
            super().__init__(self._index_all(), facts)
        except BaseException:
            self.debugfs.close()
            raise

    def close(self) -> None:
        self.debugfs.close()

    def _index_all(self) -> list[Entry]:
        entries = [Entry("/", "dir", 0o40755, 0, 0, 0, ref=2)]
        level = [("/", 2)]
        seen = {2}
        links: list[Entry] = []
        while level:
            nxt: list[tuple[str, int]] = []
            outputs = self.debugfs.outputs([f"ls -p <{ino}>" for _, ino in level])
            for (parent, _), out in zip(level, outputs, strict=True):
                for m in _LS_P.finditer(out):
                    ino, mode = int(m.group(1)), int(m.group(2), 8)
                    name = m.group(5).decode("utf-8", "surrogateescape")
                    if name in (".", "..") or not name or ino == 0:
                        continue
                    path = join(parent, name)
                    kind = kind_of(mode)
                    e = Entry(path, kind, mode, int(m.group(3)), int(m.group(4)),
                              int(m.group(6) or 0), ref=ino)
                    if kind == "dir":
                        if ino in seen:      # a corrupt or hostile directory cycle
                            continue
                        seen.add(ino)
                        nxt.append((path, ino))
                    if kind == "symlink":
                        links.append(e)
                    else:
                        entries.append(e)
            level = nxt
        entries += self._with_targets(links)
        return entries

    def _with_targets(self, links: list[Entry]) -> list[Entry]:
        fast = [e for e in links if e.size < 60]
        slow = [e for e in links if e.size >= 60]
        out: list[Entry] = []
        for e, text in zip(fast, self.debugfs.outputs([f"stat <{e.ref}>" for e in fast]),
                           strict=True):
            m = _FAST_LINK.search(text)
            target = m.group(1) if m else None
            if target is None:  # inline-data or a long link: read it like a slow one
                slow.append(e)
                continue
            out.append(_linked(e, target))
        for e, data in zip(slow, self.debugfs.cat_prefixes([(int(e.ref), e.size) for e in slow],
                                                           4096), strict=True):
            out.append(_linked(e, data))
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
    proc = tree.debugfs._popen([f"cat <{e.ref}>"])
    assert proc.stdout is not None
    stream = _Stream(proc.stdout)
    if not stream.take_header(f"debugfs: cat <{e.ref}>\n".encode()):
        proc.kill()
        tree.debugfs._finish(proc)
        raise CheckSourceError(f"cannot read {path} from the image")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out:
        out.write(stream.buf)
        written += len(stream.buf)
        stream.buf = b""
        while chunk := proc.stdout.read(1024 * 1024):
            out.write(chunk)
            written += len(chunk)
    tree.debugfs._finish(proc)
    if written != e.size:
        raise CheckSourceError(f"read {written} of {e.size} bytes of {path} from the image")
    return dest
