"""Parallel gzip compression (pigz style) and a bounded gzip decoder.

The bundle pipeline is ``tar | gzip -9 | openssl enc`` in the classic tools and
single-threaded ``gzip -9`` is its bottleneck (spec §1.4, §12).  The spec only
requires that the output decode with ``gunzip`` and SHOULD be one standard gzip
member, so :class:`ParallelGzipWriter` does what pigz does: cut the input into
blocks, deflate the blocks concurrently (each primed with the previous 32 KiB
of input as a preset dictionary so the ratio stays close to a single stream),
end every block but the last with a sync flush (byte aligned, not final) and
stitch them together behind one gzip header, with a trailer whose CRC-32 is
combined from the per-block CRCs.

Measured with ``scripts/bench_deflate.py`` on 2 cores.  "ext4": the data
regions of a Debian bookworm minbase ext4 image, 253 MB (``gzip -9``: 60.69 MB
at 16.5 MB/s).  "/usr tar": 268 MB of ``tar -c /usr/lib/x86_64-linux-gnu
/usr/bin``.  MB/s is ext4 input per second; "1 thr" is one raw stream,
"pgz w=2" is ParallelGzipWriter with 2 workers and 1 MiB blocks; size is
relative to ``gzip -9`` on the same data::

    backend  lvl   1 thr  pgz w=2   ext4     /usr tar
    isal     1     939    1567     1.120    1.150
    isal     2     865    1571     1.109    1.137
    isal     3     477     893     1.087    1.119
    zlib-ng  1     425     789     1.326    1.336
    zlib-ng  4     178     342     1.031    1.054
    zlib-ng  5     162     300     1.019    1.037
    zlib-ng  6     139     270     1.017    1.034
    zlib-ng  7      95     185     1.008    1.026
    zlib-ng  8      61     117     1.007    1.024
    zlib-ng  9      44      84     1.005    0.998
    zlib     6      60     100     1.003    1.007
    zlib     9      19      35     0.998    0.999

Per-block dictionaries cost nothing measurable (pgz sizes are within 0.1% of
one stream; 256 KiB..4 MiB blocks differ by 0.03%).  Mapping (see
:func:`compression_settings`):

* ``"fast"``    -> isal 1: the fastest, 12-15% larger than gzip -9.
* ``"default"`` -> zlib-ng 5, with ISA-L 3 for hard-to-compress blocks (those whose
  first sample shrinks to more than 55 %: binaries, packed data, where zlib-ng's deeper
  search saves least): within 3% of gzip -9 on disk images (2.8% for the whole bundle of the
  benchmark rootfs image; zlib-ng 5 alone: 1.8% at 15% more deflate CPU), about 20x gzip
  -9's speed on 2 cores. On a plain tar of /usr zlib-ng 5 alone is 3.7% over;
  ``--compression 7`` stays within 3% there too, at 0.6x the speed.
* ``"best"``    -> zlib 9: gzip -9's own algorithm and size (zlib-ng 9 is twice
  as fast but 0.7% larger on the ext4 image).

ISA-L deflates through ctypes where the isal wheel's library can be called
(:mod:`bundler.deflate_isal`: one foreign call per block with the GIL released, where the
binding drops and retakes it about ten times per block); else through the binding. Both give
the same ratio; the bytes differ (ISA-L ends deflate blocks where its output buffer ran out,
and the binding's buffer grows in steps). :func:`_deflater` is the one place that chooses.

:class:`GzipDecoder` inflates with isal (~850 MB/s, vs zlib-ng ~750 and zlib
~380 on the /usr tar stream).
"""

from __future__ import annotations

import collections
import logging
import os
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Union

from bundler.errors import ArchiveError, UsageError
from bundler.stagetimes import NULL_TIMES, StageTimes

from . import signalsafe
from .concurrency import Executor
from .interrupts import critical

if TYPE_CHECKING:
    from .deflate_isal import IsalDeflate

#: Deflates blocks: a binding module (``compressobj``) or ISA-L through ctypes.
Deflater = Union[ModuleType, "IsalDeflate"]

log = logging.getLogger("bundler.deflate")

try:  # the fastest deflate at low levels (Intel ISA-L); optional at runtime
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - exercised only without the wheel
    _isal = None

try:  # zlib-ng: faster than zlib at every level, same ratio class
    from zlib_ng import zlib_ng as _zlib_ng
