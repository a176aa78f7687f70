"""The threads ami-bundler runs, built once: a bounded executor, a background stage, a
prefetching iterator, an ordered window of parallel calls, fan-out, and a background task.

Every primitive keeps the same promises, which the tests in tests/unit/test_concurrency.py
state one by one:

* **No thread outlives a failure.** Whatever fails (a task, the caller, a KeyboardInterrupt),
  by the time the error reaches the caller every thread the primitive started has ended or
  is ending on its own after the item it is busy with; nothing new starts.
* **The first failure wins and sticks.** It is raised to the caller at its next call (or at
  ``join``/``close``), later work is skipped, not run.
* **Bounded memory.** Producers block when ``limit``/``depth``/``window`` items are queued.
* **Threads are named** ``ami-bundler-*`` (tests look for leftovers by that prefix) and are
  daemons, so an interpreter exit is never held up by one stuck in a system call.

Model: s3transfer's ``futures.BoundedExecutor`` and ``TransferCoordinator``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from . import signalsafe
from .interrupts import critical
from .signalsafe import Event, Queue, Semaphore

log = logging.getLogger("bundler.concurrency")

T = TypeVar("T")
R = TypeVar("R")

# How long a stopping primitive waits for its thread: a thread stuck in one item (a slow PUT,
# a hung NFS write) longer than this is left to end on its own (it is a daemon and skips
# everything after that item).
JOIN_TIMEOUT = 30.0


# --------------------------------------------------------------------------- bounded executor


class Executor(ThreadPoolExecutor):
    """The thread pool every pool of the product is.

    ``ThreadPoolExecutor.submit`` starts its threads lazily, and ``Thread.start`` waits for the
    new thread to run: a signal raising ``Interrupted`` in that wait leaves a thread running
    that the pool never recorded, so ``shutdown(wait=True)`` and the interpreter's exit do not
    wait for it, and it goes on writing or uploading while the clean-up runs. Here a submit is
    a critical section: the signal is raised once the thread is the pool's.

    ``shutdown(wait=True)`` is one too. On CPython before 3.12 a signal that interrupts
    ``Thread.join`` marks a thread that is still running as stopped, and the join loop ends
    there: the threads after it are not waited for, and the one interrupted is never waited
    for again. A shutdown waits for the tasks under way (each ends after its item: a shutdown
    is a clean-up, never the wait for the work itself, which the callers do on futures), and a
    signal meanwhile is raised once they have ended."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        with critical():
            return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not wait:
            super().shutdown(wait=False, cancel_futures=cancel_futures)
            return
        with critical():
            super().shutdown(wait=True, cancel_futures=cancel_futures)


def start_thread(thread: threading.Thread) -> threading.Thread:
    """``thread.start()`` that a signal cannot split (see ``Executor``): once it returns or
    raises ``Interrupted``, the caller holds a thread that is running."""
    with critical():
        thread.start()
    return thread


def join_thread(thread: threading.Thread, timeout: float | None = None) -> None:
    """``thread.join(timeout)`` that a signal cannot cut short (see ``Executor.shutdown``): on
    CPython 3.11 an interrupted join marks the thread stopped while it still runs (a lease's
    renewal still under way would then land after the lease's release)."""
    with critical():
        thread.join(timeout)


