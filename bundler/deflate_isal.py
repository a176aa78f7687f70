"""ISA-L's deflate called through ctypes: one call per block, the GIL released for all of it.

The isal wheel's binding (``isal_zlib``) grows its output buffer from 16 KiB by doubling and
drops and retakes the GIL for every round: about five times per 1 MiB block in ``compress``
and three more in ``flush``. With two deflate workers and the pipeline's serial threads all
wanting the GIL, every retake can wait for another thread's switch interval while a core idles
(measured with uprobes on ``take_gil``: ~10 acquisitions per block, the main limit of level
``fast``). Here the output buffer is sized for the whole block before the call, so a block is
deflated, flushed and its CRC-32 computed (ISA-L's gzip mode keeps it) in ONE foreign call;
ctypes releases the GIL around it.

The C functions are those of the ISA-L the isal wheel carries: its extension modules export
ISA-L's API (``isal_deflate`` etc.), so the library is the one ``isal._isal.ISAL_VERSION``
names and nothing else needs installing. :class:`ZStream` mirrors ``struct isal_zstream``
of ``include/igzip_lib.h``, whose size and offsets are the same in ISA-L 2.30, 2.31 and 2.32
(checked with ``sizeof``/``offsetof`` against each release's header: 82,384 bytes); for any
other version, or without the wheel, :func:`load` returns None and the caller keeps the
binding.

The output is a valid raw deflate stream, but not byte for byte the binding's: ISA-L's
output depends on where its output buffer ran out (the binding's 16, 32, 64 KiB ... steps end
deflate blocks there); with one buffer of the bound's size it depends only on the input.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

# igzip_lib.h constants.
_HIST_SIZE = 32 * 1024
_LOOK_AHEAD = (258 + 31) & ~31
_LVL0_HASH_SIZE = 8 * 1024
_SYNC_FLUSH, _FULL_FLUSH = 1, 2
_IGZIP_DEFLATE, _IGZIP_GZIP_NO_HDR = 0, 2
_COMP_OK = 0
_ZSTATE_END = 11
# level_buf sizes: ISAL_DEF_LVLn_LARGE, what isal_zlib.compressobj uses by default (memLevel
# 8). The size sets how many tokens make one deflate block, so it is part of the output.
_LEVEL_BUF: dict[int, int] = {
    0: 0,
    1: 4 * 1024 + 2 * 8 * 1024 + 4 * 64 * 1024,
    2: 4 * 1024 + 2 * 32 * 1024 + 4 * 64 * 1024,
    3: 4 * 1024 + 4 * 4 * 1024 + 2 * 32 * 1024 + 4 * 64 * 1024,
}
#: ISA-L releases whose ``struct isal_zstream`` is the one declared below.
KNOWN_VERSIONS = ((2, 30), (2, 31), (2, 32))
_ZSTREAM_SIZE = 82384

# Worst case growth of a block: ISA-L falls back to stored blocks (5 bytes per 64 KiB) when
# coding would expand the data; the rest covers the block headers, the sync flush's empty
# stored block and the trailer. If a block ever needs more, the call is repeated into a
# larger buffer (ISA-L never writes past avail_out), so this is a size, not a safety, bound.
_SLACK = 64 * 1024


#: Inputs up to this size are deflated without releasing the GIL (the incompressibility probe's
#: samples): a hand-off to another thread and back costs more than they take.
_HELD_MAX = 64 * 1024


def deflate_bound(size: int) -> int:
    """Output buffer size for a ``size``-byte block (see ``_SLACK``)."""
    return size + (size >> 6) + _SLACK


class _BitBuf2(ctypes.Structure):
    _fields_ = [("m_bits", ctypes.c_uint64), ("m_bit_count", ctypes.c_uint32),
                ("m_out_buf", ctypes.c_void_p), ("m_out_end", ctypes.c_void_p),
                ("m_out_start", ctypes.c_void_p)]


class _ZState(ctypes.Structure):
    _fields_ = [("total_in_start", ctypes.c_uint32), ("block_next", ctypes.c_uint32),
                ("block_end", ctypes.c_uint32), ("dist_mask", ctypes.c_uint32),
                ("hash_mask", ctypes.c_uint32), ("state", ctypes.c_int),
                ("bitbuf", _BitBuf2), ("crc", ctypes.c_uint32),
                ("has_wrap_hdr", ctypes.c_uint8), ("has_eob_hdr", ctypes.c_uint8),
                ("has_eob", ctypes.c_uint8), ("has_hist", ctypes.c_uint8),
                ("has_level_buf_init", ctypes.c_uint16), ("count", ctypes.c_uint32),
                ("tmp_out_buff", ctypes.c_uint8 * 16), ("tmp_out_start", ctypes.c_uint32),
                ("tmp_out_end", ctypes.c_uint32), ("b_bytes_valid", ctypes.c_uint32),
                ("b_bytes_processed", ctypes.c_uint32),
                ("buffer", ctypes.c_uint8 * (2 * _HIST_SIZE + _LOOK_AHEAD)),
                ("head", ctypes.c_uint16 * _LVL0_HASH_SIZE)]


class ZStream(ctypes.Structure):
    """``struct isal_zstream``."""

    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint32),
                ("total_in", ctypes.c_uint32), ("next_out", ctypes.c_void_p),
                ("avail_out", ctypes.c_uint32), ("total_out", ctypes.c_uint32),
                ("hufftables", ctypes.c_void_p), ("level", ctypes.c_uint32),
                ("level_buf_size", ctypes.c_uint32), ("level_buf", ctypes.c_void_p),
                ("end_of_stream", ctypes.c_uint16), ("flush", ctypes.c_uint16),
                ("gzip_flag", ctypes.c_uint16), ("hist_bits", ctypes.c_uint16),
                ("internal_state", _ZState)]


class _Library:
    """The C functions: ``deflate`` without the GIL (the work), the rest with it (microseconds;
    dropping the GIL for them would only add hand-offs)."""

    def __init__(self, path: str) -> None:
        released = ctypes.CDLL(path)  # ctypes drops the GIL around each call
        held = ctypes.PyDLL(path)  # ... and keeps it for these
        stream = ctypes.POINTER(ZStream)
        self.deflate: Callable[[Any], int] = released.isal_deflate
        self.deflate.argtypes, self.deflate.restype = [stream], ctypes.c_int
        # For a 16 KiB probe (~15 us): cheaper to keep the GIL than to hand it over and back.
        self.deflate_held: Callable[[Any], int] = held.isal_deflate
        self.deflate_held.argtypes, self.deflate_held.restype = [stream], ctypes.c_int
        self.init: Callable[[Any], None] = held.isal_deflate_init
        self.init.argtypes, self.init.restype = [stream], None
        self.set_dict: Callable[[Any, Any, int], int] = held.isal_deflate_set_dict
        self.set_dict.argtypes = [stream, ctypes.c_void_p, ctypes.c_uint32]
        self.set_dict.restype = ctypes.c_int


def _address(buffer: Any, size: int) -> tuple[int, object]:
    """(address, keep-alive) of a buffer's bytes; a read-only one (bytes) is copied."""
    try:
        view = (ctypes.c_char * size).from_buffer(buffer)
    except TypeError:  # read-only
        view = (ctypes.c_char * size).from_buffer_copy(buffer)
    return ctypes.addressof(view), view


