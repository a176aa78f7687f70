"""The bundling pipeline's stages as arranged for speed: AES written straight into part buffers,
parts hashed and stored in a thread of their own, part durability in the background (and still
before the manifest), and the stage timings the profile prints."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
import time

import pytest

from bundler import directio, dirsink, partcutter, pipeline, stagetimes
from bundler.concurrency import BackgroundStage
from bundler.dirsink import DirectorySink
from bundler.errors import OutputError
from bundler.parts import Part
from bundler.pipeline import AesCbcEncryptor, PartCutter
from bundler.stagetimes import NULL_TIMES, Boundary, PhaseTotal, StageTimes, ThreadCpu
from tests.support.sinks import MemorySink

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
IV = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
SMALL_PART = 4096


def reference_ciphertext(data: bytes) -> bytes:
    out: list[bytes] = []
    enc = AesCbcEncryptor(KEY, IV, out.append)
    enc.write(data)
    enc.close()
    return b"".join(out)


@pytest.mark.parametrize("total", [0, 1, 15, 16, SMALL_PART - 16, SMALL_PART - 1, SMALL_PART,
                                   3 * SMALL_PART + 7])
@pytest.mark.parametrize("threaded", [False, True])
def test_aes_into_part_buffers_is_the_same_ciphertext_cut_exactly(monkeypatch, total, threaded):
    monkeypatch.setattr(partcutter, "PART_SIZE", SMALL_PART)
    data = os.urandom(total)
    sink = MemorySink()
    cutter = PartCutter(sink)
    if threaded:
        cutter.stage = BackgroundStage(cutter.store, depth=1, name="ami-bundler-parts")
    enc = AesCbcEncryptor(KEY, IV, cutter=cutter)
    pos = 0
    for step in (1, 15, 17, 1000, 5000, 333):  # pieces that straddle blocks and parts
        enc.write(data[pos:pos + step])
        pos += step
    enc.write(data[pos:])
    enc.close()
    cutter.close()
    if cutter.stage is not None:
        cutter.stage.close()
    expected = reference_ciphertext(data)
    assert b"".join(p.data for p in sink.parts) == expected
    assert enc.bytes_out == len(expected)
    assert [len(p.data) for p in sink.parts[:-1]] == [SMALL_PART] * (len(sink.parts) - 1)
    assert 0 < len(sink.parts[-1].data) <= SMALL_PART
    assert [p.index for p in sink.parts] == list(range(len(sink.parts)))
    assert cutter.digests == [hashlib.sha1(p.data).hexdigest() for p in sink.parts]
    assert cutter.sizes == [len(p.data) for p in sink.parts]
    assert all(isinstance(p.data, bytes) for p in sink.parts)  # sinks may keep them
    assert sink.threads == ({"ami-bundler-parts"} if threaded
                            else {threading.current_thread().name})


def test_a_failing_part_store_surfaces_in_the_encrypting_thread(monkeypatch):
    monkeypatch.setattr(partcutter, "PART_SIZE", SMALL_PART)

    cutter = PartCutter(MemorySink(fail_put=0))
    cutter.stage = BackgroundStage(cutter.store, depth=1, name="ami-bundler-parts")
    enc = AesCbcEncryptor(KEY, IV, cutter=cutter)
    with pytest.raises(OSError, match="no space"):
        for _ in range(50):
            enc.write(os.urandom(SMALL_PART))
        cutter.stage.close()
    cutter.stage.abort()


def test_encryptor_needs_exactly_one_destination():
    with pytest.raises(ValueError):
        AesCbcEncryptor(KEY, IV)
    with pytest.raises(ValueError):
        AesCbcEncryptor(KEY, IV, [].append, cutter=PartCutter(MemorySink()))


# --------------------------------------------------------------------------- durability


def _bundle_into(sink: DirectorySink, count: int) -> None:
    sink.begin("img", count)
    for i in range(count):
        sink.put_part(Part(i, os.urandom(1000)))
    sink.commit([f"img.part.{i}" for i in range(count)], "img.manifest.xml", b"<manifest/>")


def test_the_manifest_is_written_only_after_every_part_was_synced(tmp_path, monkeypatch):
    events: list[str] = []
    real_sync = getattr(os, "fdatasync", os.fsync)
    gate = threading.Event()

    def slow_sync(fd: int) -> None:
        gate.wait(5)  # the disk is slow: syncing lags behind the writer
        events.append(f"sync {os.readlink(f'/proc/self/fd/{fd}').rsplit('/', 1)[1]}")
        real_sync(fd)

    real_write, real_write_part = DirectorySink._write_file, DirectorySink._write_part

    def recording_write(self, path, data, *, sync):
        events.append(f"write {path.name}")
        assert path.name == "manifest" and sync
        return real_write(self, path, data, sync=sync)

    def recording_write_part(self, path, data):
        events.append(f"write {path.name}")
        return real_write_part(self, path, data)

    monkeypatch.setattr(os, "fdatasync", slow_sync, raising=False)
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_sync(fd))[1])
    monkeypatch.setattr(DirectorySink, "_write_file", recording_write)
    monkeypatch.setattr(DirectorySink, "_write_part", recording_write_part)
    sink = DirectorySink(tmp_path)
    sink.begin("img", 3)
    for i in range(3):
        sink.put_part(Part(i, os.urandom(1000)))
    assert events == ["write part-0", "write part-1", "write part-2"]  # none synced yet
    gate.set()
    sink.commit([f"img.part.{i}" for i in range(3)], "img.manifest.xml", b"<manifest/>")
    assert events[3:6] == ["sync part-0", "sync part-1", "sync part-2"]
    assert events.index("write manifest") > events.index("sync part-2")
    assert (tmp_path / "img.manifest.xml").read_bytes() == b"<manifest/>"
    assert not [t for t in threading.enumerate() if t.name == "ami-bundler-fsync"]


def test_a_part_that_cannot_be_synced_fails_the_commit_before_any_manifest(tmp_path, monkeypatch):
    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_sync, raising=False)
    monkeypatch.setattr(os, "fsync", failing_sync)
    sink = DirectorySink(tmp_path)
    with pytest.raises(OutputError, match="cannot flush part-0 to disk"):
        _bundle_into(sink, 2)
    sink.abort()
    assert sorted(os.listdir(tmp_path)) == []  # no manifest, no parts, no staging, no lock
    assert not [t for t in threading.enumerate() if t.name == "ami-bundler-fsync"]


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5, 1 << 20])
def test_direct_writes_store_every_byte_of_aligned_and_unaligned_parts(tmp_path, size):
    writer = directio.DirectWriter()
    data = os.urandom(size)
    try:
        writer.write(tmp_path / "p", data)
    except OSError as exc:  # e.g. a tmpfs without O_DIRECT: the sink falls back, see below
        pytest.skip(f"no direct I/O on {tmp_path}: {exc}")
    assert (tmp_path / "p").read_bytes() == data
    writer.write(tmp_path / "p", data[: size // 2])  # rewritten shorter: truncated
    assert (tmp_path / "p").read_bytes() == data[: size // 2]


@pytest.mark.parametrize("offset", [0, 100, 4096])
def test_direct_writes_from_a_mapped_view_need_no_copy_and_survive_misalignment(tmp_path, offset):
    # The pipeline's part buffers are anonymous maps: written from the view itself; a view
    # that does not start on a page (the kernel refuses it) goes through the aligned copy.
    writer = directio.DirectWriter()
    size = 3 * 4096 + 77
    mapped = mmap.mmap(-1, offset + size)
    data = os.urandom(size)
    mapped[offset:offset + size] = data
    with memoryview(mapped) as view:
        try:
            writer.write(tmp_path / "p", view[offset:offset + size])
        except OSError as exc:
            pytest.skip(f"no direct I/O on {tmp_path}: {exc}")
    assert (tmp_path / "p").read_bytes() == data
    assert writer._buffer is None or offset % 4096  # the copy's buffer only when misaligned


class _Recording:
    """A sink that records what put_part was given (a view or bytes) and keeps nothing."""

    done_with_part_data = True

    def __init__(self, keep: bool = False) -> None:
        self.kinds: list[tuple[type, object]] = []
        self.digests: list[str] = []
        self.data = bytearray()
        self.kept: list[memoryview] = []
        self.keep = keep

    def expect_parts(self, count: int) -> None:
        pass

    def put_part(self, part: Part) -> None:
        self.kinds.append((type(part.data), getattr(part.data, "obj", None).__class__))
        self.digests.append(hashlib.sha1(part.data).hexdigest())
        self.data += part.data
        if self.keep:
            self.kept.append(part.data)  # type: ignore[arg-type]


@pytest.mark.parametrize("threaded", [False, True])
def test_a_sink_done_with_part_data_gets_the_buffer_itself_and_buffers_are_reused(
        monkeypatch, threaded):
    monkeypatch.setattr(partcutter, "PART_SIZE", SMALL_PART)
    sink = _Recording()
    cutter = PartCutter(sink)
    if threaded:
        cutter.stage = BackgroundStage(cutter.store, depth=1, name="ami-bundler-parts")
    data = os.urandom(7 * SMALL_PART + 100)
    enc = AesCbcEncryptor(KEY, IV, cutter=cutter)
    enc.write(data)
    enc.close()
    cutter.close()
    if cutter.stage is not None:
        cutter.stage.close()
    assert bytes(sink.data) == reference_ciphertext(data)
    assert sink.kinds == [(memoryview, mmap.mmap)] * 8  # no copies
    assert cutter.digests == sink.digests
    assert cutter._free.qsize() <= 3  # 8 parts through at most 3 buffers (depth 1 + 2)


def test_a_sink_that_keeps_a_borrowed_view_cannot_read_another_part_through_it(monkeypatch):
    monkeypatch.setattr(partcutter, "PART_SIZE", SMALL_PART)
    sink = _Recording(keep=True)
    cutter = PartCutter(sink)
    cutter.write(os.urandom(3 * SMALL_PART))
    cutter.close()
    with pytest.raises(ValueError, match="released"):
        bytes(sink.kept[0])


def test_a_filesystem_without_direct_io_gets_plain_writes(tmp_path, monkeypatch):
    def refuse(self, path, data):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(directio.DirectWriter, "write", refuse)
    sink = DirectorySink(tmp_path)
    _bundle_into(sink, 3)
    assert sink._direct is None  # given up after the first refusal
    assert len([n for n in os.listdir(tmp_path) if ".part." in n]) == 3


def test_a_full_disk_during_a_direct_write_is_one_clear_error(tmp_path, monkeypatch):
    def full(self, path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(directio.DirectWriter, "write", full)
    sink = DirectorySink(tmp_path)
    with pytest.raises(OutputError, match="no space left"):
        _bundle_into(sink, 1)
    sink.abort()
    assert os.listdir(tmp_path) == []


def test_without_fsync_no_sync_thread_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(dirsink, "BackgroundStage", None)  # would fail if used
    _bundle_into(DirectorySink(tmp_path, fsync=False), 2)
    assert (tmp_path / "img.manifest.xml").exists()


# --------------------------------------------------------------------------- timings


def test_stage_times_add_up_per_stage_and_thread():
    times = StageTimes()

    def work(stage: str) -> None:
        with times.measure(stage, 10):
            hashlib.sha1(bytes(1 << 20)).digest()

    with times.phase("all"):
        work("a")
        thread = threading.Thread(target=work, args=("a",), name="other")
        thread.start()
        thread.join()
        work("b")
    rows = {(t.stage, t.thread): t for t in times.totals()}
    assert set(rows) == {("a", threading.current_thread().name), ("a", "other"),
                         ("b", threading.current_thread().name)}
    assert all(t.calls == 1 and t.nbytes == 10 and t.busy > 0 for t in rows.values())
    merged = times.by_stage()
    assert merged["a"].calls == 2 and merged["a"].thread == "2 thread(s)"
    [phase] = times.phases
    assert phase.name == "all" and phase.wall >= sum(t.busy for t in rows.values()) * 0.5
    # the timeline: one span per measurement, inside the phase, in the order they ended
    assert [stage for stage, _, _ in times.spans] == ["a", "a", "b"]
    assert all(phase.start <= start <= end <= phase.start + phase.wall
               for _, start, end in times.spans)
    assert phase.cpu > 0 and phase.cores > 0


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        hashlib.sha1(bytes(4096)).digest()


needs_schedstat = pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"),
                                     reason="no per-thread schedstat in this kernel")


@needs_schedstat
def test_a_phase_with_boundaries_gives_each_thread_its_cpu_and_they_add_up():
    """Threads alive at both ends, started inside and ended inside: each one's CPU in the
    phase; a thread that ended before the phase is not in it; their sum is the process's."""
    times = StageTimes(boundaries=True)
    before = threading.Thread(target=_burn, args=(0.02,), name="before")
    before.start()  # started and ended before the phase: it is not in the phase
    stop = threading.Event()
    burnt = threading.Event()
    throughout = threading.Thread(target=lambda: (_burn(0.03), burnt.set(), stop.wait()),
                                  name="throughout")
    with stagetimes.thread_exits() as exits:
        before.join()
        throughout.start()
        assert burnt.wait(30)  # its 30 ms of CPU are done before the phase starts
        with times.phase("p"):
            _burn(0.04)
            inside = threading.Thread(target=_burn, args=(0.06,), name="inside")
            inside.start()
            inside.join()
        stop.set()
        throughout.join()
    [phase] = times.phases
    per = {t.name: t for t in phase.threads(exits).values()}
    assert "before" not in per
    assert per["inside"].cpu == pytest.approx(0.06, abs=0.015)
    assert per[threading.current_thread().name].cpu == pytest.approx(0.04, abs=0.015)
    assert per.get("throughout", ThreadCpu("throughout", 0.0, 0.0)).cpu < 0.005
    # Read from the kernel's counters at the same instants as the process clock: they agree.
    assert sum(t.cpu for t in per.values()) == pytest.approx(phase.cpu, abs=0.005)
    assert all(t.waited >= 0 for t in per.values())
    assert phase.before is not None and phase.after is not None
    assert phase.before.at <= phase.start <= phase.start + phase.wall <= phase.after.at


