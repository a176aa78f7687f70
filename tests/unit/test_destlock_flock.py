"""destlock.try_flock, the one owner of "take an exclusive flock now or not at all", and its two
readers: the destination lock (no locking here: go on unlocked) and the stale clean-up (no
locking here: nothing proves a lock file's owner died, so it stays)."""

from __future__ import annotations

import errno
import os

import pytest

from bundler import destlock
from bundler.destlock import DestinationLock, try_flock
from bundler.stale import remove_stale


def _open(path):
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def test_taken_then_refused_to_another_open_file(tmp_path):
    # flock conflicts between open file descriptions, also within one process
    first, second = _open(tmp_path / "l"), _open(tmp_path / "l")
    try:
        assert try_flock(first) is True
        assert try_flock(second) is False
    finally:
        os.close(first)
    try:
        assert try_flock(second) is True  # the holder's close dropped it
    finally:
        os.close(second)


@pytest.fixture
def no_locking(monkeypatch):
    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(destlock.fcntl, "flock", refuse)


def test_a_filesystem_without_locks_is_none(tmp_path, no_locking):
    fd = _open(tmp_path / "l")
    try:
        assert try_flock(fd) is None
    finally:
        os.close(fd)


def test_the_destination_lock_goes_on_unlocked_without_locks(tmp_path, no_locking):
    lock = DestinationLock(tmp_path, "bundle-x", "bundle x")
    assert lock.try_acquire()
    lock.release()
    assert os.listdir(tmp_path) == []


def test_the_stale_clean_up_keeps_a_lock_file_it_cannot_lock(tmp_path, no_locking):
    left = tmp_path / ".ami-bundler-lock-bundle-x"
    left.write_bytes(b"12345\n")
    remove_stale(tmp_path)
    assert left.exists()


def test_the_stale_clean_up_removes_an_unheld_lock_file_and_keeps_a_held_one(tmp_path):
    left = tmp_path / ".ami-bundler-lock-bundle-x"
    left.write_bytes(b"12345\n")
    held = DestinationLock(tmp_path, "bundle-y", "bundle y")
    held.acquire()
    try:
        remove_stale(tmp_path)
        assert not left.exists()
        assert held.path.exists()
    finally:
        held.release()