class IsalError(RuntimeError):
    """ISA-L refused a call (a parameter this module got wrong, never the data)."""


class _Deflater:
    """One thread's stream state, level buffers and output buffer, reused block after block."""

    def __init__(self, lib: _Library) -> None:
        self._lib = lib
        self._stream = ZStream()
        self._level_bufs: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self._out = bytearray()

    def _start(self, level: int, gzip_flag: int) -> ZStream:
        st = self._stream
        self._lib.init(ctypes.byref(st))
        st.level = level
        if _LEVEL_BUF[level]:
            buf = self._level_bufs.get(level)
            if buf is None:
                buf = self._level_bufs[level] = ctypes.create_string_buffer(_LEVEL_BUF[level])
            st.level_buf, st.level_buf_size = ctypes.addressof(buf), len(buf)
        else:  # level 0 works in the stream's own state
            st.level_buf, st.level_buf_size = None, 0
        st.hist_bits, st.gzip_flag = 15, gzip_flag
        return st

    def _run(self, st: ZStream, data: Any, size: int, *, hold_gil: bool = False) -> int:
        """Deflate all of ``data`` (flush fields already set) into ``self._out``; return the
        output's length."""
        in_addr, keep_in = _address(data, size) if size else (0, None)
        st.next_in, st.avail_in = in_addr or None, size
        produced = 0
        deflate = self._lib.deflate_held if hold_gil else self._lib.deflate
        if len(self._out) < deflate_bound(size):
            self._out = bytearray(deflate_bound(size))
        while True:
            out_addr, keep_out = _address(self._out, len(self._out))
            st.next_out, st.avail_out = out_addr + produced, len(self._out) - produced
            err = deflate(ctypes.byref(st))
            produced = len(self._out) - int(st.avail_out)
            del keep_out
            if err != _COMP_OK:
                raise IsalError(f"isal_deflate failed with error {err}")
            if st.avail_out:  # room left: ISA-L has taken all input and flushed
                if st.avail_in:
                    raise IsalError("isal_deflate left input unread")
                break
            # Out of room (never seen with deflate_bound): a larger buffer, same stream.
            grown = bytearray(2 * len(self._out))
            grown[:produced] = memoryview(self._out)[:produced]
            self._out = grown
        del keep_in
        return produced

    def block(self, level: int, data: Any, zdict: bytes,
              last: bool) -> tuple[bytes, int]:
        """(raw deflate of ``data``, its CRC-32): primed with ``zdict``, ending in a sync
        flush, or for the ``last`` block in a final block."""
        size = len(data)
        st = self._start(level, _IGZIP_GZIP_NO_HDR)  # gzip mode: ISA-L keeps the CRC-32
        if zdict:
            dict_addr, keep = _address(zdict, len(zdict))
            if self._lib.set_dict(ctypes.byref(st), dict_addr, len(zdict)) != _COMP_OK:
                raise IsalError("isal_deflate_set_dict failed")
            del keep
        if last:
            st.flush, st.end_of_stream = _FULL_FLUSH, 1
        else:
            st.flush = _SYNC_FLUSH
        produced = self._run(st, data, size)
        crc = st.internal_state.crc
        if last:  # gzip mode wrote its trailer (CRC-32, size): ours comes from the writer
            if st.internal_state.state != _ZSTATE_END:
                raise IsalError("isal_deflate did not finish the stream")
            produced -= 8
        return bytes(memoryview(self._out)[:produced]), crc

    def size(self, level: int, data: Any) -> int:
        """How many bytes ``data`` deflates to on its own (a complete stream)."""
        st = self._start(level, _IGZIP_DEFLATE)
        st.flush, st.end_of_stream = _FULL_FLUSH, 1
        return self._run(st, data, len(data), hold_gil=len(data) <= _HELD_MAX)


