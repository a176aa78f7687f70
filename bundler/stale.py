"""Clean-up after ami-bundler runs that died: their temporary entries in a destination.

A staging directory whose owner is gone is rolled back (``remove_stale``), other leftovers are
removed; entries of live processes are left alone (``pid_alive``).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from .destlock import DestinationLock, same_file, try_flock
from .tempnames import LOCK_KIND, STAGING_KIND, TEMP_MARK, TEMP_RE, VOLUME_KIND

log = logging.getLogger("bundler.parts")  # its name before the split: users filter by it


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
        match = TEMP_RE.match(entry)
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
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    if try_flock(fd) is not True:  # held, or no locking here: nothing proves its owner died
        os.close(fd)
        return False
    try:
        if same_file(fd, path):
            os.unlink(path)
            return True
        return False
    finally:
        os.close(fd)
