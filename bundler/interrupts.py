"""Critical sections: the few steps an interrupt must not split.

A signal turned into an exception (``Interrupted``, see ``bundler.cli.signals``) can land
between any two bytecodes of the main thread, for instance between creating a lock file or
a staging directory and recording it for clean-up, which would leave it behind. Code that
creates something and records it does both inside ``critical()``: a signal arriving there is
held until the section ends and then raised, when the thing is recorded and the caller's
clean-up will see it.

Only the main thread receives signals, so only its sections defer; in other threads
``critical()`` costs one attribute lookup. Those threads can ask ``signalled()`` instead: work
that would create something (a lease, an upload) and that a signal's clean-up would only have
to undo is not started once the run has been told to stop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Interrupted

_local = threading.local()
_pending: list[int] = []
_signalled: list[int] = []  # the first signal of this run (noted by the handler, any thread reads)


def deferring() -> bool:
    """True in the middle of a critical section of the calling thread."""
    return getattr(_local, "depth", 0) > 0


def note(signum: int) -> None:
    """The handler saw ``signum``: the run is stopping (raised now or at the section's end)."""
    if not _signalled:
        _signalled.append(signum)


def signalled() -> int | None:
    """The signal this run was told to stop by, if any (for threads the signal cannot reach)."""
    return _signalled[0] if _signalled else None


def defer(signum: int) -> None:
    """Hold ``signum`` until the current critical section ends (called by the handler)."""
    if not _pending:
        _pending.append(signum)


@contextmanager
def critical() -> Iterator[None]:
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1
        if not _local.depth and _pending and threading.current_thread() is threading.main_thread():
            signum = _pending.pop()
            raise Interrupted(signum)


def clear() -> None:
    """Forget a held signal (a new run in the same process starts clean)."""
    _pending.clear()
    _signalled.clear()
