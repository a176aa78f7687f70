#!/usr/bin/env python3
"""Multi-region install vs single-region install of the same image, against a local endpoint.

    python scripts/bench_multiregion.py                  # 256 MiB image, 3 regions, best of 3
    python scripts/bench_multiregion.py --size-mib 512
                                        --regions us-east-1,eu-west-1,ap-southeast-2,sa-east-1
    python scripts/bench_multiregion.py --delay 0.02     # through a proxy adding 20 ms per request

Each run is a separate ``ami-bundler install`` process (bundle → S3 → register) against moto in
server mode on 127.0.0.1 (its own process). The multi-region run bundles once and fans every part
out to one bucket per region, so the target is wall time ≤ 1.3× the single-region run.
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_upload import MIB, local_env, start  # noqa: E402


def make_image(path: Path, size: int) -> None:
    """Half incompressible, a quarter text-like, a quarter holes: a realistic compression load."""
    block = MIB
    text = (b"the quick brown fox jumps over the lazy dog 0123456789\n" * (block // 55 + 1))[:block]
    with open(path, "wb") as fh:
        for i in range(size // block):
            kind = i % 4
            if kind in (0, 1):
                fh.write(os.urandom(block))
            elif kind == 2:
                fh.write(text)
            else:
                fh.seek(block, os.SEEK_CUR)
        fh.truncate(size)


def reset(url: str) -> None:
    """Empty moto between runs, so that stored objects do not slow later runs down."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"),
                           timeout=30).read()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (Linux /proc), to show where the time goes."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_install(env: dict[str, str], argv: list[str],
                server_pid: int) -> tuple[float, dict, float, float]:
    """(wall seconds, JSON result, install CPU seconds, endpoint CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = cpu_seconds(server_pid)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bundler", "install", *argv, "--json", "-q"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"install failed ({proc.returncode}): {proc.stderr.strip()}")
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, json.loads(proc.stdout), client, cpu_seconds(server_pid) - server_before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--regions", default="us-east-1,eu-west-1,ap-southeast-2")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per configuration; the median is reported")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--delay", type=float, default=0.0,
                    help="seconds a proxy adds to every request")
    args = ap.parse_args(argv)
    regions = args.regions.split(",")

    from bundler import keys as keylib

    with tempfile.TemporaryDirectory(prefix="bench-multiregion-") as tmp:
        work = Path(tmp)
        env = local_env()
        helpers = []
        # the stand-in EC2's certificates: RegisterImage decrypts with its keys
        certs = work / "certs"
        moto, url = start([sys.executable, "scripts/local_endpoint.py", "--ec2-certs", str(certs)],
                          env)
        moto_url = url
        helpers.append(moto)
        if args.delay:
            proxy, url = start([sys.executable, "-m", "tests.support.faultproxy", "--upstream", url,
                                "--delay", str(args.delay)], env)
            helpers.append(proxy)
        try:
            keylib.keygen(work / "key.pem", work / "cert.pem")
            image = work / "bench.img"
            make_image(image, args.size_mib * MIB)
            common = ["-i", str(image), "-p", "bench", "-c", str(work / "cert.pem"),
                      "-k", str(work / "key.pem"),
                      "-u", "123456789012", "-r", "x86_64", "--ec2cert-dir", str(certs),
                      "--jobs", str(args.jobs), "--endpoint-url", url]
            single, multi = [], []
            # Run 0 warms the endpoint up (moto loads its EC2 data on first use) and is not counted.
            for i in range(args.repeat + 1):
                tag = uuid.uuid4().hex[:8]
                reset(moto_url)
                one = run_install(env, [*common, "-b", f"bench-{tag}-single", "-n", f"single-{tag}",
                                        "--region", regions[0]], moto.pid)
                reset(moto_url)
                many = run_install(env,
                                   [*common, "--regions", ",".join(regions), "--bucket-template",
                                         f"bench-{tag}-{{region}}", "-n", f"multi-{tag}"], moto.pid)
                assert not many[1]["failed"], many[1]
                if i == 0:
                    continue
                single.append(one)
                multi.append(many)
                print(f"run {i}: 1 region {one[0]:.2f}s, {len(regions)} regions {many[0]:.2f}s "
                      f"(install CPU {one[2]:.1f}s → {many[2]:.1f}s, endpoint CPU {one[3]:.1f}s → "
                      f"{many[3]:.1f}s)", file=sys.stderr)

            def median(runs: list, i: int) -> float:
                return round(statistics.median(r[i] for r in runs), 2)

            s, m = median(single, 0), median(multi, 0)
            report = {"image_mib": args.size_mib, "regions": len(regions), "delay_s": args.delay,
                      "jobs": args.jobs,
                      "cpus": os.cpu_count(), "single_s": s, "multi_s": m, "ratio": round(m / s, 2),
                      "target": 1.3, "install_cpu_s": [median(single, 2), median(multi, 2)],
                      "endpoint_cpu_s": [median(single, 3), median(multi, 3)]}
            print(json.dumps(report))
            print(f"{len(regions)} regions: {m:.2f}s vs 1 region: {s:.2f}s → {m / s:.2f}× (target "
                  "≤ 1.3×)")
        finally:
            for helper in helpers:
                helper.terminate()
                helper.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
