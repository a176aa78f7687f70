"""A signal at every point it can land: run an operation on the main thread with the CLI's
handler called at its N-th such point, for N = 1, 2, ... until it completes without one.

The handler runs on the main thread where CPython checks its eval breaker, in whatever Python
frame is running: the product's, or ``threading``'s and ``contextlib``'s own. On 3.11 that is a
function's (or a resumed generator's) start, right after a call has returned (``CALL``,
``CALL_FUNCTION_EX``) and after a backward jump: an exception there is one raised at the next
instruction. A trace function with ``f_trace_opcodes`` sees every instruction of every Python
frame of this thread, and calling the handler at those points is what a signal there does:
``Interrupted`` raised, or held until the critical section ends. Other threads are not traced
(no signal reaches them). (Not every instruction: between two checks nothing can raise — a
``with`` block's exit, for one, is reached only through instructions that do not check.)
"""

from __future__ import annotations

import dis
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any

from bundler import interrupts
from bundler.cli.signals import _State

LIMIT = 200_000  # points: more means the operation never completes
# The instructions after which CPython 3.11 runs pending signal handlers.
_CHECKS = frozenset({"CALL", "CALL_FUNCTION_EX", "JUMP_BACKWARD", "POP_JUMP_BACKWARD_IF_FALSE",
                     "POP_JUMP_BACKWARD_IF_TRUE", "POP_JUMP_BACKWARD_IF_NONE",
                     "POP_JUMP_BACKWARD_IF_NOT_NONE"})


def signalled_at(n: int, op: Callable[[], object]) -> tuple[bool, BaseException | None]:
    """Run ``op`` with SIGTERM's handler called at its ``n``-th instruction. Returns (whether
    it had that many, what ``op`` raised or None)."""
    assert threading.current_thread() is threading.main_thread()
    handler = _State()
    count = [0]
    # frame → the offset of the check its next instruction follows (-1: its start), or None
    checks: dict[int, int | None] = {}

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        key = id(frame)
        if event == "call":
            checks[key] = -1  # RESUME
        elif event == "exception":
            checks[key] = None  # the handler is reached without a check
        elif event == "opcode":
            after = checks.get(key)
            if after is not None and _same_block(frame.f_code, after, frame.f_lasti):
                count[0] += 1
                if count[0] == n:
                    handler.handle(signal.SIGTERM, frame)  # raises, or holds it (critical)
            code = frame.f_code
            checks[key] = (frame.f_lasti if dis.opname[code.co_code[frame.f_lasti]] in _CHECKS
                           else None)
        return trace

    previous, hook = sys.gettrace(), sys.unraisablehook
    # As the CLI does: a signal in a finalizer (a weakref's callback) is swallowed there.
    sys.unraisablehook = handler.unraisable
    interrupts.clear()
    sys.settrace(trace)
    try:
        op()
        error = None
    except BaseException as exc:
        error = exc
    finally:
        sys.settrace(previous)
        sys.unraisablehook = hook
        interrupts.clear()
    return count[0] >= n, error


@functools.cache
def _handlers(code: CodeType) -> tuple[tuple[int, int, int], ...]:
    return tuple((e.start, e.end, e.target) for e in dis._parse_exception_table(code))  # type: ignore[attr-defined]


def _same_block(code: CodeType, check: int, offset: int) -> bool:
    """Whether an exception at ``offset`` goes where one at the check before it would: the
    signal after a call is raised as the call's own exception, so at a call that ends its
    block (``return f()`` in a ``with``) the next instruction, outside it, is not where it
    lands (that point is not walked)."""
    if check < 0:
        return True
    def handler(at: int) -> int | None:
        return next((t for start, end, t in _handlers(code) if start <= at < end), None)
    return handler(check) == handler(offset)


def every_instruction(make: Callable[[], Callable[[], object]]) -> Iterator[
        tuple[int, BaseException | None]]:
    """``(n, error)`` for a fresh operation from ``make`` signalled at each instruction n in
    turn, up to the first run that completes before its n-th (not yielded)."""
    for n in range(1, LIMIT):
        fired, error = signalled_at(n, make())
        if not fired:
            assert error is None, f"with no signal the operation failed: {error!r}"
            assert n > 1, "the operation ran no Python instruction"
            return
        yield n, error
    raise AssertionError(f"the operation did not complete within {LIMIT} instructions")


def finishes(fn: Callable[[], object], timeout: float = 10.0) -> bool:
    """Whether ``fn`` returns on another thread within ``timeout`` (a daemon left blocked
    otherwise: the test has failed by then)."""
    thread = threading.Thread(target=fn, name="test-anywhere-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def main_thread_waits(names: tuple[str, ...] = ("wait", "held_wait")) -> bool:
    """Whether the main thread is in a wait: a frame of one of these names on its stack
    (``held_wait``: in signalsafe's, not in, say, the wait of a ``Thread.start``)."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        if frame.f_code.co_name in names:
            return True
        frame = frame.f_back
    return False


__all__ = ["every_instruction", "finishes", "main_thread_waits", "signalled_at"]
