"""Tests for bundler.deflate: the parallel gzip writer and the bounded decoder."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
import threading
import time
import tracemalloc
import zlib

import pytest

from bundler import deflate
from bundler.concurrency import Executor
from bundler.deflate import (
    CompressionSettings,
    GzipDecoder,
    ParallelGzipWriter,
    available_backends,
    compression_settings,
)
from bundler.errors import ArchiveError, UsageError

BLOCK = 64 * 1024  # small blocks keep multi-block cases fast
SPECS: list[str | int] = ["fast", "default", "best", 1, 2, 3, 4, 5, 6, 7, 8, 9]
GZIP = shutil.which("gzip")


def _text(n: int, seed: int = 1) -> bytes:
    """Compressible, not trivially so: words like a filesystem's text files."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(500)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choices(words, k=64)) + b"\n"
    return bytes(out[:n])


def _random(n: int, seed: int = 2) -> bytes:
    return random.Random(seed).randbytes(n)


INPUTS: dict[str, bytes] = {
    "empty": b"",
    "one-byte": b"x",
    "one-block": _text(BLOCK),
    "block-1": _text(BLOCK - 1),
    "block+1": _text(BLOCK + 1),
    "many-blocks": _text(5 * BLOCK + 12345, seed=3) + _random(BLOCK, seed=4),
    "compressible": bytes(3 * BLOCK) + b"a" * BLOCK,
    "random": _random(2 * BLOCK + 77),
}


def _compress(data: bytes, settings: CompressionSettings, *, sizes: list[int] | None = None,
              **kw: int) -> bytes:
    parts: list[bytes] = []
    w = ParallelGzipWriter(parts.append, settings, **kw)
    if sizes is None:
        w.write(data)
    else:
        pos = 0
        for n in sizes:
            w.write(data[pos:pos + n])
            pos += n
        w.write(data[pos:])
    w.close()
    blob = b"".join(parts)
    assert w.bytes_in == len(data)
    assert w.bytes_out == len(blob)
    return blob


def _assert_single_member(blob: bytes, data: bytes) -> None:
    # The fixed 10-byte header gzip writes for stdin: no flags, mtime 0, OS Unix.
    assert blob[:4] == b"\x1f\x8b\x08\x00"
    assert blob[4:8] == b"\0\0\0\0"
    assert blob[9] == 3
    d = zlib.decompressobj(31)
    assert d.decompress(blob) == data
    # One member: the stream ends exactly after the first trailer.
    assert d.eof
    assert d.unused_data == b""
    assert int.from_bytes(blob[-8:-4], "little") == zlib.crc32(data)
    assert int.from_bytes(blob[-4:], "little") == len(data) & 0xFFFFFFFF


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bundler-deflate")]


def _small(spec: str | int) -> CompressionSettings:
    s = compression_settings(spec)
    return CompressionSettings(s.backend, s.level, BLOCK)


# -- ParallelGzipWriter: format ---------------------------------------------


