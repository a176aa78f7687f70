"""DirectorySink: a bundle's parts and manifest written into a local directory, staged and
linked in on commit (manifest last), rolled back on abort."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .concurrency import BackgroundStage
from .destlock import DestinationLock
from .directio import DirectWriter
from .errors import OutputError, UsageError
from .interrupts import critical, stop_if_signalled
from .newfiles import sync_directory
from .parts import Part
from .stale import remove_stale
from .tempnames import STAGING_KIND, TEMP_MARK, temp_name
from .writeerrors import why_write_failed

log = logging.getLogger("bundler.parts")  # its name before the split: users filter by it


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
        # Parts written with O_DIRECT, to be synced at commit (see put_part).
        self._unsynced: list[Path] = []
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
                direct = True
            else:
                self._close_ahead()
                self._note_written(path)
                direct = self._write_part(path, part.data)
        if self.fsync and direct:
            # Its bytes went to the device as they were written: what is left to make durable
            # is its size and extents (one journal commit for all parts) and the device's cache,
            # which commit syncs. Syncing it now would make the later parts' direct writes wait
            # for that journal commit and cache flush (4 MiB writes: 3-5 ms -> 10-40 ms).
            self._unsynced.append(path)
        elif self.fsync:
            # Durability is bought in the background while later parts are made (a bounded
            # queue: a slow disk holds the writer back); commit waits for every part.
            if self._syncer is None:
                self._syncer = BackgroundStage(_sync_part, depth=4, name="ami-bundler-fsync")
            self._syncer.write((self.destination, path))

    def _write_part(self, path: Path, data: bytes | memoryview) -> bool:
        """Write a whole part; whether it went past the page cache (O_DIRECT)."""
        if self._direct is not None:
            try:
                self._direct.write(path, data)
                return True
            except OSError as exc:
                self._direct_failed(path, exc)
        self._write_file(path, data, sync=False)
        return False

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
        # Parts written through the page cache were handed to the background syncer as they
        # were written (so the disk works while later parts are still being made), direct ones
        # wait for this; the manifest must not become visible before all of them are durable.
        if self._syncer is not None:
            syncer, self._syncer = self._syncer, None
            syncer.close()
        unsynced, self._unsynced = self._unsynced, []
        for path in unsynced:
            _sync_part((self.destination, path))

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
        # A run told to stop whose Interrupted was lost (raised in a finalizer, which Python
        # ignores) kept running to here: it still keeps nothing.
        stop_if_signalled()
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
            self._unsynced.clear()
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
