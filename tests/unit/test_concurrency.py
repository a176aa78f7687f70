"""bundler.concurrency: every primitive's promises — results in order, bounded, the first
failure wins and sticks, and no thread outlives a failure (of a task, of the consumer, or
a KeyboardInterrupt)."""

from __future__ import annotations

import queue
import signal
import threading

import pytest

from bundler import concurrency, signalsafe
from bundler.concurrency import (
    BackgroundStage,
    BackgroundTask,
    BoundedExecutor,
    Prefetch,
    ordered_window,
    run_all,
    run_parallel,
)
from tests.support.threads import wait_until


class Gauge:
    """How many calls run at once, at most."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __enter__(self) -> Gauge:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.active -= 1


# --------------------------------------------------------------------------- BoundedExecutor


def test_bounded_executor_blocks_submit_at_its_limit(no_thread_left):
    release = threading.Event()
    started = threading.Semaphore(0)

    def task() -> None:
        started.release()
        release.wait(5)

    pool = BoundedExecutor(2, 3, name="ami-bundler-test")
    submitted = []

    def submitter() -> None:
        for _ in range(5):
            submitted.append(pool.submit(task))

    t = threading.Thread(target=submitter, daemon=True)
    t.start()
    assert wait_until(lambda: len(submitted) == 3)
    assert not wait_until(lambda: len(submitted) > 3, timeout=0.2)  # the 4th waits for a slot
    release.set()
    t.join(5)
    pool.join()
    pool.shutdown(cancel=False)
    assert len(submitted) == 5 and all(f.done() for f in submitted)
    assert no_thread_left() == []


def test_bounded_executor_first_failure_sticks_and_cancels_the_rest(no_thread_left):
    ran: list[int] = []
    gate = threading.Event()

    def task(i: int) -> None:
        if i == 0:
            raise ValueError("first")
        gate.wait(5)
        ran.append(i)

    with pytest.raises(ValueError, match="first"):
        with BoundedExecutor(1, 50, name="ami-bundler-test") as pool:
            pool.submit(task, 0)
            assert wait_until(lambda: pool.error is not None)
            with pytest.raises(ValueError, match="first"):
                pool.submit(task, 1)  # refused: the pool has failed
            pool.check()
    assert ran == []
    assert no_thread_left() == []


def test_bounded_executor_join_raises_and_cancels_what_had_not_started(no_thread_left):
    ran: list[int] = []

    def task(i: int) -> None:
        if i == 0:
            raise OSError("disk full")
        threading.Event().wait(0.02)
        ran.append(i)

    pool = BoundedExecutor(1, 100, name="ami-bundler-test")
    hold = threading.Event()
    pool.submit(hold.wait, 5)
    pool.submit(task, 0)
    futures = [pool.submit(task, i) for i in range(1, 20)]
    hold.set()
    with pytest.raises(OSError, match="disk full"):
        pool.join()
    pool.shutdown(cancel=True)
    assert len(ran) <= 2 and sum(f.cancelled() for f in futures) >= 17
    assert no_thread_left() == []


def test_bounded_executor_context_cancels_on_an_interrupt_in_the_caller(no_thread_left):
    ran: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        with BoundedExecutor(1, 100, name="ami-bundler-test") as pool:
            hold = threading.Event()
            pool.submit(hold.wait, 0.2)
            for i in range(50):
                pool.submit(ran.append, i)
            raise KeyboardInterrupt
    assert len(ran) < 50  # queued work was cancelled, not run
    assert no_thread_left() == []


# --------------------------------------------------------------------------- run_parallel / run_all


def test_run_parallel_keeps_order_and_bounds_concurrency(no_thread_left):
    gauge = Gauge()
    pause = threading.Event()

    def task(i: int) -> int:
        with gauge:
            pause.wait(0.01)
        return i * i

    assert run_parallel([lambda i=i: task(i) for i in range(12)], 4) == [i * i for i in range(12)]
    assert 1 <= gauge.peak <= 4
    assert no_thread_left() == []


def test_run_parallel_stops_at_the_first_failure(no_thread_left):
    started: list[int] = []
    pause = threading.Event()

    def task(i: int) -> int:
        started.append(i)
        if i == 1:
            raise RuntimeError("boom")
        pause.wait(0.005)
        return i

    with pytest.raises(RuntimeError, match="boom"):
        run_parallel([lambda i=i: task(i) for i in range(200)], 2)
    assert len(started) < 200
    assert no_thread_left() == []


def test_run_all_runs_every_task_whatever_fails(no_thread_left):
    def task(i: int) -> int:
        if i % 2:
            raise RuntimeError(f"region {i} failed")
        return i

    futures = run_all([lambda i=i: task(i) for i in range(5)])
    assert [f.done() for f in futures] == [True] * 5
    assert [f.result() for f in futures[::2]] == [0, 2, 4]
    assert [str(f.exception()) for f in futures[1::2]] == ["region 1 failed", "region 3 failed"]
    assert no_thread_left() == []


# --------------------------------------------------------------------------- ordered_window


def test_ordered_window_yields_in_order_with_a_bounded_lead(no_thread_left):
    gauge = Gauge()
    calls: list[int] = []
    consumed: list[int] = []

    def fetch(i: int) -> int:
        with gauge:
            calls.append(i)
            threading.Event().wait(0.002 * (i % 3))
        return -i

    for item, result in ordered_window(fetch, range(30), jobs=3, window=4):
        assert result == -item
        # never more than `window` calls ahead of what was consumed
        assert len(calls) <= len(consumed) + 1 + 4
        consumed.append(item)
    assert consumed == list(range(30))
    assert gauge.peak <= 3
    assert no_thread_left() == []


def test_ordered_window_raises_at_the_failing_item_and_stops(no_thread_left):
    calls: list[int] = []

    def fetch(i: int) -> int:
        calls.append(i)
        if i == 3:
            raise OSError("part 3 is gone")
        return i

    got = []
    with pytest.raises(OSError, match="part 3"):
        for item, _ in ordered_window(fetch, range(1000), jobs=2, window=4):
            got.append(item)
    assert got == [0, 1, 2]
    assert len(calls) < 20
    assert no_thread_left() == []


@pytest.mark.parametrize("how", ["close", "exception"])
def test_a_consumer_that_stops_early_leaves_no_download_running(no_thread_left, how):
    def fetch(i: int) -> int:
        threading.Event().wait(0.01)
        return i

    window = ordered_window(fetch, range(1000), jobs=4, window=8)
    if how == "close":
        next(window)
        window.close()
    else:
        with pytest.raises(KeyboardInterrupt):
            for item, _ in window:
                if item == 2:
                    raise KeyboardInterrupt
        window.close()
    assert no_thread_left() == []


# --------------------------------------------------------------------------- BackgroundStage


def test_background_stage_consumes_everything_in_order(no_thread_left):
    seen: list[int] = []
    stage = BackgroundStage(seen.append, depth=2, name="ami-bundler-test")
    for i in range(100):
        stage.write(i)
    stage.close()
    assert seen == list(range(100))
    assert no_thread_left() == []


def test_background_stage_failure_surfaces_at_write_then_close_and_sticks(no_thread_left):
    seen: list[int] = []

    def consume(i: int) -> None:
        if i == 2:
            raise OSError("no space left on the device")
        seen.append(i)

    stage = BackgroundStage(consume, depth=4, name="ami-bundler-test")
    with pytest.raises(OSError, match="no space"):
        for i in range(10_000):
            stage.write(i)
    with pytest.raises(OSError, match="no space"):
        stage.close()
    assert seen == [0, 1]  # nothing after the failure was consumed
    assert no_thread_left() == []


def test_background_stage_abort_ends_its_thread(no_thread_left):
    stage = BackgroundStage(lambda item: None, depth=2, name="ami-bundler-test")
    stage.write(b"x")
    stage.abort()
    assert not stage._thread.is_alive()
    with pytest.raises(RuntimeError, match="aborted"):
        stage.write(b"y")
    assert no_thread_left() == []


def test_abort_after_an_interrupted_close_waits_for_the_item_in_progress(no_thread_left):
    """A signal during close() (while it waits for the thread) must not make abort() think the
    thread has ended: the pipeline's abort would then abort the sink while the thread still
    puts a part into it (CPython before 3.12 marks a thread whose join a signal interrupted as
    stopped though it still runs)."""
    entered, release = threading.Event(), threading.Event()
    done: list[bytes] = []

    def consume(item: bytes) -> None:
        entered.set()
        release.wait(5)
        done.append(item)

    class Stop(Exception):
        pass

    def stop(signum: int, frame: object) -> None:
        raise Stop

    stage = BackgroundStage(consume, depth=1, name="ami-bundler-test")
    stage.write(b"part")
    assert entered.wait(5)
    previous = signal.signal(signal.SIGUSR1, stop)
    kill = threading.Timer(0.1, signal.pthread_kill, (threading.main_thread().ident,
                                                      signal.SIGUSR1))
    try:
        kill.start()
        with pytest.raises(Stop):
            stage.close()
    finally:
        kill.join()
        signal.signal(signal.SIGUSR1, previous)
    later = threading.Timer(0.2, release.set)
    later.start()
    stage.abort()
    later.join()
    assert done == [b"part"], "abort() returned while the item was still being consumed"
    assert no_thread_left() == []


class _ImpatientQueue(signalsafe.Queue):
    """A timed put gives up at once: stands for a consumer stuck (a slow PUT) for longer than
    abort() waits to hand over its end marker."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.gave_up = threading.Event()

    def put(self, item, timeout: float | None = None) -> None:
        try:
            super().put(item, None if timeout is None else min(timeout, 0.01))
        except queue.Full:
            self.gave_up.set()
            raise


