#!/usr/bin/env python3
"""Benchmark bundling virtual-disk and compressed images directly against the two-step way
(``qemu-img convert -O raw`` — or ``xz -dc`` — to a scratch file, then bundle-image of it),
in the same run.

Usage: scripts/bench_images.py [--image /tmp/corpus/rootfs.img] [--repeat 2] [--work DIR]

The input is the corpus rootfs.img from ../shared/bench/make-corpus.sh. Without it, a stand-in
is built: a 2 GiB sparse ext4 image (mke2fs -d) of --standin-tree (default /usr/lib), which is
said in the output. Variants (qcow2, compressed qcow2, stream-optimized VMDK, .raw.xz) are made
once, untimed. Each command runs as its own process; the best of --repeat runs is reported with
the scratch disk the two-step way needs and the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "bundler"]

VARIANTS = {
    "qcow2": (["qemu-img", "convert", "-O", "qcow2"], "qemu"),
    "qcow2 (compressed)": (["qemu-img", "convert", "-c", "-O", "qcow2"], "qemu"),
    "vmdk (streamOptimized)": (["qemu-img", "convert", "-O", "vmdk",
                                "-o", "subformat=streamOptimized"], "qemu"),
    "raw.xz": (["xz", "-T0", "-1", "-c"], "xz"),
}


def run_timed(cmd: list[str] | str, *, shell: bool = False) -> tuple[float, int]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            executable="/bin/bash" if shell else None)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {cmd}\n{proc.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss


def standin(work: Path, tree: Path) -> Path:
    image = work / "standin-rootfs.img"
    with open(image, "wb") as fh:
        fh.truncate(2 << 30)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(image)], check=True)
    return image


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512 if path.exists() else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=Path("/tmp/corpus/rootfs.img"))
    ap.add_argument("--standin-tree", type=Path, default=Path("/usr/lib"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    ap.add_argument("--only", nargs="*", help="variants to run (default: all)")
    args = ap.parse_args()
    # Start-up is part of what is timed: byte-compile the package first, as an install does
    # (PYTHONDONTWRITEBYTECODE, set in some CI shells, would otherwise recompile every run).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "bundler")], check=True,
                   stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="ami-bench-images-", dir=args.work))
    try:
        if args.image.exists():
            image, what = args.image, f"corpus {args.image}"
        else:
            image = standin(work, args.standin_tree)
            what = f"STAND-IN: 2 GiB ext4 of {args.standin_tree} (no corpus at {args.image})"
        print(f"input: {what}: {image.stat().st_size} bytes, {allocated(image)} allocated",
              flush=True)
        keys = work / "keys"
        keys.mkdir()
        for who in ("user", "ec2"):
            subprocess.run([*CLI, "keygen", "--key", str(keys / f"{who}-key.pem"), "--cert",
                            str(keys / f"{who}-cert.pem")], check=True, capture_output=True)

        def bundle_cmd(path: Path, dest: Path) -> list[str]:
            return [*CLI, "bundle-image", "-i", str(path), "-c", str(keys / "user-cert.pem"), "-k",
                    str(keys / "user-key.pem"), "--ec2cert", str(keys / "ec2-cert.pem"),
                    "-u", "123456789012", "-r", "x86_64", "-d", str(dest), "-p", "b", "-q"]

        rows = []
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        for label, (make, kind) in VARIANTS.items():
            if args.only and label.split()[0] not in args.only and label not in args.only:
                continue
            variant = work / ("variant.raw.xz" if kind == "xz" else f"variant.{label.split()[0]}")
            if kind == "xz":
                with open(variant, "wb") as fh:
                    subprocess.run([*make, str(image)], stdout=fh, check=True)
            else:
                subprocess.run([*make, str(image), str(variant)], check=True)
            # warm alike
            subprocess.run(["cat", str(variant)], stdout=subprocess.DEVNULL, check=True)
            scratch = work / "scratch.raw"
            dest = work / "out"
            direct, two_step, convert_s, peak_scratch, rss = [], [], [], 0, 0
            for _ in range(args.repeat):
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir()
                t, r = run_timed(bundle_cmd(variant, dest))
                direct.append(t)
                rss = max(rss, r)
                shutil.rmtree(dest)
                dest.mkdir()
                scratch.unlink(missing_ok=True)
                if kind == "xz":
                    c, _ = run_timed(f"xz -dc {variant} | cp --sparse=always /dev/stdin {scratch}",
                                     shell=True)
                else:
                    c, _ = run_timed(["qemu-img", "convert", "-O", "raw", str(variant),
                                      str(scratch)])
                peak_scratch = max(peak_scratch, allocated(scratch))
                b, _ = run_timed(bundle_cmd(scratch, dest))
                convert_s.append(c)
                two_step.append(c + b)
                scratch.unlink()
            row = {"variant": label, "size": variant.stat().st_size, "direct": min(direct),
                   "two_step": min(two_step), "convert": min(convert_s), "scratch": peak_scratch,
                   "rss_mib": rss / 1024}
            row["ratio"] = row["direct"] / row["two_step"]
            rows.append(row)
            print(f"{label}: direct {row['direct']:.2f} s, two-step {row['two_step']:.2f} s "
                  f"(convert {row['convert']:.2f} s, scratch {peak_scratch >> 20} MiB), "
                  f"ratio {row['ratio']:.2f}, peak RSS {row['rss_mib']:.0f} MiB", flush=True)
            variant.unlink()
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print()
        print("| input | file size | direct bundle-image | qemu-img convert + bundle-image | ratio "
              "| scratch disk (two-step) | peak RSS (direct) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['size'] >> 20} MiB | {r['direct']:.2f} s | "
                  f"{r['two_step']:.2f} s ({r['convert']:.2f} + "
                  f"{r['two_step'] - r['convert']:.2f}) | {r['ratio']:.2f}× | {r['scratch'] >> 20} "
                  f"MiB | {r['rss_mib']:.0f} MiB |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
