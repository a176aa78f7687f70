"""Bundling during the set-up: a sink whose parts wait until its set-up has run.

``install`` used to take the lease (``Publication.open``: lease PUT, then the listing) and run
its gate (the image check, the EC2 client) before the pipeline made its first part, so every
part waited for those round trips. ``HeldSink`` turns that around: ``begin`` starts the set-up
on a thread of its own — the caller's ``setup`` (install's: the probes, then the gate), then
the wrapped sink's ``begin`` (the lease and the listing) — and returns at once; the pipeline
cuts parts meanwhile, and they are held here until the set-up has ended, then handed over in
order. Nothing reaches the wrapped sink before its ``begin`` has returned, so no part request
precedes the lease and the listing.

Memory stays bounded: at most ``hold`` parts are held (the wrapped sink's own bound on parts in
flight); the next ``put_part`` waits for the set-up, which is the pipeline's back-pressure.

Signals and failures: the set-up thread is not reached by signals, so ``abort`` waits for it
before aborting the wrapped sink (whose ``abort`` then sees the lease taken and releases it,
with whatever was uploaded). A run that has been signalled starts no lease (``interrupts``),
and a part waiting for the set-up raises ``Interrupted`` instead of waiting on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import interrupts
from ..concurrency import BackgroundTask
from ..errors import Interrupted
from ..parts import Part, PartSink
from ..signalsafe import Event

# How often a part waiting for the set-up looks whether the run was signalled.
_POLL_SECONDS = 0.05


class HeldSink:
    """A PartSink in front of ``sink`` whose parts wait until ``setup`` and ``sink.begin`` have
    run on a thread of their own (see the module docstring). ``setup``'s failure is in
    ``setup_error`` (the run's own error: the caller raises it rather than the pipeline's);
    a failure of ``sink.begin`` is the sink's, raised where the sink's errors are."""

    def __init__(self, sink: PartSink, setup: Callable[[], None] | None = None, *,
                 hold: int) -> None:
        if hold < 1:
            raise ValueError("HeldSink holds at least one part")
        self.sink = sink
        self.hold = hold
        self.setup_error: BaseException | None = None
        self._setup = setup
        self._task = BackgroundTask(name="ami-bundler-setup")
        self._ready = Event()  # waited for on the main thread too (signalsafe)
        self._error: BaseException | None = None
        self._begun = False  # sink.begin was called: abort must reach the sink
        self._open = False  # the held parts were handed over: parts go straight through
        self._held: list[Part] = []
        self._expected: int | None = None

    def begin(self, name: str, max_parts: int) -> None:
        self._task.start(lambda: self._set_up(name, max_parts))

    def _set_up(self, name: str, max_parts: int) -> None:
        try:
            if self._setup is not None:
                try:
                    self._setup()
                except BaseException as exc:
                    self.setup_error = self._error = exc
                    return
            signum = interrupts.signalled()
            if signum is not None:
                self._error = Interrupted(signum)  # no lease for a run that is stopping
                return
            self._begun = True
            try:
                self.sink.begin(name, max_parts)
            except BaseException as exc:
                self._error = exc
        finally:
            self._ready.set()

    @property
    def ready(self) -> bool:
        """The set-up has ended (well or not)."""
        return self._ready.is_set()

    def _wait(self) -> None:
        while not self._ready.wait(_POLL_SECONDS):
            signum = interrupts.signalled()
            if signum is not None:
                raise Interrupted(signum)

    def _hand_over(self) -> None:
        self._wait()
        if self._error is not None:
            raise self._error
        self._open = True
        if self._expected is not None:
            self.sink.expect_parts(self._expected)
        held, self._held = self._held, []
        for part in held:
            self.sink.put_part(part)

    def expect_parts(self, count: int) -> None:
        if self._open:
            self.sink.expect_parts(count)
        else:
            self._expected = count

    def put_part(self, part: Part) -> None:
        if not self._open:
            if not self._ready.is_set() and len(self._held) < self.hold:
                self._held.append(part)
                return
            self._hand_over()
        self.sink.put_part(part)

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        if not self._open:
            self._hand_over()
        self.sink.commit(names, manifest_name, manifest)

    def abort(self) -> None:
        # The set-up thread may be taking the lease: the sink's abort must see it taken.
        self._task.join()
        self._held = []
        if self._begun:
            self.sink.abort()


__all__ = ["HeldSink"]
