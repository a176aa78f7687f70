"""ISA-L through ctypes (bundler.deflate_isal): one call per block, the same streams' rules as
the binding (raw deflate, preset dictionary, sync flush between blocks, one gzip member)."""

from __future__ import annotations

import random
import subprocess
import threading
import zlib

import pytest

from bundler import deflate, deflate_isal
from bundler.deflate import CompressionSettings, ParallelGzipWriter

ENGINE = deflate_isal.load()
BLOCK = 64 * 1024


def _text(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghij klmnop", k=rng.randint(2, 9))) for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def _hard(n: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.getrandbits(6) for _ in range(n))


def _random(n: int, seed: int = 2) -> bytes:
    return random.Random(seed).randbytes(n)


def _inflate(fragment: bytes, zdict: bytes) -> tuple[bytes, bool]:
    d = zlib.decompressobj(-15, zdict=zdict) if zdict else zlib.decompressobj(-15)
    return d.decompress(fragment), d.eof


def test_the_wheels_isal_is_loaded() -> None:
    # isal is a dependency and its ISA-L is a release this module knows: the fast path is
    # what runs here (and in CI), not the fallback.
    from isal import _isal

    assert (_isal.ISAL_MAJOR_VERSION, _isal.ISAL_MINOR_VERSION) in deflate_isal.KNOWN_VERSIONS
    assert ENGINE is not None
    assert deflate._deflater("isal") is ENGINE
    assert deflate._deflater("zlib-ng") is deflate._zlib_ng  # the others keep their binding


pytestmark = pytest.mark.skipif(ENGINE is None, reason="no ISA-L to call through ctypes")


@pytest.mark.parametrize("level", [0, 1, 2, 3])
@pytest.mark.parametrize("kind", ["text", "hard", "random", "zeros", "tiny"])
@pytest.mark.parametrize("last", [False, True])
def test_a_block_round_trips_with_its_crc(level: int, kind: str, last: bool) -> None:
    assert ENGINE is not None
    data = {"text": _text(3 * BLOCK), "hard": _hard(BLOCK), "random": _random(BLOCK + 5),
            "zeros": bytes(2 * BLOCK), "tiny": b"ab"}[kind]
    zdict = _text(32 * 1024, seed=9)
    for dictionary in (b"", zdict):
        out, crc = ENGINE.block(level, bytearray(data), dictionary, last)
        assert crc == zlib.crc32(data)
        assert _inflate(out, dictionary) == (data, last)  # final block only when last


def test_the_dictionary_is_used() -> None:
    assert ENGINE is not None
    zdict = _text(32 * 1024, seed=3)
    data = zdict[:20000]  # all of it a match into the dictionary
    primed, _ = ENGINE.block(1, bytearray(data), zdict, False)
    cold, _ = ENGINE.block(1, bytearray(data), b"", False)
    assert len(primed) < len(cold) / 5


def test_empty_and_read_only_blocks() -> None:
    assert ENGINE is not None
    out, crc = ENGINE.block(1, bytearray(), b"x" * 100, True)
    assert crc == 0 and _inflate(out, b"x" * 100) == (b"", True)
    out, crc = ENGINE.block(1, bytearray(), b"", False)
    assert crc == 0 and _inflate(out, b"") == (b"", False)
    data = _text(5000)
    out, crc = ENGINE.block(1, data, b"", False)  # bytes: copied, not written
    assert crc == zlib.crc32(data) and _inflate(out, b"")[0] == data
    view = memoryview(bytearray(data))[100:4000]  # a partial block is a view
    out, crc = ENGINE.block(1, view, b"", True)
    assert crc == zlib.crc32(data[100:4000]) and _inflate(out, b"") == (data[100:4000], True)


def test_an_output_buffer_that_runs_out_is_grown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deflate_isal, "deflate_bound", lambda size: 256)
    engine = deflate_isal.IsalDeflate(deflate_isal._Library(deflate_isal._library_path() or ""))
    data = _random(3 * BLOCK) + _text(BLOCK)
    for last in (False, True):
        out, crc = engine.block(1, bytearray(data), b"", last)
        assert crc == zlib.crc32(data) and _inflate(out, b"") == (data, last)
    assert ENGINE is not None
    assert abs(engine.size(1, data) - ENGINE.size(1, data)) < len(data) // 100


