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
import mmap
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

from .concurrency import BackgroundStage
from .errors import IntegrityError, OutputError, PartMissingError, UsageError
from .interrupts import critical
from .manifest import PartEntry, part_names
from .newfiles import sync_directory

log = logging.getLogger("bundler.parts")

PART_SIZE = 10 * 1024 * 1024
READ_CHUNK = 1 << 20
# Parts from other tools may differ in size, but a part this large is not a bundle part.
MAX_PART_BYTES = 64 * 1024 * 1024

# Every temporary entry we create in a destination starts with this, carries the creating
# process's PID and ends in a random token: ".ami-bundler-<kind>-<pid>-<name>-<token>".
TEMP_MARK = ".ami-bundler-"
STAGING_KIND = "staging"
UNBUNDLE_KIND = "unbundle"
VOLUME_KIND = "vol"  # bundle-vol's image being built and its staging tree
LOCK_KIND = "lock"
# Room for the mark, kind, PID and token within NAME_MAX (255) whatever the name's length.
_TEMP_NAME_CHARS = 128  # the longest bundle name validate_name allows
_TEMP_RE = re.compile(
    r"\.ami-bundler-(?P<kind>staging|unbundle|vol)-(?P<pid>[0-9]{1,10})-(?P<name>.+)-[0-9a-f]{8}\Z",
    re.DOTALL,
)


class Part:
    """One finished part: its bytes, its SHA-1 (computed as it was cut) and, on demand, its MD5.

    MD5 is only needed for S3's Content-MD5, so it is computed lazily, in whichever
    (uploader) thread asks for it first.
    """

    __slots__ = ("index", "data", "sha1", "_md5")

    def __init__(self, index: int, data: bytes | memoryview, sha1: str | None = None) -> None:
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
    def of(cls, index: int, data: bytes | memoryview) -> Part:
        return cls(index, data)

    def __repr__(self) -> str:
        return f"Part(index={self.index}, size={len(self.data)}, sha1={self.sha1})"


def provisional_width(max_parts: int) -> int:
    """Width of the index in part names when only an upper bound of the count is known."""
    return len(str(max(1, max_parts)))


def provisional_name(name: str, index: int, max_parts: int) -> str:
    return f"{name}.part.{index:0{provisional_width(max_parts)}d}"


class PartSink(Protocol):
    """Where the bundling pipeline puts parts and, last, the manifest.

    ``part.data`` is bytes the sink may keep, unless the sink's class says
    ``done_with_part_data = True``: it has finished with the data when ``put_part`` returns
    (it wrote it somewhere), so the pipeline hands it a view of the part buffer itself, no
    copy, and reuses the buffer for a later part (the view is released first: a sink that kept
    it after all fails on its next use instead of reading another part's bytes).

    A sink may also have ``put_part_ahead(index, data, offset)``: the pipeline then hands it
    each part's bytes as the part fills, in order from offset 0 (``data`` is a view it must not
    keep), so it can start writing them; ``put_part`` still follows with the whole part, and a
    sink that did not write some of it ahead writes it then.
    """

    def begin(self, name: str, max_parts: int) -> None:
        """Called once before any part; ``max_parts`` bounds the final count from above."""

    def expect_parts(self, count: int) -> None:
        """The pipeline's estimate of the final part count, given once, before the first part
        (0: unknown). Sinks that name parts before the count is known (S3) use it; others
        ignore it."""

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

    def iter_parts(self,
                   entries: Sequence[PartEntry]) -> Iterator[tuple[PartEntry, Iterable[bytes]]]:
        """Yield each part's bytes as chunks, in the given order (sources may prefetch)."""


# --------------------------------------------------------------------------- temporary entries


def short_name(name: str) -> str:
    """``name`` itself, or a recognisable prefix plus a hash when it is too long for a temp name."""
    if len(name.encode("utf-8", "surrogateescape")) <= _TEMP_NAME_CHARS:
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return name[:60] + "~" + digest


def temp_name(kind: str, name: str) -> str:
    """A hidden name for an in-progress entry owned by this process (see ``remove_stale``)."""
    return f"{TEMP_MARK}{kind}-{os.getpid()}-{short_name(name)}-{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists; unsure answers count as alive (never delete
    what might still be in use)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to someone else
        return True
    return True