def test_abort_ends_the_thread_of_a_consumer_that_was_stuck_behind_a_full_queue(
    monkeypatch, no_thread_left
):
    monkeypatch.setattr(concurrency, "Queue", _ImpatientQueue)
    entered, release = threading.Event(), threading.Event()
    seen: list[bytes] = []

    def consume(item: bytes) -> None:
        seen.append(item)
        if item == b"first":
            entered.set()
            release.wait(5)

    stage = BackgroundStage(consume, depth=2, name="ami-bundler-test")
    q = stage._queue
    assert isinstance(q, _ImpatientQueue)
    stage.write(b"first")
    assert entered.wait(5)
    stage.write(b"a")
    stage.write(b"b")  # the queue is full behind the stuck consumer
    aborter = threading.Thread(target=stage.abort, name="test-aborter", daemon=True)
    aborter.start()
    try:
        # abort() has either handed over its end marker or given up doing so
        assert wait_until(
            lambda: q.gave_up.is_set() or any(i is BackgroundStage._END for i in list(q._items))
        )
        release.set()  # the slow item finishes at last
        assert wait_until(lambda: not stage._thread.is_alive(), timeout=2), (
            "the stage's thread outlived abort() (it waits for an end marker that never comes)"
        )
        assert seen == [b"first"]  # nothing after the abort was consumed
    finally:
        release.set()
        if stage._thread.is_alive():
            queue.Queue.put(q, BackgroundStage._END)
        aborter.join(5)
    assert no_thread_left() == []


