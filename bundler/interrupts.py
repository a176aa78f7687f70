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
to undo is not started once the run has been told to stop, and a step that cannot be undone
(a manifest PUT) is not taken (``stop_if_signalled``).

Some steps can be undone only until they are taken: once a bundle's manifest is visible, an
AMI may be registered from it (by another process, a CI job), so an interrupt after that never
removes it. The publish protocol records each manifest it made visible (``published``), and
the registration each AMI made from one (``registered``); the CLI tells the interrupted user
what is there and how to finish (``kept``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from .errors import Interrupted

_local = threading.local()
_pending: list[int] = []
# What the main thread's wait in its outermost critical section blocks on (``held_wait``): a
# signal held meanwhile releases it, so the section ends and raises the signal at once.
_waking: list[threading.Lock] = []
_signalled: list[int] = []  # the first signal of this run (noted by the handler, any thread reads)


@dataclass(frozen=True)
class Published:
    """A manifest this run made visible: the bundle is whole and stays, whatever follows."""

    url: str  # s3://BUCKET/PREFIX/NAME.manifest.xml
    image_location: str  # BUCKET/PREFIX/NAME.manifest.xml, as RegisterImage takes it
    image_id: str | None = None  # the AMI this run registered from it


_ledger: dict[str, Published] = {}  # image location → what was published there
_ledger_lock = threading.Lock()


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


def stop_if_signalled() -> None:
    """Raise ``Interrupted`` once the run has been told to stop: before a step that cannot be
    undone, a run that is stopping does not take it (on the main thread the signal itself is
    raised too, now or when its critical section ends)."""
    signum = signalled()
    if signum is not None:
        raise Interrupted(signum)


def defer(signum: int) -> None:
    """Hold ``signum`` until the current critical section ends (called by the handler)."""
    if not _pending:
        _pending.append(signum)
    for waiter in _waking:
        wake(waiter)


def wake(waiter: threading.Lock) -> None:
    """Release a waiter's lock (``held_wait``), which may have been released already: a notify
    and a held signal can both end one wait."""
    try:
        waiter.release()
    except RuntimeError:  # released already: the wait is ending anyway
        pass


def held_wait(waiter: threading.Lock, timeout: float | None = None) -> None:
    """Block until ``waiter`` (a locked ``threading.Lock``) is released or ``timeout`` passes,
    inside a critical section: a wait that a signal can end without an exception landing
    in the middle of anything. In the main thread's outermost section a signal held before or
    during the wait ends it at once (the caller sees an early wake-up, and the section's end
    raises the signal); in an inner section it waits, as the whole of the outer section does.
    """
    outermost = (getattr(_local, "depth", 0) == 1
                 and threading.current_thread() is threading.main_thread())
    if outermost:
        _waking.append(waiter)
    try:
        # Looked at once the waiter is registered: a signal held before that is seen here,
        # one held after it releases the waiter (the handler runs on this thread).
        if not (outermost and _pending):
            waiter.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
    finally:
        if outermost:
            _waking.remove(waiter)


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


def published(url: str, image_location: str) -> None:
    """Record that the manifest at ``url`` is visible (called right after its PUT)."""
    with _ledger_lock:
        _ledger[image_location] = Published(url, image_location)


def registered(image_location: str, image_id: str) -> None:
    """Record the AMI this run registered from a manifest it published."""
    with _ledger_lock:
        if image_location in _ledger:
            _ledger[image_location] = replace(_ledger[image_location], image_id=image_id)


def kept() -> list[Published]:
    """Every manifest this run published, in the order it did."""
    with _ledger_lock:
        return list(_ledger.values())


def clear() -> None:
    """Forget a held signal and what was published (a new run in the same process starts
    clean)."""
    _pending.clear()
    _signalled.clear()
    with _ledger_lock:
        _ledger.clear()
