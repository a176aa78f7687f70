#!/usr/bin/env python3
"""Streaming ``install`` vs ``bundle-image`` followed by ``upload-bundle``, measured in one run.

    python scripts/bench_install.py [--image /tmp/corpus/random-512M.img] [--delay 0.02]
                                    [--bandwidth 16]

A local moto server and a proxy adding per-request latency (and a per-stream bandwidth cap,
standing in for a WAN) run in their own processes on 127.0.0.1. The three commands run as
child processes; the report gives each wall time, install / (bundle + upload) (target ≤ 0.6)
and install's peak RSS (target < 300 MiB whatever the image size).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_upload import MIB, local_env, start  # noqa: E402


def cpu_seconds(*procs: subprocess.Popen) -> float:
    """CPU time used so far by helper processes (moto, the proxy): they share this machine."""
    total = 0.0
    for proc in procs:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"failed: {' '.join(cmd[3:6])} …\n{err}")
    return wall, usage.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=Path("/tmp/corpus/random-512M.img"))
    ap.add_argument("--delay", type=float, default=0.020)
    ap.add_argument("--bandwidth", type=float, default=16.0,
                    help="MiB/s per request stream; 0 = unlimited")
    from bundler.transfer import DEFAULT_JOBS

    ap.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                    help="parallel transfers (default: the product's, %(default)s)")
    ap.add_argument("--compression", default="default")
    args = ap.parse_args()
    if not args.image.exists():
        raise SystemExit(f"{args.image} not found: run ../shared/bench/make-corpus.sh or pass "
                         "--image")

    env = local_env()
    moto, moto_url = start([sys.executable, "scripts/local_endpoint.py"], env)
    proxy_cmd = [sys.executable, "-m", "tests.support.faultproxy", "--upstream", moto_url,
                 "--delay", str(args.delay)]
    if args.bandwidth > 0:
        proxy_cmd += ["--bandwidth", str(args.bandwidth * MIB)]
    proxy, proxy_url = start(proxy_cmd, env)
    cli = [sys.executable, "-m", "bundler"]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
            work = Path(tmp)
            for who in ("user", "ec2"):
                subprocess.run([*cli, "keygen", "--key", str(work / f"{who}-key.pem"), "--cert",
                                str(work / f"{who}-cert.pem")], check=True, capture_output=True,
                               env=env)
            sign = ["-c", str(work / "user-cert.pem"), "-k", str(work / "user-key.pem"),
                    "-u", "123456789012",
                    "--ec2cert", str(work / "ec2-cert.pem"), "-r", "x86_64",
                    "--compression", args.compression]
            s3 = ["--endpoint-url", proxy_url, "--jobs", str(args.jobs)]
            out = work / "bundle"
            out.mkdir()
            subprocess.run(["cat", str(args.image)], stdout=subprocess.DEVNULL, check=True)
            b_time, b_rss = timed([*cli, "bundle-image", "-i", str(args.image), "-p", "bench",
                                   "-d", str(out), *sign, "-q"], env)
            before = cpu_seconds(moto, proxy)
            u_time, u_rss = timed([*cli, "upload-bundle", "-b", "bench-separate/amis",
                                   "-m", str(out / "bench.manifest.xml"), *s3, "-q"], env)
            endpoint_cpu = cpu_seconds(moto, proxy) - before
            # Registering is not part of "bundle + upload": install stops after the upload here.
            i_time, i_rss = timed([*cli, "install", "-i", str(args.image), "-p", "bench", *sign,
                                   "-b", "bench-stream/amis",
                                   "-n", "bench", "--no-register", *s3, "-q"], env)
            size = sum(p.stat().st_size for p in out.glob("bench.part.*"))
            print(f"image {args.image} ({args.image.stat().st_size / MIB:.0f} MiB), bundle "
                  f"{size / MIB:.0f} MiB; {args.delay * 1000:.0f} ms/request, "
                  f"{'no cap' if args.bandwidth <= 0 else f'{args.bandwidth:g} MiB/s per stream'}, "
                  f"--jobs {args.jobs}")
            print(f"bundle-image  {b_time:6.2f} s  peak RSS {b_rss:5.0f} MiB")
            print(f"upload-bundle {u_time:6.2f} s  peak RSS {u_rss:5.0f} MiB  "
                  f"(the local endpoint used {endpoint_cpu:.1f} CPU-s of this "
                  f"{os.cpu_count()}-core machine meanwhile)")
            print(f"install       {i_time:6.2f} s  peak RSS {i_rss:5.0f} MiB  (bundle + upload, "
                  "streaming, no parts on disk)")
            print(f"install / (bundle + upload) = {i_time / (b_time + u_time):.2f}  (target ≤ 0.6; "
                  f"ideal max/sum = {max(b_time, u_time) / (b_time + u_time):.2f})")
    finally:
        for proc in (proxy, moto):
            proc.terminate()
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
