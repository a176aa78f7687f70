"""A bounded thread pool for S3 transfers (s3transfer's model): the first failure wins."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")


class Pool:
    """A bounded thread pool: ``submit`` blocks while ``limit`` tasks are pending, the first
    failure is kept and re-raised by the next ``submit``/``join`` (s3transfer's model)."""

    def __init__(self, jobs: int, limit: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ami-bundler-s3")
        self._slots = threading.BoundedSemaphore(limit)
        self._futures: list[Future[Any]] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def _done(self, fut: Future[Any]) -> None:
        self._slots.release()
        if not fut.cancelled() and fut.exception() is not None:
            with self._lock:
                if self._error is None:
                    self._error = fut.exception()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        self.check()
        self._slots.acquire()
        try:
            self.check()
        except BaseException:
            self._slots.release()
            raise
        fut = self._executor.submit(fn, *args)
        self._futures.append(fut)
        fut.add_done_callback(self._done)
        return fut

    def join(self) -> None:
        """Wait for everything; on the first failure cancel what has not started and raise it."""
        done, pending = wait(self._futures, return_when=FIRST_EXCEPTION)
        if pending:
            for fut in pending:
                fut.cancel()
            wait(pending)
        self.check()
        for fut in self._futures:
            if not fut.cancelled() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]

    def shutdown(self, *, cancel: bool) -> None:
        self._executor.shutdown(wait=True, cancel_futures=cancel)


def run_parallel(tasks: Sequence[Callable[[], T]], jobs: int) -> list[T]:
    """Run callables on ``jobs`` threads; results in order; the first failure cancels the rest."""
    if not tasks:
        return []
    if jobs <= 1 or len(tasks) == 1:
        return [task() for task in tasks]
    pool = Pool(jobs, max(jobs * 2, 1))
    futures: list[Future[T]] = []
    try:
        for task in tasks:
            futures.append(pool.submit(task))
        pool.join()
    except BaseException:
        pool.shutdown(cancel=True)
        raise
    pool.shutdown(cancel=False)
    return [fut.result() for fut in futures]