def test_probe_sizes_match_the_binding() -> None:
    # The incompressible/hard decisions take the sample's size from whichever path runs:
    # for any sample that shrinks they agree, so which blocks are stored does not depend on it.
    assert ENGINE is not None
    for sample in (_text(16384), _hard(16384), bytes(16384), _text(16000, seed=5)[:9000]):
        assert ENGINE.size(1, sample) == len(deflate._isal.compress(sample, level=1, wbits=-15))


def test_threads_each_get_their_own_stream() -> None:
    assert ENGINE is not None
    inputs = [_text(2 * BLOCK, seed=s) + _hard(BLOCK, seed=s) for s in range(8)]
    want = [ENGINE.block(1, bytearray(d), b"", False) for d in inputs]
    got: dict[int, tuple[bytes, int]] = {}

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = ENGINE.block(1, bytearray(inputs[i]), b"", False)  # type: ignore[union-attr]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(8)] == want


def _gzip(data: bytes, settings: CompressionSettings, workers: int = 2) -> bytes:
    out: list[bytes] = []
    with ParallelGzipWriter(out.append, settings, workers=workers) as w:
        for i in range(0, len(data), 10000):
            w.write(data[i:i + 10000])
    return b"".join(out)


@pytest.mark.parametrize("spec", [("isal", 1, None), ("zlib-ng", 5, ("isal", 3, 0.55))])
def test_joined_blocks_are_one_gzip_member(tmp_path, spec) -> None:
    backend, level, hard = spec
    settings = CompressionSettings(backend, level, block_size=BLOCK, hard=hard)
    data = _text(4 * BLOCK) + _random(BLOCK) + _hard(2 * BLOCK) + bytes(BLOCK) + _text(777)
    stream = _gzip(data, settings)
    assert stream == _gzip(data, settings, workers=1)  # the same bytes whatever the threads do
    d = zlib.decompressobj(31)
    assert d.decompress(stream) == data and d.eof and not d.unused_data
    path = tmp_path / "s.gz"
    path.write_bytes(stream)
    subprocess.run(["gzip", "-t", str(path)], check=True)
    assert subprocess.run(["gzip", "-dc", str(path)], capture_output=True,
                          check=True).stdout == data
    assert _gzip(b"", settings) and zlib.decompress(_gzip(b"", settings), 31) == b""


def test_without_the_library_the_binding_deflates(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = CompressionSettings("isal", 1, block_size=BLOCK)
    data = _text(3 * BLOCK) + _hard(BLOCK) + _random(BLOCK)
    fast = _gzip(data, settings)
    monkeypatch.setattr(deflate, "_ctypes_isal", [None])
    assert deflate._deflater("isal") is deflate._isal
    slow = _gzip(data, settings)
    assert zlib.decompress(slow, 31) == zlib.decompress(fast, 31) == data
    assert abs(len(slow) - len(fast)) < len(fast) // 100  # same ratio, other block ends


@pytest.mark.parametrize("case", ["no wheel", "unknown version", "no symbols", "not loadable"])
def test_load_declines_what_it_cannot_use(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    from isal import _isal

    if case == "no wheel":
        monkeypatch.setattr(deflate_isal, "_library_path", lambda: None)
    elif case == "unknown version":
        monkeypatch.setattr(_isal, "ISAL_MINOR_VERSION", 99)
    elif case == "no symbols":
        monkeypatch.setattr(deflate_isal, "_library_path", lambda: "libc.so.6")
    else:
        monkeypatch.setattr(deflate_isal, "_library_path", lambda: "/nonexistent/libisal.so")
    assert deflate_isal._load() is None
