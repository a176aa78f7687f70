"""A signal at any bytecode of the main thread leaves no lock, semaphore slot or event held
that another thread needs.

``threading``'s Condition, Semaphore and Event are Python code: ``Interrupted`` raised right
after ``Condition.__enter__`` acquired its lock, before the ``with`` block that releases it
begins, left a ``RelaySink``'s lock held for ever, its uploader threads blocked in ``stored``
and the clean-up's executor shutdown waiting for them (a publish to two regions hung). Each
test here runs one main-thread operation with the signal at its N-th instruction, for every
N (tests/support/anywhere.py), and after each checks that another thread can still do what it
must with the object: take the lock, get a slot, see the event, end a future (whose
``concurrent.futures`` Condition is the same kind of gap), and that an abort releases what
the operation took.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

import pytest

from bundler.concurrency import BackgroundTask, BoundedExecutor, Executor, Prefetch
from bundler.errors import Interrupted
from bundler.s3 import relay as relay_module
from bundler.s3.location import S3Location
from bundler.s3.relay import RelaySink
from bundler.volume import ext4feed
from tests.support.anywhere import every_instruction, finishes, main_thread_waits
from tests.support.threads import wait_until


def _only_interrupted(error: BaseException | None) -> None:
    # What the signal raises reaches the caller as itself: never a RuntimeError from a lock
    # released that was not held (Condition.wait's gaps).
    assert error is None or isinstance(error, Interrupted), repr(error)


# --------------------------------------------------------------------------- BoundedExecutor


def test_a_signal_anywhere_in_submit_leaves_every_slot_to_the_pool() -> None:
    pool = BoundedExecutor(1, 1, name="ami-bundler-test")
    pool.submit(lambda: None).result()  # the pool's thread is there: the walk is of submit
    try:
        for n, error in every_instruction(lambda: lambda: pool.submit(lambda: None)):
            _only_interrupted(error)
            for fut in list(pool._futures):
                fut.result(timeout=10)  # a task submitted before the signal still runs
            # One slot: a slot left taken (or the semaphore's lock left held) blocks this.
            assert finishes(lambda: [pool.submit(lambda: None).result() for _ in range(2)]), \
                f"signal at instruction {n}: the pool's slot or lock was left held"
            pool._futures.clear()
    finally:
        pool.shutdown(cancel=True)


@pytest.mark.parametrize("warm", [False, True])
def test_a_signal_anywhere_in_a_pools_submit_leaves_its_threads_going(warm: bool) -> None:
    # ThreadPoolExecutor.submit starts a thread (Thread.start waits on an Event) or takes
    # its idle semaphore (a threading.Semaphore: a Condition), both Python: left held, every
    # worker blocks in the semaphore's release after its task and the shutdown waits for it.
    pools: list[Executor] = []

    def make():  # type: ignore[no-untyped-def]
        pool = Executor(max_workers=1, thread_name_prefix="ami-bundler-test-submit")
        if warm:  # its thread there and idle: the submit takes the idle semaphore
            pool.submit(lambda: None).result()
        pools.append(pool)
        return lambda: pool.submit(lambda: None)

    for n, error in every_instruction(make):
        _only_interrupted(error)
        pool = pools[-1]
        assert finishes(lambda pool=pool: [pool.submit(lambda: None).result()  # type: ignore[misc]
                                           for _ in range(3)]), \
            f"signal at instruction {n}: the pool's thread is stuck"
        assert finishes(pool.shutdown), f"signal at instruction {n}: its shutdown is stuck"


def test_a_signal_anywhere_in_a_pools_join_leaves_its_futures_to_their_threads() -> None:
    # concurrent.futures.wait takes each future's Condition, then waits on a threading.Event
    # that the thread ending a future sets with that future's Condition held: either left
    # held by the main thread, that thread's set_result blocks for ever.
    made: list[tuple[list[Future[None]], threading.Thread, threading.Event]] = []

    def make():  # type: ignore[no-untyped-def]
        pool = BoundedExecutor(1, 2, name="ami-bundler-test-join")
        futures: list[Future[None]] = [Future(), Future()]
        pool._futures.extend(futures)  # two tasks under way: their threads are the test's
        over = threading.Event()

        def end_them() -> None:  # as a pool's thread ends its task
            wait_until(lambda: over.is_set() or main_thread_waits(), 10)
            for fut in futures:
                fut.set_result(None)

        thread = threading.Thread(target=end_them, name="test-tasks", daemon=True)
        thread.start()
        made.append((futures, thread, over))
        return pool.join

    for n, error in every_instruction(make):
        futures, thread, over = made[-1]
        _only_interrupted(error)
        over.set()
        thread.join(10)
        assert not thread.is_alive(), \
            f"signal at instruction {n}: a future's end is stuck on a lock the join left held"
        # Ended before the signal or not, each future's own lock is free for other threads.
        assert finishes(lambda futures=futures: [fut.done() for fut in futures]), \
            f"signal at instruction {n}: the join left a future's lock held"


# --------------------------------------------------------------------------- RelaySink


class _Publication:
    manifest_name = "b.manifest.xml"

    def publish(self, manifest: bytes, parts: object) -> str:
        return "b.manifest.xml"

    def retract(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _relay() -> RelaySink:
    return RelaySink(None, S3Location("to", "p/"), S3Location("from", "p/"),  # type: ignore[arg-type]
                     source_label="source")


def _stored_from_another_thread(relay: RelaySink) -> bool:
    """An uploader thread's hook: it takes the relay's lock (no copy: not pipelining)."""
    return finishes(lambda: relay.stored(9, "p/b.part.9", 1, "00"))


@pytest.mark.parametrize("ok", [True, False])
def test_a_signal_anywhere_in_source_done_leaves_the_relay_to_its_uploaders(ok: bool) -> None:
    relay = _relay()
    for n, error in every_instruction(lambda: lambda: relay.source_done(ok)):
        _only_interrupted(error)
        assert relay._source_ok in (None, ok)
        assert _stored_from_another_thread(relay), f"signal at instruction {n}: lock left held"


def test_a_signal_anywhere_in_put_part_leaves_the_relay_to_its_uploaders() -> None:
    relay = _relay()
    opened: Future[object] = Future()
    opened.set_result(None)
    relay._opened = opened
    for n, error in every_instruction(lambda: lambda: relay.put_part(None)):  # type: ignore[arg-type]
        _only_interrupted(error)
        assert _stored_from_another_thread(relay), f"signal at instruction {n}: lock left held"


def _committing() -> tuple[RelaySink, threading.Thread]:
    """A relay whose one part is copied and one pipelined copy still running: commit waits
    for that copy, which a thread ends (failing: no client) once the main thread waits."""
    relay = _relay()
    relay._pool = BoundedExecutor(1, 2, name="ami-bundler-test-relay")
    opened: Future[object] = Future()
    opened.set_result(None)
    relay._opened = opened
    relay._publication = _Publication()  # type: ignore[assignment]
    relay._landed[0] = ("p/b.part.0", 1, "00")
    relay._copied[0] = "p/b.part.0"
    relay._running = 1

    def end_the_copy() -> None:
        wait_until(main_thread_waits, timeout=10)
        relay._pipelined(5, "p/b.part.5", "p/b.part.5", 1, "00")  # fails: no client

    return relay, threading.Thread(target=end_the_copy, name="test-copy", daemon=True)


def test_a_signal_anywhere_in_commit_leaves_the_relay_to_its_uploaders() -> None:
    made: list[tuple[RelaySink, threading.Thread]] = []

    def make():  # type: ignore[no-untyped-def]
        relay, copy = _committing()
        made.append((relay, copy))
        copy.start()
        return lambda: relay.commit(["b.part.0"], "b.manifest.xml", b"<manifest/>")

    for n, error in every_instruction(make):
        relay, copy = made[-1]
        _only_interrupted(error)
        copy.join(10)
        assert not copy.is_alive(), f"signal at instruction {n}: the copy's end is stuck"
        assert _stored_from_another_thread(relay), f"signal at instruction {n}: lock left held"
        relay.abort()  # the clean-up that follows the signal: it must end
    relay, copy = made[-1]
    copy.join(10)
    assert relay.manifest_key == "b.manifest.xml"


def _main_thread_reads_a_future() -> bool:
    """The main thread is in a future's wait or read (``Future.result``, ``signalsafe``'s)."""
    return main_thread_waits(("result", "exception", "wait"))


def test_a_signal_anywhere_in_commits_lease_wait_leaves_the_lease_to_its_thread() -> None:
    # Commit waits for the lease, a future the relay's pool ends: a future's Condition left
    # held by the main thread blocks that thread's set_result, and the clean-up's shutdown
    # waits for the thread for ever.
    made: list[tuple[RelaySink, threading.Thread, threading.Event]] = []

    def make():  # type: ignore[no-untyped-def]
        relay = _relay()
        relay._pool = BoundedExecutor(1, 2, name="ami-bundler-test-relay")
        lease: Future[object] = Future()
        relay._opened = lease
        relay._publication = _Publication()  # type: ignore[assignment]
        relay._landed[0] = ("p/b.part.0", 1, "00")
        relay._copied[0] = "p/b.part.0"  # copied: commit goes straight to the lease
        over = threading.Event()

        def open_lease() -> None:  # the pool's thread, once the main thread waits
            wait_until(lambda: over.is_set() or _main_thread_reads_a_future(), 10)
            lease.set_result(None)

        thread = threading.Thread(target=open_lease, name="test-lease", daemon=True)
        thread.start()
        made.append((relay, thread, over))
        return lambda: relay.commit(["b.part.0"], "b.manifest.xml", b"<manifest/>")

    for n, error in every_instruction(make):
        relay, thread, over = made[-1]
        _only_interrupted(error)
        over.set()
        thread.join(10)
        assert not thread.is_alive(), \
            f"signal at instruction {n}: the lease's end is stuck on a lock commit left held"
        lease = relay._opened
        assert lease is not None
        assert finishes(lease.done), f"signal at instruction {n}: commit left the lease's lock held"
        relay.abort()  # the clean-up that follows the signal: it must end
    assert made[-1][0].manifest_key == "b.manifest.xml"


class _Lease(_Publication):
    """The publication a relay's begin makes: its lease taken on the pool, released by
    ``retract``."""

    made: list[_Lease] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.opened = self.retracted = self.closed = False
        _Lease.made.append(self)

    def open(self, _: object) -> None:
        self.opened = True

    def retract(self) -> bool:
        self.retracted = True
        return False

    def close(self) -> None:
        self.closed = True


def test_a_signal_anywhere_in_begin_leaves_no_lease_that_abort_does_not_release(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The lease is taken on the relay's pool: a signal raised after its submit and before its
    # future is stored left abort waiting for the lease (the pool's shutdown) and then not
    # releasing it.
    monkeypatch.setattr(relay_module, "Publication", _Lease)
    pools: list[BoundedExecutor] = []

    class Pool(BoundedExecutor):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            pools.append(self)

    monkeypatch.setattr(relay_module, "BoundedExecutor", Pool)
    relays: list[RelaySink] = []

    def make():  # type: ignore[no-untyped-def]
        _Lease.made.clear()
        pools.clear()
        relays.append(_relay())
        return lambda: relays[-1].begin("b", 3)

    for n, error in every_instruction(make):
        _only_interrupted(error)
        for pool in pools:
            for fut in list(pool._futures):  # the lease's, if begin submitted it: let it run
                assert wait_until(fut.done, 10), f"signal at instruction {n}: no lease taken"
        relays[-1].abort()  # the clean-up that follows the signal
        for lease in _Lease.made:
            assert lease.retracted or not lease.opened, \
                f"signal at instruction {n}: the lease was taken and abort did not release it"
    assert [lease.opened for lease in _Lease.made] == [True]


# --------------------------------------------------------------------------- events


def test_a_signal_anywhere_in_a_background_join_leaves_its_event_to_the_task() -> None:
    made: list[tuple[BackgroundTask, threading.Event]] = []

    def make():  # type: ignore[no-untyped-def]
        task, go = BackgroundTask(name="ami-bundler-test-task"), threading.Event()
        task.start(lambda: go.wait(10))
        made.append((task, go))
        threading.Thread(target=lambda: (wait_until(main_thread_waits, 10), go.set()),
                         daemon=True).start()
        return task.join

    for n, error in every_instruction(make):
        task, go = made[-1]
        _only_interrupted(error)
        go.set()
        # The task's own end sets the event its join waits on: a lock of it left held by the
        # main thread blocks that thread for ever.
        assert finishes(task.join), f"signal at instruction {n}: the task's event is stuck"


def test_a_signal_anywhere_in_a_prefetch_close_leaves_it_closable() -> None:
    made: list[Prefetch[int]] = []

    def make():  # type: ignore[no-untyped-def]
        prefetch = Prefetch(iter(range(100)), depth=1, name="ami-bundler-test-prefetch")
        made.append(prefetch)
        return prefetch.close

    for n, error in every_instruction(make):
        _only_interrupted(error)
        # Closed again by whoever holds it (the clean-up): its stop event must still be free.
        assert finishes(made[-1].close), f"signal at instruction {n}: the stop event is stuck"


# --------------------------------------------------------------------------- debugfs feed


class _Proc:
    """The debugfs a ``Debugfs`` talks to: commands go nowhere, the test writes its echoes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        out, self.out = os.pipe()
        err, err_w = os.pipe()
        os.close(err_w)  # no errors: the stderr reader ends at once
        self.stdin = open(os.devnull, "wb")  # noqa: SIM115 (closed by close())
        self.stdout = os.fdopen(out, "rb", buffering=0)
        self.stderr = os.fdopen(err, "rb")

    def echo(self, count: int) -> None:
        os.write(self.out, b"debugfs: cd .\n" * count)

    def close(self) -> None:
        os.close(self.out)  # the stdout reader ends at EOF


