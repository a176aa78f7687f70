#!/usr/bin/env python3
"""Benchmark bundle-vol against the classic approach on a root filesystem directory.

    scripts/bench_bundle_vol.py [ROOTFS] [--workdir DIR] [--size MiB]

ROOTFS defaults to /tmp/corpus/rootfs (built by make-corpus.sh). Both sides run in the same
invocation, same machine, same image size:

* ours:    ``ami-bundler bundle-vol -v ROOTFS -P none`` (selection, staging, mke2fs -d,
           in-process tar/gzip/AES/split/SHA-1 pipeline), end to end as a subprocess;
* classic: ``mke2fs -d ROOTFS`` into a sparse image (standing in for classic's dd + mkfs +
           loop mount + rsync, which this machine must not do), then the classic bundling
           pipeline: ``tar -S -c | tee >(sha1sum) | gzip -9 | openssl enc -aes-128-cbc``,
           ``split -b 10M``, ``sha1sum`` of the parts.

Prints the seconds of each and the ratio (target: ours ≥ 5× faster).

    scripts/bench_bundle_vol.py --files 100000,400000 [--workdir DIR]

Scale mode: for each count, a synthetic tree of that many entries (small files of 0-8 KiB in
directories of 200, some symlinks and hard links) is built once, then ``mke2fs -d`` of the
tree alone and ``bundle-vol --clone-only`` of it with the CLI's defaults (selection; staging
of etc/boot; mke2fs of an empty filesystem and the ext4 feed into debugfs, in the "mkfs + feed"
column; e2fsck; the boot check) are timed on the same image size, each after the tree was read
once (a warm cache for both). Prints README-ready rows: bundle-vol's phases, the CPU seconds of
its process + the tools it ran against ``mke2fs -d``'s, its peak RSS (its own process; a
child's ru_maxrss starts from its parent's, so mke2fs's is not shown), the temporary disk it
used (staged bytes + image blocks) against the image size, and the growth between the first
and the last count (targets at 400k: wall ≤ 2× mke2fs -d, growth 100k→400k ≤ 4.5×, RSS < 300
MiB, temporary disk ≤ image size).
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_keys(directory: Path) -> tuple[Path, Path, Path]:
    """A signing key pair and a stand-in EC2 certificate in a fresh directory."""
    from bundler.keys import keygen

    for name in ("user", "ec2"):
        keygen(directory / f"{name}-key.pem", directory / f"{name}-cert.pem")
    return directory / "user-key.pem", directory / "user-cert.pem", directory / "ec2-cert.pem"


def run_ours(rootfs: Path, out: Path, keys: tuple[Path, Path, Path], size: int | None,
             compression: str) -> float:
    exe = shutil.which("ami-bundler") or str(Path(sys.executable).parent / "ami-bundler")
    key, cert, ec2 = keys
    cmd = [exe, "bundle-vol", "-v", str(rootfs), "-d", str(out), "-p", "ours", "-P", "none",
           "-k", str(key), "-c", str(cert), "--ec2cert", str(ec2), "-u", "123456789012",
           "-r", "x86_64", "--batch", "--no-inherit", "-q", "--json", "--compression", compression,
           "--no-check"]
    if size:
        cmd += ["-s", str(size)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode:
        sys.exit(f"bundle-vol failed: {proc.stderr.strip()}")
    import json

    data = json.loads(proc.stdout)
    print(f"  ours:    image {data['image_size'] // 2**20} MiB, "
          f"{len(data['bundle']['parts'])} parts, {data['bundle']['bundled_size']} bytes; "
          f"phases {data['timings']}")
    return elapsed


def run_classic(rootfs: Path, out: Path, size_mib: int) -> float:
    key, iv = secrets.token_hex(16), secrets.token_hex(16)
    image = out / "classic"
    started = time.monotonic()
    with open(image, "wb") as fh:  # classic: dd if=/dev/zero of=IMG bs=1M count=1 seek=SIZE-1
        fh.truncate(size_mib * 2**20)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(rootfs), str(image)],
                   check=True, capture_output=True)
    script = (
        f"set -eo pipefail; cd {out}; "
        f"tar -c -S --owner=0 --group=0 -f - classic | tee >(sha1sum > classic.digest) "
        f"| gzip -9 | openssl enc -e -aes-128-cbc -K {key} -iv {iv} > classic.tar.gz.enc; "
        f"split -a 2 -d -b 10m classic.tar.gz.enc classic.part.; rm classic.tar.gz.enc; "
        f"sha1sum classic.part.* > classic.parts.sha1"
    )
    subprocess.run(["bash", "-c", script], check=True)
    elapsed = time.monotonic() - started
    parts = sorted(out.glob("classic.part.*"))
    print(f"  classic: image {size_mib} MiB, {len(parts)} parts, "
          f"{sum(p.stat().st_size for p in parts)} bytes")
    return elapsed


def make_tree(root: Path, count: int) -> None:
    """A deterministic tree of ``count`` entries (files, dirs, symlinks, a few hard links)."""
    import random

    rng = random.Random(count)
    blob = os.urandom(9000)
    root.mkdir(parents=True)
    made = 0
    d = 0
    while made < count:
        top = root / f"d{d // 200:04d}" / f"s{d % 200:03d}"
        top.mkdir(parents=True)
        made += 1 if d % 200 else 2
        for i in range(min(200, count - made)):
            p = top / f"f{i:03d}.dat"
            if i % 50 == 49:
                os.symlink(f"f{i - 1:03d}.dat", p)
            elif i % 100 == 98:
                os.link(top / f"f{i - 1:03d}.dat", p)
            else:
                n = rng.randrange(0, 8192)
                off = rng.randrange(0, 800)
                p.write_bytes(blob[off:off + n])
            made += 1
        d += 1


RSS_WRAPPER = ("import resource, sys\nfrom bundler.cli import main\n"
               "code = main(sys.argv[1:])\n"
               "s = resource.getrusage(resource.RUSAGE_SELF)\n"
               "c = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
               "print(f'RSS {s.ru_maxrss} CPU {s.ru_utime + s.ru_stime:.2f} '\n"
               "      f'{c.ru_utime + c.ru_stime:.2f}', file=sys.stderr)\nsys.exit(code)")


def children_cpu() -> float:
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return c.ru_utime + c.ru_stime


def warm(tree: Path) -> None:
    """Read the whole tree once (inodes, directories, data) so that neither side is timed on
    a cold cache: bundle-vol runs first and would otherwise warm it for ``mke2fs -d``."""
    for dirpath, _, names in os.walk(tree):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as fh:
                    while fh.read(1 << 20):
                        pass


def scale_row(tree: Path, work: Path, count: int) -> dict:
    import json

    warm(tree)
    out = work / f"out-{count}"
    out.mkdir()
    cmd = [sys.executable, "-c", RSS_WRAPPER, "bundle-vol", "-v", str(tree), "-d", str(out),
           "--clone-only", "--no-inherit", "--batch", "--json", "-q"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    ours = time.monotonic() - started
    if proc.returncode:
        sys.exit(f"bundle-vol failed: {proc.stderr.strip()[-2000:]}")
    data = json.loads(proc.stdout)
    fields = proc.stderr.rsplit("RSS ", 1)[1].split()
    rss, cpu_self, cpu_tools = int(fields[0]), float(fields[2]), float(fields[3])
    image = out / "image"
    image_blocks = os.stat(image).st_blocks * 512
    size_mib = data["image_size"] // 2**20
    header = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True,
                            text=True).stdout
    inodes = int(header.split("Inode count:")[1].split()[0])
    image.unlink()
    warm(tree)
    alone = work / f"alone-{count}.img"
    with open(alone, "wb") as fh:
        fh.truncate(size_mib * 2**20)
    started, cpu0 = time.monotonic(), children_cpu()
    # The same size and inode count as ours: only the population differs.
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-N", str(inodes), "-d", str(tree),
                    str(alone)], check=True, capture_output=True)
    mke2fs, mke2fs_cpu = time.monotonic() - started, children_cpu() - cpu0
    alone.unlink()
    return {"count": count, "entries": data["entries"], "ours": ours, "mke2fs": mke2fs,
            "timings": data["timings"], "rss": rss // 1024, "cpu_self": cpu_self,
            "cpu_tools": cpu_tools, "mke2fs_cpu": mke2fs_cpu,
            "temp": (data["staged"]["bytes"] + image_blocks) // 2**20, "size": size_mib}


def scale(counts: list[int], workdir: Path | None, keep_trees: Path | None) -> int:
    base = keep_trees or Path(tempfile.mkdtemp(prefix="bench-vol-trees-", dir=workdir))
    work = Path(tempfile.mkdtemp(prefix="bench-vol-", dir=workdir))
    rows = []
    try:
        for count in counts:
            tree = base / f"tree-{count}"
            if not tree.is_dir():
                started = time.monotonic()
                make_tree(tree, count)
                print(f"built a {count}-entry tree in {time.monotonic() - started:.1f} s",
                      flush=True)
            rows.append(scale_row(tree, work, count))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if keep_trees is None:
            shutil.rmtree(base, ignore_errors=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\nbundle-vol --clone-only vs mke2fs -d alone, {when}, {os.cpu_count()} CPUs, "
          f"load {load} (README rows:)\n")
    print("| entries | `mke2fs -d` alone | bundle-vol | ratio | select | stage | mkfs + feed "
          "| fsck | CPU: bundle-vol + its tools / `mke2fs -d` | peak RSS | temp disk / image |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["timings"]
        entries = f"{r['entries']:,}".replace(",", " ")
        print(f"| {entries} | {r['mke2fs']:.1f} s | {r['ours']:.1f} s | "
              f"{r['ours'] / r['mke2fs']:.2f}× | {t.get('select', 0):.1f} | "
              f"{t.get('stage', 0):.1f} | {t.get('mkfs', 0):.1f} | {t.get('fsck', 0):.1f} | "
              f"{r['cpu_self']:.1f} + {r['cpu_tools']:.1f} / {r['mke2fs_cpu']:.1f} s | "
              f"{r['rss']} MiB | {r['temp']} / {r['size']} MiB |")
    print()
    for r in rows:
        print(f"  {r['entries']}: phases {r['timings']}", flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"growth {a['entries']} → {b['entries']} entries: bundle-vol "
              f"{b['ours'] / a['ours']:.2f}×, mke2fs -d {b['mke2fs'] / a['mke2fs']:.2f}× "
              f"(entries {b['entries'] / a['entries']:.2f}×)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", help="scale mode: comma-separated entry counts")
    parser.add_argument("--keep-trees", type=Path, default=None,
                        help="scale mode: build/reuse the synthetic trees here")
    parser.add_argument("rootfs", type=Path, nargs="?", default=Path("/tmp/corpus/rootfs"))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch directory (default: a temp dir next to the rootfs)")
    parser.add_argument("--size", type=int, default=None, help="image MiB (default: bundle-vol's)")
    parser.add_argument("--compression", default="default",
                        help="bundle-vol --compression (default: %(default)s; classic is gzip -9)")
    args = parser.parse_args(argv)
    if args.files:
        return scale([int(n) for n in args.files.split(",")], args.workdir, args.keep_trees)
    if not args.rootfs.is_dir():
        sys.exit(f"{args.rootfs} not found: build it with /work/shared/bench/make-corpus.sh")
    work = Path(tempfile.mkdtemp(prefix="bench-vol-", dir=args.workdir or args.rootfs.parent))
    try:
        keys = make_keys(work)
        ours_dir, classic_dir = work / "ours", work / "classic"
        ours_dir.mkdir()
        classic_dir.mkdir()
        print(f"bundle-vol benchmark on {args.rootfs} ({os.cpu_count()} CPUs, "
              f"--compression {args.compression})")
        ours = run_ours(args.rootfs, ours_dir, keys, args.size, args.compression)
        # The classic side builds an image of the same size ours chose.
        size_mib = args.size or _our_size(ours_dir)
        classic = run_classic(args.rootfs, classic_dir, size_mib)
        print(f"ours:    {ours:7.2f} s")
        print(f"classic: {classic:7.2f} s")
        print(f"ratio:   {classic / ours:7.1f}x faster (target >= 5x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _our_size(ours_dir: Path) -> int:
    # Read the image size from our manifest (image/size).
    text = (ours_dir / "ours.manifest.xml").read_text()
    size = int(text.split("<size>")[1].split("</size>")[0])
    return size // 2**20


if __name__ == "__main__":
    sys.exit(main())