def remove_stale(directory: Path, held: Iterable[DestinationLock] = ()) -> list[str]:
    """Remove temporary entries in ``directory`` left by ami-bundler runs that died.

    A staging directory whose owner is gone is rolled back: finals it had already linked in
    (same inode) are removed unless its manifest made it in too, in which case the bundle was
    complete and only the staging copy goes. Unlocked lock files are removed as well. Entries
    of live processes, and entries without a PID (older versions), are left alone.

    The PID is only meaningful on this host; on a directory shared with other hosts (NFS) the
    entry's name lock, which every live run holds, is the second witness: an entry whose lock
    someone holds is left alone. ``held`` are the locks the caller holds itself.
    """
    directory = Path(directory)
    held_paths = {lock.path for lock in held}
    removed: list[str] = []
    try:
        entries = [e.name for e in os.scandir(directory) if e.name.startswith(TEMP_MARK)]
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry)
        if match is None:
            if entry.startswith(f"{TEMP_MARK}{LOCK_KIND}-") and _remove_unlocked(directory / entry):
                removed.append(entry)
            continue
        if pid_alive(int(match["pid"])):
            continue
        what = ("bundle-" if match["kind"] == STAGING_KIND else "image-") + match["name"]
        lock = DestinationLock(directory, what, what)
        if lock.path not in held_paths and not lock.try_acquire():
            continue  # a live run (perhaps on another host) is writing that name
        path = directory / entry
        try:
            if match["kind"] == STAGING_KIND:
                _roll_back_staging(directory, path, match["name"])
            elif match["kind"] == VOLUME_KIND and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another run cleaned it first
        except OSError as exc:
            log.warning("cannot remove stale %s: %s", path, exc.strerror or exc)
            continue
        finally:
            lock.release()
        log.info("removed %s, left by ami-bundler process %s which no longer runs", path,
                 match["pid"])
        removed.append(entry)
    return removed


