#!/usr/bin/env python3
"""Benchmark bundling virtual-disk and compressed images directly against the two-step way
(``qemu-img convert -O raw`` — for ``.raw.xz``: ``xz -dc`` and ``xz -T0 -dc`` — to a scratch
file, then bundle-image of it), in the same run.

Usage: scripts/bench_images.py [--image /work/corpus/rootfs.img] [--repeat 2] [--cold]
                               [--profile] [--only qcow2 vmdk raw.xz ...] [--work DIR]

The input is the corpus rootfs.img (../shared/bench/make-corpus.sh). If it is missing but the
corpus tree ``rootfs/`` is beside it, the image is rebuilt from that tree the way
make-corpus.sh builds it (a 2 GiB sparse ext4, ``mke2fs -d``); with neither, a stand-in ext4 of
--standin-tree (default /usr/lib) is used. What was used is printed. Variants (qcow2,
compressed qcow2, stream-optimized VMDK, multi-block .raw.xz) are made once, untimed.

Each command runs as its own process; wall time and CPU seconds (user + sys of the process and
its children) are the best of --repeat runs. ``--cold`` drops the variant file from the page
cache (posix_fadvise DONTNEED, this file only) before every direct run and every conversion, as
for an image just downloaded or copied; by default it is read once first (warm), as for an
image just built. The scratch file the conversion writes stays in the page cache, as it does
for a user. ``--profile`` then bundles the input and each variant once more in a child and
prints CPU seconds per pipeline stage and per thread (scripts/profile_bundle.py).

The last lines are the README table: ratio = direct / two-step; "floor" is what the direct run
could reach at best if it cost only the bundle of the raw file (bundle / (convert + bundle)):
it bundles the same data, so for a format that needs no conversion work the ratio cannot fall
below it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "bundler"]

# label → (command making the variant from the raw image, two-step conversions back to raw)
QEMU_RAW = {"qemu-img convert -O raw": "qemu-img convert -O raw {variant} {scratch}"}
XZ_RAW = {"xz -dc": "xz -dc {variant} | cp --sparse=always /dev/stdin {scratch}",
          "xz -T0 -dc": "xz -T0 -dc {variant} | cp --sparse=always /dev/stdin {scratch}"}
VARIANTS = {
    "qcow2": ("qemu-img convert -O qcow2 {image} {variant}", QEMU_RAW),
    "qcow2 (compressed)": ("qemu-img convert -c -O qcow2 {image} {variant}", QEMU_RAW),
    "vmdk (streamOptimized)": ("qemu-img convert -O vmdk -o subformat=streamOptimized {image} "
                               "{variant}", QEMU_RAW),
    "raw.xz": ("xz -T0 -1 -c {image} > {variant}", XZ_RAW),
}


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    @property
    def best(self) -> tuple[float, float]:
        return min(self.wall), min(self.cpu)


def run_timed(cmd: list[str] | str) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (the process and its children) and peak RSS (KiB)."""
    shell = isinstance(cmd, str)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            executable="/bin/bash" if shell else None)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    assert proc.stderr is not None
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {cmd}\n{proc.stderr.read().decode()}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def evict(path: Path) -> None:
    """Drop this file's pages from the page cache (they are clean: it was fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 20):
            pass


def build_image(work: Path, tree: Path, name: str) -> Path:
    image = work / name
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), "-F", str(image), "2G"],
                   check=True)
    return image


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512 if path.exists() else 0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=Path("/work/corpus/rootfs.img"))
    ap.add_argument("--standin-tree", type=Path, default=Path("/usr/lib"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cold", action="store_true",
                    help="drop the variant from the page cache before each timed read of it")
    ap.add_argument("--profile", action="store_true",
                    help="also print CPU seconds per pipeline stage of each direct bundle")
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
        elif (args.image.parent / "rootfs").is_dir():
            tree = args.image.parent / "rootfs"
            image = build_image(work, tree, args.image.name)
            what = (f"{args.image} rebuilt from the corpus tree {tree} as make-corpus.sh does "
                    "(mke2fs -t ext4 -d, 2 GiB)")
        else:
            image = build_image(work, args.standin_tree, "standin-rootfs.img")
            what = f"STAND-IN: 2 GiB ext4 of {args.standin_tree} (no corpus at {args.image})"
        print(f"input: {what}: {image.stat().st_size} bytes, {allocated(image)} allocated",
              flush=True)
        print(f"page cache: {'cold (variant dropped before each read)' if args.cold else 'warm'};"
              f" best of {args.repeat}; {os.cpu_count()} CPUs", flush=True)
        keys = work / "keys"
        keys.mkdir()
        for who in ("user", "ec2"):
            subprocess.run([*CLI, "keygen", "--key", str(keys / f"{who}-key.pem"), "--cert",
                            str(keys / f"{who}-cert.pem")], check=True, capture_output=True)

        def bundle_cmd(path: Path, dest: Path) -> list[str]:
            return [*CLI, "bundle-image", "-i", str(path), "-c", str(keys / "user-cert.pem"), "-k",
                    str(keys / "user-key.pem"), "--ec2cert", str(keys / "ec2-cert.pem"),
                    "-u", "123456789012", "-r", "x86_64", "-d", str(dest), "-p", "b", "-q"]

        def prepare(path: Path) -> None:
            if args.cold:
                evict(path)
            else:
                warm(path)

        rows = []
        profiles = []
        scratch = work / "scratch.raw"
        dest = work / "out"
        for label, (make, conversions) in VARIANTS.items():
            if args.only and label.split()[0] not in args.only and label not in args.only:
                continue
            variant = work / f"variant.{label.split()[0]}"
            subprocess.run(make.format(image=image, variant=variant), shell=True, check=True,
                           executable="/bin/bash")
            with open(variant, "rb+") as fh:
                os.fsync(fh.fileno())  # clean pages, so --cold can drop them
            before = load()
            direct, rss = Timing(), 0
            convert = {name: Timing() for name in conversions}
            bundle = {name: Timing() for name in conversions}
            peak_scratch = 0
            for _ in range(args.repeat):
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir()
                prepare(variant)
                wall, cpu, r = run_timed(bundle_cmd(variant, dest))
                direct.add(wall, cpu)
                rss = max(rss, r)
                for name, cmd in conversions.items():
                    shutil.rmtree(dest)
                    dest.mkdir()
                    scratch.unlink(missing_ok=True)
                    prepare(variant)
                    convert[name].add(*run_timed(cmd.format(variant=variant,
                                                            scratch=scratch))[:2])
                    peak_scratch = max(peak_scratch, allocated(scratch))
                    bundle[name].add(*run_timed(bundle_cmd(scratch, dest))[:2])
                    scratch.unlink()
            for name in conversions:
                dw, dc = direct.best
                cw, cc = convert[name].best
                bw, bc = bundle[name].best
                row = {"variant": label, "via": name, "size": variant.stat().st_size,
                       "direct": dw, "direct_cpu": dc, "convert": cw, "convert_cpu": cc,
                       "bundle": bw, "bundle_cpu": bc, "scratch": peak_scratch,
                       "rss_mib": rss / 1024, "load": f"{before} → {load()}"}
                row["two_step"] = cw + bw
                row["ratio"] = dw / row["two_step"]
                row["floor"] = bw / row["two_step"]
                rows.append(row)
                print(f"{label} vs {name}: direct {dw:.2f} s ({dc:.2f} CPU-s), two-step "
                      f"{row['two_step']:.2f} s = convert {cw:.2f} s ({cc:.2f} CPU-s) + bundle "
                      f"{bw:.2f} s ({bc:.2f} CPU-s); ratio {row['ratio']:.2f}, floor "
                      f"{row['floor']:.2f}; scratch {peak_scratch >> 20} MiB, peak RSS "
                      f"{row['rss_mib']:.0f} MiB; load {row['load']}", flush=True)
            if args.profile:
                profiles.append(profile(variant, keys, work))
            variant.unlink()
        sparse_line = sparse_qcow2(work, bundle_cmd, dest, args.repeat)
        print(sparse_line, flush=True)
        if args.profile:
            profiles.insert(0, profile(image, keys, work))
            print()
            for text in profiles:
                print(text)
        cache = "cold" if args.cold else "warm"
        print()
        print("| input | file | direct bundle-image | two-step: convert + bundle-image "
              "| ratio | floor | scratch disk (two-step) | peak RSS (direct) | cache, load |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            via = f", vs `{r['via']}`" if r["variant"] == "raw.xz" else ""
            print(f"| {r['variant']}{via} | {r['size'] >> 20} MiB | "
                  f"{r['direct']:.2f} s ({r['direct_cpu']:.2f} CPU-s) | {r['two_step']:.2f} s = "
                  f"{r['convert']:.2f} "
                  f"({r['convert_cpu']:.2f} CPU-s) + {r['bundle']:.2f} ({r['bundle_cpu']:.2f} "
                  f"CPU-s) | **{r['ratio']:.2f}×** | {r['floor']:.2f}× | {r['scratch'] >> 20} MiB "
                  f"| {r['rss_mib']:.0f} MiB | {cache}, {r['load']} |")
        print()
        print(f"* {sparse_line}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def sparse_qcow2(work: Path, bundle_cmd, dest: Path, repeat: int) -> str:
    """The allocation map at work: a 4 GiB qcow2 holding 1 MiB of data, bundled directly."""
    raw, image = work / "sparse.raw", work / "sparse.qcow2"
    with open(raw, "wb") as fh:
        fh.truncate(4 << 30)
        fh.seek(3 << 30)
        fh.write(os.urandom(1 << 20))
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)], check=True)
    raw.unlink()
    timing = Timing()
    for _ in range(repeat):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        timing.add(*run_timed(bundle_cmd(image, dest))[:2])
    image.unlink()
    wall, cpu = timing.best
    return (f"a 4 GiB qcow2 holding 1 MiB of data: bundle-image {wall:.2f} s ({cpu:.2f} CPU-s, "
            f"start-up included), best of {repeat}, load {load()}")


def profile(image: Path, keys: Path, work: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from profile_bundle import profile_in_child

    out = work / "profile"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    try:
        return profile_in_child(image, "default", keys, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
