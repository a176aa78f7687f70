"""bundler.signalsafe: its primitives keep their promises, a signal at any point of the main
thread's call into them leaves them usable by other threads (tests/support/anywhere.py), and a
real signal ends a wait under way (the held signal wakes it) with the lock held again."""

from __future__ import annotations

import queue
import signal
import threading
from concurrent.futures import CancelledError, Future

import pytest

from bundler import interrupts, signalsafe
from bundler.cli.signals import interrupts_roll_back
from bundler.errors import Interrupted
from bundler.signalsafe import Condition, Event, Queue, Semaphore
from tests.support.anywhere import every_instruction, finishes, main_thread_waits
from tests.support.threads import wait_until


def test_a_wait_signalled_anywhere_returns_or_raises_with_its_lock_held() -> None:
    lock = threading.Lock()
    changed = Condition(lock)
    held_after: list[bool] = []

    def make():  # type: ignore[no-untyped-def]
        state = {"ready": False}  # its own: a notifier left from a run before sets another

        def notify() -> None:
            wait_until(main_thread_waits, 10)
            with lock:
                state["ready"] = True
                changed.notify_all()
        threading.Thread(target=notify, daemon=True).start()

        def op() -> None:
            with lock:
                changed.wait_for(lambda: state["ready"])
                held_after.append(lock.locked())
        return op

    points = 0
    for n, error in every_instruction(make):
        # Raised as itself (never a RuntimeError from a lock released twice), and the with
        # block released the lock.
        assert error is None or isinstance(error, Interrupted), repr(error)
        assert finishes(lambda: lock.acquire() and lock.release()), f"point {n}: lock held"
        points += 1
    assert points and all(held_after)
    assert changed._waiters == []


def test_a_semaphore_gives_back_what_a_signal_interrupts() -> None:
    sem = Semaphore(1)
    taken: list[int] = []
    for n, error in every_instruction(lambda: lambda: sem.holding(lambda: taken.append(1))):
        assert error is None or isinstance(error, Interrupted)
        # Taken (then() ran: the caller's to release) or given back, never lost.
        if taken:
            sem.release()
            taken.clear()
        assert finishes(lambda: sem.holding(lambda: None)), f"point {n}: the unit was lost"
        sem.release()
    sem.release()  # the run without a signal took it
    with pytest.raises(ValueError):
        sem.release()


def test_a_semaphore_blocks_at_its_limit_and_gives_back_on_failure() -> None:
    sem = Semaphore(1)
    sem.holding(lambda: None)

    def failing() -> None:
        raise RuntimeError("then failed")

    threading.Thread(target=sem.release).start()  # the unit taken below once given back
    with pytest.raises(RuntimeError, match="then failed"):
        sem.holding(failing)
    assert finishes(lambda: sem.holding(lambda: None))  # the failed step gave it back


def test_an_event_signalled_anywhere_in_set_or_wait_stays_usable() -> None:
    def setting():  # type: ignore[no-untyped-def]
        event = Event()
        made.append(event)
        return event.set

    made: list[Event] = []
    for _, _error in every_instruction(setting):
        assert finishes(made[-1].set) and made[-1].is_set()
    ev = Event()
    assert not ev.wait(0.01)  # a timeout: the flag, unset
    threading.Thread(target=ev.set).start()
    assert ev.wait(10)


def test_a_queue_signalled_anywhere_loses_no_lock() -> None:
    q: Queue[int] = Queue(1)

    def drain() -> None:
        try:
            q.get_nowait()
        except queue.Empty:  # the signal came before the item was queued
            pass

    for n, _error in every_instruction(lambda: lambda: q.put(1, timeout=1)):
        assert finishes(drain), f"point {n}: the queue's lock was left held"
    drain()  # the run without a signal queued one
    for n, _error in every_instruction(lambda: (q.put(1), q.get)[1]):
        assert finishes(drain), f"point {n}: the queue's lock was left held"
    q.put(1)
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.01)
    assert q.get() == 1


