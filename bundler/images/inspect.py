"""``inspect-image``: what an image is and what bundling it would store, without bundling."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..source import MAX_IMAGE_SIZE, drop_zero_runs, find_data_regions
from . import open_disk, probe_format
from .bounded import BoundedFile
from .compressed import (
    STREAM_FORMATS,
    decompressed,
    nonzero_granules,
    recorded_size,
    xz_block_map,
)
from .disk import coarsen
from .probe import HEAD_BYTES, PROBE_BYTES, DiskLayout, filesystem_at, partitions_in, probe

HEAD_KEEP = 4 << 20  # partitions starting in the first 4 MiB are probed from this copy


@dataclass
class ImageReport:
    path: str
    format: str
    virtual_size: int
    allocated_bytes: int  # what the format (or the filesystem's holes) says holds data
    bundled_bytes: int  # what bundle-image would store: allocated minus zero runs
    layout: DiskLayout
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def over_ec2_limit(self) -> bool:
        """Larger than an instance-store AMI's image may be."""
        return self.virtual_size > MAX_IMAGE_SIZE

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "virtual_size": self.virtual_size,
                "allocated_bytes": self.allocated_bytes, "bundled_bytes": self.bundled_bytes,
                "over_ec2_limit": self.over_ec2_limit, "details": self.details,
                "notes": self.notes, **self.layout.to_dict()}


def inspect_image(path: Path | str, fmt: str | None = None, *,
                  allow_backing: bool = False) -> ImageReport:
    path = Path(path)
    fmt = probe_format(path, fmt)
    if fmt in STREAM_FORMATS:
        return _inspect_stream(path, fmt)
    if fmt == "raw":
        file = BoundedFile(path, "raw")
        try:
            allocated = find_data_regions(file.fd, file.size)

            def read_at(offset: int, length: int) -> bytes:
                return os.pread(file.fd, length, offset)

            regions = drop_zero_runs(read_at, allocated)
            layout = probe(read_at, file.size)
            return ImageReport(str(path), fmt, file.size, sum(n for _, n in allocated),
                               sum(n for _, n in regions), layout)
        finally:
            file.close()
    disk = open_disk(path, fmt, allow_backing=allow_backing)
    try:
        allocated = disk.allocated()
        regions = drop_zero_runs(disk.peek_at, coarsen(allocated, disk.virtual_size))
        layout = probe(disk.read_at, disk.virtual_size)
        return ImageReport(str(path), fmt, disk.virtual_size, sum(n for _, n in allocated),
                           sum(n for _, n in regions), layout, dict(disk.details))
    finally:
        disk.close()


def _inspect_stream(path: Path, fmt: str) -> ImageReport:
    """One decompression pass: the size, the non-zero bytes, and the partition table and
    superblocks captured as they stream by (partitions start after the table)."""
    file = BoundedFile(path, fmt)
    try:
        recorded = recorded_size(fmt, file)
        block_map = xz_block_map(file) if fmt == "xz" else None
    finally:
        file.close()
    head = bytearray()
    wanted: list[list[Any]] = []  # [start, length, captured bytes, partition or None]
    table: str | None = None
    parts: list = []
    parsed = False
    pos = nonzero = 0
    for data in decompressed(path, fmt):
        nonzero += sum(length for _, length in nonzero_granules(data, pos))
        end = pos + len(data)
        if not parsed:
            head += data  # everything so far, until the table is parsed
        for w in wanted:
            lo, hi = max(pos, w[0] + len(w[2])), min(end, w[0] + w[1])
            if lo < hi:
                w[2] += data[lo - pos:hi - pos]
        pos = end
        if not parsed and len(head) >= HEAD_KEEP:
            parsed = True
            table, parts = partitions_in(bytes(head[:HEAD_BYTES]), recorded or 1 << 62)
            wanted = [[p.start, min(PROBE_BYTES, p.size),
                       bytearray(head[p.start:p.start + PROBE_BYTES]), p]
                      for p in parts]
            del head[PROBE_BYTES:]
    if not parsed:  # a stream shorter than HEAD_KEEP
        table, parts = partitions_in(bytes(head[:HEAD_BYTES]), pos)
        wanted = [[p.start, 0, bytearray(head[p.start:p.start + min(PROBE_BYTES, p.size)]), p]
                  for p in parts]
    layout = DiskLayout(table, [])
    if table is None:
        layout.filesystem = filesystem_at(bytes(head))
    for w in wanted:
        w[3].filesystem = filesystem_at(bytes(w[2]))
        if w[3].start < pos:
            layout.partitions.append(w[3])
    notes = [f"size {'recorded in the file' if recorded else 'found by decompressing it once'}"]
    if recorded is not None and recorded != pos:
        notes.append(f"the recorded size {recorded} differs from the stream's {pos} bytes")
    # What bundle-image stores: a one-block xz densely (compressed.open_compressed), the rest
    # sparsely, the data blocks of a multi-block xz (below) or the non-zero granules.
    bundled = pos if fmt == "xz" and recorded is not None else nonzero
    details: dict[str, Any] = {}
    if block_map is not None:
        index, regions, _ = block_map
        bundled = sum(n for _, n in regions)
        details = {"blocks": len(index.blocks),
                   "data_blocks": sum(1 for _ in _data_blocks(index.blocks, regions))}
        notes.append("the all-zero blocks (found from the xz index) are holes")
    return ImageReport(str(path), fmt, pos, nonzero, bundled, layout, details, notes)


def _data_blocks(blocks: Any, regions: list[tuple[int, int]]) -> Any:
    pos = 0
    for block in blocks:
        if any(o < pos + block.size and pos < o + n for o, n in regions):
            yield block
        pos += block.size
