"""A read-only view of a root filesystem for the check rules: an index of its entries (each
directory listed when a lookup first needs it), symlinks resolved *inside* the tree, and file
contents read on demand.

Backends list directories and read contents: ``DirTree`` (a directory, through ``os``; works under
pyfakefs) and ``ImageTree`` (an ext2/3/4 filesystem inside an image file, through debugfs,
never mounted: ``bundler.check.debugfs``). Rules only ever see this interface, so they are
pure logic over the index and the few bytes they ask for.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
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
    """The index and path logic. Directories are listed when a lookup first needs them
    (``_list_dirs``), so rules that read a few dozen paths of a 400 000-entry image index a
    few dozen directories; ``entries()`` lists the rest. Subclasses supply ``_list_dirs``
    and ``_read`` (and may batch ``read_prefixes``)."""

    def __init__(self, root: Entry, facts: VolumeFacts) -> None:
        self.facts = facts
        self._index: dict[str, Entry] = {"/": root}
        self._children: dict[str, list[str]] = {}    # listed directories only

    def _list_dirs(self, dirs: list[Entry]) -> Iterator[list[Entry]]:
        """The entries of each directory (paths joined, symlink targets read), in order."""
        raise NotImplementedError

    def _load(self, dirs: list[Entry]) -> None:
        todo = [d for d in dirs if d.kind == "dir" and d.path not in self._children]
        for d, found in zip(todo, self._list_dirs(todo), strict=True):
            names = self._children[d.path] = []
            for e in found:
                if e.path not in self._index:
                    self._index[e.path] = e
                    names.append(e.name)

    def _child(self, parent: Entry, name: str) -> Entry | None:
        if parent.path not in self._children:
            self._load([parent])
        return self._index.get(join(parent.path, name))

    # -------------------------------------------------------------- index and symlinks

    def __len__(self) -> int:
        """The entries indexed so far (every entry once ``entries()`` ran)."""
        return len(self._index)

    def entries(self) -> Iterator[Entry]:
        """Every entry (symlinks not followed), parents before children."""
        level = [self._index["/"]]
        while level:
            self._load(level)
            level = [self._index[join(d.path, n)] for d in level
                     for n in self._children.get(d.path, ())]
            level = [e for e in level if e.kind == "dir"]
        return iter(sorted(self._index.values(), key=lambda e: e.path))

    def resolve(self, path: str, *, follow_last: bool = True) -> str | None:
        """The canonical path of ``path`` with symlinks resolved inside the tree (an absolute
        target means the tree's root), or None when it does not exist or loops."""
        parts = [p for p in path.split("/") if p and p != "."]
        resolved = self._index["/"]
        hops = 0
        while parts:
            name = parts.pop(0)
            if name == "..":
                resolved = self._index[resolved.path.rsplit("/", 1)[0] or "/"]
                continue
            entry = self._child(resolved, name)
            if entry is None:
                return None
            if entry.kind == "symlink" and (parts or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS or entry.target is None:
                    return None
                if entry.target.startswith("/"):
                    resolved = self._index["/"]
                parts = [p for p in entry.target.split("/") if p and p != "."] + parts
                continue
            resolved = entry
        return resolved.path

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
        e = self.entry(path)
        if e is None or e.kind != "dir":
            return []
        self._load([e])
        return [self._index[join(e.path, n)] for n in sorted(self._children.get(e.path, []))]

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
        self.dev = st.st_dev
        facts = facts or VolumeFacts(kind="directory", description=self.root)
        super().__init__(Entry("/", "dir", st.st_mode, st.st_uid, st.st_gid, 0, ref=self.root),
                         facts)

    def _list_dirs(self, dirs: list[Entry]) -> Iterator[list[Entry]]:
        for d in dirs:
            yield self._list(d)

    def _list(self, parent: Entry) -> list[Entry]:
        host = str(parent.ref)
        try:
            if parent.path in self.SKIP_CONTENTS or os.lstat(host).st_dev != self.dev:
                return []
            it = os.scandir(host)
        except OSError:
            return []
        found: list[Entry] = []
        with it:
            for d in it:
                try:
                    st = d.stat(follow_symlinks=False)
                except OSError:
                    continue
                kind = kind_of(st.st_mode)
                target = None
                if kind == "symlink":
                    try:
                        target = os.readlink(d.path)
                    except OSError:
                        target = None
                found.append(Entry(join(parent.path, d.name), kind, st.st_mode, st.st_uid,
                                   st.st_gid, st.st_size if kind != "dir" else 0, target,
                                   d.path))
        return found

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
