"""Where a pipeline run spends its time: busy time and CPU seconds of each stage, per thread.

The pipeline's stages run on several threads at once, so wall time alone says little about
which one holds the others up. Each stage wraps its work for one item in ``measure``; the
totals tell, per stage and thread, how long it was busy (wall time inside the stage, waiting
for the disk included) and how much CPU it used (``time.thread_time``, which the load of
other processes on the machine hardly changes). Waiting for input or for room downstream
is never inside a measurement, so ``busy / data-phase wall`` is how saturated a stage is.

``NULL_TIMES`` measures nothing and costs one attribute lookup per item.

A phase (``StageTimes.phase``) measures the whole process: wall time and the CPU of all its
threads (``CLOCK_PROCESS_CPUTIME_ID``, which counts threads that ended inside the phase too),
read at its two ends only. ``StageTimes(boundaries=True)`` also reads, just before the phase's
clocks at its start and just after them at its end (so that the reading is outside the
measured stretch), each live thread's CPU and run-queue wait (``/proc/self/task/*/schedstat``)
and the machine's idle time (cpuidle's per-CPU residency, µs); ``thread_exits`` records the
same for each thread as it ends. Nothing samples periodically: the phase's numbers are not
perturbed by the measurement.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class ThreadCpu:
    """One thread's scheduler totals at an instant (``/proc/.../schedstat``)."""

    name: str
    cpu: float  # seconds on a CPU (the same clock as CLOCK_THREAD_CPUTIME_ID)
    waited: float  # seconds runnable on a run queue but not running: the machine's other load


@dataclass(frozen=True)
class Boundary:
    """What the kernel says at one end of a phase: each live thread of this process, by native
    id, and the idle seconds of the machine's CPUs summed (None where cpuidle is absent)."""

    at: float  # perf_counter seconds
    threads: dict[int, ThreadCpu]
    idle: float | None


def _schedstat(path: str) -> tuple[float, float] | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # the thread just ended, or no schedstat in this kernel
    try:
        fields = os.read(fd, 128).split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None
    finally:
        os.close(fd)


def read_threads() -> dict[int, ThreadCpu]:
    """CPU and run-queue wait of each live thread of this process, named as ``threading``
    names them (a thread Python did not start goes by its id)."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    threads = {}
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        stat = _schedstat(f"/proc/self/task/{entry}/schedstat")
        if stat is not None:
            threads[tid] = ThreadCpu(names.get(tid, f"tid {tid}"), *stat)
    return threads


_IDLE_FILES = "/sys/devices/system/cpu/cpu[0-9]*/cpuidle/state[0-9]*/time"


def machine_idle() -> float | None:
    """Seconds the machine's CPUs have been idle, summed (cpuidle's residency counters, µs).

    A CPU's counter grows when it leaves an idle state, so an idle CPU's current stretch is not
    in it yet: this thread first runs briefly on every CPU it may use (which ends their idle
    stretches; a few tens of µs), then reads the counters. None without cpuidle.
    """
    import glob  # only profiles read it: not on every command's start-up path

    files = glob.glob(_IDLE_FILES)
    if not files:
        return None
    try:
        allowed = os.sched_getaffinity(0)
        for cpu in sorted(allowed):
            os.sched_setaffinity(0, {cpu})
        os.sched_setaffinity(0, allowed)
    except OSError:
        pass  # counters as they are: off by at most the idle stretches under way
    total = 0
    for name in files:
        try:
            with open(name, "rb") as fh:
                total += int(fh.read())
        except (OSError, ValueError):
            return None
    return total / 1e6


def read_boundary() -> Boundary:
    return Boundary(time.perf_counter(), read_threads(), machine_idle())


@contextlib.contextmanager
def thread_exits() -> Iterator[dict[int, tuple[float, ThreadCpu]]]:
    """While inside, every thread that ends records, as its last act, when it ended
    (perf_counter) and its CPU and run-queue wait then, by native id: the threads of a phase
    that end inside it (a pool shut down, a stage closed) are gone by the phase's end. For
    profiling only: it wraps ``threading.Thread.run`` for every thread started meanwhile."""
    exits: dict[int, tuple[float, ThreadCpu]] = {}
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        try:
            original(self)
        finally:
            stat = _schedstat("/proc/thread-self/schedstat")
            if stat is None:
                stat = (time.thread_time(), 0.0)
            exits[threading.get_native_id()] = (time.perf_counter(),
                                                 ThreadCpu(self.name, *stat))

    threading.Thread.run = run  # type: ignore[method-assign]
    try:
        yield exits
    finally:
        threading.Thread.run = original  # type: ignore[method-assign]


@dataclass
class PhaseTotal:
    """A stretch of the run as a whole: its wall time and the CPU all threads used in it."""

    name: str
    wall: float
    cpu: float
    start: float = 0.0  # perf_counter seconds
    # With StageTimes(boundaries=True): the kernel's view just before and just after.
    before: Boundary | None = field(default=None, repr=False)
    after: Boundary | None = field(default=None, repr=False)

    @property
    def cores(self) -> float:
        return self.cpu / self.wall if self.wall > 0 else 0.0

    @property
    def idle(self) -> float | None:
        """Idle CPU-seconds of the whole machine in the phase (None: not measured)."""
        if self.before is None or self.after is None:
            return None
        if self.before.idle is None or self.after.idle is None:
            return None
        return self.after.idle - self.before.idle

    def threads(self, exits: dict[int, tuple[float, ThreadCpu]] | None = None
                ) -> dict[int, ThreadCpu]:
        """Each thread's CPU and run-queue wait inside the phase, by native id: from its
        values at the phase's start (0 for a thread started inside it) to those at its end,
        or at the thread's own end when it ended inside the phase (``exits``)."""
        if self.before is None or self.after is None:
            return {}
        exits = exits or {}
        start, end = self.before.at, self.after.at
        result = {}
        for tid in {*self.before.threads, *self.after.threads, *exits}:
            last = self.after.threads.get(tid)
            if tid in exits and start <= exits[tid][0] <= end:
                last = exits[tid][1]
            if last is None:
                continue  # ended before the phase, or after it without a record
            first = self.before.threads.get(tid)
            base = (first.cpu, first.waited) if first is not None else (0.0, 0.0)
            result[tid] = ThreadCpu(last.name, last.cpu - base[0], last.waited - base[1])
        return result


class _Phase:
    __slots__ = ("_times", "_name", "_wall", "_cpu", "_before")

    def __init__(self, times: StageTimes, name: str) -> None:
        self._times = times
        self._name = name

    def __enter__(self) -> None:
        # The kernel's view first, the clocks last: reading /proc is outside the phase.
        self._before = read_boundary() if self._times.boundaries else None
        self._wall = time.perf_counter()
        self._cpu = time.process_time()  # CLOCK_PROCESS_CPUTIME_ID: all threads, ns

    def __exit__(self, *exc: object) -> None:
        cpu = time.process_time() - self._cpu
        wall = time.perf_counter() - self._wall
        after = read_boundary() if self._times.boundaries else None
        self._times.add_phase(PhaseTotal(self._name, wall, cpu, self._wall, self._before,
                                         after))


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

    def __init__(self, *, boundaries: bool = False) -> None:
        # Read each thread's and the machine's totals at both ends of every phase.
        self.boundaries = boundaries
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
