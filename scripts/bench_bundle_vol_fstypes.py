#!/usr/bin/env python3
"""Benchmark bundle-vol's image building per filesystem type (ext4, XFS, btrfs), as root.

    scripts/bench_bundle_vol_fstypes.py [ROOTFS] [--size MiB] [--types ext4,xfs,btrfs]
                                        [--workdir DIR] [--repeat N]

ROOTFS defaults to /work/corpus/rootfs, else /tmp/corpus/rootfs (make-corpus.sh). For each type,
in the same invocation and on the same image size:

* ours:    ``bundle-vol -v ROOTFS --clone-only --fs-type TYPE`` as a subprocess (selection,
           staging, the type's population, its fsck), the phases from its --json timings;
* classic: what ec2-bundle-vol does — a sparse image, ``mkfs.TYPE``, a loop mount, a copy of
           the tree (``cp -a``, standing in for its ``rsync -aHAX``, not installed here),
           unmount, and the same fsck.

The bundling pipeline after the image (tar/gzip/AES/parts) is the same for every type and is
measured by scripts/bench_bundle_vol.py. Prints seconds, the ratio classic/ours and the load.
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
DEFAULT_TREES = (Path("/work/corpus/rootfs"), Path("/tmp/corpus/rootfs"))
MKFS = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"],
        "btrfs": ["mkfs.btrfs", "-q", "-f"]}
FSCK = {"ext4": ["e2fsck", "-fn"], "xfs": ["xfs_repair", "-n"],
        "btrfs": ["btrfs", "check", "--readonly"]}


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def run_ours(tree: Path, work: Path, fstype: str, size: int) -> tuple[float, dict]:
    out = work / f"ours-{fstype}"
    out.mkdir()
    cmd = [sys.executable, "-m", "bundler", "bundle-vol", "-v", str(tree), "-d", str(out),
           "-p", "img", "--clone-only", "--fs-type", fstype, "-s", str(size), "--no-inherit",
           "--no-check", "--batch", "--json"]
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - t
    if proc.returncode:
        raise SystemExit(f"bundle-vol --fs-type {fstype} failed: {proc.stderr.strip()}")
    data = json.loads(proc.stdout)
    shutil.rmtree(out)
    return wall, data


def run_classic(tree: Path, work: Path, fstype: str, size: int) -> float:
    image = work / f"classic-{fstype}.img"
    mnt = work / f"classic-{fstype}.mnt"
    mnt.mkdir()
    t = time.monotonic()
    with open(image, "wb") as fh:
        fh.truncate(size * 1024 * 1024)
    sh(*MKFS[fstype], str(image))
    dev = sh("losetup", "--find", "--show", str(image)).strip()
    try:
        sh("mount", dev, str(mnt))
        try:
            # cp -a of the tree's top entries (not the tree directory itself)
            entries = [str(tree / n) for n in sorted(os.listdir(tree))]
            subprocess.run(["cp", "-a", "--sparse=always", *entries, str(mnt)], check=True)
        finally:
            sh("umount", str(mnt))
        subprocess.run([*FSCK[fstype], dev], capture_output=True, check=True)
    finally:
        sh("losetup", "--detach", dev)
    wall = time.monotonic() - t
    image.unlink()
    mnt.rmdir()
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rootfs", nargs="?", type=Path)
    ap.add_argument("--size", type=int, default=1024, help="image MiB (default 1024)")
    ap.add_argument("--types", default="ext4,xfs,btrfs")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="runs per side; the best is shown")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (XFS and the classic side use loop devices)")
    tree = args.rootfs or next((t for t in DEFAULT_TREES if t.is_dir()), None)
    if tree is None or not tree.is_dir():
        raise SystemExit("no tree: pass ROOTFS or build the corpus (make-corpus.sh)")
    types = [t for t in args.types.split(",") if t]
    work = Path(tempfile.mkdtemp(prefix="bench-fstypes-", dir=args.workdir))
    # Both sides read the tree from the page cache: the first run must not pay for it alone.
    subprocess.run(["find", str(tree), "-xdev", "-type", "f", "-exec", "cat", "{}", "+"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load0 = os.getloadavg()
    rows = []
    try:
        for fstype in types:
            ours, classic = [], []
            for _ in range(args.repeat):   # interleaved: load changes hit both sides
                ours.append(run_ours(tree, work, fstype, args.size))
                classic.append(run_classic(tree, work, fstype, args.size))
            wall, data = min(ours, key=lambda r: r[0])
            rows.append((fstype, wall, min(classic), data["timings"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"tree {tree} ({sh('du', '-sh', str(tree)).split()[0]}), image {args.size} MiB, "
          f"{os.cpu_count()} CPUs, load {load0[0]:.1f} -> {load1[0]:.1f}")
    print(f"{'type':6} {'ours s':>7} {'classic s':>9} {'classic/ours':>12}  ours' phases")
    for fstype, wall, classic, timings in rows:
        phases = " ".join(f"{k}={v:.1f}" for k, v in timings.items() if k != "total")
        print(f"{fstype:6} {wall:7.1f} {classic:9.1f} {classic / wall:12.2f}  {phases}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
