"""A signal may reach the main thread at any instruction. Wherever it lands while
``run_parallel`` or ``run_all`` has tasks under way, the ``Interrupted`` it raises reaches the
caller only once no task is running any more: a task left running goes on writing (a
download's part under its temporary name) while the caller cleans up and the process exits.

Walked deterministically: the main thread's N-th call into the pool's own code (bundler's
concurrency and critical sections), while a task is under way, gets SIGTERM; the handler
raises on that call's first instruction (a trace function raising on the call event is
exactly that) or holds it in a critical section, as the CLI's does. (The standard library's
own locks are not walked: a KeyboardInterrupt landing inside ``concurrent.futures.wait`` can
leave a future's lock held, which no caller can repair.) And a signal that arrives while a
shutdown joins a running task's thread — where CPython 3.11 marks the thread stopped and
stops waiting — is raised only after the task has ended.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bundler import concurrency, interrupts
from bundler.cli.signals import interrupts_roll_back
from bundler.errors import Interrupted

WATCHED = tuple(str(Path(m.__file__).resolve()) for m in (concurrency, interrupts))


def _run_signalled_at(call: int, run: Callable[[list[Callable[[], None]]], object]):
    """Run three tasks (two at a time for run_parallel); at the main thread's ``call``-th
    watched call, if a task is under way then (or starts within a moment), signal. Returns
    (the run made that many calls, fired, tasks running when the Interrupted reached us or
    None when none did)."""
    lock = threading.Lock()
    running = [0]
    under_way = threading.Condition(lock)

    def task() -> None:
        with under_way:
            running[0] += 1
            under_way.notify_all()
        try:
            threading.Event().wait(0.02)  # the task's work
        finally:
            with lock:
                running[0] -= 1

    calls, fired = [0], [False]

    def trace(frame, event, arg):
        if event != "call" or calls[0] >= call or not frame.f_code.co_filename.startswith(
                WATCHED):
            return None
        calls[0] += 1
        if calls[0] == call:
            with under_way:
                fired[0] = under_way.wait_for(lambda: running[0] > 0, timeout=0.1)
            if fired[0]:
                os.kill(os.getpid(), signal.SIGTERM)
        return None

    left: int | None = None
    with interrupts_roll_back():
        sys.settrace(trace)
        try:
            run([task, task, task])
        except Interrupted:
            with lock:
                left = running[0]
        finally:
            sys.settrace(None)
    return calls[0] >= call, fired[0], left


@pytest.mark.parametrize("primitive", ["run_parallel", "run_all"])
def test_an_interrupt_anywhere_in_a_pool_reaches_the_caller_after_its_tasks(primitive,
                                                                           no_thread_left):
    def run(tasks: list[Callable[[], None]]) -> object:
        if primitive == "run_parallel":
            return concurrency.run_parallel(tasks, 2)
        return concurrency.run_all(tasks)

    visited = 0
    for call in range(1, 2000):
        reached, fired, left = _run_signalled_at(call, run)
        if not reached:
            break
        if not fired:
            continue  # no task under way at that call (before the first, after the last)
        visited += 1
        assert left is not None, f"call {call}: the signal was lost"
        assert left == 0, f"call {call}: {left} task(s) still running when Interrupted came"
    else:
        raise AssertionError("the pool still had calls after 2000")
    assert visited >= 5, f"only {visited} signalled runs"
    assert no_thread_left() == []


def test_a_signal_while_a_shutdown_joins_a_running_task_waits_for_it(no_thread_left):
    ended = threading.Event()
    main = threading.main_thread()

    def task() -> None:
        # Until the main thread is blocked joining this thread, then the signal, then the
        # rest of the task's work.
        deadline = threading.Event()
        for _ in range(1000):
            frame = sys._current_frames().get(main.ident)
            if frame is not None and frame.f_code.co_name == "_wait_for_tstate_lock":
                break
            deadline.wait(0.005)
        signal.pthread_kill(main.ident, signal.SIGTERM)
        deadline.wait(0.2)
        ended.set()

    with interrupts_roll_back():
        pool = concurrency.Executor(max_workers=1, thread_name_prefix="ami-bundler-t")
        pool.submit(task)
        with pytest.raises(Interrupted):
            pool.shutdown(wait=True)
        assert ended.is_set(), "the shutdown stopped waiting while its task still ran"
    assert no_thread_left() == []
