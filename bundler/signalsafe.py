"""Locks, waits, events and semaphores that a signal's ``Interrupted`` cannot leave held.

The CLI's handler raises ``Interrupted`` on the main thread between any two bytecodes,
including those of ``threading``'s own Python code. ``threading.Condition.__enter__`` is
Python (``return self._lock.__enter__()``): raised after that call returns, the lock stays
acquired with no ``with`` block to release it, and every other thread that needs it blocks for
ever (a relay's uploader thread in ``stored``, then the executor's shutdown that waits for it).
``Semaphore.acquire``, ``Event.wait``/``set`` and ``Condition.wait`` (which releases and
re-acquires in Python) have the same gaps.

What is safe: a ``threading.Lock`` entered as ``with lock:`` (its ``__enter__`` is C, and
``BEFORE_WITH`` checks for no signal before the block's clean-up covers it), and Python code
inside ``interrupts.critical()``, where the handler only holds the signal. So the primitives
here guard their state with a ``threading.Lock`` and do every step that must not be split in a
critical section; the one thing that is not, the blocking wait itself, is
``interrupts.held_wait``, which a signal ends early instead of splitting.

Use them wherever the main thread may be inside the primitive when a signal comes; code that
only worker threads run (no signal reaches them) may keep ``threading``'s.

``concurrent.futures`` has the same gaps: every method of a ``Future`` takes its
``threading.Condition`` (``with self._condition:``, in Python), and so do
``concurrent.futures.wait`` and ``as_completed``; one left held by the main thread blocks the
worker's ``set_result`` for ever, and the pool's ``shutdown(wait=True)`` with it. The main
thread reads and waits for futures through the functions below instead: a wait is
``held_wait`` on a lock that the futures' done callbacks release (registered in the same
critical section), as ``Event.wait`` is, and each call into the future itself is made in a
critical section, where it cannot block for long (the future is done, or the call never
waits). Submitting is ``concurrency.Executor.submit``'s (a critical section: every
pool of the product is one).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from .interrupts import critical, held_wait, wake

T = TypeVar("T")
R = TypeVar("R")


class Condition:
    """``wait``/``notify_all`` for state guarded by ``lock``, a ``threading.Lock`` the caller
    holds as ``with lock:``. A signal during ``wait`` raises ``Interrupted`` with the lock held
    again, as ``with`` expects, and never leaves a waiter that a notify would miss."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._waiters: list[threading.Lock] = []  # one locked lock per waiting thread

    def wait(self, timeout: float | None = None) -> None:
        """Release the lock until a notify, ``timeout`` or a signal (the caller re-checks its
        predicate: a return says nothing about it); return or raise with the lock held."""
        if not self._lock.locked():
            raise RuntimeError("Condition.wait without its lock held")
        with critical():
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
            self._lock.release()
            try:
                held_wait(waiter, timeout)
            finally:
                self._lock.acquire()  # in the section: a signal meanwhile is held, not raised
                if waiter in self._waiters:  # timed out or ended by a signal, not notified
                    self._waiters.remove(waiter)

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``predicate()`` holds (True) or ``timeout`` has passed with it still
        false (False), the lock held as for ``wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not predicate():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self.wait(left)
        return True

    def notify_all(self) -> None:
        """Wake every waiter (with the lock held)."""
        with critical():  # all of them or none: a waiter skipped would wait for ever
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                wake(waiter)


class Event:
    """``threading.Event``'s ``set``/``is_set``/``wait`` on the primitives above."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = Condition(self._lock)
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with critical():  # set and every waiter woken, or not set at all
            with self._lock:
                self._flag = True
                self._changed.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until set (True) or ``timeout`` has passed (the flag then: False if unset)."""
        with self._lock:
            return self._changed.wait_for(lambda: self._flag, timeout)


