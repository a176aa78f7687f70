#!/usr/bin/env python3
"""Benchmark deflate backends and ParallelGzipWriter on filesystem-image-like data.

Not a test.  Prints, for every candidate backend/level, single-thread raw
throughput, output size and size relative to ``gzip -9`` on the same sample,
then the same through ParallelGzipWriter, then decoder throughput.  The
results justify the level mapping in ``bundler/deflate.py``.

Sample: the data regions of ``/tmp/corpus/rootfs.img`` (a sparse ext4 image of
a Debian minbase system) when present, else a tar of /usr/lib and /usr/bin;
cached in ``/tmp/bench-deflate-sample.bin``.

    .venv/bin/python scripts/bench_deflate.py [--size-mib 256] [--sample FILE] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isal import isal_zlib  # noqa: E402
from zlib_ng import zlib_ng  # noqa: E402

from bundler.deflate import (  # noqa: E402
    CompressionSettings,
    GzipDecoder,
    ParallelGzipWriter,
    compression_settings,
)

ROOTFS = Path("/tmp/corpus/rootfs.img")
CACHE = Path("/tmp/bench-deflate-sample.bin")
MODULES = {"isal": isal_zlib, "zlib-ng": zlib_ng, "zlib": zlib}
CHUNK = 1 << 20


def build_sample(limit: int) -> bytes:
    """Return up to ``limit`` bytes of filesystem-image-like data."""
    if CACHE.exists() and CACHE.stat().st_size >= limit:
        with CACHE.open("rb") as f:
            return f.read(limit)
    parts: list[bytes] = []
    total = 0
    if ROOTFS.exists():
        # Only the allocated extents: the holes are zeros that every
        # compressor squeezes to nothing and would flatter all candidates alike.
        fd = os.open(ROOTFS, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            pos = 0
            while pos < size and total < limit:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break
                end = min(os.lseek(fd, start, os.SEEK_HOLE), start + limit - total)
                parts.append(os.pread(fd, end - start, start))
                total += end - start
                pos = end
        finally:
            os.close(fd)
        source = f"data regions of {ROOTFS}"
    else:
        proc = subprocess.run(
            ["tar", "-cf", "-", "/usr/lib/x86_64-linux-gnu", "/usr/bin"],
            capture_output=True, check=False,
        )
        parts.append(proc.stdout[:limit])
        source = "tar of /usr/lib/x86_64-linux-gnu /usr/bin"
    data = b"".join(parts)
    CACHE.write_bytes(data)
    print(f"sample: {len(data) / 1e6:.1f} MB from {source}", file=sys.stderr)
    return data


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    size = fn()
    return time.perf_counter() - t0, size


def raw_single(data: bytes, backend: str, level: int) -> int:
    mod = MODULES[backend]
    comp = mod.compressobj(level, zlib.DEFLATED, 31)
    view = memoryview(data)
    n = 0
    for i in range(0, len(data), CHUNK):
        n += len(comp.compress(view[i:i + CHUNK]))
    return n + len(comp.flush())


def parallel(data: bytes, settings: CompressionSettings, workers: int, write_size: int) -> int:
    total = 0

    def sink(b: bytes) -> None:
        nonlocal total
        total += len(b)

    w = ParallelGzipWriter(sink, settings, workers=workers)
    view = memoryview(data)
    for i in range(0, len(data), write_size):
        w.write(view[i:i + write_size])
    w.close()
    return total


def row(name: str, secs: float, size: int, n_in: int, ref: int) -> None:
    print(f"{name:<26} {n_in / secs / 1e6:8.1f} {size:>12,d} {size / ref:9.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--sample", type=Path, help="use this file instead of building a sample")
    ap.add_argument("--quick", action="store_true", help="skip the slow zlib/zlib-ng 7..9 rows")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    limit = args.size_mib << 20
    data = args.sample.read_bytes()[:limit] if args.sample else build_sample(limit)
    n = len(data)
    print(f"input {n:,d} bytes, {os.cpu_count()} CPUs, workers={args.workers}")

    gz = shutil.which("gzip")
    if gz is None:
        sys.exit("gzip not found")
    t0 = time.perf_counter()
    ref = len(subprocess.run([gz, "-9", "-c"], input=data, capture_output=True, check=True).stdout)
    gz_secs = time.perf_counter() - t0

    print(f"\n{'candidate':<26} {'MB/s':>8} {'bytes':>12} {'vs gz -9':>9}")
    row("gzip -9 (cmd)", gz_secs, ref, n, ref)
    candidates = [("isal", lv) for lv in range(4)]
    candidates += [("zlib-ng", lv) for lv in range(1, 10)]
    candidates += [("zlib", 6), ("zlib", 9)]
    if args.quick:
        candidates = [c for c in candidates if c[0] == "isal" or c[1] <= 6]

    print("-- single thread, one stream")
    for backend, level in candidates:
        secs, size = timed(lambda b=backend, lv=level: raw_single(data, b, lv))
        row(f"{backend} {level}", secs, size, n, ref)

    print(f"-- ParallelGzipWriter, {args.workers} workers, 1 MiB blocks, 1 MiB writes")
    for backend, level in candidates:
        if backend == "isal" and level == 0:
            continue  # level 0 cannot use a dictionary usefully; not a candidate
        s = CompressionSettings(backend, level)
        secs, size = timed(lambda s=s: parallel(data, s, args.workers, CHUNK))
        row(f"pgz {backend} {level}", secs, size, n, ref)

    print("-- named settings end to end (64 KiB writes, like a tar stream)")
    for spec in ("fast", "default", "best"):
        s = compression_settings(spec)
        for workers in sorted({1, args.workers}):
            secs, size = timed(lambda s=s, w=workers: parallel(data, s, w, 64 << 10))
            row(f"{spec} ({s.backend} {s.level}) w={workers}", secs, size, n, ref)

    print("-- default setting, block size")
    base = compression_settings("default")
    for bs in (256 << 10, 1 << 20, 4 << 20):
        s = CompressionSettings(base.backend, base.level, bs)
        secs, size = timed(lambda s=s: parallel(data, s, args.workers, CHUNK))
        row(f"default bs={bs >> 10}K", secs, size, n, ref)

    print("-- decompression of the gzip -9 stream (MB/s of output)")
    blob = subprocess.run([gz, "-9", "-c"], input=data[: 64 << 20], capture_output=True,
                          check=True).stdout
    for name, mod in MODULES.items():
        def inflate(mod: object = mod) -> int:
            # Input in 1 MiB pieces: handing over the whole blob would copy the
            # ever-shrinking unconsumed_tail on every call.
            d = mod.decompressobj(wbits=31)  # type: ignore[attr-defined]
            got = 0
            for i in range(0, len(blob), CHUNK):
                got += len(d.decompress(blob[i:i + CHUNK], CHUNK))
                while d.unconsumed_tail:
                    got += len(d.decompress(d.unconsumed_tail, CHUNK))
            return got + len(d.flush())
        inflate()  # warm up: the first pass pays for page faults on the output buffers
        secs, size = timed(inflate)
        print(f"{name:<26} {size / secs / 1e6:8.1f}")

    def decoder() -> int:
        dec = GzipDecoder()
        got = 0
        for i in range(0, len(blob), CHUNK):
            got += len(dec.feed(blob[i:i + CHUNK], CHUNK))
            while dec.pending():
                got += len(dec.feed(b"", CHUNK))
        dec.finish()
        return got
    secs, size = timed(decoder)
    print(f"{'GzipDecoder':<26} {size / secs / 1e6:8.1f}")


if __name__ == "__main__":
    main()
