"""The CLI's signal handling keeps what its caller chose: an ignored signal stays ignored (a
run under nohup, or a background job without job control), the others are handled inside the
block and given back afterwards."""

from __future__ import annotations

import signal

from bundler.cli.signals import interrupts_roll_back


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
