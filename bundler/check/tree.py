"""A read-only view of a root filesystem for the check rules: an index of every entry, symlinks
resolved *inside* the tree, and file contents read on demand.

Backends fill the index and read contents: ``DirTree`` (a directory, through ``os``; works under
pyfakefs) and ``ImageTree`` (an ext2/3/4 filesystem inside an image file, through debugfs,
never mounted: ``bundler.check.debugfs``). Rules only ever see this interface, so they are
pure logic over the index and the few bytes they ask for.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["file", "dir", "symlink", "other"]
MAX_SYMLINK_HOPS = 40
READ_LIMIT = 4 * 1024 * 1024   # rules read configuration files, never whole images or initrds


@dataclass(frozen=True, slots=True)   # slots: bundle-vol checks images of 400 000 entries
class Entry:
    path: str            # absolute inside the tree: "/etc/fstab" ("/" for the root)
    kind: Kind
    mode: int            # st_mode (type and permission bits)
    uid: int
    gid: int
    size: int
    target: str | None = None      # symlink target, as stored
    ref: object = None             # the backend's handle (host path, inode number)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def kind_of(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


@dataclass
class VolumeFacts:
    """What is known about the disk and filesystem beyond the files (None: not known)."""

    kind: str = "directory"                 # directory | image | bundle
    description: str = ""
    disk_bytes: int | None = None
    scheme: str | None = None               # none | mbr | gpt
    fs_type: str | None = None              # ext2 | ext3 | ext4
    uuid: str | None = None
    label: str | None = None
    boot_code: str | None = None            # MBR code: grub2 | other | none
    grub_core: bool | None = None           # GRUB 2 core.img in the MBR gap / BIOS boot partition
    bios_boot_partition: bool = False
    esp: bool = False
    partitions: list[str] = field(default_factory=list)   # "1: Linux", "2: EFI System", ...
    manifest_arch: str | None = None        # from a bundle's manifest


class Tree:
    """The index and path logic; subclasses supply ``_read`` (and may batch ``read_prefixes``)."""

    def __init__(self, entries: Iterable[Entry], facts: VolumeFacts) -> None:
        self.facts = facts
        self._index: dict[str, Entry] = {}
        self._children: dict[str, list[str]] = {}
        for e in entries:
            self._index[e.path] = e
            if e.path != "/":
                parent = e.path.rsplit("/", 1)[0] or "/"
                self._children.setdefault(parent, []).append(e.name)

    # -------------------------------------------------------------- index and symlinks

    def __len__(self) -> int:
        return len(self._index)

    def entries(self) -> Iterator[Entry]:
        """Every entry (symlinks not followed), parents before children."""
        return iter(sorted(self._index.values(), key=lambda e: e.path))

    def resolve(self, path: str, *, follow_last: bool = True) -> str | None:
        """The canonical path of ``path`` with symlinks resolved inside the tree (an absolute
        target means the tree's root), or None when it does not exist or loops."""
        parts = [p for p in path.split("/") if p and p != "."]
        resolved = "/"
        hops = 0
        while parts:
            name = parts.pop(0)
            if name == "..":
                resolved = resolved.rsplit("/", 1)[0] or "/"
                continue
            candidate = join(resolved, name)
            entry = self._index.get(candidate)
            if entry is None:
                return None
            if entry.kind == "symlink" and (parts or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS or entry.target is None:
                    return None
                if entry.target.startswith("/"):
                    resolved = "/"
                parts = [p for p in entry.target.split("/") if p and p != "."] + parts
                continue
            resolved = candidate
        return resolved

    def entry(self, path: str, *, follow: bool = True) -> Entry | None:
        real = self.resolve(path, follow_last=follow)
        return self._index.get(real) if real is not None else None

    def exists(self, path: str) -> bool:
        return self.entry(path) is not None

    def is_file(self, path: str) -> bool:
        e = self.entry(path)
        return e is not None and e.kind == "file"

    def is_dir(self, path: str) -> bool:
        e = self.entry(path)
        return e is not None and e.kind == "dir"

    def listdir(self, path: str) -> list[Entry]:
        """The entries of a directory (itself followed if a symlink), sorted by name."""
        real = self.resolve(path)
        if real is None or self._index[real].kind != "dir":
            return []
        return [self._index[join(real, n)] for n in sorted(self._children.get(real, []))]

    def glob(self, directory: str, pattern: str) -> list[Entry]:
        return [e for e in self.listdir(directory) if fnmatch.fnmatchcase(e.name, pattern)]

    # -------------------------------------------------------------- contents

    def read(self, path: str, limit: int = READ_LIMIT) -> bytes | None:
        """The first ``limit`` bytes of a regular file (symlinks followed), else None."""
        e = self.entry(path)
        if e is None or e.kind != "file":
            return None
        return self._read(e, limit)

    def read_text(self, path: str, limit: int = READ_LIMIT) -> str | None:
        data = self.read(path, limit)
        return None if data is None else data.decode("utf-8", "replace")

    def read_prefixes(self, entries: list[Entry],
                      limit: int) -> Iterator[tuple[Entry, bytes | None]]:
        """The first ``limit`` bytes of each regular file; None for one that cannot be read."""
        for e in entries:
            yield e, self._read(e, limit)

    def _read(self, entry: Entry, limit: int) -> bytes | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ directory

class DirTree(Tree):
    """A root filesystem directory. Virtual filesystems' mount points are listed but not
    entered (their contents are never part of an image); other filesystems mounted below are
    not entered either, like bundle-vol's default."""

    SKIP_CONTENTS = ("/dev", "/proc", "/sys", "/run", "/tmp", "/media", "/mnt")

    def __init__(self, root: os.PathLike[str] | str, facts: VolumeFacts | None = None) -> None:
        self.root = os.fspath(root)
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(self.root)
        facts = facts or VolumeFacts(kind="directory", description=self.root)
        super().__init__(self._walk(st), facts)

    def _walk(self, root_st: os.stat_result) -> Iterator[Entry]:
        yield Entry("/", "dir", root_st.st_mode, root_st.st_uid, root_st.st_gid, 0, ref=self.root)
        stack = ["/"]
        while stack:
            rel = stack.pop()
            host = self.root if rel == "/" else self.root + rel
            try:
                it = os.scandir(host)
            except OSError:
                continue
            with it:
                for d in it:
                    try:
                        st = d.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    path = join(rel, d.name)
                    kind = kind_of(st.st_mode)
                    target = None
                    if kind == "symlink":
                        try:
                            target = os.readlink(d.path)
                        except OSError:
                            target = None
                    yield Entry(path, kind, st.st_mode, st.st_uid, st.st_gid,
                                st.st_size if kind != "dir" else 0, target, d.path)
                    if kind == "dir" and path not in self.SKIP_CONTENTS \
                            and st.st_dev == root_st.st_dev:
                        stack.append(path)

    def _read(self, entry: Entry, limit: int) -> bytes | None:
        try:
            # O_NONBLOCK: a regular file swapped for a FIFO since the walk must not hang us.
            fd = os.open(str(entry.ref), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                return fh.read(limit)
        except OSError:
            return None
