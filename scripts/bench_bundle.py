#!/usr/bin/env python3
"""Benchmark bundle-image and unbundle against the classic pipeline, in the same run.

Classic bundling is what ec2-bundle-image runs (spec §1.9):
    tar -c -h -S --owner 0 --group 0 IMG | tee >(sha1sum) | gzip -9
        | openssl enc -aes-128-cbc -K … -iv … > IMG.tar.gz.enc
    split -b 10M; sha1sum of every part
and classic unbundling: cat parts | openssl enc -d | gunzip | tar -x.

Usage: scripts/bench_bundle.py [--corpus /tmp/corpus] [--repeat 3] [--profile]
                               [--images rootfs.img ...] [--levels default fast]
                               [--sample-ms MS]
The corpus comes from ../shared/bench/make-corpus.sh (rootfs.img, random-512M.img, zeros-4G.img).
Each command runs as its own process; times are the best of --repeat runs (warm page cache),
peak RSS comes from wait4's rusage of that process.

--profile bundles each image 2 × --repeat times per level, each in a child process, lists the
runs' data phases: --repeat runs as bundle-image runs (the pipeline's phases measured, nothing
else: the headline cores, median run) interleaved with --repeat runs with the per-stage hooks
(the median one's stage table: per pipeline stage and thread, busy time (wall time inside the
stage) and CPU seconds; and what the hooks cost). Either kind reports each thread's CPU and the
cores used during the data phase: process CPU clock and wall clock read at the phase's two
ends, per thread and the machine's idle from the kernel's counters at the same instants, no
periodic sampling unless --sample-ms (see scripts/profile_bundle.py). CPU seconds hardly depend
on the load of other processes, so they are what to compare on a shared machine; wall times
are not.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
CLI = [sys.executable, "-m", "bundler"]


def timed(cmd: list[str] | str, *, shell: bool = False,
          cwd: Path | None = None) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (KiB) and CPU seconds (user + system, of the command and its
    children: wait4's rusage) of one command, which must succeed."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, executable="/bin/bash" if shell else None)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {cmd}\n{err}")
    # wait4's rusage covers the process and the descendants it waited for (a pipeline's stages).
    return elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def best(n: int, cmd: list[str] | str, fresh: Path, *,
         shell: bool = False) -> tuple[float, int, float]:
    """Best wall time, worst peak RSS and least CPU seconds of ``n`` runs, each into an
    emptied ``fresh`` directory. CPU seconds hardly depend on the machine's load: they are what
    to compare while it is shared; the wall times are what users wait for."""
    runs = []
    for _ in range(n):
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        runs.append(timed(cmd, shell=shell))
    return min(r[0] for r in runs), max(r[1] for r in runs), min(r[2] for r in runs)



def dir_size(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.glob(pattern))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/corpus"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--images", nargs="*",
                    default=["rootfs.img", "random-512M.img", "zeros-4G.img"])
    ap.add_argument("--levels", nargs="*", default=["default", "fast"])
    ap.add_argument("--profile", action="store_true",
                    help="per-stage CPU and busy time instead of ratios")
    ap.add_argument("--sample-ms", type=float, default=0.0, metavar="MS",
                    help="with --profile: also sample each thread's CPU from /proc every MS ms "
                         "over the whole run (perturbs what it measures; default: not)")
    ap.add_argument("--repeat-startup", type=int, default=10, metavar="N",
                    help="also time `bundle-image --help` and a 1 MiB bundle, best of N (0: not)")
    args = ap.parse_args()
    # Start-up is part of what is timed: byte-compile the package first, as an install does
    # (PYTHONDONTWRITEBYTECODE, set in some CI shells, would otherwise recompile every run).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "bundler")], check=True,
                   stdout=subprocess.DEVNULL)
    if not (args.corpus / "rootfs.img").exists():
        raise SystemExit(f"no corpus in {args.corpus}: run sudo bash "
                         f"../shared/bench/make-corpus.sh {args.corpus}")

    work = Path(tempfile.mkdtemp(prefix="ami-bench-"))
    try:
        keys = work / "keys"
        keys.mkdir()
        for who in ("user", "ec2"):
            subprocess.run([*CLI, "keygen", "--key", str(keys / f"{who}-key.pem"),
                            "--cert", str(keys / f"{who}-cert.pem")],
                           check=True, capture_output=True)
        if args.profile:
            return profile_all(args, keys, work)
        rows = []
        loads: list[float] = []
        for image_name in args.images:
            image = args.corpus / image_name
            if not image.exists():
                continue
            # warm the cache alike for both
            subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)
            key_hex, iv_hex = os.urandom(16).hex(), os.urandom(16).hex()
            classic_dir = work / "classic"
            classic = (
                f"set -o pipefail; tar -c -h -S --owner 0 --group 0 -C {image.parent} {image.name} "
                f"| tee >(sha1sum > {classic_dir}/digest) | gzip -9 "
                f"| openssl enc -e -aes-128-cbc -K {key_hex} -iv {iv_hex} > "
                f"{classic_dir}/b.tar.gz.enc && split -b 10485760 -a 4 -d "
                f"{classic_dir}/b.tar.gz.enc {classic_dir}/b.part. && sha1sum "
                f"{classic_dir}/b.part.* > /dev/null && rm {classic_dir}/b.tar.gz.enc"
            )
            loads.append(os.getloadavg()[0])
            c_time, c_rss, c_cpu = best(args.repeat, classic, classic_dir, shell=True)
            c_size = dir_size(classic_dir, "b.part.*")
            classic_out = work / "classic-out"
            classic_un = (f"set -o pipefail; cat {classic_dir}/b.part.* | openssl enc -d "
                          f"-aes-128-cbc -K {key_hex} -iv {iv_hex} | gunzip | tar -x -C "
                          f"{classic_out}")
            cu_time, _, _ = best(args.repeat, classic_un, classic_out, shell=True)

            for level in args.levels:
                ours_dir = work / f"ours-{level}"
                ours = [*CLI, "bundle-image", "-i", str(image), "-c", str(keys / "user-cert.pem"),
                        "-k", str(keys / "user-key.pem"), "--ec2cert", str(keys / "ec2-cert.pem"),
                        "-u", "123456789012", "-r", "x86_64", "-d", str(ours_dir), "-p", "b",
                        "--compression", level, "-q"]
                loads.append(os.getloadavg()[0])
                o_time, o_rss, o_cpu = best(args.repeat, ours, ours_dir)
                o_size = dir_size(ours_dir, "b.part.*")
                row = {"image": image_name, "level": level, "classic_s": c_time, "ours_s": o_time,
                       "speedup": c_time / o_time, "classic_bytes": c_size, "ours_bytes": o_size,
                       "size_ratio": o_size / c_size, "ours_rss_mib": o_rss / 1024,
                       "classic_rss_mib": c_rss / 1024, "classic_cpu_s": c_cpu,
                       "ours_cpu_s": o_cpu, "ours_cores": o_cpu / o_time}
                if level == "default":
                    ours_out = work / "ours-out"
                    ours_un = [*CLI, "unbundle", "-m", str(ours_dir / "b.manifest.xml"), "-k",
                               str(keys / "user-key.pem"), "-d", str(ours_out), "-q"]
                    u_time, u_rss, _ = best(args.repeat, ours_un, ours_out)
                    same = subprocess.run(["cmp", "-s", str(image),
                                           str(ours_out / "b")]).returncode == 0
                    row.update(classic_unbundle_s=cu_time, ours_unbundle_s=u_time,
                               unbundle_ratio=cu_time / u_time,
                               unbundle_rss_mib=u_rss / 1024, identical=same)
                rows.append(row)
                print_row(row)
                sys.stdout.flush()
        loads.append(os.getloadavg()[0])
        startup = startup_rows(args.repeat_startup, keys, work) if args.repeat_startup else []
        loads.append(os.getloadavg()[0])
        when = time.strftime("%H:%M UTC", time.gmtime())
        load = f"{min(loads):.1f}–{max(loads):.1f} ({when})"
        print()
        print("README rows (the performance table; CPU = user + system seconds of the best run's"
              " process, cores = CPU / wall):")
        print()
        print("| image | `--compression` | classic | ami-bundler | speed-up | size vs classic | "
              "peak RSS | CPU (cores) | classic unbundle | ours | load |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            unb = (f"{r['classic_unbundle_s']:.2f} s | {r['ours_unbundle_s']:.2f} s"
                   if "ours_unbundle_s" in r else " | ")
            print(f"| {r['image']} | {r['level']} | {r['classic_s']:.2f} s | {r['ours_s']:.2f} s | "
                  f"**{r['speedup']:.1f}×** | {r['size_ratio']:.3f} | {r['ours_rss_mib']:.0f} MiB "
                  f"| {r['ours_cpu_s']:.2f} s ({r['ours_cores']:.2f}) | {unb} | {load} |")
        if startup:
            print()
            print("| start-up (best of " + str(args.repeat_startup) + ") | wall | CPU | peak RSS |")
            print("|---|---|---|---|")
            for name, wall, cpu, rss in startup:
                print(f"| {name} | {wall * 1000:.0f} ms | {cpu * 1000:.0f} ms | {rss:.0f} MiB |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def startup_rows(n: int, keys: Path, work: Path) -> list[tuple[str, float, float, float]]:
    """What the CLI costs before any data moves: ``bundle-image --help`` and a 1 MiB bundle
    (random, so no zero scan or compression shortcut), each best of ``n``: wall, CPU, RSS."""
    tiny = work / "tiny.img"
    tiny.write_bytes(os.urandom(1 << 20))
    out = work / "tiny-out"
    bundle = [*CLI, "bundle-image", "-i", str(tiny), "-c", str(keys / "user-cert.pem"),
              "-k", str(keys / "user-key.pem"), "--ec2cert", str(keys / "ec2-cert.pem"),
              "-u", "123456789012", "-r", "x86_64", "-d", str(out), "-p", "t", "-q"]
    rows = []
    for name, cmd in (("`bundle-image --help`", [*CLI, "bundle-image", "--help"]),
                      ("`bundle-image` of a 1 MiB image", bundle)):
        wall, rss, cpu = best(n, cmd, out)
        rows.append((name, wall, cpu, rss / 1024))
        print(f"start-up: {name}: wall {wall * 1000:.0f} ms, CPU {cpu * 1000:.0f} ms, "
              f"peak RSS {rss / 1024:.0f} MiB")
    return rows


def _median(reports: list[tuple[float, int, dict]]) -> tuple[float, int, dict]:
    reports = sorted(reports, key=lambda r: r[:2])
    return reports[(len(reports) - 1) // 2]


def profile_all(args: argparse.Namespace, keys: Path, work: Path) -> int:
    from profile_bundle import render, report_in_child

    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f} on {os.cpu_count()} cores")
    for image_name in args.images:
        image = args.corpus / image_name
        if not image.exists():
            continue
        subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)
        for level in args.levels:
            # One run's cores move by ±0.05 with what else the machine does: --repeat runs of
            # each kind, each listed, and the full report of the median one (by data-phase
            # cores). The headline runs as bundle-image does, without the per-stage hooks
            # (their clock reads and bookkeeping under the GIL cost cores themselves); the
            # runs with them, interleaved, give the stage table and what the hooks cost.
            runs: dict[str, list[tuple[float, int, dict]]] = {"phases only": [],
                                                              "stage hooks": []}
            for run in range(max(1, args.repeat)):
                kinds = list(runs) if run % 2 == 0 else list(reversed(runs))
                for kind in kinds:
                    hooks = kind == "stage hooks"
                    out = work / f"profile-{level}"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    report = report_in_child(image, level, keys, out,
                                             sample_ms=args.sample_ms if hooks else 0.0,
                                             stage_times=hooks)
                    data = next(p for p in report["phases"] if p["name"] == "data")
                    idle = ""
                    if data.get("idle") is not None:
                        rest = (report.get("machine_cpus", 2) * data["wall"] - data["cpu"]
                                - data["idle"])
                        idle = (f", machine idle {data['idle']:.3f} CPU-s, other use "
                                f"{rest:.3f}")
                    print(f"{image_name} {level} run {run + 1} ({kind}): data phase "
                          f"{data['wall']:.3f} s, {data['cpu']:.3f} CPU-s, "
                          f"{data['cores']:.2f} cores{idle} (load {os.getloadavg()[0]:.2f})")
                    runs[kind].append((data["cores"], run, report))
            plain, hooked = _median(runs["phases only"]), _median(runs["stage hooks"])
            spread = [r[0] for r in runs["phases only"]]
            print(f"data phase, as bundle-image runs it (phases only): median of {len(spread)} "
                  f"runs {plain[0]:.2f} cores (runs {min(spread):.2f}–{max(spread):.2f}; "
                  f"median run {plain[1] + 1})")
            print(render(plain[2]))
            print(f"with the per-stage hooks: median {hooked[0]:.2f} cores (median run "
                  f"{hooked[1] + 1}; the hooks cost {plain[0] - hooked[0]:+.2f} cores)")
            print(render(hooked[2]))
            print()
    return 0


def print_row(row: dict) -> None:
    text = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
    print(re.sub(r"(\d+\.\d{3})\d*", r"\1", text))


if __name__ == "__main__":
    sys.exit(main())