def test_thread_exits_are_recorded_only_while_inside_and_run_is_restored():
    original = threading.Thread.run
    with stagetimes.thread_exits() as exits:
        assert threading.Thread.run is not original
        t = threading.Thread(target=_burn, args=(0.01,), name="short")
        t.start()
        t.join()
    assert threading.Thread.run is original
    [(at, cpu)] = exits.values()
    assert cpu.name == "short" and cpu.cpu >= 0.009 and at <= time.perf_counter()
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    assert len(exits) == 1


def test_phase_threads_arithmetic():
    """From the value at the phase's start (0 for a thread started in it) to the value at the
    phase's end, or at the thread's end when it ended inside the phase."""
    before = Boundary(10.0, {1: ThreadCpu("main", 1.0, 0.5), 2: ThreadCpu("stage", 2.0, 0.1),
                             3: ThreadCpu("quits-later", 0.5, 0.0)}, idle=100.0)
    after = Boundary(11.0, {1: ThreadCpu("main", 1.3, 0.6)}, idle=100.4)
    exits = {2: (10.5, ThreadCpu("stage", 2.25, 0.2)),   # ended inside
             4: (10.9, ThreadCpu("pool_0", 0.7, 0.05)),  # started and ended inside
             5: (9.0, ThreadCpu("earlier", 9.0, 0.0)),   # ended before the phase
             3: (12.0, ThreadCpu("quits-later", 0.9, 0.0))}  # ended after: no end value
    phase = PhaseTotal("data", 1.0, 1.25, 10.0, before, after)
    got = {tid: (t.name, round(t.cpu, 6), round(t.waited, 6))
           for tid, t in phase.threads(exits).items()}
    assert got == {1: ("main", 0.3, 0.1), 2: ("stage", 0.25, 0.1), 4: ("pool_0", 0.7, 0.05)}
    assert phase.idle == pytest.approx(0.4)
    assert PhaseTotal("x", 1.0, 1.0).threads() == {} and PhaseTotal("x", 1.0, 1.0).idle is None
    assert PhaseTotal("x", 1.0, 1.0, 0.0, Boundary(0.0, {}, None), after).idle is None


