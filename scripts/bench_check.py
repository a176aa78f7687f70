#!/usr/bin/env python3
"""Benchmark ``ami-bundler check`` on the corpus image and on its bundle.

    scripts/bench_check.py [--image /work/corpus/rootfs.img] [--workdir DIR] [--runs N]

There is no classic tool to compare with (none of them checks an image); the baselines are what
a check would cost without the no-extraction reader: extracting the whole filesystem with
``debugfs rdump`` (for the image), and ``ami-bundler unbundle`` of the bundle (the decrypt +
inflate a bundle check cannot avoid). Prints seconds (best of N) and the machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ami_bundler() -> list[str]:
    return [sys.executable, "-m", "bundler"]


def timed(cmd: list[str], runs: int, *, ok=(0, 1), before=None) -> tuple[float, str]:
    best = float("inf")
    out = ""
    for _ in range(runs):
        if before:
            before()
        t = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        best = min(best, time.monotonic() - t)
        if proc.returncode not in ok:
            sys.exit(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {proc.stderr.strip()}")
        out = proc.stdout
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=Path("/work/corpus/rootfs.img"))
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not args.image.is_file():
        sys.exit(f"{args.image} not found (build it with /work/shared/bench/make-corpus.sh)")
    sys.path.insert(0, str(ROOT))
    from bundler.keys import keygen

    work = Path(tempfile.mkdtemp(prefix="bench-check-", dir=args.workdir))
    try:
        key, cert = work / "key.pem", work / "cert.pem"
        keygen(key, cert)
        bundle = work / "bundle"
        bundle.mkdir()
        subprocess.run(ami_bundler() + ["bundle-image", "-i", str(args.image), "-d", str(bundle),
                                        "-p", "corpus", "-k", str(key), "-c", str(cert),
                                        "--ec2cert", str(cert), "-u", "123456789012",
                                        "-r", "x86_64", "-q"], check=True, cwd=ROOT)
        manifest = bundle / "corpus.manifest.xml"
        rows = []
        t, out = timed(ami_bundler() + ["check", str(args.image), "--json"], args.runs)
        entries = json.loads(out)["entries"]
        rows.append(("check IMAGE (debugfs, no extraction)", t))
        dump = work / "rdump"

        def fresh() -> None:
            shutil.rmtree(dump, ignore_errors=True)
            dump.mkdir()

        t_rdump, _ = timed(["debugfs", "-R", f"rdump / {dump}", str(args.image)], args.runs,
                           ok=(0,), before=fresh)
        shutil.rmtree(dump, ignore_errors=True)
        rows.append(("baseline: debugfs rdump / (full extraction)", t_rdump))
        t_bundle, _ = timed(ami_bundler() + ["check", "-m", str(manifest), "-k", str(key),
                                             "--json", "--work-dir", str(work)], args.runs)
        rows.append(("check -m MANIFEST -k KEY (bundle)", t_bundle))
        unb = work / "unbundled"

        def fresh_unb() -> None:
            shutil.rmtree(unb, ignore_errors=True)
            unb.mkdir()

        t_unb, _ = timed(ami_bundler() + ["unbundle", "-m", str(manifest), "-k", str(key),
                                          "-d", str(unb), "-q"], args.runs, ok=(0,),
                         before=fresh_unb)
        rows.append(("baseline: unbundle (decrypt + inflate to disk)", t_unb))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(f"image {args.image} ({args.image.stat().st_size >> 20} MiB, {entries} entries); "
          f"best of {args.runs}; load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on "
          f"{os.cpu_count()} cores")
    for what, seconds in rows:
        print(f"  {what:48} {seconds:7.2f} s")
    print(f"  image check vs full extraction: {t / t_rdump:.2f}x the time; bundle check vs "
          f"unbundle: {t_bundle / t_unb:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
