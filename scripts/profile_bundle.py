#!/usr/bin/env python3
"""Profile one bundle-image run: per-stage busy time and CPU seconds, per-thread CPU, cores used.

    python scripts/profile_bundle.py IMAGE LEVEL KEYDIR OUTDIR [--sample-ms MS] [--no-stage-times]

Used by ``scripts/bench_bundle.py --profile``, which runs it in a child process per image and
level and prints the table. The data phase is the pipeline's own ``timings.phase("data")``:
from the first byte of the tar stream handed to the compressor (the zero scan done, the sink
begun, the serial stages' threads started; the deflate pool's threads start with its first
block, inside the phase) to the last part stored in the sink (written; the syncs, manifest and
links are the "manifest + commit" phase after it). The zero scan before it reads the image
too: the report also gives the two together.

How each number is measured (nothing periodic unless ``--sample-ms`` asks for it):

* the phase's wall time and CPU seconds: ``perf_counter`` and ``CLOCK_PROCESS_CPUTIME_ID``
  (all threads, ended ones included, ns) read at its two ends, so cores = CPU / wall;
* each thread's CPU and run-queue wait in the phase: ``/proc/self/task/*/schedstat`` read
  just before the phase's clocks at its start and just after them at its end, and, for the
  threads that end inside the phase (all but the main one), ``/proc/thread-self/schedstat``
  read by the thread as it ends (``stagetimes.thread_exits``);
* the machine's idle CPU-seconds in the phase: cpuidle's residency counters (µs) at the same
  two instants; the rest of the machine's CPU-seconds (cores × wall − ours − idle) went to
  other processes, the kernel's own threads and interrupts, or the hypervisor (steal);
* per stage: the pipeline's ``StageTimes.measure`` hooks (two clock reads per item; their cost
  is inside the phase: ``--no-stage-times`` leaves them out to show it);
* ``--sample-ms MS``: the old periodic view, a child process reading /proc/<pid>/task/*/stat
  and schedstat every MS ms over the whole run and a thread noting thread names every MS ms
  (it takes the GIL): it costs the pipeline cores (at 10 ms, ~0.03–0.05 of them).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# The periodic sampler runs in a process of its own: reading /proc in this one would release and
# retake the GIL some fifty times per sample, and with the pipeline's threads contending for it
# that perturbed what it measured (3,400 GIL acquisitions in a 0.4 s data phase). It still takes
# a core's time away from the pipeline, which is why it is off unless asked for.
SAMPLER = r"""
import os, sys, select
pid, period, tick = sys.argv[1], float(sys.argv[2]), os.sysconf("SC_CLK_TCK")
cpu, waited = {}, {}
def sample():
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            cpu[tid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue  # the thread just ended; its last sample stands
        try:  # on-CPU ns, run-queue wait ns, time slices (needs schedstats; most kernels)
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                on, wait = fh.read().split()[:2]
            cpu[tid], waited[tid] = int(on) / 1e9, int(wait) / 1e9
        except (OSError, IndexError, ValueError):
            pass
print("ready", flush=True)
while not select.select([sys.stdin], [], [], period)[0]:  # until the parent says "stop"
    sample()
sample()
print(repr((cpu, waited)), flush=True)
"""


def pool_name(name: str) -> str:
    """A pool's threads go together: ``bundler-deflate_1`` → ``bundler-deflate_*``."""
    if "_" in name and name.rsplit("_", 1)[1].isdigit():
        return name.rsplit("_", 1)[0] + "_*"
    return name


class ThreadSampler:
    """CPU seconds of every thread of this process over the whole run, by thread name (pool
    threads merged), sampled every ``period`` s by a child process; this process only notes
    its threads' names (as often)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.cpu: dict[int, float] = {}
        self.baseline: dict[int, float] = {}  # CPU before the bundle started, subtracted
        self.waited: dict[int, float] = {}  # runnable but not running: other processes' load
        self.names: dict[int, str] = {}
        self.halt = threading.Event()
        self._child = subprocess.Popen(
            [sys.executable, "-c", SAMPLER, str(os.getpid()), str(period)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._child.stdout is not None
        self._child.stdout.readline()  # "ready"
        self._namer = threading.Thread(target=self._note_names, daemon=True,
                                       name="profile-sampler")

    def note(self) -> None:
        for thread in threading.enumerate():
            if thread.native_id is not None:
                self.names[thread.native_id] = thread.name

    def _note_names(self) -> None:
        # Names only (no system call releases the GIL here): one GIL acquisition per period.
        while not self.halt.wait(self.period):
            self.note()

    def start(self) -> None:
        self.note()
        self._namer.start()

    def stop(self) -> None:
        self.halt.set()
        self._namer.join()
        self.note()
        out, _ = self._child.communicate("stop\n")
        cpu, waited = ast.literal_eval(out.strip())
        self.cpu = {int(t): c for t, c in cpu.items()}
        self.waited = {int(t): w for t, w in waited.items()}

    def by_name(self, values: dict[int, float] | None = None) -> dict[str, float]:
        merged: dict[str, float] = {}
        if values is None:
            values = {tid: cpu - self.baseline.get(tid, 0.0) for tid, cpu in self.cpu.items()}
        for tid, cpu in values.items():
            name = pool_name(self.names.get(tid, f"tid {tid}"))
            merged[name] = merged.get(name, 0.0) + cpu
        return dict(sorted(merged.items(), key=lambda kv: -kv[1]))


def profile(image: Path, level: str, keys: Path, out: Path, *, sample_ms: float = 0.0,
            stage_times: bool = True) -> dict:
    imported = time.perf_counter()
    from bundler.dirsink import DirectorySink
    from bundler.images import open_source  # any image format (raw: open_image)
    from bundler.pipeline import BundleKeys, BundleOptions, bundle
    from bundler.stagetimes import NULL_TIMES, StageTimes, thread_exits

    import_s = time.perf_counter() - imported
    bundle_keys = BundleKeys.load(keys / "user-cert.pem", keys / "user-key.pem",
                                  keys / "ec2-cert.pem")
    sampler = ThreadSampler(sample_ms / 1000) if sample_ms > 0 else None
    if sampler is not None:
        # This thread's CPU so far (imports, key loading) is not the bundle's: counted from here.
        sampler.baseline = {threading.get_native_id(): time.thread_time()}
        sampler.start()
    times = StageTimes(boundaries=True)
    if not stage_times:
        times.measure = NULL_TIMES.measure  # type: ignore[method-assign]
    before = resource.getrusage(resource.RUSAGE_SELF)
    with thread_exits() as exits:
        with times.phase("scan (open_image)"):
            source = open_source(image, name="b")
        result = bundle(source, DirectorySink(out), bundle_keys,
                        BundleOptions(name="b", user="123456789012", compression=level),
                        timings=times)
    after = resource.getrusage(resource.RUSAGE_SELF)
    if sampler is not None:
        sampler.stop()
    data = next(p for p in times.phases if p.name == "data")
    data_end = data.start + data.wall
    reads = [end for stage, _, end in times.spans if stage == "read"]
    last_read = max(reads, default=data.start)
    # The tail: from the last image read to the end of the data phase, only the pipeline's
    # later stages run (the pool drains, the last part is hashed and written): time where a
    # core may idle. Busy time per stage inside it says which stage holds the end up.
    tail: dict[str, float] = {}
    for stage, start, end in times.spans:
        overlap = min(end, data_end) - max(start, last_read)
        if overlap > 0:
            tail[stage] = tail.get(stage, 0.0) + overlap
    first_aes = min((start for stage, start, _ in times.spans if stage == "aes"),
                    default=data.start)
    # Each thread's CPU and run-queue wait inside the data phase (boundary reads, exit records).
    threads: dict[str, float] = {}
    waited: dict[str, float] = {}
    per_thread = data.threads(exits)
    for tcpu in per_thread.values():
        name = pool_name(tcpu.name)
        threads[name] = threads.get(name, 0.0) + tcpu.cpu
        waited[name] = waited.get(name, 0.0) + tcpu.waited
    cores = len(os.sched_getaffinity(0))
    machine = os.cpu_count() or cores
    report = {
        "tail_s": data_end - last_read, "tail_stages": tail, "head_s": first_aes - data.start,
        "cores_available": cores, "machine_cpus": machine,
        "threads": dict(sorted(threads.items(), key=lambda kv: -kv[1])), "waited": waited,
        "unattributed_s": data.cpu - sum(threads.values()),
        "thread_ids": {str(tid): t.name for tid, t in per_thread.items()},
        "idle_s": data.idle,
        "stage_times": stage_times,
        "image": str(image), "level": level, "bundled_bytes": result.bundled_size,
        "import_s": import_s, "startup_cpu_s": before.ru_utime + before.ru_stime,
        "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt, "peak_rss_mib": after.ru_maxrss / 1024,
        "phases": [{"name": p.name, "wall": p.wall, "cpu": p.cpu, "cores": p.cores,
                    "start": p.start, "idle": p.idle}
                   for p in times.phases],
        "stages": [{"stage": t.stage, "thread": t.thread, "calls": t.calls, "busy": t.busy,
                    "cpu": t.cpu, "mib": t.nbytes / 2**20} for t in times.totals()],
        "process_s": time.perf_counter() - STARTED,
    }
    if sampler is not None:
        report["sampled"] = {"period_ms": sample_ms, "threads": sampler.by_name(),
                             "waited": sampler.by_name(sampler.waited)}
    return report


def report_in_child(image: Path, level: str, keys: Path, out: Path, *,
                    sample_ms: float = 0.0, stage_times: bool = True) -> dict:
    """Run this script for one image and level in a fresh interpreter; the report."""
    cmd = [sys.executable, __file__, str(image), level, str(keys), str(out),
           "--sample-ms", str(sample_ms)]
    if not stage_times:
        cmd.append("--no-stage-times")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"profiling {image} at {level} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def profile_in_child(image: Path, level: str, keys: Path, out: Path) -> str:
    """Run this script for one image and level in a fresh interpreter; the report as text."""
    return render(report_in_child(image, level, keys, out))


def render(report: dict) -> str:
    lines = [f"{Path(report['image']).name} at --compression {report['level']}: "
             f"{report['bundled_bytes'] / 2**20:.1f} MiB bundle, peak RSS "
             f"{report['peak_rss_mib']:.0f} MiB, {report['minor_faults']} minor faults; imports "
             f"{report['import_s'] * 1000:.0f} ms"]
    lines.append(f"  {'phase':28s} {'wall s':>8s} {'CPU s':>8s} {'cores':>6s}")
    for phase in report["phases"]:
        lines.append(f"  {phase['name']:28s} {phase['wall']:8.3f} {phase['cpu']:8.3f} "
                     f"{phase['cores']:6.2f}")
    data = next((p for p in report["phases"] if p["name"] == "data"), None)
    if report["stages"]:
        lines.append(f"  {'stage':16s} {'thread':22s} {'calls':>6s} {'MiB':>7s} "
                     f"{'busy s':>7s} {'CPU s':>7s}" + ("  busy/data wall" if data else ""))
    for stage in report["stages"]:
        share = f"  {stage['busy'] / data['wall']:6.0%}" if data and data["wall"] > 0 else ""
        lines.append(f"  {stage['stage']:16s} {stage['thread']:22s} {stage['calls']:6d} "
                     f"{stage['mib']:7.1f} {stage['busy']:7.3f} {stage['cpu']:7.3f}{share}")
    waited = report["waited"]
    if data:
        lines.append("  data phase, CPU s by thread (schedstat at the phase's ends and at each "
                     "thread's end; in brackets: s runnable but waiting for a core, behind this "
                     "process's other threads or other processes): "
                     + ", ".join(f"{name} {cpu:.3f} [{waited.get(name, 0.0):.3f}]"
                                 for name, cpu in report["threads"].items() if cpu >= 0.0005)
                     + f"; not in a thread's total {report['unattributed_s']:.3f}")
    sampled = report.get("sampled")
    if sampled:
        lines.append(f"  whole run, CPU s by thread (periodic: /proc every "
                     f"{sampled['period_ms']:g} ms, which itself costs the pipeline cores): "
                     + ", ".join(f"{name} {cpu:.2f} [{sampled['waited'].get(name, 0.0):.2f}]"
                                 for name, cpu in sampled["threads"].items() if cpu >= 0.005))
    if data:
        threads = report["threads"]
        serial = max((c for n, c in threads.items() if not n.endswith("_*")), default=0.0)
        cores = report.get("cores_available", 2)
        bound = max(data["cpu"] / cores, serial)
        lines.append(f"  data phase: {data['cpu']:.3f} CPU-s on {cores} cores → at best "
                     f"{bound:.3f} s on idle cores (measured {data['wall']:.3f} s, "
                     f"{data['cores']:.2f} cores); threads waited {sum(waited.values()):.3f} s "
                     f"for a core")
        if data.get("idle") is not None:
            machine = report.get("machine_cpus", cores)
            available = machine * data["wall"]
            other = available - data["cpu"] - data["idle"]
            lines.append(f"  the machine in the data phase ({machine} CPUs × wall = "
                         f"{available:.3f} CPU-s): ours {data['cpu']:.3f}, idle "
                         f"{data['idle']:.3f} (cpuidle), the rest {other:.3f} (other "
                         f"processes, kernel threads, interrupts, steal)")
        tail = ", ".join(f"{stage} {busy:.3f}" for stage, busy in
                         sorted(report["tail_stages"].items(), key=lambda kv: -kv[1]))
        scan = next((p for p in report["phases"] if p["name"].startswith("scan")), None)
        if scan is not None:  # the zero scan reads the image too: both together, for honesty
            wall, cpu = scan["wall"] + data["wall"], scan["cpu"] + data["cpu"]
            lines.append(f"  zero scan + data phase: {cpu:.3f} CPU-s in {wall:.3f} s, "
                         f"{cpu / wall:.2f} cores")
        if report.get("stage_times", True):  # head and tail come from the stages' spans
            lines.append(f"  head (data start → first AES) {report['head_s']:.3f} s; tail "
                         f"(last read → data end) {report['tail_s']:.3f} s, busy in it: "
                         f"{tail or '-'}")
        else:
            lines.append("  (phases only: no per-stage hooks, so no stage rows, head or tail)")
    lines.append(f"  process: user {report['user_s']:.2f} s + sys {report['sys_s']:.2f} s after "
                 f"start-up (start-up and key loading {report['startup_cpu_s']:.2f} CPU-s)")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path)
    ap.add_argument("level")
    ap.add_argument("keys", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--sample-ms", type=float, default=0.0,
                    help="also sample /proc periodically every MS ms (perturbs; 0: not)")
    ap.add_argument("--no-stage-times", dest="stage_times", action="store_false",
                    help="leave the per-stage hooks out (phases only)")
    args = ap.parse_args()
    print(json.dumps(profile(args.image, args.level, args.keys, args.out,
                             sample_ms=args.sample_ms, stage_times=args.stage_times)))
