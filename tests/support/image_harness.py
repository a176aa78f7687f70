"""The contract every image reader keeps with hostile bytes, shared by the property tests and
``scripts/fuzz.py``: opening and streaming an image either yields exactly the bytes its map
promises, or ends in one BundlerError line; never another exception, a hang or unbounded
output. Seeds are tiny images made by qemu-img (and the compressors) when first asked for."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bundler.errors import BundlerError
from bundler.images import open_source
from tests.support.harness import Finding, check_error

IMAGE_TARGETS = ("qcow2", "vmdk", "vhd", "vhdx", "compressed")
# Output consumed per input: enough for the seeds, a bound for hostile maps.
MAX_OUTPUT = 64 << 20

_QEMU = {"qcow2": [("qcow2", ["-c"]), ("qcow2", ["-o", "cluster_size=4096"])],
         "vmdk": [("vmdk", ["-o", "subformat=streamOptimized"]), ("vmdk", [])],
         "vhd": [("vpc", [])],
         "vhdx": [("vhdx", ["-o", "block_size=1M"])]}


def _tiny_raw(directory: Path) -> Path:
    raw = directory / "seed.raw"
    with open(raw, "wb") as fh:
        fh.truncate(3 << 20)
        fh.write(b"boot" * 1000)
        fh.seek(1 << 20)
        fh.write(os.urandom(5000) + b"text " * 3000)
    return raw


@functools.cache
def seeds(target: str) -> tuple[bytes, ...]:
    """Valid images of the target's formats (empty when qemu-img is missing)."""
    directory = Path(tempfile.mkdtemp(prefix="ami-bundler-image-seeds-"))
    try:
        raw = _tiny_raw(directory)
        out = []
        if target == "compressed":
            # xz twice: one block (one serial decoder), and blocks of 256 KiB as xz -T writes
            # them (decoded block by block on several threads).
            for cmd in (["gzip", "-c"], ["xz", "-c"], ["xz", "-c", "-T2", "--block-size=256KiB"],
                        ["zstd", "-q", "-c"], ["bzip2", "-c"]):
                if shutil.which(cmd[0]):
                    out.append(subprocess.run([*cmd, str(raw)], capture_output=True,
                                              check=True).stdout)
            return tuple(out)
        if not shutil.which("qemu-img"):
            return ()
        for fmt, opts in _QEMU[target]:
            image = directory / f"seed.{fmt}"
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, str(raw),
                            str(image)],
                           check=True, capture_output=True)
            out.append(image.read_bytes())
        return tuple(out)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def check_image(data: bytes, target: str) -> str:
    """Open ``data`` as an image of the target's format and stream it, within bounds."""
    fmt = None if target == "compressed" else target
    with tempfile.TemporaryDirectory(prefix="ami-bundler-image-fuzz-") as d:
        path = Path(d) / "image"
        path.write_bytes(data)
        try:
            source = open_source(path, name="fuzz", fmt=fmt)
        except BundlerError as exc:
            check_error(exc)
            return "rejected"
        try:
            regions = source.regions()
            stored = source.size if regions is None else sum(n for _, n in regions)
            if regions is not None:
                pos = 0
                for offset, length in regions:
                    if offset < pos or length <= 0 or offset + length > source.size:
                        raise Finding(f"bad region map {regions[:5]} for a {source.size}-byte "
                                      "image")
                    pos = offset + length
            total = 0
            for chunk in source.chunks():
                total += len(chunk)
                if total > MAX_OUTPUT:
                    return "bounded"
            if total != stored:
                raise Finding(f"chunks gave {total} bytes, the map promised {stored}")
        except BundlerError as exc:
            check_error(exc)
            return "rejected late"
        finally:
            source.close()
    return "read"
