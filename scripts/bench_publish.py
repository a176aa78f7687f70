#!/usr/bin/env python3
"""``publish`` of one image to 6 regions vs 1 region vs the shell-loop way (6 × ``install``),
against the strict local AWS behind the latency proxy.

    python scripts/bench_publish.py           # 256 MiB, 6 regions, 20 ms, 16 MiB/s, median of 3
    python scripts/bench_publish.py --delay 0.05 --bandwidth 0 --repeat 1
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

from bench_multiregion import cpu_seconds, make_image, reset  # noqa: E402
from bench_upload import MIB, local_env, print_timeline, start  # noqa: E402

from bundler.transfer import DEFAULT_JOBS  # noqa: E402

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


class Run:
    """Wall seconds of ami-bundler runs, with the CPU seconds they and the endpoint spent."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.wall = self.client_cpu = self.server_cpu = 0.0
        self.launched = 0.0  # time.monotonic() of the first launch (the proxy's trace clock)

    def __call__(self, env: dict[str, str], argv: list[str]) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server = cpu_seconds(self.server_pid)
        started = time.monotonic()
        self.launched = self.launched or started
        proc = subprocess.run([sys.executable, "-m", "bundler", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        self.wall += time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"{argv[0]} failed ({proc.returncode}): "
                             f"{proc.stderr.strip()[-2000:]}")
        self.client_cpu += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self.server_cpu += cpu_seconds(self.server_pid) - server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--regions", default=REGIONS)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the median is reported")
    ap.add_argument("--jobs", type=int, default=None,
                    help=f"--jobs of every run (default: the product's, {DEFAULT_JOBS})")
    ap.add_argument("--delay", type=float, default=0.02,
                    help="seconds the proxy adds to every request (default: %(default)s)")
    ap.add_argument("--bandwidth", type=float, default=16.0,
                    help="MiB/s per request stream through the proxy (a WAN link's per-connection "
                    "limit; server-side copies do not cross it); 0 = unlimited")
    ap.add_argument("--max-regions", type=int, default=0,
                    help="publish --max-regions (default: publish's own)")
    ap.add_argument("--no-loop", action="store_true", help="skip the 6 × install runs")
    ap.add_argument("--timeline", action="store_true",
                    help="print the requests of the last publish runs (the proxy's trace)")
    ap.add_argument("--key-buffer-mib", type=int, default=16,
                    help="objects up to this size stay in the stand-in's memory (moto's "
                    "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE; moto's own default 5 spills every part to "
                    "a temporary file; default: %(default)s)")
    ap.add_argument("--public-amis", action="store_true",
                    help="let the stand-in load moto's catalogue of public AMIs into each region "
                    "(at a region's first EC2 request after each reset, ~70 ms of its one core "
                    "per region, paid six times by the 6-region run; EC2 keeps its catalogue on "
                    "its own machines); default: not loaded (MOTO_EC2_LOAD_DEFAULT_AMIS=false)")
    ap.add_argument("--register-check", choices=("full", "manifest"), default="manifest",
                    help="what the stand-in EC2 checks at RegisterImage (scripts/local_endpoint.py"
                    " --register-check): manifest, as EC2 does at register time (default), or "
                    "full (decrypt and inflate every part: work AWS does on its own machines, on "
                    "this host's cores here)")
    args = ap.parse_args(argv)
    if args.jobs is None:
        args.jobs = DEFAULT_JOBS
    regions = args.regions.split(",")

    from bundler import keys as keylib

    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        work = Path(tmp)
        env = local_env()
        certs = work / "certs"
        # moto spills every object over 5 MiB to a temporary file on this host's disk: each
        # 10 MiB part written, read back and copied there cost ~25 ms of the stand-in's one
        # core per copy. S3 keeps parts on its own machines; here they stay in memory (the
        # endpoint is emptied between runs), for the 1-region, 6-region and loop runs alike.
        endpoint_env = {**env, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(args.key_buffer_mib * MIB)}
        if not args.public_amis:  # nothing here uses them (the plan names no kernel or AMI)
            endpoint_env["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
        moto, moto_url = start([sys.executable, "scripts/local_endpoint.py", "--ec2-certs",
                                str(certs), "--register-check", args.register_check],
                               endpoint_env)
        helpers = [moto]
        url = moto_url
        if args.delay or args.bandwidth:
            shaping = ["--delay", str(args.delay)]
            if args.bandwidth > 0:
                shaping += ["--bandwidth", str(args.bandwidth * MIB)]
            if args.timeline:
                shaping += ["--trace", str(work / "trace")]
            proxy, url = start([sys.executable, "-m", "tests.support.faultproxy", "--upstream",
                                moto_url, *shaping], env)
            helpers.append(proxy)
        try:
            keylib.keygen(work / "key.pem", work / "cert.pem")
            image = work / "bench.img"
            make_image(image, args.size_mib * MIB)
            flags = ["--endpoint-url", url, "--jobs", str(args.jobs), "-q", "--json"]
            one: list[Run] = []
            many: list[Run] = []
            loop: list[Run] = []
            load_before = os.getloadavg()
            # Run 0 warms the endpoint up (moto loads its EC2 data per region on first use).
            for i in range(args.repeat + 1):
                tag = uuid.uuid4().hex[:8]
                reset(moto_url)
                plan1 = work / f"one-{tag}.toml"
                write_plan(plan1, name=f"one-{tag}", regions=regions[:1], image=image, work=work)
                t1 = Run(moto.pid)
                t1(env, ["publish", str(plan1), *flags])
                reset(moto_url)
                plan6 = work / f"many-{tag}.toml"
                write_plan(plan6, name=f"many-{tag}", regions=regions, image=image, work=work)
                fan = ["--max-regions", str(args.max_regions)] if args.max_regions else []
                t6 = Run(moto.pid)
                t6(env, ["publish", str(plan6), *fan, *flags])
                tl = Run(moto.pid)
                if not args.no_loop:
                    reset(moto_url)
                    for region in regions:  # what users do today: a shell loop of installs
                        tl(env, [
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
                print(f"run {i}: publish 1 region {t1.wall:.2f}s, {len(regions)} regions "
                      f"{t6.wall:.2f}s" + ("" if args.no_loop else
                                           f", {len(regions)} × install {tl.wall:.2f}s")
                      + f" (CPU-s ami-bundler/endpoint: {t1.client_cpu:.1f}/{t1.server_cpu:.1f}, "
                      f"{t6.client_cpu:.1f}/{t6.server_cpu:.1f}, "
                      f"{tl.client_cpu:.1f}/{tl.server_cpu:.1f})", file=sys.stderr)
            load_after = os.getloadavg()
            if args.timeline and many:
                print_timeline(work / "trace", one[-1].launched, one[-1].wall, "1 region",
                               indent="", file=sys.stderr)
                print_timeline(work / "trace", many[-1].launched, many[-1].wall,
                               f"{len(regions)} regions", indent="", file=sys.stderr)
        finally:
            for helper in helpers:
                helper.terminate()
                helper.wait(timeout=10)
    s, m = statistics.median(r.wall for r in one), statistics.median(r.wall for r in many)

    def cpu(runs: list[Run]) -> list[float]:
        return [round(statistics.median(r.client_cpu for r in runs), 1),
                round(statistics.median(r.server_cpu for r in runs), 1)]

    report: dict[str, object] = {
        "image_mib": args.size_mib, "regions": len(regions), "delay_s": args.delay,
        "bandwidth_mib_s": args.bandwidth,
        "jobs": args.jobs, "max_regions": args.max_regions or None, "cpus": os.cpu_count(),
        "repeat": args.repeat,
        "publish_1_region_s": round(s, 2), "publish_s": round(m, 2),
        "ratio_vs_1_region": round(m / s, 2), "target_vs_1_region": 1.5,
        "cpu_s_tool_endpoint": {"publish_1_region": cpu(one), "publish": cpu(many)},
        "load_avg_1min": [round(load_before[0], 2), round(load_after[0], 2)]}
    line = (f"publish to {len(regions)} regions: {m:.2f}s vs 1 region {s:.2f}s → {m / s:.2f}× "
            "(target ≤ 1.5×)")
    if loop:
        lp = statistics.median(r.wall for r in loop)
        report["cpu_s_tool_endpoint"]["loop"] = cpu(loop)  # type: ignore[index]
        report.update(loop_s=round(lp, 2), ratio_vs_loop=round(m / lp, 2), target_vs_loop=0.3)
        line += f"; vs {len(regions)} × install {lp:.2f}s → {m / lp:.2f}× (target ≤ 0.3×)"
    report["register_check"] = args.register_check
    report["key_buffer_mib"] = args.key_buffer_mib
    report["public_amis"] = args.public_amis
    print(json.dumps(report))
    print(f"{line}; load average {load_before[0]:.1f} → {load_after[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print("README row:")
    print(readme_row(report, regions=len(regions), when=time.strftime("%H:%M UTC",
                                                                      time.gmtime())))
    return 0


def readme_row(r: dict, *, regions: int, when: str) -> str:
    """The README's performance bullet for these numbers (docs: README "Performance")."""
    cpu = r["cpu_s_tool_endpoint"]
    shaping = (f"{r['delay_s'] * 1000:.0f} ms per request"
               + (f" and {r['bandwidth_mib_s']:g} MiB/s per stream" if r["bandwidth_mib_s"]
                  else "") + " through the proxy")
    fan = f", `--max-regions {r['max_regions']}`" if r["max_regions"] else ""
    runs = (f"median of {r['repeat']} after a warm-up" if r["repeat"] > 1
            else "one run after a warm-up")
    load = r["load_avg_1min"]
    text = (f"* `publish` of a {r['image_mib']} MiB image to {regions} regions "
            f"(`scripts/bench_publish.py`, {shaping}, `--jobs {r['jobs']}`{fan}, {runs}, the "
            f"stand-in's RegisterImage check: {r['register_check']}, its objects ≤ "
            f"{r['key_buffer_mib']} MiB in memory"
            f"{'' if r.get('public_amis') else ', no public AMI catalogue'}, "
            f"load {load[0]} → {load[1]} "
            f"on {r['cpus']} CPUs, {when}): {r['publish_s']} s against {r['publish_1_region_s']} s "
            f"for one region, **{r['ratio_vs_1_region']}×** (target ≤ 1.5×)")
    if "loop_s" in r:
        text += (f", and against the shell loop of {regions} × `install` {r['loop_s']} s, "
                 f"**{r['ratio_vs_loop']}×** (target ≤ 0.3×)")
    text += (f". CPU-s tool/endpoint: one region {cpu['publish_1_region'][0]}/"
             f"{cpu['publish_1_region'][1]}, {regions} regions {cpu['publish'][0]}/"
             f"{cpu['publish'][1]}")
    if "loop" in cpu:
        text += f", the loop {cpu['loop'][0]}/{cpu['loop'][1]}"
    return text + "."


if __name__ == "__main__":
    sys.exit(main())
