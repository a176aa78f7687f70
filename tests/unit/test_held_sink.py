"""HeldSink: parts made during the set-up wait for it (and for the wrapped sink's begin), at most
``hold`` of them; the set-up's failure is the run's; abort waits for the set-up thread; a
signalled run takes no lease and stops waiting."""

from __future__ import annotations

import threading

import pytest

from bundler import interrupts
from bundler.errors import BundlerError, Interrupted
from bundler.parts import Part
from bundler.s3.held import HeldSink
from tests.support.sinks import MemorySink


class Recording(MemorySink):
    """A MemorySink that records when begin ran, relative to the parts it got."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.begun_with = -1  # parts it had when begin ran (-1: never)

    def begin(self, name: str, max_parts: int) -> None:
        self.begun_with = len(self.parts)
        super().begin(name, max_parts)


def _part(i: int) -> Part:
    return Part(i, bytes([i]) * 10)


def _in_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


@pytest.fixture(autouse=True)
def _no_signal_left():
    interrupts.clear()
    yield
    interrupts.clear()


def test_parts_wait_for_the_set_up_then_go_in_order():
    inner, release = Recording(), threading.Event()
    held = HeldSink(inner, lambda: release.wait(5), hold=3)
    held.begin("img", 10)
    held.expect_parts(5)
    for i in range(3):
        held.put_part(_part(i))  # held: returns at once
    assert inner.parts == [] and inner.name is None and not held.ready
    blocked = _in_thread(lambda: held.put_part(_part(3)))  # a fourth waits: the bound
    blocked.join(0.2)
    assert blocked.is_alive() and inner.parts == []
    release.set()
    blocked.join(5)
    assert inner.begun_with == 0  # begin before any part
    assert inner.indices == [0, 1, 2, 3]
    assert inner.expected == [(5, 0)]  # the estimate too, before the first part
    held.put_part(_part(4))
    held.commit(["a"] * 5, "img.manifest.xml", b"<manifest/>")
    assert inner.indices == [0, 1, 2, 3, 4] and inner.manifest == b"<manifest/>"


def test_a_short_run_hands_over_at_commit():
    inner = Recording()
    held = HeldSink(inner, None, hold=4)
    held.begin("img", 2)
    held.put_part(_part(0))
    held.commit(["img.part.0"], "img.manifest.xml", b"m")
    assert inner.begun_with == 0 and inner.indices == [0] and inner.names == ["img.part.0"]


def test_the_set_up_failing_reaches_the_sink_never():
    inner, failure = Recording(), BundlerError("the image check failed")

    def setup() -> None:
        raise failure

    held = HeldSink(inner, setup, hold=1)
    held.begin("img", 4)
    held._task.join()
    with pytest.raises(BundlerError) as caught:
        held.put_part(_part(0))
    assert caught.value is failure and held.setup_error is failure
    held.abort()
    assert inner.begun_with == -1 and inner.parts == [] and not inner.aborted


def test_abort_waits_for_the_set_up_and_aborts_a_begun_sink():
    inner, release = Recording(), threading.Event()
    held = HeldSink(inner, lambda: release.wait(5), hold=2)
    held.begin("img", 4)
    held.put_part(_part(0))
    threading.Timer(0.2, release.set).start()
    held.abort()  # returns only once the set-up (and so begin) has ended
    assert inner.begun_with == 0 and inner.aborted and inner.parts == []


def test_a_signalled_run_takes_no_lease_and_stops_waiting():
    inner, release = Recording(), threading.Event()
    held = HeldSink(inner, lambda: release.wait(5), hold=1)
    held.begin("img", 4)
    held.put_part(_part(0))
    interrupts.note(15)  # what the handler does on SIGTERM
    with pytest.raises(Interrupted):
        held.put_part(_part(1))  # would wait for the set-up: the run is stopping
    release.set()
    held.abort()
    assert inner.begun_with == -1 and not inner.aborted and inner.parts == []
