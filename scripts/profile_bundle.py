#!/usr/bin/env python3
"""Profile one bundle-image run: per-stage busy time and CPU seconds, per-thread CPU, cores used.

    python scripts/profile_bundle.py IMAGE LEVEL KEYDIR OUTDIR     (prints JSON)

Used by ``scripts/bench_bundle.py --profile``, which runs it in a child process per image and
level and prints the table. The data phase is the pipeline's own ``timings.phase("data")``:
from the first byte of the tar stream handed to the compressor (the zero scan done, the sink
begun, the serial stages' threads started; the deflate pool's threads start with its first
block, inside the phase) to the last part stored in the sink (written; the syncs, manifest and
links are the "manifest + commit" phase after it). The zero scan before it reads the image
too: the report also gives the two together. Stage totals come from the pipeline's own
``StageTimes`` hooks; per-thread CPU from /proc/<pid>/task, sampled every 10 ms by a child
process, so a thread's CPU is counted even where no stage measures it.
"""

from __future__ import annotations

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


# The sampler proper runs in a process of its own: reading /proc in this one would release and
# retake the GIL some fifty times per sample, and with the pipeline's threads contending for it
# that perturbed what it measured (3,400 GIL acquisitions in a 0.4 s data phase).
SAMPLER = r"""
import os, sys, select
pid, tick = sys.argv[1], os.sysconf("SC_CLK_TCK")
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
while not select.select([sys.stdin], [], [], 0.01)[0]:  # until the parent says "stop"
    sample()
sample()
print(repr((cpu, waited)), flush=True)
"""


