"""When DirectorySink makes parts durable: parts written with O_DIRECT at commit (a sync while
later parts are written direct makes those writes wait for the journal), parts written through
the page cache in the background as they come; the manifest after all of them either way."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from bundler.directio import DirectWriter
from bundler.dirsink import DirectorySink
from bundler.parts import Part


def _syncer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ami-bundler-fsync"]


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files fdatasync'd (and the manifest's fsync), in order."""
    events: list[str] = []
    real_datasync = getattr(os, "fdatasync", os.fsync)
    real_fsync = os.fsync

    def name(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[1]

    def datasync(fd: int) -> None:
        events.append(name(fd))
        real_datasync(fd)

    def fsync(fd: int) -> None:
        events.append(name(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", datasync, raising=False)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def _put_three(sink: DirectorySink) -> None:
    sink.begin("img", 3)
    for i in range(3):
        sink.put_part(Part(i, os.urandom(5000 + i)))


def _commit(sink: DirectorySink) -> None:
    sink.commit([f"img.part.{i}" for i in range(3)], "img.manifest.xml", b"<manifest/>")


def test_direct_parts_are_synced_at_commit_not_between_writes(
        tmp_path: Path, synced: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Wherever the test runs (tmpfs refuses O_DIRECT), the device takes direct writes.
    monkeypatch.setattr(DirectWriter, "write",
                        lambda self, path, data: Path(path).write_bytes(bytes(data)))
    sink = DirectorySink(tmp_path)
    _put_three(sink)
    assert synced == [] and not _syncer_threads()  # nothing synced while parts are written
    _commit(sink)
    assert synced[:3] == ["part-0", "part-1", "part-2"]
    assert synced.index("manifest") > 2  # the manifest only after every part
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "img.manifest.xml", "img.part.0", "img.part.1", "img.part.2"]


def test_page_cache_parts_are_synced_in_the_background(
        tmp_path: Path, synced: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: DirectWriter, path: Path, data: bytes) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")  # no O_DIRECT here

    monkeypatch.setattr(DirectWriter, "write", refuse)
    sink = DirectorySink(tmp_path)
    _put_three(sink)
    assert _syncer_threads()  # writeback overlaps the later parts
    _commit(sink)
    assert synced[:3] == ["part-0", "part-1", "part-2"]
    assert synced.index("manifest") > 2
    assert not _syncer_threads()


def test_an_abort_drops_the_unsynced_parts(tmp_path: Path, synced: list[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DirectWriter, "write",
                        lambda self, path, data: Path(path).write_bytes(bytes(data)))
    sink = DirectorySink(tmp_path)
    _put_three(sink)
    sink.abort()
    assert synced == [] and list(tmp_path.iterdir()) == []
