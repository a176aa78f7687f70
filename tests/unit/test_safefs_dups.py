"""safefs.submit_with_dups: the duplicated fds are the task's, and closed for it when it never
runs (cancelled, or its submit failed). Real fds of a temporary directory."""

from __future__ import annotations

import os
import threading

import pytest

from bundler.concurrency import Executor
from bundler.volume import safefs


def _open_on(path) -> int:  # type: ignore[no-untyped-def]
    """How many of this process's fds are open on ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:  # the listing's own fd
            continue
    return count


def test_a_task_that_runs_gets_the_dups_and_one_cancelled_has_them_closed(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    held = threading.Event()
    pool = Executor(max_workers=1)
    try:
        def first(dups: tuple[int, ...]) -> int:
            held.wait(10)
            for d in dups:
                os.close(d)  # the task's own, as a real task closes them
            return len(dups)

        running = safefs.submit_with_dups(pool, (fd, fd), first)
        queued = safefs.submit_with_dups(pool, (fd,), lambda dups: pytest.fail("ran"))
        assert _open_on(tmp_path) == 4  # the fd itself, two dups running, one queued
        assert queued.cancel()
        assert _open_on(tmp_path) == 3  # the queued task's dup closed at its cancel
        held.set()
        assert running.result(10) == 2
        assert _open_on(tmp_path) == 1
    finally:
        held.set()
        pool.shutdown(wait=True)
        os.close(fd)


def test_a_failed_submit_closes_what_it_duplicated(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    pool = Executor(max_workers=1)
    pool.shutdown(wait=True)  # a shut-down pool refuses every submit
    try:
        with pytest.raises(RuntimeError):
            safefs.submit_with_dups(pool, (fd, fd), lambda dups: None)
        assert _open_on(tmp_path) == 1
    finally:
        os.close(fd)