class ThreadSampler:
    """CPU seconds of every thread of this process, by thread name (pool threads merged),
    sampled every 10 ms by a child process; this process only notes its threads' names."""

    def __init__(self) -> None:
        self.cpu: dict[int, float] = {}
        self.baseline: dict[int, float] = {}  # CPU before the bundle started, subtracted
        self.waited: dict[int, float] = {}  # runnable but not running: other processes' load
        self.names: dict[int, str] = {}
        self.halt = threading.Event()
        self._child = subprocess.Popen(
            [sys.executable, "-c", SAMPLER, str(os.getpid())], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert self._child.stdout is not None
        self._child.stdout.readline()  # "ready"
        self._namer = threading.Thread(target=self._note_names, daemon=True,
                                       name="profile-sampler")

    def note(self) -> None:
        for thread in threading.enumerate():
            if thread.native_id is not None:
                self.names[thread.native_id] = thread.name

    def _note_names(self) -> None:
        # Names only (no system call releases the GIL here): one GIL acquisition per 10 ms.
        while not self.halt.wait(0.01):
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
            name = self.names.get(tid, f"tid {tid}")
            if "_" in name and name.rsplit("_", 1)[1].isdigit():
                name = name.rsplit("_", 1)[0] + "_*"  # a pool's threads together
            merged[name] = merged.get(name, 0.0) + cpu
        return dict(sorted(merged.items(), key=lambda kv: -kv[1]))


def profile(image: Path, level: str, keys: Path, out: Path) -> dict:
    imported = time.perf_counter()
    from bundler.dirsink import DirectorySink
    from bundler.images import open_source  # any image format (raw: open_image)
    from bundler.pipeline import BundleKeys, BundleOptions, bundle
    from bundler.stagetimes import StageTimes

    import_s = time.perf_counter() - imported
    bundle_keys = BundleKeys.load(keys / "user-cert.pem", keys / "user-key.pem",
                                  keys / "ec2-cert.pem")
    sampler = ThreadSampler()
    # This thread's CPU so far (imports, key loading) is not the bundle's: counted from here.
    sampler.baseline = {threading.get_native_id(): time.thread_time()}
    sampler.start()
    times = StageTimes()
    before = resource.getrusage(resource.RUSAGE_SELF)
    with times.phase("scan (open_image)"):
        source = open_source(image, name="b")
    result = bundle(source, DirectorySink(out), bundle_keys,
                    BundleOptions(name="b", user="123456789012", compression=level), timings=times)
    after = resource.getrusage(resource.RUSAGE_SELF)
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
    return {
        "tail_s": data_end - last_read, "tail_stages": tail, "head_s": first_aes - data.start,
        "cores_available": len(os.sched_getaffinity(0)),
        "waited": sampler.by_name(sampler.waited),
        "image": str(image), "level": level, "bundled_bytes": result.bundled_size,
        "import_s": import_s, "startup_cpu_s": before.ru_utime + before.ru_stime,
        "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt, "peak_rss_mib": after.ru_maxrss / 1024,
        "phases": [{"name": p.name, "wall": p.wall, "cpu": p.cpu, "cores": p.cores,
                    "start": p.start}
                   for p in times.phases],
        "stages": [{"stage": t.stage, "thread": t.thread, "calls": t.calls, "busy": t.busy,
                    "cpu": t.cpu, "mib": t.nbytes / 2**20} for t in times.totals()],
        "threads": sampler.by_name(),
        "thread_ids": {str(tid): name for tid, name in sampler.names.items()},
        "process_s": time.perf_counter() - STARTED,
    }


def report_in_child(image: Path, level: str, keys: Path, out: Path) -> dict:
    """Run this script for one image and level in a fresh interpreter; the report."""
    proc = subprocess.run([sys.executable, __file__, str(image), level, str(keys), str(out)],
                          capture_output=True, text=True, check=False)
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
    lines.append(f"  {'stage':16s} {'thread':22s} {'calls':>6s} {'MiB':>7s} {'busy s':>7s} "
                 f"{'CPU s':>7s}"
                 + ("  busy/data wall" if data else ""))
    for stage in report["stages"]:
        share = f"  {stage['busy'] / data['wall']:6.0%}" if data and data["wall"] > 0 else ""
        lines.append(f"  {stage['stage']:16s} {stage['thread']:22s} {stage['calls']:6d} "
                     f"{stage['mib']:7.1f} {stage['busy']:7.3f} {stage['cpu']:7.3f}{share}")
    waited = report.get("waited", {})
    lines.append("  CPU s by thread (from /proc; in brackets: s runnable but waiting for a core, "
                 "i.e. the machine's other load): " + ", ".join(
                     f"{name} {cpu:.2f} [{waited.get(name, 0.0):.2f}]"
                     for name, cpu in report["threads"].items() if cpu >= 0.005))
    if data:
        threads = {n: c for n, c in report["threads"].items() if n != "profile-sampler"}
        serial = max((c for n, c in threads.items() if not n.endswith("_*")), default=0.0)
        cores = report.get("cores_available", 2)
        bound = max(data["cpu"] / cores, serial)
        lines.append(f"  data phase: {data['cpu']:.3f} CPU-s on {cores} cores → at best "
                     f"{bound:.3f} s on idle cores (measured {data['wall']:.3f} s, "
                     f"{data['cores']:.2f} cores); "
                     f"{sum(waited.values()):.3f} s of threads' waits for a core in the run")
        tail = ", ".join(f"{stage} {busy:.3f}" for stage, busy in
                         sorted(report["tail_stages"].items(), key=lambda kv: -kv[1]))
        scan = next((p for p in report["phases"] if p["name"].startswith("scan")), None)
        if scan is not None:  # the zero scan reads the image too: both together, for honesty
            wall, cpu = scan["wall"] + data["wall"], scan["cpu"] + data["cpu"]
            lines.append(f"  zero scan + data phase: {cpu:.3f} CPU-s in {wall:.3f} s, "
                         f"{cpu / wall:.2f} cores")
        lines.append(f"  head (data start → first AES) {report['head_s']:.3f} s; tail (last "
                     f"read → data end) {report['tail_s']:.3f} s, busy in it: {tail or '-'}")
    lines.append(f"  process: user {report['user_s']:.2f} s + sys {report['sys_s']:.2f} s after "
                 f"start-up (start-up and key loading {report['startup_cpu_s']:.2f} CPU-s)")
    return "\n".join(lines)


if __name__ == "__main__":
    image, level, keys, out = sys.argv[1:5]
    print(json.dumps(profile(Path(image), level, Path(keys), Path(out))))
