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
"""

from __future__ import annotations

import argparse
import os
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rootfs", type=Path, nargs="?", default=Path("/tmp/corpus/rootfs"))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch directory (default: a temp dir next to the rootfs, so "
                             "staging can hard-link)")
    parser.add_argument("--size", type=int, default=None, help="image MiB (default: bundle-vol's)")
    parser.add_argument("--compression", default="default",
                        help="bundle-vol --compression (default: %(default)s; classic is gzip -9)")
    args = parser.parse_args(argv)
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