def _inode(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _roll_back_staging(directory: Path, staging: Path, name: str) -> None:
    staged = {key for e in os.scandir(staging) if (key := _inode(e.path)) is not None}
    staged_manifest = _inode(staging / "manifest")
    # Finals are linked only after the staged manifest is written, and the manifest is linked
    # last. So: no staged manifest means nothing was linked yet, or the commit finished and
    # its clean-up had begun; the final manifest being the staged one means the commit
    # finished. Only a staged manifest that is not (yet) the final one marks a half-done commit.
    committed = (staged_manifest is None
                 or _inode(directory / f"{name}.manifest.xml") == staged_manifest)
    if not committed:
        part_prefix = f"{name}.part."
        for entry in os.scandir(directory):
            if entry.name.startswith(part_prefix) and _inode(entry.path) in staged:
                os.unlink(entry.path)
                log.info("removed %s: half-committed by a run that died", entry.path)
    shutil.rmtree(staging)


def _remove_unlocked(path: Path) -> bool:
    """Remove a lock file nobody holds (its owner died); False if it is in use or gone."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    try:
        if _same_file(fd, path):
            os.unlink(path)
            return True
        return False
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class DestinationLock:
    """An exclusive ``flock`` on ``DIR/.ami-bundler-lock-<what>`` from begin to commit.

    Two runs writing the same bundle (or image) into the same directory would otherwise only
    collide at the very end; the second one now fails at once. The file is removed by its
    holder on release; a racing opener that locked the removed inode notices and retries.
    The kernel drops the lock when the holder dies, so a crash never leaves it held.
    """

    def __init__(self, directory: Path, what: str, display: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{TEMP_MARK}{LOCK_KIND}-{short_name(what)}"
        self.display = display
        self._fd = -1

    def try_acquire(self) -> bool:
        """Acquire if free; False if another run holds it."""
        try:
            self.acquire()
        except OutputError:
            return False
        return True

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        try:
            with critical():  # an interrupt must not fall between creating and recording
                self._acquire()
        except BaseException:
            self.release()
            raise

    def _acquire(self) -> None:
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            except OSError as exc:
                raise OutputError(f"cannot write to {self.directory}: "
                                  f"{why_write_failed(exc)}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(
                    f"another ami-bundler run is writing {self.display} in {self.directory}; "
                    "wait for it to finish or choose another name/destination"
                ) from None
            except OSError:
                # No locking on this filesystem: go on unlocked; link() still refuses clashes.
                self._fd = fd
                return
            if _same_file(fd, self.path):
                self._fd = fd
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError:
                    pass  # the PID is for people; the lock works without it
                return
            os.close(fd)  # we locked a file its holder had just removed; lock the new one
        raise OutputError(f"cannot lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        with critical():
            if self._fd < 0:
                return
            try:
                if _same_file(self._fd, self.path):
                    os.unlink(self.path)
            except OSError:
                pass
            finally:
                os.close(self._fd)
                self._fd = -1


class DirectorySink:
    """Writes parts to a hidden staging directory in ``destination``; commit links them in.

    Staging in the destination keeps links on one filesystem, so committing is cheap and a
    crash leaves only a clearly named ``.ami-bundler-staging-<pid>-…`` directory, never a
    complete-looking bundle; the next run in the destination rolls such leftovers back
    (``remove_stale``). A lock held from ``begin`` to ``commit``/``abort`` makes a second run
    writing the same bundle into the same directory fail at once.
    """

    STAGING_PREFIX = f"{TEMP_MARK}{STAGING_KIND}-"
    # put_part writes the part before it returns; the syncer works by path (see PartSink).
    done_with_part_data = True

    def __init__(self, destination: Path, *, overwrite: bool = False, fsync: bool = True) -> None:
        self.destination = Path(destination)
        self.overwrite = overwrite
        self.fsync = fsync
        self._staging: Path | None = None
        self._name = ""
        self._written: list[Path] = []
        self._committed: list[Path] = []
        self._lock: DestinationLock | None = None
        self._syncer: BackgroundStage[tuple[Path, Path]] | None = None
        # Parts are written once and synced before the manifest: with fsync on, write them
        # past the page cache (where this is possible), which costs a fraction of the CPU.
        self._direct: DirectWriter | None = (DirectWriter()
                                             if fsync and DirectWriter.available() else None)
        # The part being written ahead: (index, descriptor opened with O_DIRECT, bytes written).
        self._ahead: tuple[int, int, int] | None = None

    def check_clear(self, name: str, *, inputs: Sequence[Path | str] = ()) -> None:
        """Fail before any work if the destination already holds a bundle called ``name``
        (and ``overwrite`` is off); commit checks again, this is only to fail fast. An input
        that is one of the files the run would write is refused even with ``overwrite``."""
        if not self.destination.is_dir():
            return
        for path in inputs:
            self._refuse_input(name, Path(path))
        # Clean up after crashed runs first: a half-committed bundle is rolled back here,
        # and must not count as a clash.
        remove_stale(self.destination)
        if self.overwrite:
            return
        clash = self._existing(name)
        if clash:
            raise OutputError(self._clash_message(clash))

    def _refuse_input(self, name: str, path: Path) -> None:
        own = None
        try:
            if path.resolve().parent == self.destination.resolve() and (
                    path.name == f"{name}.manifest.xml" or path.name.startswith(f"{name}.part.")):
                own = path.name
            for existing in self._existing(name):
                if own is None and os.path.samefile(path, self.destination / existing):
                    own = existing
        except OSError:
            return  # an input that cannot be looked at fails when it is opened, not here
        if own is not None:
            raise UsageError(f"input {path} is {self.destination / own}, one of the files this run "
                             "would write: nothing was written; bundle into another --destination "
                             "or --prefix")

    def _existing(self, name: str) -> list[str]:
        manifest = f"{name}.manifest.xml"
        part_prefix = f"{name}.part."
        try:
            names = os.listdir(self.destination)
        except OSError:
            return []
        return sorted(n for n in names if n == manifest or n.startswith(part_prefix))

    def _clash_message(self, clash: Sequence[str]) -> str:
        return (
            f"{self.destination} already holds {clash[0]}"
            + (f" and {len(clash) - 1} more" if len(clash) > 1 else "")
            + ": remove the old bundle or choose another --prefix/--destination"
        )

    def begin(self, name: str, max_parts: int) -> None:
        if not self.destination.is_dir():
            raise OutputError(f"destination directory {self.destination} does not exist")
        self._name = name
        lock = DestinationLock(self.destination, f"bundle-{name}", f"bundle {name}")
        lock.acquire()
        try:
            with critical():  # the lock and the staging directory are recorded before an interrupt
                self._lock = lock
                remove_stale(self.destination, held=[lock])
                staging = self.destination / temp_name(STAGING_KIND, name)
                staging.mkdir(mode=0o700)
                self._staging = staging
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write to {self.destination}: "
                              f"{why_write_failed(exc)}") from exc
        except BaseException:
            self.abort()
            raise

    def expect_parts(self, count: int) -> None:
        pass  # parts are named at commit, when the count is known

    def put_part_ahead(self, index: int, data: memoryview, offset: int) -> None:
        """Write a filling part's bytes at ``offset`` with O_DIRECT now, so that the disk works
        while the rest is being made (PartSink). Only page-aligned pieces of a mapping go
        ahead; anything else waits for put_part, which writes whatever was not written."""
        assert self._staging is not None, "begin() not called"
        direct = self._direct
        if (direct is None or not DirectWriter.mapped(data) or offset % DirectWriter.ALIGN
                or len(data) % DirectWriter.ALIGN):
            return
        path = self._staging / f"part-{index}"
        with critical():
            if self._ahead is None or self._ahead[0] != index:
                if offset:
                    return  # not from the start (an earlier piece was refused): put_part writes it
                self._close_ahead()
                self._note_written(path)
                try:
                    self._ahead = (index, direct.open(path), 0)
                except OSError as exc:
                    self._direct_failed(path, exc)
                    return
            _, fd, done = self._ahead
            if done != offset:
                return  # not the next piece: put_part writes the rest
            try:
                direct.write_at(fd, data, offset)
            except OSError as exc:
                self._close_ahead()
                if exc.errno != errno.EINVAL:  # EINVAL: not aligned after all; put_part writes it
                    self._direct_failed(path, exc)
                return
            self._ahead = (index, fd, offset + len(data))

    def _note_written(self, path: Path) -> None:
        # Before the file exists: a half-written part is removed by name too.
        if not self._written or self._written[-1] != path:
            self._written.append(path)

    def _close_ahead(self) -> None:
        if self._ahead is not None:
            fd, self._ahead = self._ahead[1], None
            os.close(fd)

    def _direct_failed(self, path: Path, exc: OSError) -> None:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OutputError(f"cannot write {path.name} in {self.destination}: "
                              f"{why_write_failed(exc)}") from exc
        log.debug("%s does not take direct I/O (%s): writing parts through the page cache",
                  self.destination, exc.strerror)
        self._direct = None

    def put_part(self, part: Part) -> None:
        assert self._staging is not None, "begin() not called"
        path = self._staging / f"part-{part.index}"
        ahead = self._ahead if self._ahead is not None and self._ahead[0] == part.index else None
        with critical():
            if ahead is not None and self._direct is not None:
                self._ahead = None
                try:
                    self._direct.finish(path, ahead[1], memoryview(part.data), ahead[2])
                except OSError as exc:
                    raise OutputError(f"cannot write {path.name} in {self.destination}: "
                                      f"{why_write_failed(exc)}") from exc
            else:
                self._close_ahead()
                self._note_written(path)
                self._write_part(path, part.data)
        if self.fsync:
            # Durability is bought in the background while later parts are made (a bounded
            # queue: a slow disk holds the writer back); commit waits for every part.
            if self._syncer is None:
                self._syncer = BackgroundStage(_sync_part, depth=4, name="ami-bundler-fsync")
            self._syncer.write((self.destination, path))

    def _write_part(self, path: Path, data: bytes | memoryview) -> None:
        if self._direct is not None:
            try:
                self._direct.write(path, data)
                return
            except OSError as exc:
                self._direct_failed(path, exc)
        self._write_file(path, data, sync=False)

    def _write_file(self, path: Path, data: bytes | memoryview, *, sync: bool) -> None:
        try:
            with open(path, "wb") as fh:
                fh.write(data)
                if sync:
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {path.name} in {self.destination}: "
                              f"{why_write_failed(exc)}") from exc

    def _sync_parts(self) -> None:
        # Every part was handed to the background syncer as it was written (so the disk
        # works while later parts are still being made); the manifest must not become
        # visible before all of them are durable, so wait here for the last one.
        if self._syncer is not None:
            syncer, self._syncer = self._syncer, None
            syncer.close()

    def _remove_old_bundle(self, names: Sequence[str], manifest_name: str) -> None:
        """--force: take the old bundle out, manifest first, before any new file goes in.

        Replacing files one by one would leave the old manifest beside new parts if we died
        half-way (a complete-looking bundle that does not verify); without a manifest, a
        half-replaced set of parts is visibly incomplete and the next run rolls it back.
        """
        old = self._existing(self._name)
        ordered = [manifest_name] if manifest_name in old else []
        ordered += [n for n in old if n != manifest_name]
        for name in ordered:
            try:
                os.unlink(self.destination / name)
            except FileNotFoundError:
                pass
            if name == manifest_name and self.fsync:
                sync_directory(self.destination)

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        assert self._staging is not None, "begin() not called"
        if len(names) != len(self._written):
            raise OutputError(f"internal error: {len(self._written)} parts written, {len(names)} "
                              "named")
        finals = [self.destination / n for n in [*names, manifest_name]]
        if not self.overwrite:
            clash = [p.name for p in finals if p.exists() or p.is_symlink()]
            if clash:
                raise OutputError(self._clash_message(clash))
        if self.fsync:
            self._sync_parts()
        staged_manifest = self._staging / "manifest"
        self._write_file(staged_manifest, manifest, sync=self.fsync)
        try:
            if self.overwrite:
                self._remove_old_bundle(names, manifest_name)
            # An interrupt during the links waits for them and then rolls all of them back
            # (abort), rather than landing between a link and its record.
            with critical():
                for src, dst in zip([*self._written, staged_manifest], finals, strict=True):
                    # link() refuses an existing name atomically: a concurrent run writing the
                    # same bundle (despite the lock, e.g. on a filesystem without flock) makes
                    # one of the two fail here instead of interleaving. The staged copy keeps
                    # the inode, which is how a later run recognises a half-done commit.
                    os.link(src, dst)
                    self._committed.append(dst)
            if self.fsync:
                sync_directory(self.destination)
        except FileExistsError as exc:
            raise OutputError(
                f"{exc.filename2 or exc.filename} appeared while bundling (another run writing the "
                "same bundle?)"
            ) from exc
        except OSError as exc:
            raise OutputError(f"cannot move the bundle into {self.destination}: "
                              f"{why_write_failed(exc)}") from exc
        with critical():
            self._remove_staging()
            self._committed.clear()
            self._release()

    def abort(self) -> None:
        with critical():  # an interrupt waits for the roll-back
            self._close_ahead()
            if self._syncer is not None:
                self._syncer.abort()
                self._syncer = None
            # A failed commit must not leave a manifest without parts or parts without a
            # manifest. The manifest goes first so that no instant shows it beside missing parts.
            for path in reversed(self._committed):
                try:
                    path.unlink()
                except OSError:
                    pass
            self._committed.clear()
            self._remove_staging()
            self._release()

    def _remove_staging(self) -> None:
        """Remove the staging directory by the names we put in it: unlink and rmdir need no
        file descriptor, where rmtree needs two and fails quietly when they have run out."""
        if self._staging is None:
            return
        for path in [*self._written, self._staging / "manifest"]:
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            os.rmdir(self._staging)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(self._staging, ignore_errors=True)
            if self._staging.exists():
                log.warning("could not remove %s; the next run in %s will", self._staging,
                            self.destination)
        self._written.clear()
        self._staging = None

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class DirectWriter:
    """Writes files with O_DIRECT from one reused, page-aligned buffer.

    Copying into the kernel's page cache is most of what writing a part costs (more than
    hashing it, in a VM); direct I/O moves the bytes to the device without that copy. The
    aligned head of the file goes direct, an unaligned tail through a plain descriptor
    (different pages, so the two never overlap). Filesystems that refuse O_DIRECT raise
    EINVAL, and the caller falls back to plain writes.
    """

    ALIGN = 4096

    def __init__(self) -> None:
        self._buffer: mmap.mmap | None = None

    @staticmethod
    def available() -> bool:
        return hasattr(os, "O_DIRECT")

    def _aligned(self, size: int) -> mmap.mmap:
        want = -(-max(size, 1) // self.ALIGN) * self.ALIGN
        if self._buffer is None or len(self._buffer) < want:
            if self._buffer is not None:
                self._buffer.close()
            self._buffer = mmap.mmap(-1, want)  # anonymous maps are page-aligned
        return self._buffer

    @staticmethod
    def mapped(data: bytes | memoryview) -> bool:
        """Whether ``data`` may go to O_DIRECT as it is: a view into a mapping (the pipeline's
        part buffers are anonymous maps, so page-aligned). A view that starts inside a page
        fails with EINVAL, and the caller copies it."""
        return isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap)

    def open(self, path: Path) -> int:
        """A new file for direct writes (``write_at``, then ``finish``)."""
        return os.open(path, (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT
                              | getattr(os, "O_CLOEXEC", 0)), 0o666)

    def write_at(self, fd: int, view: memoryview, offset: int) -> None:
        """Aligned bytes at an aligned offset of a file from ``open`` (lseek and write, not
        pwrite: fake filesystems in users' tests fake only the former, and would hand a fake
        descriptor to the real pwrite)."""
        os.lseek(fd, offset, os.SEEK_SET)
        _write_all(fd, view)

    def finish(self, path: Path, fd: int, data: memoryview, offset: int) -> None:
        """Write ``data[offset:]`` (the part after what ``write_at`` wrote) and close ``fd``:
        the aligned head direct, an unaligned tail through a plain descriptor."""
        rest = data[offset:]
        head = len(rest) - len(rest) % self.ALIGN
        try:
            if head and self.mapped(rest):
                try:
                    self.write_at(fd, rest[:head], offset)
                    head = -head  # written
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
            if head > 0:
                buffer = self._aligned(head)
                buffer[:head] = rest[:head]
                with memoryview(buffer) as copy:
                    self.write_at(fd, copy[:head], offset)
            head = abs(head)
        finally:
            os.close(fd)
        if head < len(rest):
            tail = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.lseek(tail, offset + head, os.SEEK_SET)
                _write_all(tail, rest[head:])
            finally:
                os.close(tail)

    def write(self, path: Path, data: bytes | memoryview) -> None:
        if isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap):
            # A view of a mapping (the pipeline's part buffers are anonymous maps, so
            # page-aligned): straight from it, without the copy. EINVAL: not aligned after all
            # (or no direct I/O here, which the copy's attempt tells the caller).
            try:
                self._write_aligned(path, data)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        buffer = self._aligned(len(data))
        buffer[:len(data)] = data
        with memoryview(buffer) as view:
            self._write_aligned(path, view[:len(data)])

    def _write_aligned(self, path: Path, view: memoryview) -> None:
        head = len(view) - len(view) % self.ALIGN
        fd = os.open(path, (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT
                            | getattr(os, "O_CLOEXEC", 0)), 0o666)
        try:
            _write_all(fd, view[:head])
        finally:
            os.close(fd)
        if head < len(view):
            fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.lseek(fd, head, os.SEEK_SET)
                _write_all(fd, view[head:])
            finally:
                os.close(fd)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "the write made no progress")
        view = view[written:]


def _sync_part(item: tuple[Path, Path]) -> None:
    """Flush one written part to disk (the background syncer's work, by path: a part the
    syncer skips after a failure or an abort holds no descriptor)."""
    destination, path = item
    sync = getattr(os, "fdatasync", os.fsync)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            sync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot flush {path.name} to disk in {destination}: "
                          f"{why_write_failed(exc)}") from exc


def why_write_failed(exc: OSError) -> str:
    """A write error in words a user can act on (full disk, ulimit -f, quota)."""
    if exc.errno == errno.ENOSPC:
        return "no space left on the device (free some space or choose another --destination)"
    if exc.errno == errno.EFBIG:
        return "file size limit exceeded (ulimit -f)"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc)


class DirectorySource:
    """Reads parts named by the manifest from a local directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        return str(self.directory)

    def path_of(self, entry: PartEntry) -> Path:
        return self.directory / entry.filename

    def check_present(self, entries: Sequence[PartEntry]) -> None:
        """Every part is a regular file and none is absurdly large, before any byte is read."""
        for entry in entries:
            try:
                st = os.stat(self.path_of(entry))
            except OSError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise PartMissingError(f"part {entry.filename} (index {entry.index}) is missing "
                                       f"from {self.directory}")
            if st.st_size > MAX_PART_BYTES:
                raise IntegrityError(
                    f"part {entry.filename} is {st.st_size} bytes, larger than {MAX_PART_BYTES}: "
                    "not a bundle part"
                )

    def iter_parts(self,
                   entries: Sequence[PartEntry]) -> Iterator[tuple[PartEntry, Iterable[bytes]]]:
        for entry in entries:
            yield entry, self._chunks(entry)

    def _chunks(self, entry: PartEntry) -> Iterator[bytes]:
        path = self.path_of(entry)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise PartMissingError(f"part {entry.filename} (index {entry.index}) is missing from "
                                   f"{self.directory}") from None
        except OSError as exc:
            raise IntegrityError(f"cannot read part {entry.filename}: {exc.strerror}") from exc
        with fh:
            while chunk := fh.read(READ_CHUNK):
                yield chunk


__all__ = [
    "MAX_PART_BYTES",
    "PART_SIZE",
    "DestinationLock",
    "remove_stale",
    "temp_name",
    "Part",
    "PartSink",
    "PartSource",
    "DirectorySink",
    "DirectorySource",
    "part_names",
    "provisional_name",
    "provisional_width",
]
