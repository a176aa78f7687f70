"""Which format an image is, from its bytes (never from its name)."""

from __future__ import annotations

from .bounded import BoundedFile

FORMATS = ("raw", "qcow2", "vmdk", "vhd", "vhdx", "gz", "xz", "zst", "bz2")

# Formats we recognise but do not read: a clear refusal beats bundling a container as if it
# were a raw disk.
_UNSUPPORTED = [
    (0, b"QED\x00", "QED"),
    (64, b"\x7f\x10\xda\xbe", "VirtualBox VDI"),
    (0, b"COWD", "VMware ESX COW sparse (VMDK 3)"),
    (0, b"OOOM", "QEMU cow"),
    (0, b"PK\x03\x04", "zip archive"),
]


def detect(file: BoundedFile) -> str | tuple[None, str]:
    """The format name, or (None, what it is) for a recognised but unsupported container."""
    head = file.read(0, min(file.size, 512), "first sector")
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if head[:4] == b"KDMV":
        return "vmdk"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if head[:8] == b"conectix":
        return "vhd"
    if head[:21] == b"# Disk DescriptorFile" and file.size <= 64 * 1024:
        return "vmdk"
    if head[:2] == b"\x1f\x8b":
        return "gz"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zst"
    if head[:3] == b"BZh" and len(head) >= 10 and 0x31 <= head[3] <= 0x39 and head[4:10] in (
            b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90"):
        return "bz2"
    for offset, magic, what in _UNSUPPORTED:
        if head[offset:offset + len(magic)] == magic:
            return None, what
    if file.size >= 1024 and file.size % 512 == 0:
        tail = file.read(file.size - 512, 512, "last sector")
        if tail[:8] == b"conectix":
            return "vhd"  # a fixed VHD: raw data followed by its footer
    return "raw"