except ImportError:  # pragma: no cover - exercised only without the wheel
    _zlib_ng = None

#: Deflate's maximum back-reference distance; the preset dictionary for a block
#: is the input that precedes it, so no match a single stream could find is lost
#: at a block boundary except those the block's fresh Huffman tables cost.
WINDOW_SIZE = 32 * 1024

#: Level ranges the backends accept (isal only has 0..3).
_LEVELS: dict[str, range] = {"isal": range(0, 4), "zlib-ng": range(1, 10), "zlib": range(1, 10)}

# Compressed-stream framing (RFC 1952).  mtime 0 and no FNAME, as ``gzip -c <
# file`` writes when reading stdin; OS 3 (Unix) like GNU gzip on Linux.
_GZIP_MAGIC = b"\x1f\x8b"
_OS_UNIX = 3


def _backend_module(backend: str) -> ModuleType:
    """The Python binding of ``backend``."""
    if backend == "isal" and _isal is not None:
        return _isal
    if backend == "zlib-ng" and _zlib_ng is not None:
        return _zlib_ng
    if backend == "zlib":
        return zlib
    raise UsageError(f"compression backend {backend!r} is not available")


_ctypes_isal: list[IsalDeflate | None] = []


def _isal_ctypes() -> IsalDeflate | None:
    """ISA-L through ctypes (:mod:`bundler.deflate_isal`: one GIL release per block instead of
    about ten), or None where it cannot be loaded: then the isal binding does the work, with
    the same ratio and a valid stream of other bytes. Imported on first use (ctypes costs
    2 ms of start-up that ``--help`` need not pay)."""
    if _isal is None:  # the library is the isal wheel's: no wheel, no ISA-L
        return None
    if not _ctypes_isal:
        from . import deflate_isal
        _ctypes_isal.append(deflate_isal.load())
    return _ctypes_isal[0]


def _deflater(backend: str) -> Deflater:
    """What deflates the blocks of ``backend``: the one place that chooses between a binding
    and the ctypes call."""
    if backend == "isal":
        fast = _isal_ctypes()
        if fast is not None:
            return fast
    return _backend_module(backend)


def available_backends() -> list[str]:
    """The backends importable in this interpreter, fastest first."""
    names = []
    if _isal is not None:
        names.append("isal")
    if _zlib_ng is not None:
        names.append("zlib-ng")
    names.append("zlib")
    return names


# The checksum functions are independent of the compressor: use the fastest
# (all three compute the same CRC-32; isal and zlib-ng use carry-less multiply).
_crc_module: ModuleType = _isal or _zlib_ng or zlib
_crc32: Callable[..., int] = _crc_module.crc32
_crc32_combine: Callable[[int, int, int], int] = (
    _crc_module.crc32_combine  # type: ignore[assignment]
    if hasattr(_crc_module, "crc32_combine") else None
)


def _crc32_combine_py(crc1: int, crc2: int, len2: int) -> int:
    """Fallback for a stdlib-only interpreter: stdlib zlib has no crc32_combine.

    Feeding len2 zero bytes through the CRC register of crc1 and xoring crc2 is
    what crc32_combine computes (for the linear part of CRC-32); done in 1 MiB
    steps it is slow but only used when neither accelerated module exists.
    """
    zeros = bytes(min(len2, 1 << 20))
    # crc(A||0^n) ^ crc(0^n) ^ crc2 == crc(A||B) by linearity of CRC-32.
    a, z = crc1, 0
    left = len2
    while left:
        step = min(left, len(zeros))
        a = zlib.crc32(zeros[:step], a)
        z = zlib.crc32(zeros[:step], z)
        left -= step
    return a ^ z ^ crc2


if _crc32_combine is None:  # pragma: no cover
    _crc32_combine = _crc32_combine_py


