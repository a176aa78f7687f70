"""The CLI's signal handling keeps what its caller chose: an ignored signal stays ignored (a
run under nohup, or a background job without job control), the others are handled inside the
block and given back afterwards."""

from __future__ import annotations

import signal
import sys

import pytest

from bundler import interrupts
from bundler.cli.signals import interrupts_roll_back
from bundler.errors import Interrupted


def test_an_ignored_signal_stays_ignored_and_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with interrupts_roll_back():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)



def test_a_signal_handled_inside_a_finalizer_is_noted_and_prints_nothing(capsys):
    class Finalized:
        def __del__(self) -> None:
            # The handler runs here, inside the finalizer, where Python swallows what it raises.
            signal.raise_signal(signal.SIGTERM)

    with interrupts_roll_back():
        Finalized()  # freed at once: __del__ runs
        assert interrupts.signalled() == signal.SIGTERM
        with pytest.raises(Interrupted):
            interrupts.stop_if_signalled()
    assert capsys.readouterr().err == ""


def test_other_unraisable_exceptions_still_reach_the_previous_hook(monkeypatch):
    seen: list[BaseException] = []

    def hook(info) -> None:
        seen.append(info.exc_value)

    monkeypatch.setattr(sys, "unraisablehook", hook)

    class Finalized:
        def __del__(self) -> None:
            raise ValueError("a finalizer's own error")

    with interrupts_roll_back():
        Finalized()
    assert [str(e) for e in seen] == ["a finalizer's own error"]
    assert sys.unraisablehook is hook