def test_a_signal_anywhere_in_wait_done_leaves_the_reader_going(
        monkeypatch: pytest.MonkeyPatch) -> None:
    procs: list[_Proc] = []

    def popen(*args: object, **kwargs: object) -> _Proc:
        procs.append(_Proc())
        return procs[-1]

    monkeypatch.setattr(ext4feed.subprocess, "Popen", popen)
    monkeypatch.setattr(ext4feed, "which", lambda name: name)
    made: list[ext4feed.Debugfs] = []

    def make():  # type: ignore[no-untyped-def]
        db = ext4feed.Debugfs("image")
        made.append(db)
        proc = procs[-1]
        # Command 0's end is the echo of the one after it, once the main thread waits.
        threading.Thread(target=lambda: (wait_until(main_thread_waits, 10), proc.echo(2)),
                         daemon=True).start()
        return lambda: db.wait_done(0)

    try:
        for n, error in every_instruction(make):
            db, proc = made[-1], procs[-1]
            _only_interrupted(error)
            # The reader records each echo under the feed's lock: left held, it stops there.
            started = db.started
            proc.echo(3)
            assert wait_until(lambda db=db, started=started: db.started >= started + 3,
                              timeout=10), \
                f"signal at instruction {n}: the reader is stuck on the feed's lock"
    finally:
        for proc in procs:
            proc.close()
            proc.stdin.close()
        for db in made:
            for t in db.threads:
                t.join(10)
