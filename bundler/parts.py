"""Bundle parts: naming, the PartSink/PartSource interfaces, and their directory versions.

A sink receives finished parts in index order while the pipeline is still running and makes
them visible under their final names only in ``commit``, manifest last; ``abort`` removes all
it created. Final names are not known up front (the classic width depends on the part count),
so a sink is told an upper bound on the count in ``begin``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from .errors import IntegrityError, OutputError, PartMissingError
from .manifest import PartEntry, part_names

log = logging.getLogger("bundler.parts")

PART_SIZE = 10 * 1024 * 1024
READ_CHUNK = 1 << 20


class Part:
    """One finished part: its bytes, its SHA-1 (computed as it was cut) and, on demand, its MD5.

    MD5 is only needed for S3's Content-MD5, so it is computed lazily, in whichever
    (uploader) thread asks for it first.
    """

    __slots__ = ("index", "data", "sha1", "_md5")

    def __init__(self, index: int, data: bytes, sha1: str | None = None) -> None:
        self.index = index
        self.data = data
        self.sha1 = sha1 if sha1 is not None else hashlib.sha1(data).hexdigest()
        self._md5: bytes | None = None

    @property
    def md5(self) -> bytes:
        if self._md5 is None:
            self._md5 = hashlib.md5(self.data).digest()
        return self._md5

    @property
    def size(self) -> int:
        return len(self.data)

    @classmethod
    def of(cls, index: int, data: bytes) -> Part:
        return cls(index, data)

    def __repr__(self) -> str:
        return f"Part(index={self.index}, size={len(self.data)}, sha1={self.sha1})"


def provisional_width(max_parts: int) -> int:
    """Width of the index in part names when only an upper bound of the count is known."""
    return len(str(max(1, max_parts)))


def provisional_name(name: str, index: int, max_parts: int) -> str:
    return f"{name}.part.{index:0{provisional_width(max_parts)}d}"


class PartSink(Protocol):
    """Where the bundling pipeline puts parts and, last, the manifest."""

    def begin(self, name: str, max_parts: int) -> None:
        """Called once before any part; ``max_parts`` bounds the final count from above."""

    def put_part(self, part: Part) -> None:
        """Called in index order; may block to apply back-pressure."""

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        """Make parts visible as ``names[i]``, then the manifest last."""

    def abort(self) -> None:
        """Remove everything this sink created; never raises for cleanup failures."""


class PartSource(Protocol):
    """Where the unbundling pipeline reads parts from."""

    def describe(self) -> str:
        """A short human description (a directory, an S3 location) for messages."""

    def check_present(self, entries: Sequence[PartEntry]) -> None:
        """Raise PartMissingError naming the first part that is not there."""

    def iter_parts(self, entries: Sequence[PartEntry]) -> Iterator[tuple[PartEntry, Iterable[bytes]]]:
        """Yield each part's bytes as chunks, in the given order (sources may prefetch)."""


