"""Where a pipeline run spends its time: busy time and CPU seconds of each stage, per thread.

The pipeline's stages run on several threads at once, so wall time alone says little about
which one holds the others up. Each stage wraps its work for one item in ``measure``; the
totals tell, per stage and thread, how long it was busy (wall time inside the stage, waiting
for the disk included) and how much CPU it used (``time.thread_time``, which the load of
other processes on the machine hardly changes). Waiting for input or for room downstream
is never inside a measurement, so ``busy / data-phase wall`` is how saturated a stage is.

``NULL_TIMES`` measures nothing and costs one attribute lookup per item.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class StageTotal:
    """One stage's totals on one thread."""

    stage: str
    thread: str
    calls: int = 0
    busy: float = 0.0  # seconds of wall time inside the stage
    cpu: float = 0.0  # seconds of this thread's CPU time inside the stage
    nbytes: int = 0


class _Measurement:
    __slots__ = ("_times", "_stage", "_nbytes", "_wall", "_cpu")

    def __init__(self, times: StageTimes, stage: str, nbytes: int) -> None:
        self._times = times
        self._stage = stage
        self._nbytes = nbytes

    def __enter__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.thread_time()

    def __exit__(self, *exc: object) -> None:
        cpu = time.thread_time() - self._cpu
        end = time.perf_counter()
        self._times.add(self._stage, end - self._wall, cpu, self._nbytes, start=self._wall)


@dataclass
class PhaseTotal:
    """A stretch of the run as a whole: its wall time and the CPU all threads used in it."""

    name: str
    wall: float
    cpu: float
    start: float = 0.0  # perf_counter seconds

    @property
    def cores(self) -> float:
        return self.cpu / self.wall if self.wall > 0 else 0.0


class _Phase:
    __slots__ = ("_times", "_name", "_wall", "_cpu")

    def __init__(self, times: StageTimes, name: str) -> None:
        self._times = times
        self._name = name

    def __enter__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def __exit__(self, *exc: object) -> None:
        self._times.add_phase(PhaseTotal(self._name, time.perf_counter() - self._wall,
                                         time.process_time() - self._cpu, self._wall))


class _NullMeasurement:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NULL_MEASUREMENT = _NullMeasurement()


class StageTimes:
    """Thread-safe totals of ``measure``-d work, keyed by stage and thread name."""

    enabled = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str], StageTotal] = {}
        self.phases: list[PhaseTotal] = []
        # (stage, start, end) in perf_counter seconds: when each stage ran, so that a profile
        # can show what runs at the head and the tail of the data phase, where cores idle.
        self.spans: list[tuple[str, float, float]] = []

    def phase(self, name: str) -> _Phase | _NullMeasurement:
        """Measure a stretch of the whole run (all threads' CPU), e.g. the data phase."""
        return _Phase(self, name)

    def add_phase(self, phase: PhaseTotal) -> None:
        with self._lock:
            self.phases.append(phase)

    def measure(self, stage: str, nbytes: int = 0) -> _Measurement | _NullMeasurement:
        return _Measurement(self, stage, nbytes)

    def add(self, stage: str, busy: float, cpu: float, nbytes: int = 0, *,
            start: float | None = None) -> None:
        thread = threading.current_thread().name
        with self._lock:
            if start is not None:
                self.spans.append((stage, start, start + busy))
            total = self._totals.get((stage, thread))
            if total is None:
                total = self._totals[(stage, thread)] = StageTotal(stage, thread)
            total.calls += 1
            total.busy += busy
            total.cpu += cpu
            total.nbytes += nbytes

    def totals(self) -> list[StageTotal]:
        """Per stage and thread, in the order the stages first reported."""
        with self._lock:
            return [StageTotal(t.stage, t.thread, t.calls, t.busy, t.cpu, t.nbytes)
                    for t in self._totals.values()]

    def by_stage(self) -> dict[str, StageTotal]:
        """Per stage, summed over its threads (``thread`` names how many there were)."""
        merged: dict[str, StageTotal] = {}
        threads: dict[str, set[str]] = {}
        for t in self.totals():
            m = merged.setdefault(t.stage, StageTotal(t.stage, ""))
            m.calls += t.calls
            m.busy += t.busy
            m.cpu += t.cpu
            m.nbytes += t.nbytes
            threads.setdefault(t.stage, set()).add(t.thread)
        for stage, m in merged.items():
            m.thread = f"{len(threads[stage])} thread(s)"
        return merged


class _NullTimes(StageTimes):
    enabled = False

    def phase(self, name: str) -> _Phase | _NullMeasurement:
        return _NULL_MEASUREMENT

    def measure(self, stage: str, nbytes: int = 0) -> _Measurement | _NullMeasurement:
        return _NULL_MEASUREMENT

    def add(self, stage: str, busy: float, cpu: float, nbytes: int = 0, *,
            start: float | None = None) -> None:
        return None


NULL_TIMES: StageTimes = _NullTimes()