def _sigterm_once_the_main_thread_waits() -> None:
    """A real SIGTERM to the main thread, sent from another one once the main thread is in
    ``held_wait`` (the blocking wait every primitive here ends in)."""
    main = threading.main_thread().ident
    assert main is not None

    def kill() -> None:
        if wait_until(lambda: main_thread_waits(("held_wait",)), 10):
            signal.pthread_kill(main, signal.SIGTERM)

    threading.Thread(target=kill, daemon=True).start()


def test_a_real_signal_ends_the_main_threads_wait_with_the_lock_held() -> None:
    lock = threading.Lock()
    changed = Condition(lock)
    with interrupts_roll_back():
        _sigterm_once_the_main_thread_waits()
        with pytest.raises(Interrupted), lock:
            changed.wait_for(lambda: False)  # nothing ever notifies: only the signal ends it
            pytest.fail("woken without the signal")
    assert not lock.locked() and changed._waiters == []


def test_in_an_inner_section_a_held_signal_waits_for_the_outer_one() -> None:
    ev = Event()
    main = threading.main_thread().ident
    assert main is not None

    def kill_then_set() -> None:
        if wait_until(lambda: main_thread_waits(("held_wait",)), 10):
            signal.pthread_kill(main, signal.SIGTERM)
            wait_until(lambda: bool(interrupts._pending), 10)
            ev.set()

    woken: list[bool] = []
    with interrupts_roll_back():
        threading.Thread(target=kill_then_set, daemon=True).start()
        with pytest.raises(Interrupted), interrupts.critical():
            woken.append(ev.wait())  # not ended by the signal: the outer section holds it
    assert woken == [True]


def test_future_waits_and_reads_keep_concurrent_futures_answers() -> None:
    ok: Future[int] = Future()
    failing: Future[int] = Future()
    never: Future[int] = Future()
    threading.Thread(target=lambda: failing.set_exception(ValueError("no"))).start()
    signalsafe.wait([failing, never], first_exception=True)  # ends at the failure
    assert isinstance(signalsafe.exception(failing), ValueError)
    with pytest.raises(ValueError, match="no"):
        signalsafe.result(failing)
    assert not signalsafe.done(never) and signalsafe.cancel(never) and signalsafe.cancelled(never)
    with pytest.raises(CancelledError):
        signalsafe.result(never)
    threading.Thread(target=lambda: ok.set_result(3)).start()
    signalsafe.wait([ok, never])  # a cancelled future is done
    assert signalsafe.result(ok) == 3 and signalsafe.exception(ok) is None
    signalsafe.wait([])


def test_a_future_wait_signalled_anywhere_leaves_the_future_to_its_thread() -> None:
    made: list[tuple[Future[int], threading.Thread, threading.Event]] = []

    def make():  # type: ignore[no-untyped-def]
        fut: Future[int] = Future()
        over = threading.Event()

        def end() -> None:  # a pool's thread, once the main thread waits (or has given up)
            wait_until(lambda: over.is_set() or main_thread_waits(("held_wait",)), 10)
            fut.set_result(1)

        thread = threading.Thread(target=end, daemon=True)
        thread.start()
        made.append((fut, thread, over))
        return lambda: signalsafe.result(fut)

    for n, error in every_instruction(make):
        fut, thread, over = made[-1]
        assert error is None or isinstance(error, Interrupted), repr(error)
        over.set()
        thread.join(10)
        assert not thread.is_alive() and finishes(fut.done), f"point {n}: the future's lock held"


def test_a_real_signal_ends_a_future_wait_and_the_future_still_ends() -> None:
    fut: Future[int] = Future()
    with interrupts_roll_back():
        _sigterm_once_the_main_thread_waits()
        with pytest.raises(Interrupted):
            signalsafe.result(fut)  # nothing ends it: only the signal does
    assert finishes(lambda: fut.set_result(2))
    assert signalsafe.result(fut) == 2
