"""A signal may reach the main thread at any instruction. Wherever it lands while
``run_parallel`` or ``run_all`` has tasks under way, the ``Interrupted`` it raises reaches the
caller only once no task is running any more: a task left running goes on writing (a
download's part under its temporary name) while the caller cleans up and the process exits.

Walked deterministically: the main thread's N-th call into the pool's own code (bundler's
concurrency and critical sections), while a task is under way, gets SIGTERM; the handler
raises on that call's first instruction (a trace function raising on the call event is
exactly that) or holds it in a critical section, as the CLI's does. (The standard library's
own code is not walked here: tests/unit/test_signal_anywhere.py walks every instruction of a
pool's submit and join, the futures' locks included.) And a signal that arrives while a
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


def _waiting_in(frame, names: tuple[str, ...]) -> bool:
    """Whether ``frame`` blocks in a wait called (within a few frames) from one of ``names``."""
    if frame is None or frame.f_code.co_name not in ("_wait_for_tstate_lock", "wait"):
        return False
    for _ in range(6):
        frame = frame.f_back
        if frame is None:
            return False
        if frame.f_code.co_name in names:
            return True
    return False


def _signal_once_main_waits(then: float, ended: threading.Event) -> Callable[[], None]:
    """A task that sends SIGTERM to the main thread once it is blocked waiting in a join or a
    shutdown, then works ``then`` seconds more and sets ``ended``."""
    main = threading.main_thread()

    def task() -> None:
        pause = threading.Event()
        for _ in range(1000):
            frame = sys._current_frames().get(main.ident)
            if _waiting_in(frame, ("join", "join_thread", "shutdown")):
                break
            pause.wait(0.005)
        signal.pthread_kill(main.ident, signal.SIGTERM)
        pause.wait(then)
        ended.set()

    return task


def test_a_signal_while_a_shutdown_joins_a_running_task_waits_for_it(no_thread_left):
    ended = threading.Event()
    with interrupts_roll_back():
        pool = concurrency.Executor(max_workers=1, thread_name_prefix="ami-bundler-t")
        pool.submit(_signal_once_main_waits(0.2, ended))
        with pytest.raises(Interrupted):
            pool.shutdown(wait=True)
        assert ended.is_set(), "the shutdown stopped waiting while its task still ran"
    assert no_thread_left() == []


def test_join_thread_and_a_background_task_survive_a_signal_in_their_wait(no_thread_left):
    ended = threading.Event()
    thread = threading.Thread(target=_signal_once_main_waits(0.2, ended), name="ami-bundler-j")
    with interrupts_roll_back():
        concurrency.start_thread(thread)
        with pytest.raises(Interrupted):
            concurrency.join_thread(thread)
        assert ended.is_set(), "the join stopped waiting while the thread still ran"
    ended = threading.Event()
    task = concurrency.BackgroundTask(name="ami-bundler-bg")
    with interrupts_roll_back():
        task.start(_signal_once_main_waits(0.2, ended))
        with pytest.raises(Interrupted):
            task.join()  # the wait is interrupted, not the thread's bookkeeping
        task.join()  # so the clean-up's join still waits for the call
        assert ended.is_set(), "the clean-up's join did not wait for the call"
    assert no_thread_left() == []


def test_a_regions_wait_for_its_ami_ends_once_the_run_is_signalled():
    """install waits for each region's AMI on a worker thread, which no signal reaches, and
    the clean-up waits for that thread: the wait ends as soon as the run is told to stop."""
    from bundler.ec2 import wait_available

    class Pending:
        def describe_images(self, **kwargs):
            return {"Images": [{"ImageId": "ami-1", "State": "pending"}]}

    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            wait_available(Pending(), "ami-1", timeout=60, delay=30)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - what ended the wait is the finding
            outcome.append(exc)

    thread = threading.Thread(target=wait, name="ami-bundler-wait")
    interrupts.clear()
    try:
        thread.start()
        interrupts.note(signal.SIGTERM)  # what the handler does on the main thread
        thread.join(5)
    finally:
        interrupts.clear()
    assert not thread.is_alive(), "the wait went on after the run was signalled"
    assert [type(e) for e in outcome] == [Interrupted]