class Semaphore:
    """A bounded semaphore whose unit is taken together with what the caller does with it
    (``holding``): a signal either comes while waiting, with nothing taken, or after the
    caller's step has recorded the unit (a future that releases it when done)."""

    def __init__(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"a semaphore of {value}")
        self._lock = threading.Lock()
        self._freed = Condition(self._lock)
        self._value = self._limit = value

    def holding(self, then: Callable[[], T]) -> T:
        """Take a unit, waiting for one, then return ``then()``: the unit is then the caller's
        to ``release``. If ``then`` raises, the unit is given back first. No signal is raised
        between taking the unit and ``then``'s end (one held meanwhile is raised after it, the
        unit still the caller's)."""
        while True:
            with self._lock:
                self._freed.wait_for(lambda: self._value > 0)
            with critical():
                with self._lock:
                    if not self._value:  # another thread took it in between
                        continue
                    self._value -= 1
                try:
                    return then()
                except BaseException:
                    self.release()
                    raise

    def release(self) -> None:
        with critical():
            with self._lock:
                if self._value >= self._limit:
                    raise ValueError("Semaphore released too many times")
                self._value += 1
                self._freed.notify_all()


class Queue(Generic[T]):
    """``queue.Queue``'s ``put``/``get``/``get_nowait`` (raising its ``Full`` and ``Empty``) on
    the primitives above: an item is queued or taken together with the notify that wakes the
    other side (one held signal is raised after both)."""

    def __init__(self, maxsize: int) -> None:
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._not_empty = Condition(self._lock)
        self._not_full = Condition(self._lock)

    def put(self, item: T, timeout: float | None = None) -> None:
        with self._lock:
            if not self._not_full.wait_for(lambda: len(self._items) < self._maxsize, timeout):
                raise queue.Full
            with critical():
                self._items.append(item)
                self._not_empty.notify_all()

    def get(self) -> T:
        with self._lock:
            self._not_empty.wait_for(lambda: bool(self._items))
            return self._take()

    def get_nowait(self) -> T:
        with self._lock:
            if not self._items:
                raise queue.Empty
            return self._take()

    def _take(self) -> T:
        with critical():
            item = self._items.popleft()
            self._not_full.notify_all()
            return item


# --------------------------------------------------------------------------- futures


def wait(futures: Iterable[Future[Any]], *, first_exception: bool = False) -> None:
    """Return once every future is done (cancelled counts as done), or, with
    ``first_exception``, as soon as one has raised: ``concurrent.futures.wait`` that a signal
    ends with ``Interrupted`` and nothing of the futures' held (in an outer critical section it
    waits on, as that section does)."""
    futures = list(futures)
    if not futures:
        return
    waiter = threading.Lock()  # released by the last future's callback (or a failure's)
    waiter.acquire()
    left = [len(futures)]
    count = threading.Lock()

    def done(future: Future[Any]) -> None:
        # On the thread that ended the future, or here, in the section below, if it is done.
        with count:
            left[0] -= 1
            last = not left[0]
        if last or (first_exception and not future.cancelled()
                    and future.exception() is not None):
            wake(waiter)

    with critical():  # every callback registered, and the wait a held signal ends
        for future in futures:
            future.add_done_callback(done)
        held_wait(waiter)


def result(future: Future[T]) -> T:
    """``future.result()``: wait until it is done, then its value (or what it raised, or
    ``CancelledError``)."""
    return _once_done(future, future.result)


def exception(future: Future[Any]) -> BaseException | None:
    """``future.exception()``: wait until it is done, then what it raised, or None
    (``CancelledError`` if it was cancelled)."""
    return _once_done(future, future.exception)


def _once_done(future: Future[Any], read: Callable[[], R]) -> R:
    """``read()`` (a method of ``future``, which enters its lock) once ``future`` is done, in a
    critical section; a future done already skips the wait's set-up."""
    with critical():
        if future.done():
            return read()
    wait((future,))
    with critical():
        return read()


def done(future: Future[Any]) -> bool:
    """``future.done()``."""
    with critical():
        return future.done()


def cancelled(future: Future[Any]) -> bool:
    """``future.cancelled()``."""
    with critical():
        return future.cancelled()


def cancel(future: Future[Any]) -> bool:
    """``future.cancel()``: True if it will not run (its done callbacks have run then)."""
    with critical():
        return future.cancel()


__all__ = ["Condition", "Event", "Queue", "Semaphore", "cancel", "cancelled", "done",
           "exception", "result", "wait"]