@dataclass(frozen=True)
class CompressionSettings:
    """Which deflate implementation to use, at which of its levels, in what block size."""

    backend: str  # "isal" | "zlib-ng" | "zlib"
    level: int
    block_size: int = 1 << 20
    # (backend, level, ratio): a block whose first sample compresses to more than ``ratio`` of
    # its size (binaries, packed data) gets that faster deflate instead; it saves little on
    # such blocks however hard it searches (see HARD_BLOCKS).
    hard: tuple[str, int, float] | None = None

    def __post_init__(self) -> None:
        if self.hard is not None:
            backend, level, ratio = self.hard
            if backend not in _LEVELS or level not in _LEVELS[backend] or not 0 < ratio <= 1:
                raise UsageError(f"invalid setting for hard-to-compress blocks: {self.hard!r}")
        if self.backend not in _LEVELS:
            raise UsageError(
                f"unknown compression backend {self.backend!r} (expected isal, zlib-ng or zlib)"
            )
        if isinstance(self.level, bool) or self.level not in _LEVELS[self.backend]:
            r = _LEVELS[self.backend]
            raise UsageError(
                f"compression level {self.level!r} is out of range for {self.backend} "
                f"({r.start}..{r.stop - 1})"
            )
        if isinstance(self.block_size, bool) or self.block_size < 1:
            raise UsageError(f"compression block size must be positive, not {self.block_size!r}")


# Integer level -> (preferred backend, level), with fallbacks when a wheel is
# missing.  Filled from the benchmark in the module docstring.
_NAMED = {"fast": 1, "default": 5, "best": 9}
_BY_LEVEL: dict[int, list[tuple[str, int]]] = {
    1: [("isal", 1), ("zlib-ng", 1), ("zlib", 1)],
    2: [("isal", 2), ("zlib-ng", 2), ("zlib", 2)],
    3: [("isal", 3), ("zlib-ng", 3), ("zlib", 3)],
    4: [("zlib-ng", 4), ("zlib", 4)],
    5: [("zlib-ng", 5), ("zlib", 5)],
    6: [("zlib-ng", 6), ("zlib", 6)],
    7: [("zlib-ng", 7), ("zlib", 6)],
    8: [("zlib-ng", 8), ("zlib", 8)],
    # zlib 9 matches gzip -9's size (it is the same algorithm); zlib-ng 9 is
    # twice as fast but 0.5% larger on ext4 images, and "best" is about size.
    9: [("zlib", 9)],
}


# Level -> how its hard-to-compress blocks are deflated. For ``default`` (5): a block whose
# first 16 KiB sample (taken anyway, for the incompressible check) shrinks to more than 55 %
# under ISA-L level 1 is deflated by ISA-L level 3, at 3-4x zlib-ng 5's speed. On the benchmark
# rootfs image that is 22 of 178 blocks: deflate CPU -15 %, bundle 1.018 -> 1.028x gzip -9.
# Thresholds measured there: 0.50 -> 1.031x (over the 3 % bound), 0.60 -> 1.024x at -10 %.
HARD_BLOCKS: dict[int, tuple[str, int, float]] = {5: ("isal", 3, 0.55)}


def compression_settings(spec: str | int) -> CompressionSettings:
    """Turn a user's compression choice into concrete settings.

    ``spec`` is ``"fast"``, ``"default"``, ``"best"`` or a zlib-style level
    1..9 (an int or a string of one digit).  The levels keep zlib's meaning of
    "1 fastest, 9 smallest" but are served by the fastest backend that reaches
    about that ratio:

    * 1, 2, 3 -> isal 1, 2, 3 (ISA-L: 500-900 MB/s per core, 9-15% larger than gzip -9)
    * 4..8    -> zlib-ng at the same level (2-3x zlib's speed at a similar size)
    * 9       -> zlib 9 (the same algorithm as ``gzip -9``, so the same size)

    ``"fast"`` is level 1, ``"best"`` is level 9 and ``"default"`` is level 5
    (zlib-ng 5), the fastest setting whose output stays within 3% of ``gzip
    -9`` on disk images (see the table in the module docstring).  If the
    preferred wheel is not installed the next backend in line is used.  Anything else raises
    :class:`UsageError`.
    """
    if isinstance(spec, bool):
        raise UsageError(f"invalid compression setting {spec!r}")
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in _NAMED:
            level = _NAMED[key]
        elif len(key) == 1 and key in "123456789":
            level = int(key)
        else:
            raise UsageError(
                f"invalid compression setting {spec!r}: use fast, default, best or a level 1-9"
            )
    elif isinstance(spec, int):
        level = spec
    else:
        raise UsageError(f"invalid compression setting {spec!r}")
    if level not in _BY_LEVEL:
        raise UsageError(f"invalid compression level {spec!r}: use 1-9")
    available = available_backends()
    hard = HARD_BLOCKS.get(level)
    if hard is not None and hard[0] not in available:
        hard = None
    for backend, backend_level in _BY_LEVEL[level]:
        if backend in available:
            return CompressionSettings(backend, backend_level, hard=hard)
    raise AssertionError("zlib is always available")  # pragma: no cover


