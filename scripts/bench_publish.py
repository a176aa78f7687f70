#!/usr/bin/env python3
"""``publish`` of one image to 6 regions vs 1 region vs the shell-loop way (6 × ``install``),
against the strict local AWS behind the latency proxy.

    python scripts/bench_publish.py                       # 256 MiB, 6 regions, 20 ms, median of 3
    python scripts/bench_publish.py --delay 0.05 --repeat 1
    python scripts/bench_publish.py --size-mib 64 --regions us-east-1,eu-west-1

Each run is its own ``ami-bundler`` process; the endpoint is emptied between runs. ``publish``
bundles once and fans the bundle out to every region's bucket (server-side copies), so while
the network is the limit its wall time should stay ≤ 1.5× one region's, and ≤ 0.3× the shell
loop (each ``install`` bundles and uploads the whole image again). The machine's load average
is printed beside the numbers: on a shared machine they are only as good as that.
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench_multiregion import make_image, reset  # noqa: E402
from bench_upload import MIB, local_env, start  # noqa: E402

REGIONS = "us-east-1,eu-west-1,eu-central-1,ap-southeast-2,ap-northeast-1,sa-east-1"
ACCOUNT = "123456789012"  # the stand-in's account for the `testing` credentials


def write_plan(path: Path, *, name: str, regions: list[str], image: Path, work: Path) -> None:
    path.write_text(
        f'name = "{name}"\nami_name = "{name}-{{digest}}"\n'
        f"regions = {json.dumps(regions)}\n"
        f'bucket = "{name}-{{region}}"\n\n'
        f'[source]\nimage = "{image}"\nformat = "raw"\n\n'
        f'[bundle]\ncert = "{work / "cert.pem"}"\nprivate_key = "{work / "key.pem"}"\n'
        f'ec2cert_dir = "{work / "certs"}"\n\n'
        f'[[accounts]]\nid = "{ACCOUNT}"\n')


def timed(env: dict[str, str], argv: list[str]) -> float:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bundler", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--regions", default=REGIONS)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the median is reported")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--delay", type=float, default=0.02,
                    help="seconds the proxy adds to every request (default: %(default)s)")
    ap.add_argument("--no-loop", action="store_true", help="skip the 6 × install runs")
    args = ap.parse_args(argv)
    regions = args.regions.split(",")

    from bundler import keys as keylib

    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        work = Path(tmp)
        env = local_env()
        certs = work / "certs"
        moto, moto_url = start([sys.executable, "scripts/local_endpoint.py", "--ec2-certs",
                                str(certs)], env)
        helpers = [moto]
        url = moto_url
        if args.delay:
            proxy, url = start([sys.executable, "-m", "tests.support.faultproxy", "--upstream",
                                moto_url, "--delay", str(args.delay)], env)
            helpers.append(proxy)
        try:
            keylib.keygen(work / "key.pem", work / "cert.pem")
            image = work / "bench.img"
            make_image(image, args.size_mib * MIB)
            flags = ["--endpoint-url", url, "--jobs", str(args.jobs), "-q", "--json"]
            one, many, loop = [], [], []
            load_before = os.getloadavg()
            # Run 0 warms the endpoint up (moto loads its EC2 data per region on first use).
            for i in range(args.repeat + 1):
                tag = uuid.uuid4().hex[:8]
                reset(moto_url)
                plan1 = work / f"one-{tag}.toml"
                write_plan(plan1, name=f"one-{tag}", regions=regions[:1], image=image, work=work)
                t1 = timed(env, ["publish", str(plan1), *flags])
                reset(moto_url)
                plan6 = work / f"many-{tag}.toml"
                write_plan(plan6, name=f"many-{tag}", regions=regions, image=image, work=work)
                t6 = timed(env, ["publish", str(plan6), "--max-regions", str(len(regions)),
                                 *flags])
                tl = 0.0
                if not args.no_loop:
                    reset(moto_url)
                    for region in regions:  # what users do today: a shell loop of installs
                        tl += timed(env, [
                            "install", "-i", str(image), "-c", str(work / "cert.pem"),
                            "-k", str(work / "key.pem"), "-u", ACCOUNT, "-r", "x86_64",
                            "--ec2cert-dir", str(certs), "-b", f"loop-{tag}-{region}",
                            "-p", "bench", "-n", f"loop-{tag}-{region}", "--region", region,
                            *flags])
                if i == 0:
                    continue
                one.append(t1)
                many.append(t6)
                if not args.no_loop:
                    loop.append(tl)
                print(f"run {i}: publish 1 region {t1:.2f}s, {len(regions)} regions {t6:.2f}s"
                      + ("" if args.no_loop else f", {len(regions)} × install {tl:.2f}s"),
                      file=sys.stderr)
            load_after = os.getloadavg()
        finally:
            for helper in helpers:
                helper.terminate()
                helper.wait(timeout=10)
    s, m = statistics.median(one), statistics.median(many)
    report: dict[str, object] = {
        "image_mib": args.size_mib, "regions": len(regions), "delay_s": args.delay,
        "jobs": args.jobs, "cpus": os.cpu_count(), "repeat": args.repeat,
        "publish_1_region_s": round(s, 2), "publish_s": round(m, 2),
        "ratio_vs_1_region": round(m / s, 2), "target_vs_1_region": 1.5,
        "load_avg_1min": [round(load_before[0], 2), round(load_after[0], 2)]}
    line = (f"publish to {len(regions)} regions: {m:.2f}s vs 1 region {s:.2f}s → {m / s:.2f}× "
            "(target ≤ 1.5×)")
    if loop:
        lp = statistics.median(loop)
        report.update(loop_s=round(lp, 2), ratio_vs_loop=round(m / lp, 2), target_vs_loop=0.3)
        line += f"; vs {len(regions)} × install {lp:.2f}s → {m / lp:.2f}× (target ≤ 0.3×)"
    print(json.dumps(report))
    print(f"{line}; load average {load_before[0]:.1f} → {load_after[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
