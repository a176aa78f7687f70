"""inspect-image: the format, size, allocation and contents of a disk image, before bundling."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..images import FORMATS
from .common import Printer


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("inspect-image",
                       help="show an image's format, size, allocation and partitions",
                       description="Read an image (raw, qcow2, VMDK, VHD, VHDX or a compressed raw "
                                   "stream) and show what bundle-image would store: its format, "
                                   "virtual size, allocated bytes, partition table and "
                                   "filesystems.")
    p.add_argument("image", type=Path, help="image file")
    p.add_argument("--image-format", choices=FORMATS, metavar="FORMAT",
                   help=f"{' | '.join(FORMATS)} (default: by content)")
    p.add_argument("--allow-backing-file", action="store_true",
                   help="read a qcow2 image's backing files (only from the image's directory)")
    p.set_defaults(func=run_inspect_image)


def _mib(n: int) -> str:
    return f"{n} bytes ({n / (1 << 20):.1f} MiB)"


def _fs(fs: Any) -> str:
    if fs is None:
        return "no filesystem recognised"
    extra = [f"label {fs.label!r}" if fs.label else "", f"UUID {fs.uuid}" if fs.uuid else ""]
    return " ".join([fs.type, *[e for e in extra if e]])


def run_inspect_image(args: argparse.Namespace, printer: Printer) -> int:
    from ..images.inspect import inspect_image

    report = inspect_image(args.image, args.image_format, allow_backing=args.allow_backing_file)
    details = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.details.items())
    human = [
        f"Image         {report.path}",
        f"Format        {report.format}" + (f" ({details})" if details else ""),
        f"Virtual size  {_mib(report.virtual_size)}"
        + ("  [over EC2's 10 GiB instance-store limit]" if report.over_ec2_limit else ""),
        f"Allocated     {_mib(report.allocated_bytes)}",
        f"Bundled data  {_mib(report.bundled_bytes)} (zero runs and holes are not stored)",
    ]
    layout = report.layout
    if layout.table is None:
        human.append(f"Partitions    none; whole disk: {_fs(layout.filesystem)}")
    else:
        human.append(f"Partitions    {layout.table}, {len(layout.partitions)} partition(s)")
        for p in layout.partitions:
            human.append(f"  {p.number:>3}  start {p.start:>12}  size {p.size:>12}  {p.type}: "
                         f"{_fs(p.filesystem)}")
    human += [f"Note          {n}" for n in report.notes]
    printer.result(report.to_dict(), human)
    return 0
