"""Image formats: raw, qcow2, VMDK, VHD, VHDX and compressed raw streams, each read natively
and sparse-aware (unallocated blocks are holes the tar framing skips), chosen by content.

``open_source`` is the one place that turns a path and an optional ``--image-format`` into the
ImageSource the pipeline bundles.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from ..errors import ImageFormatError, UsageError
from ..manifest import validate_name
from ..source import ImageSource, open_image
from .bounded import BoundedFile
from .compressed import STREAM_FORMATS, CheckedStream, open_compressed, open_stream
from .detect import FORMATS, detect
from .disk import DiskImageSource, VirtualDisk

__all__ = ["FORMATS", "open_disk", "open_source", "probe_format", "stdin_stream"]


def probe_format(path: Path, fmt: str | None = None) -> str:
    """The image's format: ``fmt`` if given (checked against the list), else by its bytes."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"unknown image format {fmt!r} (expected one of: "
                             f"{', '.join(FORMATS)})")
        return fmt
    file = BoundedFile(path, "image")
    try:
        if file.size == 0:
            return "raw"  # open_image says it is empty
        found = detect(file)
    finally:
        file.close()
    if isinstance(found, tuple):
        raise ImageFormatError(f"image {path} is a {found[1]} image, which is not supported: "
                               "convert it with qemu-img convert -O qcow2 (or raw) first")
    return found


def open_disk(path: Path, fmt: str, *, allow_backing: bool = False) -> VirtualDisk:
    """The VirtualDisk reader for a virtual-disk format."""
    file = BoundedFile(path, fmt)
    try:
        if fmt == "qcow2":
            from .qcow2 import Qcow2Disk

            return Qcow2Disk(file, allow_backing=allow_backing)
        if fmt == "vmdk":
            from .vmdk import DESCRIPTOR_MAGIC, VmdkDescriptorDisk, VmdkSparseDisk

            head = file.read(0, min(file.size, len(DESCRIPTOR_MAGIC)), "header")
            if head == DESCRIPTOR_MAGIC:
                return VmdkDescriptorDisk(file)
            return VmdkSparseDisk(file)
        if fmt == "vhd":
            from .vhd import VhdDisk

            return VhdDisk(file)
        if fmt == "vhdx":
            from .vhdx import VhdxDisk

            return VhdxDisk(file)
    except BaseException:
        file.close()
        raise
    file.close()
    raise ValueError(fmt)


SUFFIXES = {"qcow2": (".qcow2", ".qcow"), "vmdk": (".vmdk",), "vhd": (".vhd", ".vpc"),
            "vhdx": (".vhdx",),
            "gz": (".gz",), "xz": (".xz",), "zst": (".zst", ".zstd"), "bz2": (".bz2",)}


def default_name(path: Path, fmt: str) -> str:
    """The bundle's default name: the file name without the container's suffix, since the
    bundle holds the raw disk (debian-12.qcow2 → debian-12, disk.raw.xz → disk.raw)."""
    name = path.name
    for suffix in SUFFIXES.get(fmt, ()):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def open_source(path: Path | str, *, name: str | None = None, fmt: str | None = None,
                image_size: int | None = None,
                allow_large: bool = False, allow_backing: bool = False) -> ImageSource:
    """An ImageSource for any supported image file, by content unless ``fmt`` says.
    ``allow_backing`` reads a qcow2 image's backing files (only from the image's directory)."""
    path = Path(path)
    fmt = probe_format(path, fmt)
    name = validate_name(name or default_name(path, fmt))
    if image_size is not None and fmt not in STREAM_FORMATS:
        raise UsageError(f"--image-size only goes with -i - or a compressed image; a {fmt} image "
                         "records its size")
    if fmt == "raw":
        return open_image(path, name=name, allow_large=allow_large)
    if fmt in STREAM_FORMATS:
        return open_compressed(path, fmt, name=name, image_size=image_size, allow_large=allow_large)
    return DiskImageSource.open(open_disk(path, fmt, allow_backing=allow_backing), name,
                                allow_large=allow_large)


def stdin_stream(stream: BinaryIO, fmt: str | None) -> BinaryIO:
    """Standard input as the image's bytes: raw, or decompressed on the fly for a compressed
    format (its size still comes from --image-size; nothing is detected on a pipe)."""
    if fmt in (None, "raw"):
        return stream
    if fmt not in STREAM_FORMATS:
        raise UsageError(f"a {fmt} image cannot be read from standard input (its tables need "
                         "random access): give its path")
    return CheckedStream(open_stream(fmt, stream), fmt)  # type: ignore[return-value]
