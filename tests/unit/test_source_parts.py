"""Image sources (data regions, zero runs), the part cutter and the directory sink (pyfakefs)."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from bundler import source as source_module
from bundler.dirsink import DirectorySink
from bundler.errors import ImageError, OutputError
from bundler.parts import PART_SIZE, Part, provisional_name
from bundler.pipeline import AesCbcEncryptor, PartCutter, max_bundled_size
from bundler.source import (
    StreamImageSource,
    drop_zero_runs,
    find_data_regions,
    open_image,
    scan_zero_runs,
)
from tests.support.sinks import MemorySink

G = 64 * 1024


def reader(data: bytes):
    return lambda offset, length: data[offset:offset + length]


def test_drop_zero_runs_splits_around_zero_granules():
    data = b"a" * G + bytes(3 * G) + b"b" * 10 + bytes(G - 10) + bytes(G) + b"c" * 5
    regions = drop_zero_runs(reader(data), [(0, len(data))])
    assert regions == [(0, G), (4 * G, G), (6 * G, 5)]
    kept = b"".join(data[o:o + n] for o, n in regions)
    assert kept.replace(b"\0", b"") == b"a" * G + b"b" * 10 + b"c" * 5


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("piece", [G, 3 * G, 1 << 20])
def test_the_threaded_zero_scan_finds_what_drop_zero_runs_finds(tmp_path, monkeypatch, seed,
                                                                piece):
    # The scan of real files (positioned reads on threads, pieces of SCAN_PIECE) must give the
    # same regions as the reference, granule for granule, whatever the region edges.
    import random

    rng = random.Random(seed)
    monkeypatch.setattr(source_module, "SCAN_PIECE", piece)
    size = rng.randrange(G, 40 * G)
    data = bytearray(size)
    for _ in range(rng.randrange(1, 12)):
        at = rng.randrange(size)
        data[at:at + rng.randrange(1, 3 * G)] = os.urandom(1) * rng.randrange(1, 3 * G)
    data = data[:size]
    path = tmp_path / "img"
    path.write_bytes(bytes(data))
    cuts = sorted(rng.sample(range(1, size), min(size - 1, 2 * rng.randrange(1, 5))))
    regions = [(a, b - a) for a, b in zip(cuts[::2], cuts[1::2], strict=True) if b > a]
    regions = regions or [(0, size)]
    fd = os.open(path, os.O_RDONLY)
    try:
        got = scan_zero_runs(fd, regions, path)
        want = drop_zero_runs(lambda o, n: bytes(data[o:o + n]), regions)
        assert got == want
        os.truncate(path, size // 2)  # shrunk under the scan: the unread granules are data
        got = scan_zero_runs(fd, regions, path)
        want = drop_zero_runs(lambda o, n: bytes(data[:size // 2][o:o + n]), regions)
        assert got == want
    finally:
        os.close(fd)


def test_drop_zero_runs_respects_unaligned_region_edges():
    data = bytes(10 * G)
    data = data[:G + 100] + b"x" + data[G + 101:]
    # the region starts mid-granule: only the granule holding the x survives, clipped to the region
    assert drop_zero_runs(reader(data), [(100, 3 * G)]) == [(G, G)]
    assert drop_zero_runs(reader(data), [(G + 50, 100)]) == [(G + 50, 100)]


def test_all_zero_and_empty():
    assert drop_zero_runs(reader(bytes(5 * G)), [(0, 5 * G)]) == []
    assert drop_zero_runs(reader(b""), []) == []


def test_find_data_regions_on_a_real_sparse_file(tmp_path):
    path = tmp_path / "sparse"
    with open(path, "wb") as fh:
        fh.truncate(64 << 20)
        fh.seek(8 << 20)
        fh.write(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        regions = find_data_regions(fd, 64 << 20)
    finally:
        os.close(fd)
    if regions == [(0, 64 << 20)]:
        pytest.skip("this filesystem does not report holes")
    assert sum(n for _, n in regions) < 1 << 20
    assert any(o <= 8 << 20 < o + n for o, n in regions)


def test_open_image_in_a_fake_filesystem_falls_back_to_dense(fs):
    fs.create_file("/img", contents=b"abc" + bytes(200_000) + b"def")
    src = open_image("/img")
    try:
        assert src.size == 200_006
        # no SEEK_DATA in the fake: one region, then zero runs dropped
        regions = src.regions()
        assert regions is not None and regions[0][0] == 0
        assert regions[-1][0] + regions[-1][1] == 200_006
        stored = b"".join(src.chunks())
        assert stored.startswith(b"abc") and stored.endswith(b"def")
        assert len(stored) < 200_006  # the zero granules in between are not stored
    finally:
        src.close()


def _fill_all(fill, sizes) -> bytes:
    out = bytearray()
    for n in sizes:
        buffer = bytearray(n)
        count = fill(memoryview(buffer))
        if not count:
            return bytes(out)
        out += buffer[:count]
    raise AssertionError("the filler did not end")


def test_filler_reads_what_chunks_yields(tmp_path):
    path = tmp_path / "img"
    with open(path, "wb") as fh:
        fh.truncate(8 << 20)
        for at, data in ((0, b"a" * 3000), (G, os.urandom(5 * G + 17)), (3 << 20, b"z" * G),
                         ((8 << 20) - 100, b"end" * 33)):
            fh.seek(at)
            fh.write(data)
    src = open_image(path)
    try:
        expected = b"".join(src.chunks())
        fill = src.filler()
        assert fill is not None
        # buffers smaller than, equal to and larger than a region; odd sizes
        assert _fill_all(fill, [7, G, 3 * G + 1, 1 << 20] * 40) == expected
        assert fill(memoryview(bytearray(16))) == 0  # and stays at the end
    finally:
        src.close()


def test_filler_reports_an_image_that_shrank(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(os.urandom(4 * G))
    src = open_image(path)
    try:
        fill = src.filler()
        assert fill is not None
        assert fill(memoryview(bytearray(G))) == G
        os.truncate(path, 2 * G)
        with pytest.raises(ImageError, match="shrank while it was being read"):
            _fill_all(fill, [G] * 8)
    finally:
        src.close()


def test_a_fake_filesystem_gets_no_filler(fs):
    fs.create_file("/img", contents=b"abc" + bytes(200_000) + b"def")
    src = open_image("/img")
    try:
        assert src.filler() is None  # the pipeline uses chunks(): fake descriptors stay fake
    finally:
        src.close()


def test_small_and_dense_images_are_plain_members(fs):
    fs.create_file("/tiny", contents=b"hello instance store\n")
    src = open_image("/tiny")
    assert src.regions() is None
    assert b"".join(src.chunks()) == b"hello instance store\n"
    src.close()


def test_open_image_errors(fs):
    fs.create_dir("/dir")
    fs.create_file("/empty")
    with pytest.raises(ImageError, match="does not exist"):
        open_image("/missing")
    with pytest.raises(ImageError, match="is a directory: use bundle-vol"):
        open_image("/dir")
    with pytest.raises(ImageError, match=r"is empty \(0 bytes\)"):
        open_image("/empty")


def test_image_over_10_gib_needs_no_size_checks(tmp_path):
    path = tmp_path / "huge"
    with open(path, "wb") as fh:
        fh.truncate(10 * 1024**3 + 1)
    with pytest.raises(ImageError, match="over EC2's 10 GiB"):
        open_image(path)
    src = open_image(path, allow_large=True)
    assert src.size == 10 * 1024**3 + 1
    src.close()


def test_stream_source_checks_declared_size():
    assert b"".join(StreamImageSource(io.BytesIO(b"x" * 10), 10, "s").chunks()) == b"x" * 10
    with pytest.raises(ImageError, match="ended after 10 bytes"):
        list(StreamImageSource(io.BytesIO(b"x" * 10), 11, "s").chunks())
    with pytest.raises(ImageError, match="more than the 9 bytes"):
        list(StreamImageSource(io.BytesIO(b"x" * 10), 9, "s").chunks())


@pytest.mark.parametrize("total",
                         [1, 16, PART_SIZE - 1, PART_SIZE, PART_SIZE + 1, 3 * PART_SIZE + 5])
def test_part_cutter_cuts_exact_sizes_and_hashes(total):
    sink = MemorySink()
    cutter = PartCutter(sink)
    data = (b"0123456789abcdef" * (total // 16 + 1))[:total]
    pos = 0
    step = 777_777
    while pos < total:
        cutter.write(data[pos:pos + step])
        pos += step
    cutter.close()
    tail = [total % PART_SIZE] if total % PART_SIZE else []
    assert [len(p.data) for p in sink.parts] == [PART_SIZE] * (total // PART_SIZE) + tail
    assert b"".join(p.data for p in sink.parts) == data
    assert all(p.sha1 == hashlib.sha1(p.data).hexdigest() for p in sink.parts)
    assert [p.index for p in sink.parts] == list(range(len(sink.parts)))
    assert sink.parts[0].md5 == hashlib.md5(sink.parts[0].data).digest()


def test_aes_matches_the_spec_vectors():
    out: list[bytes] = []
    enc = AesCbcEncryptor(bytes.fromhex("00112233445566778899aabbccddeeff"),
                          bytes.fromhex("0102030405060708090a0b0c0d0e0f10"), out.append)
    enc.write(b"abc")
    enc.close()
    assert b"".join(out).hex() == "aa75e5cde1c5d8069729bd6fff5fae52"
    out.clear()
    enc = AesCbcEncryptor(bytes.fromhex("00112233445566778899aabbccddeeff"),
                          bytes.fromhex("0102030405060708090a0b0c0d0e0f10"), out.append)
    enc.close()
    assert b"".join(out).hex() == "b9ab5f90fd9ba09313c3f870427c1a78"


def test_max_bundled_size_bounds_incompressible_data():
    import zlib

    data = os.urandom(3 << 20)
    assert len(zlib.compress(data, 9)) + 16 <= max_bundled_size(len(data))


def test_provisional_names():
    assert provisional_name("img", 3, 9) == "img.part.3"
    assert provisional_name("img", 3, 10) == "img.part.03"
    assert provisional_name("img", 3, 1025) == "img.part.0003"


def test_directory_sink_commit_and_abort(fs):
    fs.create_dir("/out")
    sink = DirectorySink("/out")
    sink.begin("b", 2)
    sink.put_part(Part.of(0, b"one"))
    sink.put_part(Part.of(1, b"two"))
    assert [n for n in os.listdir("/out") if not n.startswith(".")] == []
    sink.commit(["b.part.0", "b.part.1"], "b.manifest.xml", b"<m/>")
    assert sorted(os.listdir("/out")) == ["b.manifest.xml", "b.part.0", "b.part.1"]

    other = DirectorySink("/out")
    other.begin("b", 1)
    other.put_part(Part.of(0, b"new"))
    with pytest.raises(OutputError, match="already holds b.part.0"):
        other.commit(["b.part.0"], "b.manifest.xml", b"<m2/>")
    other.abort()
    assert sorted(os.listdir("/out")) == ["b.manifest.xml", "b.part.0", "b.part.1"]
    with open("/out/b.part.0", "rb") as fh:
        assert fh.read() == b"one"

    aborted = DirectorySink("/out")
    aborted.begin("c", 1)
    aborted.put_part(Part.of(0, b"x"))
    aborted.abort()
    assert sorted(os.listdir("/out")) == ["b.manifest.xml", "b.part.0", "b.part.1"]


def test_directory_sink_overwrite(fs):
    fs.create_dir("/out")
    fs.create_file("/out/b.part.0", contents=b"old")
    sink = DirectorySink("/out", overwrite=True)
    sink.begin("b", 1)
    sink.put_part(Part.of(0, b"new"))
    sink.commit(["b.part.0"], "b.manifest.xml", b"<m/>")
    with open("/out/b.part.0", "rb") as fh:
        assert fh.read() == b"new"


def test_first_part_predicts_the_part_count(user_key_pair, ec2_key_pair):
    """Streaming sinks must name parts before the count is known; the estimate given with the
    first part must land in the right power of ten where the size bound would not."""
    from bundler.pipeline import BundleKeys, BundleOptions, bundle

    lines = b"".join(b"line %08d of a very compressible image\n" % i for i in range(2_600_000))
    text = lines[: 100 << 20]
    data = text + os.urandom(15 << 20)
    source = StreamImageSource(io.BytesIO(data), len(data), "est")
    sink = MemorySink()
    keys = BundleKeys(user_key_pair.private_key, user_key_pair.public_key, ec2_key_pair.public_key)
    result = bundle(source, sink, keys,
                    BundleOptions(name="est", user="123456789012", compression="fast"))
    assert sink.max_parts >= 10  # the bound alone would give two-digit names …
    assert len(result.part_names) < 10  # … but there are fewer than ten parts
    [(estimate, before)] = sink.expected
    assert before == 0 and 1 <= estimate < 10
    assert sink.names == [f"est.part.{i}" for i in range(len(result.part_names))]