class BoundedExecutor:
    """A thread pool whose ``submit`` blocks while ``limit`` tasks are pending.

    The first failure is kept and re-raised by the next ``submit``/``check``/``join``; tasks
    not started yet are cancelled by ``join`` after a failure and by ``shutdown(cancel=True)``.
    As a context manager it joins on success and cancels on an exception.
    """

    def __init__(
        self, jobs: int, limit: int | None = None, *, name: str = "ami-bundler-pool"
    ) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, not {jobs}")
        self._executor = Executor(max_workers=jobs, thread_name_prefix=name)
        # Taken on the caller's thread, the main one too: a signal must not leave a slot (or
        # the semaphore's own lock) taken with no task to give it back (signalsafe).
        self._slots = Semaphore(limit if limit is not None else 2 * jobs)
        self._futures: list[Future[Any]] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def _done(self, fut: Future[Any]) -> None:
        self._slots.release()
        if not fut.cancelled() and fut.exception() is not None:
            with self._lock:
                if self._error is None:
                    self._error = fut.exception()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        self.check()
        return self._slots.holding(lambda: self._start(fn, args))

    def _start(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Future[T]:
        """Submit with a slot taken: the future given the slot to release is recorded before
        any signal (``Semaphore.holding``)."""
        self.check()
        fut = self._executor.submit(fn, *args)
        self._futures.append(fut)
        fut.add_done_callback(self._done)
        return fut

    def join(self) -> None:
        """Wait for everything; on the first failure cancel what has not started and raise it.
        (The futures' own waits and reads are signalsafe's: the main thread joins.)"""
        signalsafe.wait(self._futures, first_exception=True)
        with critical():  # a cancel runs the slot's release: all of them, or none started
            pending = [fut for fut in self._futures if not fut.done()]
            for fut in pending:
                fut.cancel()
        signalsafe.wait(pending)
        self.check()
        with critical():  # every future is done: their reads do not wait
            failed = next((error for fut in self._futures if not fut.cancelled()
                           and (error := fut.exception()) is not None), None)
        if failed is not None:
            raise failed

    def shutdown(self, *, cancel: bool) -> None:
        self._executor.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> BoundedExecutor:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.shutdown(cancel=True)
            return
        try:
            self.join()
        except BaseException:
            self.shutdown(cancel=True)
            raise
        self.shutdown(cancel=False)


def run_parallel(
    tasks: Sequence[Callable[[], T]], jobs: int, *, name: str = "ami-bundler-s3"
) -> list[T]:
    """Run callables on ``jobs`` threads; results in order; the first failure cancels the rest."""
    if not tasks:
        return []
    if jobs <= 1 or len(tasks) == 1:
        return [task() for task in tasks]
    futures: list[Future[T]] = []
    pool = BoundedExecutor(jobs, max(jobs * 2, 1), name=name)
    # Not ``with pool``: a signal landing on ``__exit__``'s first instruction, after the last
    # submit, would leave every task running while the caller cleans up and returns (a
    # download thread writing a part's temporary file when the process exits). Here the wait
    # is inside the try, so whatever instruction the interrupt lands on, the tasks under way
    # have ended before it reaches the caller.
    try:
        for task in tasks:
            futures.append(pool.submit(task))
        pool.join()
    except BaseException:
        pool.shutdown(cancel=True)
        raise
    pool.shutdown(cancel=False)  # every task has ended: only idle threads are left
    return [signalsafe.result(fut) for fut in futures]


def run_all(
    tasks: Sequence[Callable[[], T]], *, name: str = "ami-bundler-fanout"
) -> list[Future[T]]:
    """Run every callable at once, each on its own thread, and wait for all of them.

    Unlike ``run_parallel`` a failure does not stop the others (one region failing must not
    stop the rest): every returned future is done; read each outcome with
    ``signalsafe.exception``/``result`` (a done future's own methods still take its lock).
    """
    if not tasks:
        return []
    futures: list[Future[T]] = []
    pool = Executor(max_workers=len(tasks), thread_name_prefix=name)
    try:  # the wait inside the try, as in run_parallel
        for task in tasks:
            futures.append(pool.submit(task))
        signalsafe.wait(futures)
    finally:
        pool.shutdown(wait=True)
    return futures


# --------------------------------------------------------------------------- ordered window


def ordered_window(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    jobs: int,
    window: int,
    name: str = "ami-bundler-get",
) -> Generator[tuple[T, R], None, None]:
    """``(item, fn(item))`` in the items' order, with up to ``window`` calls running or done
    ahead of the consumer on ``jobs`` threads.

    A failing call raises at its item. A consumer that stops early (an error, Ctrl-C, or
    ``close()`` on the generator) cancels what has not started and waits for what has.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    executor = Executor(max_workers=max(1, jobs), thread_name_prefix=name)
    pending: list[tuple[T, Future[R]]] = []
    todo = iter(items)
    end = object()

    def fill() -> None:
        while len(pending) < window:
            item = next(todo, end)
            if item is end:
                return
            pending.append((item, executor.submit(fn, item)))  # type: ignore[arg-type]  # not end

    try:
        fill()
        while pending:
            item, fut = pending.pop(0)
            result = signalsafe.result(fut)
            fill()
            yield item, result
    finally:
        with critical():
            for _, fut in pending:
                fut.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- background stage


class BackgroundStage(Generic[T]):
    """Runs ``consume`` on each written item in its own thread, behind a bounded queue.

    A failure in the thread surfaces at the next ``write`` or at ``close``; after it the
    thread skips whatever is still queued. ``abort`` always ends the thread: it drops the
    queue so its end marker fits, and a consumer stuck in its current item ends as soon as
    that item returns.
    """

    _END = object()

    def __init__(
        self, consume: Callable[[T], object], *, depth: int = 8, name: str = "ami-bundler-out"
    ) -> None:
        self._consume = consume
        # signalsafe's: the main thread writes and aborts (threading's would be left locked).
        self._queue: Queue[object] = Queue(depth)
        self._error: BaseException | None = None
        # Set when the thread has ended. Waited on instead of Thread.join/is_alive: a join that
        # a signal interrupts (CPython before 3.12) marks a thread that is still running as
        # stopped, and an abort after it would then not wait for the item in progress.
        self._finished = Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        start_thread(self._thread)

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is self._END:
                    return
                if self._error is None:
                    try:
                        self._consume(item)  # type: ignore[arg-type]  # only write() puts items
                    except BaseException as exc:  # re-raised in the writer's thread
                        self._error = exc
        finally:
            self._finished.set()

    def _raise(self) -> None:
        # The error stays set: the thread keeps skipping whatever is still queued.
        if self._error is not None:
            raise self._error

    def write(self, item: T) -> None:
        self._raise()
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if self._finished.is_set():
                    raise RuntimeError("the output stage stopped") from None

    def close(self) -> None:
        """Wait until everything written is consumed; raise the stage's failure, if any."""
        if not self._finished.is_set():
            self._queue.put(self._END)
            self._finished.wait()
            self._thread.join(timeout=JOIN_TIMEOUT)  # it has ended: only the exit itself is left
        self._raise()

    def abort(self) -> None:
        self._error = self._error or RuntimeError("aborted")  # the thread skips the rest
        if not self._finished.is_set():
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            try:
                self._queue.put(self._END, timeout=5)
            except queue.Full:
                pass
            if self._finished.wait(timeout=JOIN_TIMEOUT):
                self._thread.join(timeout=JOIN_TIMEOUT)


# --------------------------------------------------------------------------- prefetch


class Prefetch(Generic[T]):
    """Runs an iterator in a thread of its own, at most ``depth`` items ahead of the consumer.

    An exception in the iterator is raised to the consumer at the item where it happened.
    ``close`` (also called at the end and on that exception) stops the thread, and the
    iterator's own ``close`` runs in the thread that ran it, so a generator's clean-up (its
    download threads, open files) happens before ``close`` returns.
    """

    _END = object()

    def __init__(
        self, items: Iterable[T], *, depth: int = 2, name: str = "ami-bundler-parts"
    ) -> None:
        self._items = items
        # signalsafe's: the main thread reads and closes (threading's would be left locked).
        self._queue: Queue[tuple[object, BaseException | None]] = Queue(depth)
        self._stop = Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        start_thread(self._thread)

    def _put(self, entry: tuple[object, BaseException | None]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        items = iter(self._items)
        try:
            for item in items:
                if not self._put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer
            self._put((None, exc))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.debug("closing the prefetched iterator failed", exc_info=True)
        self._put((self._END, None))

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        item, error = self._queue.get()
        if error is not None:
            self.close()
            raise error
        if item is self._END:
            self.close()
            raise StopIteration
        return item  # type: ignore[return-value]  # anything but the end marker is a T

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=JOIN_TIMEOUT)


# --------------------------------------------------------------------------- background task


class BackgroundTask:
    """At most one call at a time in the background (e.g. fdatasync of what was written so
    far): ``start`` does nothing while the previous call runs, ``join`` waits for it, and the
    first failure is kept in ``error`` for the owner to report when it chooses."""

    def __init__(self, *, name: str = "ami-bundler-task") -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._done = Event()
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` in the background unless a call is still running; True if it started."""
        if self.running:
            return False

        done = Event()

        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by the owner
                if self.error is None:
                    self.error = exc
            finally:
                done.set()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._done = done
        start_thread(self._thread)
        return True

    def join(self) -> None:
        """Wait for the call under way. A signal may interrupt the wait (it is on an event, which
        an interrupt leaves intact: a later join still waits); the thread is joined only once
        the call has ended (see ``join_thread``)."""
        if self._thread is not None:
            self._done.wait()
            join_thread(self._thread)
            self._thread = None


__all__ = [
    "JOIN_TIMEOUT",
    "BackgroundStage",
    "BackgroundTask",
    "BoundedExecutor",
    "Executor",
    "Prefetch",
    "ordered_window",
    "run_all",
    "join_thread",
    "run_parallel",
    "start_thread",
]