@pytest.mark.parametrize("name", list(INPUTS))
@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_python_and_gzip_cli(spec: str | int, name: str) -> None:
    data = INPUTS[name]
    blob = _compress(data, _small(spec), workers=2)
    assert gzip.decompress(blob) == data
    _assert_single_member(blob, data)
    if GZIP is None:
        pytest.skip("gzip command not installed")
    proc = subprocess.run([GZIP, "-dc"], input=blob, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


@pytest.mark.parametrize("backend", available_backends())
def test_every_backend_level(backend: str) -> None:
    data = INPUTS["many-blocks"]
    for level in deflate._LEVELS[backend]:
        blob = _compress(data, CompressionSettings(backend, level, BLOCK))
        _assert_single_member(blob, data)


@pytest.mark.parametrize("spec", ["fast", "default", "best"])
def test_random_odd_write_sizes(spec: str | int) -> None:
    rng = random.Random(7)
    data = _text(9 * BLOCK + 999, seed=8) + _random(BLOCK // 3, seed=9)
    sizes = [rng.choice([1, 2, 511, 512, 513, 4095, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 7])
             for _ in range(40)]
    sizes = [n for n in sizes if n][: len(data)]
    blob = _compress(data, _small(spec), sizes=sizes, workers=2, max_pending=3)
    _assert_single_member(blob, data)
    if GZIP is not None:
        out = subprocess.run([GZIP, "-dc"], input=blob, capture_output=True, check=True).stdout
        assert out == data


def test_default_block_size_and_single_worker() -> None:
    data = _text(3 * (1 << 20) + 5, seed=11)
    blob = _compress(data, compression_settings("default"), workers=1)
    _assert_single_member(blob, data)


def test_blocks_smaller_than_the_window() -> None:
    # The preset dictionary then spans several previous blocks.
    data = _text(200_000, seed=12)
    for backend in available_backends():
        blob = _compress(data, CompressionSettings(backend, 1 if backend != "isal" else 2, 1000))
        _assert_single_member(blob, data)


def test_dictionary_keeps_ratio_close_to_a_single_stream() -> None:
    data = _text(16 * BLOCK, seed=13)
    parallel = len(_compress(data, CompressionSettings("zlib", 6, BLOCK)))
    single = len(gzip.compress(data, 6))
    assert parallel < single * 1.02


def test_caller_may_reuse_its_buffer_after_write() -> None:
    data = _text(3 * BLOCK + 10, seed=14)
    parts: list[bytes] = []
    w = ParallelGzipWriter(parts.append, _small("default"), workers=2)
    buf = bytearray(1000)
    for i in range(0, len(data), 1000):
        n = len(data[i:i + 1000])
        buf[:n] = data[i:i + 1000]
        w.write(memoryview(buf)[:n])
        buf[:] = b"\xff" * 1000  # would corrupt the output if the writer kept a reference
    w.close()
    _assert_single_member(b"".join(parts), data)


def test_output_is_emitted_during_write_not_only_at_close() -> None:
    parts: list[bytes] = []
    w = ParallelGzipWriter(parts.append, _small("fast"), workers=2, max_pending=2)
    w.write(_random(10 * BLOCK))
    assert parts, "full blocks should have been passed to out before close()"
    w.close()


def test_close_twice_and_write_after_close() -> None:
    parts: list[bytes] = []
    w = ParallelGzipWriter(parts.append, _small("fast"))
    w.write(b"abc")
    w.close()
    n = len(parts)
    w.close()  # idempotent
    assert len(parts) == n
    with pytest.raises(ValueError):
        w.write(b"x")
    assert not _threads()


def test_context_manager() -> None:
    parts: list[bytes] = []
    with ParallelGzipWriter(parts.append, _small("fast")) as w:
        w.write(b"hello")
    assert gzip.decompress(b"".join(parts)) == b"hello"


def test_bad_parameters() -> None:
    with pytest.raises(UsageError):
        ParallelGzipWriter(lambda b: None, _small("fast"), workers=0)
    with pytest.raises(UsageError):
        ParallelGzipWriter(lambda b: None, _small("fast"), max_pending=0)


# -- ParallelGzipWriter: errors, threads, memory -----------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("fail_at", [1, 2, 5])
def test_failing_out_callback_propagates(fail_at: int) -> None:
    calls = 0

    def out(b: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise Boom("disk full")

    w = ParallelGzipWriter(out, _small("fast"), workers=2, max_pending=2)
    with pytest.raises(Boom, match="disk full"):
        for _ in range(8):
            w.write(_random(BLOCK, seed=calls))
        w.close()
    assert not _threads()
    with pytest.raises(ValueError):
        w.write(b"more")


def test_failing_worker_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    real = deflate._compress_block
    count = 0
    lock = threading.Lock()

    def flaky(*args: object) -> tuple[bytes, int]:
        nonlocal count
        with lock:
            count += 1
            n = count
        if n == 3:
            raise MemoryError("worker failed")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(deflate, "_compress_block", flaky)
    w = ParallelGzipWriter(lambda b: None, _small("default"), workers=2)
    with pytest.raises(MemoryError, match="worker failed"):
        for _ in range(10):
            w.write(_text(BLOCK))
        w.close()
    assert not _threads()


def test_failure_in_the_last_block_surfaces_from_close(monkeypatch: pytest.MonkeyPatch) -> None:
    real = deflate._compress_block

    def fail_last(  # type: ignore[no-untyped-def]
            module: object, level: int, block: bytes, zdict: bytes, last: bool):
        if last:
            raise Boom("last")
        return real(module, level, block, zdict, last)  # type: ignore[arg-type]

    monkeypatch.setattr(deflate, "_compress_block", fail_last)
    w = ParallelGzipWriter(lambda b: None, _small("fast"), workers=2)
    w.write(_text(3 * BLOCK))
    with pytest.raises(Boom):
        w.close()
    assert not _threads()


def test_abort_stops_threads_and_output(monkeypatch: pytest.MonkeyPatch) -> None:
    real = deflate._compress_block

    def slow(*args: object) -> tuple[bytes, int]:
        time.sleep(0.05)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(deflate, "_compress_block", slow)
    parts: list[bytes] = []
    w = ParallelGzipWriter(parts.append, _small("fast"), workers=2, max_pending=6)
    w.write(_text(5 * BLOCK))
    assert _threads()
    n = len(parts)
    w.abort()
    assert not _threads()
    assert len(parts) == n  # nothing written by or after abort
    w.abort()  # idempotent
    with pytest.raises(ValueError):
        w.close()


def test_abort_before_any_output_writes_nothing() -> None:
    parts: list[bytes] = []
    w = ParallelGzipWriter(parts.append, _small("fast"))
    w.write(b"abc")
    w.abort()
    assert parts == []
    assert not _threads()


def test_close_shuts_the_pool_down() -> None:
    w = ParallelGzipWriter(lambda b: None, _small("fast"), workers=2)
    w.write(_text(4 * BLOCK))
    w.close()
    assert not _threads()


@pytest.mark.parametrize(("workers", "max_pending"), [(2, 3), (2, None), (1, 1)])
def test_blocks_in_flight_never_exceed_max_pending(
    monkeypatch: pytest.MonkeyPatch, workers: int, max_pending: int | None
) -> None:
    # In flight = submitted to the pool but not yet handed to out(); out() is
    # called exactly once per block, so submissions minus out() calls counts them.
    submitted = 0
    emitted = 0
    high = 0

    class CountingExecutor(Executor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            nonlocal submitted, high
            submitted += 1
            high = max(high, submitted - emitted)
            return super().submit(fn, *args, **kwargs)

    def slow_out(b: bytes) -> None:
        nonlocal emitted
        time.sleep(0.002)
        emitted += 1

    monkeypatch.setattr(deflate, "Executor", CountingExecutor)
    w = ParallelGzipWriter(slow_out, _small("fast"), workers=workers, max_pending=max_pending)
    limit = max_pending if max_pending is not None else 2 * workers + 2
    data = _text(30 * BLOCK)
    for i in range(0, len(data), 3 * BLOCK + 5):
        w.write(data[i:i + 3 * BLOCK + 5])
        assert w.in_flight <= limit
    w.close()
    assert submitted == emitted == w.blocks == 30
    assert high <= limit
    assert high == limit  # the window was actually filled, so the bound was exercised
    assert w.max_in_flight == high


# -- GzipDecoder --------------------------------------------------------------


def _decode_all(blob: bytes, *, feed: int = 1 << 16, max_output: int = 1 << 20,
                module: object | None = None) -> bytes:
    dec = GzipDecoder()
    if module is not None:
        dec._module = module  # type: ignore[assignment]
    out: list[bytes] = []
    for i in range(0, len(blob), feed):
        chunk = dec.feed(blob[i:i + feed], max_output)
        assert len(chunk) <= max_output
        out.append(chunk)
        while dec.pending():
            chunk = dec.feed(b"", max_output)
            assert len(chunk) <= max_output
            out.append(chunk)
    dec.finish()
    assert dec.bytes_out == sum(map(len, out))
    return b"".join(out)


def _decoder_modules() -> list[object]:
    mods: list[object] = [zlib]
    if deflate._isal is not None:
        mods.append(deflate._isal)
    if deflate._zlib_ng is not None:
        mods.append(deflate._zlib_ng)
    return mods


@pytest.fixture(params=_decoder_modules(), ids=lambda m: m.__name__)
def inflater(request: pytest.FixtureRequest) -> object:
    return request.param


@pytest.mark.parametrize("name", list(INPUTS))
def test_decoder_round_trip(name: str, inflater: object) -> None:
    data = INPUTS[name]
    blob = _compress(data, _small("default"))
    assert _decode_all(blob, module=inflater) == data
    assert _decode_all(gzip.compress(data), feed=7, max_output=1000, module=inflater) == data


def test_decoder_small_max_output_returns_bounded_chunks(inflater: object) -> None:
    data = _text(300_000) + bytes(500_000)
    blob = gzip.compress(data)
    dec = GzipDecoder()
    dec._module = inflater  # type: ignore[assignment]
    got = [dec.feed(blob, 4096)]
    while dec.pending():
        got.append(dec.feed(b"", 4096))
    dec.finish()
    assert all(len(c) <= 4096 for c in got)
    assert b"".join(got) == data
    assert len(got) >= len(data) // 4096


def test_decoder_multi_member(inflater: object) -> None:
    a, b = _text(100_000, seed=20), _text(50_000, seed=21)
    blob = gzip.compress(a) + gzip.compress(b"") + gzip.compress(b)
    dec = GzipDecoder()
    assert _decode_all(blob, feed=1000, max_output=3000, module=inflater) == a + b
    assert _decode_all(blob, feed=len(blob), max_output=1 << 30, module=inflater) == a + b
    dec.feed(blob, 1 << 30)
    dec.finish()
    assert dec.members == 3


@pytest.mark.parametrize("cut", [1, 5, 10, 100, -9, -8, -4, -1])
def test_decoder_truncated(cut: int, inflater: object) -> None:
    blob = gzip.compress(_text(50_000))
    with pytest.raises(ArchiveError, match="truncated"):
        _decode_all(blob[:cut], module=inflater)


def test_decoder_empty_input() -> None:
    dec = GzipDecoder()
    assert dec.feed(b"", 10) == b""
    with pytest.raises(ArchiveError, match="empty"):
        dec.finish()


@pytest.mark.parametrize("where", ["crc", "isize", "data"])
def test_decoder_corruption(where: str, inflater: object) -> None:
    blob = bytearray(gzip.compress(_text(50_000)))
    pos = {"crc": -8, "isize": -3, "data": len(blob) // 2}[where]
    blob[pos] ^= 0x55
    with pytest.raises(ArchiveError):
        _decode_all(bytes(blob), module=inflater)


@pytest.mark.parametrize("garbage", [b"\0", b"\0" * 512, b"junk", b"\x1f", b"\x1f\x8bxyz"])
def test_decoder_trailing_garbage(garbage: bytes, inflater: object) -> None:
    blob = gzip.compress(_text(10_000)) + garbage
    with pytest.raises(ArchiveError):
        _decode_all(blob, module=inflater)


def test_decoder_not_gzip() -> None:
    dec = GzipDecoder()
    with pytest.raises(ArchiveError, match="not a gzip"):
        dec.feed(b"PK\x03\x04 a zip file", 100)


def test_decoder_gzip_bomb_is_read_in_bounded_chunks() -> None:
    # 1 GiB of zeros deflates to about 1 MB; reading it 1 MiB at a time must
    # not hold more than a few chunks in memory at once.
    zeros = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(comp.compress(zeros) for _ in range(1024)) + comp.flush()
    assert len(bomb) < 2 << 20

    dec = GzipDecoder()
    total = 0
    tracemalloc.start()
    try:
        for i in range(0, len(bomb), 1 << 16):
            total += len(dec.feed(bomb[i:i + (1 << 16)], 1 << 20))
            while dec.pending():
                chunk = dec.feed(b"", 1 << 20)
                assert len(chunk) <= 1 << 20
                total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dec.finish()
    assert total == 1 << 30
    assert peak < 8 << 20


def test_decoder_reads_parallel_writer_output_exactly() -> None:
    data = _text(7 * BLOCK + 3)
    blob = _compress(data, _small("fast"), workers=2)
    dec = GzipDecoder()
    assert dec.feed(blob, len(data) + 1) == data
    dec.finish()
    assert dec.members == 1


# -- settings -----------------------------------------------------------------


@pytest.mark.parametrize("spec", [*SPECS, "FAST", " best ", "1", "9"])
def test_compression_settings_valid(spec: str | int) -> None:
    s = compression_settings(spec)
    assert s.backend in available_backends()
    assert s.level in deflate._LEVELS[s.backend]
    assert s.block_size == 1 << 20


def test_compression_settings_named_match_levels() -> None:
    assert compression_settings("fast") == compression_settings(1)
    assert compression_settings("best") == compression_settings(9)
    assert compression_settings("7") == compression_settings(7)


@pytest.mark.parametrize(
    "spec", ["", "0", "10", "fastest", "-1", "6.0", 0, 10, -1, True, False, 1.5, None, b"6"]
)
def test_compression_settings_invalid(spec: object) -> None:
    with pytest.raises(UsageError):
        compression_settings(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("backend", "level", "block_size"),
    [("lz4", 1, 1 << 20), ("isal", 4, 1 << 20), ("zlib", 0, 1 << 20), ("zlib-ng", 10, 1 << 20),
     ("zlib", 6, 0), ("zlib", True, 1 << 20)],
)
def test_compression_settings_dataclass_validates(backend: str, level: int,
                                                  block_size: int) -> None:
    with pytest.raises(UsageError):
        CompressionSettings(backend, level, block_size)


def test_compression_settings_fall_back_without_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deflate, "_isal", None)
    assert compression_settings("fast").backend != "isal"
    with pytest.raises(UsageError):
        ParallelGzipWriter(lambda b: None, CompressionSettings("isal", 1))
    monkeypatch.setattr(deflate, "_zlib_ng", None)
    assert compression_settings("best") == CompressionSettings("zlib", 9)


def test_crc32_combine_fallback_matches() -> None:
    a, b = _random(1000, seed=30), _random(3_000_000, seed=31)
    assert deflate._crc32_combine_py(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert deflate._crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_incompressible_blocks_take_the_fast_path():
    from bundler.deflate import _looks_incompressible

    random_block = os.urandom(1 << 20)
    text_block = b"".join(b"word %d " % i for i in range(150_000))[: 1 << 20]
    half = os.urandom(1 << 19) + bytes(1 << 19)  # the middle and end samples are zeros
    assert _looks_incompressible(random_block)
    assert not _looks_incompressible(text_block)
    assert not _looks_incompressible(half)
    assert not _looks_incompressible(os.urandom(1000))  # too small to judge
    out: list[bytes] = []
    writer = ParallelGzipWriter(out.append, compression_settings("best"))
    writer.write(random_block + text_block)
    writer.close()
    assert gzip.decompress(b"".join(out)) == random_block + text_block


@pytest.mark.parametrize("level", ["fast", "default", "best"])
def test_incompressible_blocks_are_stored_and_decode_with_gzip(level, tmp_path):
    random_a, random_b = os.urandom((1 << 20) + 12345), os.urandom(200_000)
    text = b"".join(b"line %d of text\n" % i for i in range(80_000))
    data = random_a + text + random_b  # stored, compressed (primed by stored input), stored + final
    out: list[bytes] = []
    writer = ParallelGzipWriter(out.append, CompressionSettings(compression_settings(level).backend,
                                                                compression_settings(level).level,
                                                                block_size=256 * 1024))
    writer.write(data)
    writer.close()
    stream = b"".join(out)
    assert gzip.decompress(stream) == data
    (tmp_path / "s.gz").write_bytes(stream)
    assert subprocess.run(["gzip", "-dc", str(tmp_path / "s.gz")], capture_output=True,
                          check=True).stdout == data
    # stored: the random parts cost 5 bytes per 64 KiB, not a deflate search
    assert len(stream) < len(random_a) + len(random_b) + len(text) // 2


def test_stored_fragments_mark_only_the_last_block_final():
    from bundler.deflate import _stored

    for size, last in ((0, True), (0, False), (1, True), (0xFFFF, True), (0x10000, False),
                       (300_000, True)):
        block = os.urandom(size)
        fragment = _stored(block, last)
        decoder = zlib.decompressobj(-15)
        assert decoder.decompress(fragment) == block
        assert decoder.eof == last


def _hard(n: int, seed: int = 7) -> bytes:
    """Bytes of 6 bits of entropy each: compressible (~80 %), but hard (no long matches)."""
    rng = random.Random(seed)
    return bytes(rng.getrandbits(6) for _ in range(n))


@pytest.mark.skipif(not deflate._isal or not deflate._zlib_ng, reason="needs isal and zlib-ng")
def test_default_deflates_hard_blocks_with_the_faster_deflater(tmp_path) -> None:
    settings = compression_settings("default")
    assert (settings.backend, settings.level, settings.hard) == ("zlib-ng", 5, ("isal", 3, 0.55))
    hard_module = (deflate._isal, 3, 0.55)
    easy, hard = _text(1 << 18), _hard(1 << 18)
    assert deflate._probe(easy)[1] < 0.55 < deflate._probe(hard)[1] < 0.97
    zdict = _text(32768, seed=9)
    # a hard block: exactly ISA-L 3's fragment; an easy one: zlib-ng 5's, as before
    assert (deflate._compress_block(deflate._zlib_ng, 5, hard, zdict, False, hard_module)
            == deflate._compress_block(deflate._isal, 3, hard, zdict, False))
    assert (deflate._compress_block(deflate._zlib_ng, 5, easy, zdict, False, hard_module)
            == deflate._compress_block(deflate._zlib_ng, 5, easy, zdict, False))
    # mixed fragments make one standard gzip member, the same for every run
    data = easy + hard + _random(1 << 18) + easy + hard[:1000]
    small = CompressionSettings("zlib-ng", 5, block_size=1 << 18, hard=settings.hard)
    stream = _compress(data, small)
    assert stream == _compress(data, small, workers=1)
    (tmp_path / "s.gz").write_bytes(stream)
    assert subprocess.run(["gzip", "-dc", str(tmp_path / "s.gz")], capture_output=True,
                          check=True).stdout == data


def test_hard_block_settings_are_validated_and_need_their_backend(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in (("lz4", 1, 0.5), ("isal", 7, 0.5), ("isal", 3, 0.0), ("isal", 3, 1.5)):
        with pytest.raises(UsageError, match="hard-to-compress"):
            CompressionSettings("zlib-ng", 5, hard=bad)
    assert compression_settings("fast").hard is None and compression_settings(9).hard is None
    monkeypatch.setattr(deflate, "_isal", None)
    assert compression_settings("default").hard is None  # no ISA-L: zlib-ng 5 throughout


# -- ParallelGzipWriter: filling blocks in place, block sizes ---------------------------


def test_filling_blocks_in_place_writes_what_write_writes():
    data = _text(5 * BLOCK + 12345, seed=5) + _random(BLOCK // 2, seed=6)
    settings = _small("fast")
    written = _compress(data, settings)
    parts: list[bytes] = []
    w = ParallelGzipWriter(parts.append, settings)
    pos = 0
    for n in [1, 1000, BLOCK, 3 * BLOCK, 77] * 20:
        if pos == len(data):
            break
        space = w.space()
        take = min(n, len(space), len(data) - pos)
        space[:take] = data[pos:pos + take]
        w.advance(take)
        pos += take
    assert pos == len(data)
    with pytest.raises(ValueError):
        w.advance(BLOCK + 1)  # past the block
    w.close()
    assert b"".join(parts) == written
    _assert_single_member(written, data)


def _block_sizes(monkeypatch, data: bytes, settings: CompressionSettings,
                 **kw: int) -> list[int]:
    sizes: list[int] = []
    original = ParallelGzipWriter._timed_compress

    def record(self, block, zdict, last):
        sizes.append(len(block))
        return original(self, block, zdict, last)

    monkeypatch.setattr(ParallelGzipWriter, "_timed_compress", record)
    blob = _compress(data, settings, sizes=[100_000] * (len(data) // 100_000), **kw)
    _assert_single_member(blob, data)
    return sizes


def test_blocks_are_small_at_both_ends_and_in_place_in_between(monkeypatch):
    block = 8 * deflate.WINDOW_SIZE
    base = compression_settings("fast")
    settings = CompressionSettings(base.backend, base.level, block)
    data = _text(10 * block + 5000, seed=7)
    # without the size: only the first block's worth is cut smaller
    sizes = _block_sizes(monkeypatch, data, settings)
    assert sizes[:4] == [block // 8, block // 8, block // 4, block // 2]
    assert sizes[4:] == [block] * 9 + [5000]
    # with it, the last four blocks' worth goes in quarters; all boundaries before stay put
    sizes = _block_sizes(monkeypatch, data, settings, expected_size=len(data))
    assert sum(sizes) == len(data)
    assert sizes[:4] == [block // 8, block // 8, block // 4, block // 2]
    last_whole = max(i for i, n in enumerate(sizes) if n == block)
    tail = sizes[last_whole + 1:]
    assert 3 * block < sum(tail) <= 4 * block and set(tail[:-1]) == {block // 4}
    ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
    assert all(end % block == 0 for end in ends[3:] if end <= len(data) - 4 * block)
    # small blocks are not cut further
    assert set(_block_sizes(monkeypatch, _text(5 * BLOCK), _small("fast"))[:-1]) == {BLOCK}