class IsalDeflate:
    """Thread-safe front: each calling thread gets its own :class:`_Deflater`."""

    def __init__(self, lib: _Library) -> None:
        self._lib = lib
        self._local = threading.local()

    def _mine(self) -> _Deflater:
        d: _Deflater | None = getattr(self._local, "deflater", None)
        if d is None:
            d = self._local.deflater = _Deflater(self._lib)
        return d

    def block(self, level: int, data: Any, zdict: bytes, last: bool) -> tuple[bytes, int]:
        """See :meth:`_Deflater.block`."""
        return self._mine().block(level, data, zdict, last)

    def size(self, level: int, data: Any) -> int:
        """See :meth:`_Deflater.size`."""
        return self._mine().size(level, data)


_loaded: list[IsalDeflate | None] = []
_load_lock = threading.Lock()


def _library_path() -> str | None:
    """The isal wheel's extension module that carries ISA-L, if its version is known."""
    try:
        from isal import _isal, isal_zlib
    except ImportError:
        return None
    version = tuple(int(p) for p in (_isal.ISAL_MAJOR_VERSION, _isal.ISAL_MINOR_VERSION))
    if version not in KNOWN_VERSIONS:
        return None
    return str(isal_zlib.__file__)


def load() -> IsalDeflate | None:
    """The ctypes deflate, or None where it cannot be used (no wheel, unknown ISA-L, no
    exported symbols); the first call decides for the process."""
    with _load_lock:
        if not _loaded:
            _loaded.append(_load())
        return _loaded[0]


def _load() -> IsalDeflate | None:
    if ctypes.sizeof(ZStream) != _ZSTREAM_SIZE:  # pragma: no cover - a non-LP64 platform
        return None
    path = _library_path()
    if path is None:
        return None
    try:
        return IsalDeflate(_Library(path))
    except (OSError, AttributeError):  # not loadable, or the symbols are not exported
        return None
