"""Helpers for tests about threads: poll for a condition, find threads a test left behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.005)
    return True


@pytest.fixture
def no_thread_left() -> Callable[[], list[str]]:
    """A check that lists the ``ami-bundler-*`` threads started since the fixture and alive."""
    before = set(threading.enumerate())

    def check() -> list[str]:
        return sorted(t.name for t in threading.enumerate()
                      if t not in before and t.is_alive() and t.name.startswith("ami-bundler"))

    return check