class DirectorySink:
    """Writes parts to a hidden staging directory in ``destination``; commit renames them in.

    Staging in the destination keeps renames on one filesystem, so committing is cheap and a
    crash leaves only a clearly named ``.ami-bundler-*`` directory, never a complete-looking bundle.
    """

    STAGING_PREFIX = ".ami-bundler-staging-"

    def __init__(self, destination: Path, *, overwrite: bool = False, fsync: bool = True) -> None:
        self.destination = Path(destination)
        self.overwrite = overwrite
        self.fsync = fsync
        self._staging: Path | None = None
        self._name = ""
        self._written: list[Path] = []
        self._committed: list[Path] = []

    def begin(self, name: str, max_parts: int) -> None:
        if not self.destination.is_dir():
            raise OutputError(f"destination directory {self.destination} does not exist")
        self._name = name
        self._staging = self.destination / f"{self.STAGING_PREFIX}{name}-{secrets.token_hex(4)}"
        try:
            self._staging.mkdir(mode=0o700)
        except OSError as exc:
            raise OutputError(f"cannot write to {self.destination}: {_why(exc)}") from exc

    def put_part(self, part: Part) -> None:
        assert self._staging is not None, "begin() not called"
        path = self._staging / f"part-{part.index}"
        self._write_file(path, part.data, sync=False)
        self._written.append(path)

    def _write_file(self, path: Path, data: bytes, *, sync: bool) -> None:
        try:
            with open(path, "wb") as fh:
                fh.write(data)
                if sync:
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {path.name} in {self.destination}: {_why(exc)}") from exc

    def _sync_parts(self) -> None:
        # Parts are synced once at commit, not as they are cut: the kernel writes them back
        # meanwhile, and the manifest must not become visible before its parts are durable.
        for path in self._written:
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise OutputError(f"cannot flush {path.name} to disk in {self.destination}: {_why(exc)}") from exc

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        assert self._staging is not None, "begin() not called"
        if len(names) != len(self._written):
            raise OutputError(f"internal error: {len(self._written)} parts written, {len(names)} named")
        finals = [self.destination / n for n in [*names, manifest_name]]
        if not self.overwrite:
            clash = [p.name for p in finals if p.exists() or p.is_symlink()]
            if clash:
                raise OutputError(
                    f"{self.destination} already holds {clash[0]}"
                    + (f" and {len(clash) - 1} more" if len(clash) > 1 else "")
                    + ": remove the old bundle or choose another --prefix/--destination"
                )
        if self.fsync:
            self._sync_parts()
        staged_manifest = self._staging / "manifest"
        self._write_file(staged_manifest, manifest, sync=self.fsync)
        try:
            for src, dst in zip([*self._written, staged_manifest], finals, strict=True):
                if self.overwrite:
                    os.replace(src, dst)
                else:
                    # link() refuses an existing name atomically: a concurrent run writing the
                    # same bundle makes one of the two fail here instead of interleaving.
                    os.link(src, dst)
                self._committed.append(dst)
            if self.fsync:
                _fsync_dir(self.destination)
        except FileExistsError as exc:
            raise OutputError(
                f"{exc.filename2 or exc.filename} appeared while bundling (another run writing the same bundle?)"
            ) from exc
        except OSError as exc:
            raise OutputError(f"cannot move the bundle into {self.destination}: {_why(exc)}") from exc
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None

    def abort(self) -> None:
        # A failed commit must not leave a manifest without parts or parts without a manifest.
        for path in self._committed:
            try:
                path.unlink()
            except OSError:
                pass
        self._committed.clear()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device (free some space or choose another --destination)"
    if exc.errno == errno.EFBIG:
        return "file size limit exceeded (ulimit -f)"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class DirectorySource:
    """Reads parts named by the manifest from a local directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        return str(self.directory)

    def path_of(self, entry: PartEntry) -> Path:
        return self.directory / entry.filename

    def check_present(self, entries: Sequence[PartEntry]) -> None:
        for entry in entries:
            if not self.path_of(entry).is_file():
                raise PartMissingError(f"part {entry.filename} (index {entry.index}) is missing from {self.directory}")

    def iter_parts(self, entries: Sequence[PartEntry]) -> Iterator[tuple[PartEntry, Iterable[bytes]]]:
        for entry in entries:
            yield entry, self._chunks(entry)

    def _chunks(self, entry: PartEntry) -> Iterator[bytes]:
        path = self.path_of(entry)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise PartMissingError(f"part {entry.filename} (index {entry.index}) is missing from {self.directory}") from None
        except OSError as exc:
            raise IntegrityError(f"cannot read part {entry.filename}: {exc.strerror}") from exc
        with fh:
            while chunk := fh.read(READ_CHUNK):
                yield chunk


__all__ = [
    "PART_SIZE",
    "Part",
    "PartSink",
    "PartSource",
    "DirectorySink",
    "DirectorySource",
    "part_names",
    "provisional_name",
    "provisional_width",
]
