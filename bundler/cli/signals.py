"""SIGTERM and SIGHUP end a run the way Ctrl-C does.

The first SIGINT, SIGTERM or SIGHUP raises ``Interrupted`` (a KeyboardInterrupt) in the main
thread, so the clean-up that already runs for Ctrl-C — staging directories rolled back,
temporary files unlinked, locks released, multipart uploads aborted — runs for all three, and
the run exits 128+signal. A second signal while that clean-up runs is acknowledged and
ignored (clean-up is short); a third exits at once, leaving what the next run removes.
Signals that were ignored when we started (``nohup``, a background job's SIGINT) stay ignored.

The handler runs between two bytecodes of the main thread, which may be those of a finalizer
(a ``__del__``, a weakref callback: the garbage collector or a dropped reference runs them
anywhere). Python swallows an exception raised there and prints its traceback. The signal is
not lost for all that (it is noted first: the run stops at its next ``stop_if_signalled``, and
the CLI ends it as interrupted), so that traceback is not printed: the user sees the one line
any interrupted run prints.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from .. import interrupts
from ..errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _State:
    def __init__(self) -> None:
        self.count = 0
        self.previous_hook: Any = sys.unraisablehook

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            interrupts.note(signum)
            if interrupts.deferring():
                interrupts.defer(signum)  # raised when the critical section ends
                return
            raise Interrupted(signum)
        if self.count == 2:
            os.write(2, b"ami-bundler: still cleaning up; send the signal again to exit now\n")
            return
        os._exit(128 + signum)

    def unraisable(self, info: Any) -> None:
        """``sys.unraisablehook``: an ``Interrupted`` that a finalizer swallowed on the main
        thread is already noted (``interrupts.signalled``); anything else goes to the hook that
        was there before."""
        if not (isinstance(info.exc_value, Interrupted)
                and threading.current_thread() is threading.main_thread()):
            self.previous_hook(info)


@contextmanager
def interrupts_roll_back() -> Iterator[None]:
    """Within this block the handled signals raise ``Interrupted``; the previous handlers
    come back afterwards (the CLI is also called in-process by tests and by users' code)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = _State()
    interrupts.clear()
    previous: dict[int, Any] = {}  # signal.getsignal's answer, given back as it was
    for signum in HANDLED:
        old = signal.getsignal(signum)
        if old is signal.SIG_IGN:
            continue
        previous[signum] = old
        signal.signal(signum, state.handle)
    sys.unraisablehook = state.unraisable
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
        sys.unraisablehook = state.previous_hook
