"""The pipeline's threads on error paths: nothing left running, the sink aborted, the part
reader stopped, progress in order, and a failure of any stage raised to the caller."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from bundler import bundling, partcutter
from bundler.errors import IntegrityError
from bundler.manifest import parse_manifest
from bundler.pipeline import BundleKeys, BundleOptions, bundle, unbundle
from tests.support.sinks import MemorySink

SMALL_PART = 64 * 1024  # many parts from a small image


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(partcutter, "PART_SIZE", SMALL_PART)


@pytest.fixture
def keys(user_key_pair, ec2_key_pair) -> BundleKeys:
    return BundleKeys(user_key_pair.private_key, user_key_pair.public_key, ec2_key_pair.public_key)


def options() -> BundleOptions:
    return BundleOptions(name="img", user="123456789012", compression=1, workers=2)


class FakeSource:
    name = "img"
    rereadable = False
    mode = 0o644
    mtime = 0

    def __init__(self, data: bytes, *, fail_at: int | None = None,
                 exc: type[BaseException] = RuntimeError) -> None:
        self.data = data
        self.size = len(data)
        self.fail_at = fail_at
        self.exc = exc
        self.closed = False

    def regions(self):
        return None

    def chunks(self) -> Iterator[bytes]:
        for offset in range(0, self.size, 16384):
            if self.fail_at is not None and offset >= self.fail_at:
                raise self.exc("the image went away")
            yield self.data[offset:offset + 16384]

    def close(self) -> None:
        self.closed = True


class RecordingProgress:
    def __init__(self, *, fail_start: bool = False) -> None:
        self.events: list[tuple[str, str]] = []
        self.fail_start = fail_start
        self._lock = threading.Lock()

    def start(self, stage: str, total: int | None) -> None:
        if self.fail_start:
            raise BrokenPipeError("stderr is gone")
        with self._lock:
            self.events.append(("start", stage))

    def advance(self, stage: str, amount: int) -> None:
        with self._lock:
            self.events.append(("advance", stage))

    def finish(self, stage: str) -> None:
        with self._lock:
            self.events.append(("finish", stage))


class FakePartSource:
    """Parts from memory through a small download pool, like S3PartSource; ``hold`` makes the
    reader wait before yielding that part until the event is set."""

    def __init__(self, parts: dict[int, bytes], *, corrupt: int | None = None,
                 hold: tuple[int, threading.Event] | None = None) -> None:
        self.parts = parts
        self.corrupt = corrupt
        self.hold = hold
        self.closed = threading.Event()

    def describe(self) -> str:
        return "memory"

    def check_present(self, entries) -> None:
        pass

    def iter_parts(self, entries):
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ami-bundler-get")
        try:
            for entry in entries:
                data = pool.submit(self.parts.__getitem__, entry.index).result()
                if entry.index == self.corrupt:
                    data = bytes([data[0] ^ 1]) + data[1:]
                if self.hold is not None and entry.index == self.hold[0]:
                    self.hold[1].wait(5)
                yield entry, (data,)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.closed.set()


class FakeWriter:
    def __init__(self, *, fail_write: bool = False, fail_open: type[BaseException] | None = None,
                 fail_commit: bool = False) -> None:
        self.fail_write = fail_write
        self.fail_open = fail_open
        self.fail_commit = fail_commit
        self.failed = threading.Event()
        self.image = bytearray()
        self.aborted = False

    def open(self, size: int, mode: int) -> None:
        if self.fail_open is not None:
            raise self.fail_open()
        self.image = bytearray(size)

    def write_at(self, offset: int, data: bytes) -> None:
        if self.fail_write:
            self.failed.set()
            raise OSError("no space left on the device")
        self.image[offset:offset + len(data)] = data

    def commit(self):
        if self.fail_commit:
            raise OSError("rename failed")
        return None

    def abort(self) -> None:
        self.aborted = True


def make_bundle(keys: BundleKeys, data: bytes) -> tuple[MemorySink, object]:
    sink = MemorySink()
    bundle(FakeSource(data), sink, keys, options())
    assert sink.manifest is not None
    return sink, parse_manifest(sink.manifest)


# --------------------------------------------------------------------------- bundle


@pytest.mark.parametrize("failure", ["source", "interrupt", "put_part", "commit"])
def test_a_failing_bundle_aborts_the_sink_and_leaves_no_thread(small_parts, keys, no_thread_left,
                                                              failure):
    data = os.urandom(1 << 20)
    source = FakeSource(data, fail_at=(1 << 19) if failure in ("source", "interrupt") else None,
                        exc=KeyboardInterrupt if failure == "interrupt" else RuntimeError)
    sink = MemorySink(fail_put=3 if failure == "put_part" else None,
                      fail_commit=failure == "commit")
    progress = RecordingProgress()
    expected = {"source": RuntimeError, "interrupt": KeyboardInterrupt, "put_part": OSError,
                "commit": OSError}
    with pytest.raises(expected[failure]):
        bundle(source, sink, keys, options(), progress)
    assert sink.aborted and source.closed
    assert sink.manifest is None
    assert progress.events[0] == ("start", "bundle") and progress.events[-1] == ("finish", "bundle")
    assert no_thread_left() == []


def test_a_progress_listener_that_fails_to_start_aborts_the_bundle(keys, no_thread_left):
    # e.g. a progress bar on a terminal that went away: the threads and the sink's staging
    # area (its lock, in S3 the lock object) must not be left behind.
    sink = MemorySink()
    source = FakeSource(os.urandom(100_000))
    with pytest.raises(BrokenPipeError):
        bundle(source, sink, keys, options(), RecordingProgress(fail_start=True))
    assert sink.aborted and source.closed
    assert no_thread_left() == []


def _refuse_to_start(monkeypatch, name: str) -> None:
    start = threading.Thread.start

    def refusing(self):
        if self.name == name:
            raise RuntimeError("can't start new thread")
        return start(self)

    monkeypatch.setattr(threading.Thread, "start", refusing)


def test_bundle_cleans_up_when_the_digest_thread_cannot_start(keys, monkeypatch, no_thread_left):
    _refuse_to_start(monkeypatch, "ami-bundler-sha1")
    sink = MemorySink()
    source = FakeSource(os.urandom(100_000))
    with pytest.raises(RuntimeError, match="can't start new thread"):
        bundle(source, sink, keys, options())
    assert sink.aborted and source.closed
    assert no_thread_left() == []


class _GatedSha1:
    """hashlib.sha1 whose first update in the tar digest thread waits for ``gate``: the digest
    thread falls behind the reader, deterministically."""

    def __init__(self, gate: threading.Event) -> None:
        self._hash = hashlib.sha1()
        self._gate = gate

    def update(self, data) -> None:
        if threading.current_thread().name == "ami-bundler-sha1":
            self._gate.wait(5)
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def test_a_source_that_reuses_its_buffer_is_hashed_as_it_was_read(small_parts, keys, user_key_pair,
                                                                  monkeypatch, no_thread_left):
    gate = threading.Event()
    monkeypatch.setattr(bundling, "hashlib", SimpleNamespace(sha1=lambda: _GatedSha1(gate)))
    chunk = 4096
    expected = b"".join(bytes([i + 1]) * chunk for i in range(4))

    class ReusingSource(FakeSource):
        def chunks(self):
            buffer = bytearray(chunk)
            for i in range(4):
                buffer[:] = bytes([i + 1]) * chunk  # readinto() into one buffer, as many readers do
                yield buffer
            buffer[:] = bytes(chunk)
            gate.set()

    sink = MemorySink()
    result = bundle(ReusingSource(expected), sink, keys, options())
    monkeypatch.undo()
    writer = FakeWriter()
    unbundle(parse_manifest(sink.manifest), FakePartSource(sink.data), None,
             user_key_pair.private_key, writer=writer)
    assert bytes(writer.image) == expected
    assert result.digest == parse_manifest(sink.manifest).manifest.digest
    assert no_thread_left() == []


# --------------------------------------------------------------------------- unbundle


@pytest.mark.parametrize("failure",
                         ["corrupt_first", "corrupt_later", "write", "open_interrupt", "commit"])
def test_a_failing_unbundle_stops_the_part_reader_and_leaves_no_thread(small_parts, keys,
                                                                       user_key_pair,
                                                                       no_thread_left, failure):
    data = os.urandom(4 << 20)
    sink, parsed = make_bundle(keys, data)
    assert len(sink.parts) > 40
    writer = FakeWriter(fail_write=failure == "write", fail_commit=failure == "commit",
                        fail_open=KeyboardInterrupt if failure == "open_interrupt" else None)
    # The writer fails on the first 1 MiB of the image; the reader waits at a part well past it
    # until then, so the failure is seen while many parts are still unread.
    hold = (24, writer.failed) if failure == "write" else None
    source = FakePartSource(sink.data,
                            corrupt={"corrupt_first": 0, "corrupt_later": 5}.get(failure),
                            hold=hold)
    progress = RecordingProgress()
    expected = {"corrupt_first": IntegrityError, "corrupt_later": IntegrityError,
                "write": OSError, "open_interrupt": KeyboardInterrupt, "commit": OSError}
    with pytest.raises(expected[failure]):
        unbundle(parsed, source, None, user_key_pair.private_key, writer=writer, progress=progress)
    assert writer.aborted
    assert source.closed.is_set(), "the part source's iterator was never closed"
    assert no_thread_left() == []
    assert progress.events[0] == ("start", "unbundle")
    assert progress.events[-1] == ("finish", "unbundle")
    assert progress.events.count(("finish", "unbundle")) == 1


def test_unbundle_stops_the_part_reader_when_the_digest_thread_cannot_start(small_parts, keys,
                                                                           user_key_pair,
                                                                           monkeypatch,
                                                                           no_thread_left):
    sink, parsed = make_bundle(keys, os.urandom(1 << 20))
    _refuse_to_start(monkeypatch, "ami-bundler-sha1")
    source = FakePartSource(sink.data)
    progress = RecordingProgress()
    with pytest.raises(RuntimeError, match="can't start new thread"):
        unbundle(parsed, source, None, user_key_pair.private_key, writer=FakeWriter(),
                 progress=progress)
    assert no_thread_left() == []
    assert progress.events[-1] == ("finish", "unbundle")


def test_unbundle_round_trip_leaves_no_thread(small_parts, keys, user_key_pair, no_thread_left):
    data = os.urandom(1 << 20)
    sink, parsed = make_bundle(keys, data)
    writer = FakeWriter()
    progress = RecordingProgress()
    unbundle(parsed, FakePartSource(sink.data), None, user_key_pair.private_key, writer=writer,
             progress=progress)
    assert bytes(writer.image) == data
    assert (progress.events[0] == ("start", "unbundle")
            and progress.events[-1] == ("finish", "unbundle"))
    assert no_thread_left() == []


# --------------------------------------------------------------------------- the S3 upload lock


class _LockBucket:
    """Just enough of an S3 client for UploadLock: conditional PUTs with S3's answers, and a
    holder (a finished run on this host) that deletes the lock and exits right after we read it."""

    def __init__(self, holder: dict) -> None:
        import io

        self._io = io
        self.body: bytes | None = json.dumps(holder).encode()
        self.etag = "1" * 32
        self.released_by_holder = False

    @staticmethod
    def _error(code: str, status: int, op: str):
        from botocore.exceptions import ClientError

        return ClientError({"Error": {"Code": code, "Message": code},
                            "ResponseMetadata": {"HTTPStatusCode": status}},
                           op)

    def put_object(self, **params):
        if "IfNoneMatch" in params and self.body is not None:
            raise self._error("PreconditionFailed", 412, "PutObject")
        if "IfMatch" in params:
            if self.body is None:
                raise self._error("NoSuchKey", 404, "PutObject")
            if params["IfMatch"].strip('"') != self.etag:
                raise self._error("PreconditionFailed", 412, "PutObject")
        self.body = params["Body"]
        self.etag = hashlib.md5(self.body).hexdigest()
        return {"ETag": f'"{self.etag}"'}

    def get_object(self, **params):
        if self.body is None:
            raise self._error("NoSuchKey", 404, "GetObject")
        resp = {"ETag": f'"{self.etag}"', "Body": self._io.BytesIO(self.body)}
        if not self.released_by_holder:  # the holder finishes: it deletes the lock and exits
            self.released_by_holder = True
            self.body = None
        return resp

    def head_object(self, **params):
        if self.body is None:
            raise self._error("404", 404, "HeadObject")
        return {"ETag": f'"{self.etag}"'}

    def delete_object(self, **params):
        self.body = None
        return {}


def test_a_lock_released_between_reading_it_and_taking_it_over_is_taken_fresh(monkeypatch,
                                                                              no_thread_left):
    # The CLI now exits at once after releasing its lock: a concurrent run that read the lock a
    # moment earlier finds the holder's PID gone, and its take-over (If-Match) gets a 404. That
    # is a free lock, not an error.
    import socket

    from bundler import s3

    monkeypatch.setattr(s3.lock, "pid_alive", lambda pid: False)
    holder = {"tool": "ami-bundler", "host": socket.gethostname(), "pid": 1 << 22,
              "token": "theirs"}
    client = _LockBucket(holder)
    lock = s3.UploadLock(client, s3.S3Location("bucket", "d/"), "dup")
    lock.acquire()
    try:
        assert lock.held and client.released_by_holder
        assert json.loads(client.body)["token"] == lock.info["token"]
    finally:
        lock.release()
    assert client.body is None
    assert no_thread_left() == []