# --------------------------------------------------------------------------- Prefetch


def test_prefetch_runs_ahead_by_at_most_its_depth(no_thread_left):
    produced: list[int] = []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    prefetch = Prefetch(items(), depth=2, name="ami-bundler-test")
    assert next(prefetch) == 0
    assert wait_until(lambda: len(produced) >= 3)
    assert not wait_until(lambda: len(produced) > 4, timeout=0.1)  # 1 taken + 2 queued + 1 waiting
    assert list(prefetch) == list(range(1, 20))
    assert no_thread_left() == []


def test_prefetch_raises_the_iterators_error_at_its_item(no_thread_left):
    def items():
        yield 1
        yield 2
        raise OSError("the part reader failed")

    prefetch = Prefetch(items(), name="ami-bundler-test")
    got = []
    with pytest.raises(OSError, match="part reader"):
        for item in prefetch:
            got.append(item)
    assert got == [1, 2]
    assert no_thread_left() == []


def test_prefetch_close_runs_the_iterators_clean_up_in_its_thread(no_thread_left):
    cleaned: list[str] = []

    def items():
        try:
            yield from range(1000)
        finally:
            cleaned.append(threading.current_thread().name)

    prefetch = Prefetch(items(), depth=2, name="ami-bundler-test")
    assert next(prefetch) == 0
    prefetch.close()
    assert cleaned == ["ami-bundler-test"]
    assert no_thread_left() == []


# --------------------------------------------------------------------------- BackgroundTask


def test_background_task_runs_one_call_at_a_time_and_keeps_the_first_error(no_thread_left):
    task = BackgroundTask(name="ami-bundler-test")
    release = threading.Event()
    calls: list[str] = []

    def slow() -> None:
        calls.append("slow")
        release.wait(5)
        raise OSError("fdatasync: input/output error")

    assert task.start(slow)
    assert not task.start(lambda: calls.append("second"))  # still running: skipped
    release.set()
    task.join()
    assert calls == ["slow"] and isinstance(task.error, OSError)
    assert task.start(lambda: calls.append("third"))
    task.join()
    assert calls == ["slow", "third"] and "input/output" in str(task.error)  # the first sticks
    assert no_thread_left() == []
