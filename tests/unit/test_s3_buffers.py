"""S3Sink's malloc setting (``_return_large_buffers_to_the_os``) holds from the sink's
construction, before any part is made: install cuts parts while the lease is taken
(``s3.held``), and a part put in a malloc arena then leaves the arena that large, and
fragmented, for the rest of the run (random-512M.img: ~185 MiB of arena, 70-90 MiB of it
free, against ~45 MiB with the setting in force from the start)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

PROBE = """
import ctypes
from bundler.s3 import S3Location
from bundler.s3.stream import S3Sink

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                               "fsmblks uordblks fordblks keepcost").split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
freed = bytearray(16 << 20)  # mapped on its own (over the default threshold) ...
del freed  # ... and its free raises glibc's threshold to 16 MiB
S3Sink(object(), S3Location("b"))  # type: ignore[arg-type]
before = libc.mallinfo2().hblkhd
part = bytearray(10 << 20)  # a part made before the sink's begin
print(libc.mallinfo2().hblkhd - before)
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc ≥ 2.33 only (mallinfo2)")
def test_a_part_made_before_begin_is_mapped_on_its_own():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True).stdout
    assert int(out) >= 10 << 20  # its own map, unmapped when freed; not an arena's chunk