def test_machine_idle_sums_the_cpuidle_counters(tmp_path, monkeypatch):
    for cpu, states in {0: [0, 1_500_000], 1: [250_000, 2_000_000]}.items():
        for state, usec in enumerate(states):
            d = tmp_path / f"cpu{cpu}" / "cpuidle" / f"state{state}"
            d.mkdir(parents=True)
            (d / "time").write_text(f"{usec}\n")
    monkeypatch.setattr(stagetimes, "_IDLE_FILES", str(tmp_path / "cpu[0-9]*/cpuidle/state*/time"))
    assert stagetimes.machine_idle() == pytest.approx(3.75)
    monkeypatch.setattr(stagetimes, "_IDLE_FILES", str(tmp_path / "none*/time"))
    assert stagetimes.machine_idle() is None


def test_reading_the_boundary_leaves_the_thread_where_it_may_run():
    allowed = os.sched_getaffinity(0)
    boundary = stagetimes.read_boundary()
    assert os.sched_getaffinity(0) == allowed
    if os.path.exists("/proc/thread-self/schedstat"):
        me = boundary.threads[threading.get_native_id()]
        assert me.name == threading.current_thread().name and me.cpu > 0


def test_null_times_record_nothing():
    with NULL_TIMES.measure("x", 5), NULL_TIMES.phase("y"):
        pass
    assert NULL_TIMES.totals() == [] and NULL_TIMES.phases == []