def _gzip_header(settings: CompressionSettings) -> bytes:
    # XFL is informational: 2 = "maximum compression", 4 = "fastest" (RFC 1952),
    # set the way gzip/pigz set it for their -9 and -1.
    if settings.backend == "isal":
        xfl = 4 if settings.level <= 1 else 0
    else:
        xfl = 2 if settings.level == 9 else 4 if settings.level == 1 else 0
    return _GZIP_MAGIC + bytes([8, 0, 0, 0, 0, 0, xfl, _OS_UNIX])


_SAMPLE = 16 * 1024
_FAST_MODULE: ModuleType = _isal or _zlib_ng or zlib


def _probe(block: bytes | bytearray | memoryview) -> tuple[bool, float]:
    """(incompressible, first sample's ratio): whether three samples of the block (start,
    middle, end) all fail to shrink by 3%, and what the first compressed to (compressed /
    plain bytes; 0.0 for a block too small to judge).

    The result depends only on the block's bytes, so output stays deterministic
    whatever order the threads finish in.
    """
    if len(block) < 4 * _SAMPLE:
        return False, 0.0
    view = memoryview(block)
    fast = _isal_ctypes()
    first = -1.0
    for start in (0, len(block) // 2, len(block) - _SAMPLE):
        piece = view[start:start + _SAMPLE]
        size = (fast.size(1, piece) if fast is not None
                else len(_FAST_MODULE.compress(piece, level=1, wbits=-15)))
        ratio = size / _SAMPLE
        if first < 0:
            first = ratio
        if ratio < 0.97:
            return False, first
    return True, first


def _looks_incompressible(block: bytes | bytearray) -> bool:
    """Whether three samples of the block (start, middle, end) all fail to shrink by 3%."""
    return _probe(block)[0]


_STORED_MAX = 0xFFFF


def _stored(block: bytes | bytearray | memoryview, last: bool) -> bytes:
    """``block`` as deflate stored blocks (RFC 1951 3.2.4), BFINAL on the last one if ``last``.

    Every fragment starts and ends on a byte boundary (after the header, or after the previous
    fragment's sync flush), so stored blocks fit between compressed fragments as they are; the
    next fragment's dictionary is the plain input either way.
    """
    view = memoryview(block)
    pieces: list[bytes | memoryview] = []
    start = 0
    while True:
        piece = view[start:start + _STORED_MAX]
        start += len(piece)
        final = last and start >= len(view)
        pieces.append(struct.pack("<BHH", 1 if final else 0, len(piece), len(piece) ^ 0xFFFF))
        pieces.append(piece)
        if start >= len(view):
            return b"".join(pieces)


def _compress_block(
    module: Deflater, level: int, block: bytes | bytearray | memoryview, zdict: bytes,
    last: bool,
    hard: tuple[Deflater, int, float] | None = None,
) -> tuple[bytes, int]:
    """Deflate one block as a raw deflate fragment; return it and the block's CRC-32.

    Runs in a worker thread: the compressor and the CRC release the GIL.  A
    fresh compressor per block keeps blocks independent (any order, any
    thread); the dictionary restores the window a single stream would have.
    Non-final blocks end with a sync flush so the next fragment starts on a
    byte boundary and no final-block bit is set; the last one with Z_FINISH.
    ``hard`` = (module, level, ratio): the deflate for a block whose first sample compresses
    to more than ``ratio`` (fragments of different deflaters concatenate like any others).
    """
    incompressible, ratio = _probe(block)
    if incompressible:
        # Random or already-compressed data (encrypted volumes, packed archives): every
        # deflate stores it anyway, after searching for matches; storing it at once is a copy.
        return _stored(block, last), _crc32(block)
    if hard is not None and ratio > hard[2]:
        module, level = hard[0], hard[1]
    if not isinstance(module, ModuleType):  # ISA-L through ctypes: the CRC comes with it
        return module.block(level, block, zdict, last)
    if zdict:
        comp = module.compressobj(level, zlib.DEFLATED, -15, zdict=zdict)
    else:
        comp = module.compressobj(level, zlib.DEFLATED, -15)
    data = comp.compress(block)
    tail = comp.flush(module.Z_FINISH if last else module.Z_SYNC_FLUSH)
    return data + tail, _crc32(block)


class ParallelGzipWriter:
    """Compress a byte stream into one standard gzip member using a thread pool.

    ``out`` receives the compressed stream in order, in the calling thread of
    :meth:`write`/:meth:`close`: the gzip header together with the first block,
    one call per block, and the trailer together with the last block.  At most
    ``max_pending`` blocks (default ``2 * workers + 2``) are submitted but not
    yet handed to ``out``; :meth:`write` waits for the oldest when the window is
    full, so memory stays around ``(max_pending + 1) * block_size``.

    An exception from a worker or from ``out`` propagates unchanged from the
    :meth:`write`/:meth:`close` that observes it; the writer is then aborted
    and unusable.  Use :meth:`abort` on other error paths so worker threads do
    not outlive the pipeline.  The writer is meant to be driven by one thread.
    """

    def __init__(
        self,
        out: Callable[[bytes], object],
        settings: CompressionSettings,
        *,
        workers: int | None = None,
        max_pending: int | None = None,
        timings: StageTimes = NULL_TIMES,
        expected_size: int | None = None,
    ) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if workers < 1:
            raise UsageError(f"compression workers must be at least 1, not {workers}")
        if max_pending is None:
            max_pending = 2 * workers + 2
        if max_pending < 1:
            raise UsageError(f"max_pending must be at least 1, not {max_pending}")
        self._out = out
        self._timings = timings
        self._settings = settings
        self._module = _deflater(settings.backend)
        self._hard = (None if settings.hard is None else
                      (_deflater(settings.hard[0]), settings.hard[1], settings.hard[2]))
        self._block_size = settings.block_size
        self._expected_size = expected_size
        self._max_pending = max_pending
        self._executor = Executor(max_workers=workers,
                                            thread_name_prefix="bundler-deflate")
        # (future, uncompressed length) in submission order = output order.
        self._pending: collections.deque[tuple[Future[tuple[bytes, int]], int]] = (
            collections.deque()
        )
        # The block being filled: allocated whole, so that a reader can fill it in place
        # (``space``/``advance``) and a view of it stays valid until it is handed on.
        self._submitted = 0  # input bytes handed to the pool
        self.blocks = 0
        self._buf = bytearray(self._next_block_size())
        self._fill = 0
        self._window = b""  # last WINDOW_SIZE bytes of input already submitted
        self._crc = 0
        self._header: bytes | None = _gzip_header(settings)
        self._state = "open"  # "open" | "closed" | "aborted"
        self.bytes_in = 0
        self.bytes_out = 0
        # Input whose output has gone to ``out`` (the block being handed over included, so
        # ``out`` can tell how much input its chunks stand for).
        self.bytes_in_emitted = 0
        self.max_in_flight = 0
        log.debug("gzip writer: %s level %d, %d-byte blocks, %d workers, window %d",
                  settings.backend, settings.level, self._block_size, workers, max_pending)

    @property
    def in_flight(self) -> int:
        """Blocks submitted to the pool whose output has not yet gone to ``out``."""
        return len(self._pending)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Add input; full blocks are compressed in the background."""
        self._check_open()
        view = memoryview(data).cast("B")
        try:
            # A full buffer is submitted only once more input arrives, so the
            # final block (flushed with Z_FINISH by close) is never empty
            # unless the whole input is.
            while view:
                if self._fill == len(self._buf):
                    self._submit(last=False)
                take = min(len(self._buf) - self._fill, len(view))
                self._buf[self._fill:self._fill + take] = view[:take]
                self._fill += take
                view = view[take:]
                self.bytes_in += take
            self._emit_done()
        except BaseException:
            self.abort()
            raise

    def space(self) -> memoryview:
        """The unfilled rest of the current block, for a reader to put input straight into
        (``readinto``, ``preadv``: no copy of it here); ``advance`` says how much it put.
        Call it only with more input to come: a full block is submitted first. The bytes a
        reader puts there are not changed afterwards, so a view of them may be hashed later."""
        self._check_open()
        try:
            if self._fill == len(self._buf):
                self._submit(last=False)
            self._emit_done()
        except BaseException:
            self.abort()
            raise
        return memoryview(self._buf)[self._fill:]

    def advance(self, count: int) -> None:
        """``count`` bytes of input were put into ``space()``."""
        if not 0 <= count <= len(self._buf) - self._fill:
            raise ValueError(f"advance({count}) past the end of the block")
        self._fill += count
        self.bytes_in += count

    def close(self) -> None:
        """Compress what is buffered as the final block, write the trailer, stop the pool."""
        if self._state == "closed":
            return
        self._check_open()
        try:
            self._submit(last=True)
            while self._pending:
                self._emit_oldest(final=len(self._pending) == 1)
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        self._executor.shutdown(wait=True)
        log.debug("gzip writer closed: %d bytes in, %d bytes out, %d blocks",
                  self.bytes_in, self.bytes_out, self.blocks)

    def abort(self) -> None:
        """Drop all pending work and stop the worker threads; nothing more is written."""
        if self._state == "aborted":
            return
        was_closed = self._state == "closed"
        self._state = "aborted"
        with critical():
            for fut, _ in self._pending:
                fut.cancel()
        self._pending.clear()
        self._buf = bytearray()
        self._fill = 0
        # wait=True: a block already running finishes (bounded by one block of
        # work) so no thread outlives the writer.
        self._executor.shutdown(wait=True, cancel_futures=True)
        if not was_closed:
            log.debug("gzip writer aborted after %d bytes in", self.bytes_in)

    def __enter__(self) -> ParallelGzipWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"gzip writer is {self._state}")

    def _submit(self, *, last: bool) -> None:
        while len(self._pending) >= self._max_pending:
            self._emit_oldest(final=False)
        # Hand the buffer over (no copy of the block); a partial last block as a view of it.
        block: bytearray | memoryview = (self._buf if self._fill == len(self._buf)
                                         else memoryview(self._buf)[:self._fill])
        self._fill = 0
        fut = self._executor.submit(self._timed_compress, block, self._window, last)
        self._pending.append((fut, len(block)))
        self.blocks += 1
        self._submitted += len(block)
        if not last:
            self._buf = bytearray(self._next_block_size())
        self.max_in_flight = max(self.max_in_flight, len(self._pending))
        if len(block) >= WINDOW_SIZE:
            self._window = bytes(block[-WINDOW_SIZE:])
        else:  # tiny blocks: the window spans several of them
            self._window = (self._window + block)[-WINDOW_SIZE:]

    def _next_block_size(self) -> int:
        """The size of the next block: ``block_size``, except at the two ends of the stream.

        The pool's first work comes after an eighth of a block is read rather than a whole one
        (the first block's worth of input goes as 1/8, 1/8, 1/4, 1/2: boundaries after it
        stay where they would be, and with them which blocks the incompressible probe, which
        samples fixed places of a block, stores), and, when the input's size is known, its
        last four blocks' worth goes in quarter blocks, so that the last deflate, encryption and
        part write, which nothing overlaps, wait for a quarter block instead of a whole one.
        Depends only on the input's size: the output stays deterministic.
        """
        size = self._block_size
        if size < 8 * WINDOW_SIZE:  # pieces smaller than the window: not worth it
            return size
        if self.blocks < 4:
            return size >> (3, 3, 2, 1)[self.blocks]
        if (self._expected_size is not None
                and self._expected_size - self._submitted <= 4 * size):
            return size >> 2
        return size

    def _timed_compress(self, block: bytearray | memoryview, zdict: bytes,
                        last: bool) -> tuple[bytes, int]:
        with self._timings.measure("deflate", len(block)):
            if self._hard is None:
                return _compress_block(self._module, self._settings.level, block, zdict, last)
            return _compress_block(self._module, self._settings.level, block, zdict, last,
                                   self._hard)

    def _emit_done(self) -> None:
        # Pass on whatever has finished at the head of the queue so output
        # keeps flowing (and memory is released) without waiting for the window.
        # Blocks pending during write() are never the last one (that is only
        # submitted by close()), so none of them carries the trailer.
        while self._pending and signalsafe.done(self._pending[0][0]):
            self._emit_oldest(final=False)

    def _emit_oldest(self, *, final: bool) -> None:
        fut, length = self._pending[0]
        data, crc = signalsafe.result(fut)  # re-raises a worker's exception as-is
        self._pending.popleft()
        self._crc = _crc32_combine(self._crc, crc, length)
        self.bytes_in_emitted += length
        parts = []
        if self._header is not None:
            parts.append(self._header)
            self._header = None
        parts.append(data)
        if final:
            parts.append(self._crc.to_bytes(4, "little"))
            parts.append((self.bytes_in & 0xFFFFFFFF).to_bytes(4, "little"))
        chunk = b"".join(parts) if len(parts) > 1 else data
        self.bytes_out += len(chunk)
        self._out(chunk)


class GzipDecoder:
    """Incremental gzip decoder whose output per call is bounded by the caller.

    Input is kept internally until it is consumed, so a decompression bomb can
    be read (and cut off) chunk by chunk.  Concatenated members are accepted
    like ``gunzip`` does; anything after the last member that is not another
    member is an :class:`ArchiveError`.

    Typical use::

        dec = GzipDecoder()
        for chunk in source:
            out = dec.feed(chunk, 1 << 20)
            ...
            while dec.pending():
                out = dec.feed(b"", 1 << 20)
                ...
        dec.finish()
    """

    def __init__(self) -> None:
        # isal inflates about twice as fast as zlib and supports max_length /
        # unconsumed_tail with wbits=31; zlib-ng is the next best.
        self._module: ModuleType = _isal or _zlib_ng or zlib
        self._errors: tuple[type[BaseException], ...] = tuple(
            {zlib.error, *(m.error for m in (_isal, _zlib_ng) if m is not None)}
        )
        self._dec: object | None = None  # decompressor of the current member
        self._input = b""  # input not yet consumed by a decompressor
        self._capped = False  # the last feed stopped at max_output
        self._members = 0
        self._started = False
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def members(self) -> int:
        """Number of complete gzip members decoded so far."""
        return self._members

    def feed(self, data: bytes | bytearray | memoryview, max_output: int) -> bytes:
        """Add input and return at most ``max_output`` bytes of decompressed data."""
        if max_output < 1:
            raise ValueError("max_output must be positive")
        if data:
            self.bytes_in += len(data)
            self._input = self._input + bytes(data) if self._input else bytes(data)
            self._started = True
        parts: list[bytes] = []
        remaining = max_output
        while remaining > 0:
            if self._dec is None:
                if not self._input:
                    break
                if self._input[:2] != _GZIP_MAGIC[: len(self._input[:2])]:
                    what = "trailing garbage after" if self._members else "not a gzip stream at"
                    raise ArchiveError(
                        f"{what} compressed offset {self.bytes_in - len(self._input)}"
                    )
                if len(self._input) < 2:
                    break  # cannot tell a member from garbage yet
                self._dec = self._module.decompressobj(wbits=31)
            before = len(self._input)
            try:
                chunk = self._dec.decompress(self._input, remaining)  # type: ignore[attr-defined]
            except self._errors as exc:
                raise ArchiveError(f"corrupt gzip data: {exc}") from exc
            if self._dec.eof:  # type: ignore[attr-defined]
                # Whatever follows the member's trailer is the next member (or garbage).
                self._input = self._dec.unused_data  # type: ignore[attr-defined]
                self._dec = None
                self._members += 1
            else:
                self._input = self._dec.unconsumed_tail  # type: ignore[attr-defined]
            if chunk:
                parts.append(chunk)
                remaining -= len(chunk)
            elif self._dec is not None and len(self._input) == before:
                break  # no progress: the decompressor needs more input
        out = b"".join(parts) if len(parts) != 1 else parts[0]
        # A decompressor can hold output back even with no input left (a long
        # match cut by max_length), so a full chunk means "ask again".
        self._capped = len(out) == max_output
        self.bytes_out += len(out)
        return out

    def pending(self) -> bool:
        """True if :meth:`feed` may return more output without new input."""
        return self._capped or (self._dec is not None and bool(self._input)) or (
            self._dec is None and len(self._input) >= 2
        )

    def finish(self) -> None:
        """Check that the input ended exactly after a complete gzip member.

        Raises :class:`ArchiveError` for an empty or truncated stream or
        trailing bytes that are not a gzip member.  Call after draining
        (:meth:`pending` is False).
        """
        if not self._started:
            raise ArchiveError("compressed stream is empty")
        if self._dec is not None or self._input == _GZIP_MAGIC[:1]:
            # A member has begun (a lone 0x1f can only be the start of a header).
            raise ArchiveError(
                f"compressed stream is truncated (after {self.bytes_in} bytes of input)"
            )
        if self._input:
            raise ArchiveError(
                f"{len(self._input)} bytes of trailing garbage after the gzip data"
            )