@pytest.mark.parametrize("cut", [1, 7, 15, 16, 17, 33, 4096, 1 << 20])
def test_decryption_gives_the_stream_whatever_the_ciphertext_chunks(cut):
    """The held last block (its padding is known only at the end) goes ahead of each new
    chunk's plaintext as a piece of its own: chunks of any size, down to one byte, decrypt and
    inflate to the same stream."""
    import gzip

    plain = os.urandom(50_000) + b"text " * 40_000
    ciphertext = reference_ciphertext(gzip.compress(plain, 6))
    chunks = [ciphertext[i:i + cut] for i in range(0, len(ciphertext), cut)]
    stream = pipeline.DecryptedStream(iter(chunks), KEY, IV, len(plain) + 1024)
    out = bytearray()
    while data := stream.read(70_000):
        out += data
    stream.finish()
    assert bytes(out) == plain and stream.sha1.hexdigest() == hashlib.sha1(plain).hexdigest()


@pytest.mark.parametrize("capacity", [1, 16, 100, SMALL_PART // 2, SMALL_PART + 1])
@pytest.mark.parametrize("total", [0, 1, 31, SMALL_PART // 2 + 5, 2 * SMALL_PART + 3])
def test_a_part_buffer_sized_to_a_small_bundle_grows_when_more_arrives(monkeypatch, capacity,
                                                                          total):
    # ``capacity`` is the bundle's expected size: smaller buffers for small bundles, and a hint
    # only, so a stream longer than it (a wrong estimate) is still cut into whole parts.
    monkeypatch.setattr(partcutter, "PART_SIZE", SMALL_PART)
    data = os.urandom(total)
    sink = MemorySink()
    cutter = PartCutter(sink, capacity=capacity)
    assert len(cutter.space()) <= max(16, -(-capacity // 16) * 16) + 16
    enc = AesCbcEncryptor(KEY, IV, cutter=cutter)
    for start in range(0, total, 23):
        enc.write(data[start:start + 23])
    enc.close()
    cutter.close()
    expected = reference_ciphertext(data)
    assert b"".join(p.data for p in sink.parts) == expected
    assert [len(p.data) for p in sink.parts[:-1]] == [SMALL_PART] * (len(sink.parts) - 1)
    assert cutter.digests == [hashlib.sha1(p.data).hexdigest() for p in sink.parts]


class _Ahead(_Recording):
    """Also takes parts' bytes ahead, as a directory sink does."""

    def __init__(self) -> None:
        super().__init__()
        self.ahead: list[tuple[int, int, bytes]] = []

    def put_part_ahead(self, index: int, data: memoryview, offset: int) -> None:
        self.ahead.append((index, offset, bytes(data)))


@pytest.mark.parametrize("threaded", [False, True])
def test_parts_are_hashed_and_handed_ahead_as_they_fill(monkeypatch, threaded):
    monkeypatch.setattr(partcutter, "PART_SIZE", SMALL_PART)
    monkeypatch.setattr(PartCutter, "SLICE", SMALL_PART // 4)
    sink = _Ahead()
    cutter = PartCutter(sink)
    if threaded:
        cutter.stage = BackgroundStage(cutter.store, depth=2, name="ami-bundler-parts")
    data = os.urandom(3 * SMALL_PART + 5000)
    enc = AesCbcEncryptor(KEY, IV, cutter=cutter)
    for start in range(0, len(data), 333):  # blocks smaller than a slice, as deflate gives
        enc.write(data[start:start + 333])
    enc.close()
    cutter.close()
    if cutter.stage is not None:
        cutter.stage.close()
    cipher = reference_ciphertext(data)
    assert bytes(sink.data) == cipher
    assert cutter.digests == sink.digests  # hashed piece by piece, the same digests
    # each part's pieces: from offset 0, in order, contiguous, whole slices, before put_part
    slice_ = SMALL_PART // 4
    for index in range(-(-len(cipher) // SMALL_PART)):
        pieces = [(offset, got) for i, offset, got in sink.ahead if i == index]
        part = cipher[index * SMALL_PART:(index + 1) * SMALL_PART]
        offsets = [offset for offset, _ in pieces]
        assert offsets == list(range(0, len(offsets) * slice_, slice_))
        assert b"".join(got for _, got in pieces) == part[:len(offsets) * slice_]
        # a whole part: every slice but the one that ends it; the last part: whole slices
        assert len(offsets) == (3 if len(part) == SMALL_PART else (len(part) - 1) // slice_)


def test_the_directory_sink_writes_parts_ahead_and_then_the_rest(tmp_path):
    size = 3 * 4096 * 256 + 1234  # three aligned MiB-ish pieces and an unaligned tail
    buffer = mmap.mmap(-1, size + 4096)
    buffer[:size] = os.urandom(size)
    sink = DirectorySink(tmp_path)
    sink.begin("b", 3)
    with memoryview(buffer) as view:
        piece = 4096 * 256
        sink.put_part_ahead(0, view[:piece], 0)
        sink.put_part_ahead(0, view[piece:2 * piece], piece)
        sink.put_part_ahead(0, view[2 * piece + 1:3 * piece + 1], 2 * piece + 1)  # refused
        if sink._direct is None:
            pytest.skip(f"no direct I/O on {tmp_path}")
        staging = next(p for p in tmp_path.iterdir() if "staging" in p.name)
        assert (staging / "part-0").stat().st_size == 2 * piece  # on its way already
        sink.put_part(Part(0, view[:size]))
        # a part whose first piece is refused (not aligned) is written whole by put_part
        sink.put_part_ahead(1, view[1:piece + 1], 0)
        sink.put_part(Part(1, view[:size]))
        # and one that put_part_ahead began, then abort: nothing stays
        sink.put_part_ahead(2, view[:piece], 0)
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".ami-bundler-staging-")]
    assert len(staged) == 1
    assert (staged[0] / "part-0").read_bytes() == buffer[:size]
    assert (staged[0] / "part-1").read_bytes() == buffer[:size]
    assert (staged[0] / "part-2").exists()
    sink.abort()
    assert not staged[0].exists()
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name or "part" in p.name] == []


def test_a_sink_with_parts_written_ahead_commits_them(tmp_path):
    size = 2 * 4096 * 256 + 77
    buffer = mmap.mmap(-1, size + 4096)
    buffer[:size] = os.urandom(size)
    sink = DirectorySink(tmp_path)
    sink.begin("b", 1)
    with memoryview(buffer) as view:
        sink.put_part_ahead(0, view[:4096 * 256], 0)
        sink.put_part(Part(0, view[:size]))
    sink.commit(["b.part.0"], "b.manifest.xml", b"<m/>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.manifest.xml", "b.part.0"]
    assert (tmp_path / "b.part.0").read_bytes() == buffer[:size]
