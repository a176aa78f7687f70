"""Streaming sink and source: parts PUT as the pipeline cuts them, parts read back in order."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..concurrency import BackgroundTask, BoundedExecutor, ordered_window, run_parallel
from ..errors import BundlerError, PartMissingError, S3Error
from ..manifest import PartEntry
from ..parts import PART_SIZE, Part, provisional_name
from ..signalsafe import Event
from ..transfer import DEFAULT_TRANSFER, TransferConfig
from .etags import piece_sizes
from .location import S3Location
from .multipart import put_in_pieces
from .objects import (
    copy_object,
    delete_keys,
    fetch_part_pieces,
    list_objects,
    put_bytes,
)
from .publish import InUseLookup, Publication

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.s3")


def _return_large_buffers_to_the_os() -> None:
    """Have glibc map every part-sized buffer on its own and unmap it when freed.

    Parts are made in one thread and freed in the uploader threads; glibc's default would
    raise its mmap threshold after the first free and keep recycled 10 MiB chunks in
    per-thread arenas, which adds up to well over the parts actually in flight.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 4 * 1024 * 1024)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


class _Streams:
    """At most ``jobs`` requests carrying bytes at once (a context manager per request), and
    how many more could start now."""

    def __init__(self, jobs: int) -> None:
        # threading's, not signalsafe's: only the upload threads take it, which no signal
        # reaches.
        self._slots = threading.BoundedSemaphore(jobs)
        self._lock = threading.Lock()
        self._free = jobs

    @property
    def free(self) -> int:
        with self._lock:
            return self._free

    def __enter__(self) -> _Streams:
        self._slots.acquire()
        with self._lock:
            self._free -= 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._free += 1
        self._slots.release()


class _Pace:
    """Whether a part is worth two pieces: only if its whole upload would end after the last
    part's, which is cut ``left`` parts later (by the pipeline's estimate of the count) and
    goes in pieces. Part ``i`` uploaded whole ends a whole upload's time ``W`` after it is
    cut; the last part ends about ``left * interval + W / 2`` after that (``interval``: the
    mean time between parts so far; ``W`` measured, from a split part as twice its time,
    which errs towards splitting). Until both are known, every part with a second stream free
    is split: never later, only dearer."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.estimate = 0  # the pipeline's estimate of the part count (0: unknown)
        self._first: float | None = None
        self._latest = 0.0
        self._cuts = 0
        self._whole: float | None = None  # seconds the latest whole full part took

    def cut(self) -> None:
        now = self._clock()
        with self._lock:
            if self._first is None:
                self._first = now
            self._latest = now
            self._cuts += 1

    def sent_whole(self, seconds: float) -> None:
        """A full part's whole upload took (or, from its pieces, would have taken) this long."""
        with self._lock:
            self._whole = seconds

    def worth_splitting(self, index: int) -> bool:
        with self._lock:
            if not self.estimate or self._whole is None or self._cuts < 2:
                return True
            assert self._first is not None
            interval = (self._latest - self._first) / (self._cuts - 1)
            left = self.estimate - 1 - index
            return left * interval < self._whole / 2


class _TailSent:
    """Calls ``then`` once, as soon as the last part's data requests (its PUT, or both of its
    pieces) are signed and about to go out (botocore's ``before-send``) — or at the commit, when
    no part was known to be the last one (a last part of exactly PART_SIZE is only known to be
    last then). What runs then (install: making the EC2 client, whose JSON parse holds the GIL
    ~20 ms at a stretch) finds no request of the run's left to build, and the CPU idle while the
    link carries the last bytes."""

    _EVENTS = ("before-send.s3.PutObject", "before-send.s3.UploadPart")

    def __init__(self, client: S3Client, then: Callable[[], None]) -> None:
        self._client = client
        self._then = then
        self._lock = threading.Lock()  # a C lock: a signal cannot split its `with`
        self._armed = False
        self._fired = False
        self._key = ""
        self._waiting: set[str] = set()
        self._unique = f"ami-bundler-tail-sent-{id(self)}"

    def arm(self, key: str, requests: int) -> None:
        """The last part goes to ``key`` in ``requests`` data requests: 1 (a PUT) or 2 pieces."""
        with self._lock:
            self._armed = True
            self._key = key
            self._waiting = {str(n) for n in range(1, requests + 1)} if requests > 1 else {""}
        for event in self._EVENTS:
            self._client.meta.events.register(event, self._sending,
                                              unique_id=f"{self._unique}-{event}")

    def _sending(self, request: Any, **kwargs: Any) -> None:
        split = urlsplit(request.url)
        if not unquote(split.path).endswith("/" + self._key):
            return
        number = parse_qs(split.query).get("partNumber", [""])[0]
        with self._lock:
            self._waiting.discard(number)
            fire = not self._waiting and not self._fired
            self._fired = self._fired or fire
        if fire:
            self._call()

    def committing(self) -> None:
        """The commit starts: with no part known to be the last, the last one is on its way."""
        with self._lock:
            fire = not self._armed and not self._fired
            self._fired = self._fired or fire
        if fire:
            self._call()

    def _call(self) -> None:
        try:
            self._then()
        except Exception:  # a hook's failure is its own to report (install: when it is used)
            log.debug("the tail hook failed", exc_info=True)

    def close(self) -> None:
        for event in self._EVENTS:
            self._client.meta.events.unregister(event, unique_id=f"{self._unique}-{event}")


class S3Sink:
    """PartSink that PUTs parts as they are cut: a bounded queue in front of parallel PUTs.

    ``put_part`` blocks while ``jobs + 2`` parts are in flight (so memory stays bounded at about
    that many 10 MiB parts), a failed PUT surfaces at the next ``put_part``/``commit``, and
    ``abort`` removes everything this sink created — until its manifest was published, then
    nothing (``Publication.retract``). ``transfer`` gives the jobs, whole-object
    attempts, ACL and the progress listener ("upload").

    Pieces: a part goes up in two pieces (``multipart``) on two streams when that can shorten
    the run (see ``_Pace``): a stream carries a part at its own bandwidth, two halve the part's
    time (what a WAN's per-connection cap makes of it), for three requests more (create,
    second piece, complete), which cost CPU on both ends. So the last part (the one shorter
    than a full part: it can only start once cut, and alone it keeps the run waiting) and any
    part whose upload only starts after it go in pieces, and so do the parts whose whole upload
    would still be running when the last one's ends, while a second stream is free. At most
    ``jobs`` requests carry bytes at any time, pieces included.

    ``on_tail_sent``: called once, as soon as the last part's requests are about to go out (see
    ``_TailSent``), or at the commit at the latest; it must not raise.

    ``release_later``: ``commit`` returns as soon as the manifest is published, the lease's
    release (a round trip nothing after it waits for) going on on a thread of its own;
    ``released`` waits for it, and ``abort`` does too before anything else. The caller calls
    one of them on every path (install: once it has registered the AMI, which the release
    overlaps).
    """

    def __init__(
        self,
        client: S3Client,
        location: S3Location,
        *,
        transfer: TransferConfig = DEFAULT_TRANSFER,
        force: bool = False,
        in_use: InUseLookup | None = None,
        on_stored: Callable[[int, str, int, str], None] | None = None,
        release_later: bool = False,
        on_tail_sent: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self._tail_sent = None if on_tail_sent is None else _TailSent(client, on_tail_sent)
        self.release_later = release_later
        self._releasing = BackgroundTask(name="ami-bundler-unlock")
        # (index, key, size, hex MD5 of the bytes) once a part is in S3: relays copy it on
        # (bundler.s3.relay). Called on the uploader thread; it must not raise.
        self.on_stored = on_stored
        self.force = force
        self.in_use = in_use
        self.location = location
        self.transfer = transfer
        self.acl = transfer.acl
        self.jobs = transfer.jobs
        self.attempts = transfer.attempts
        self.progress = transfer.progress
        self._pool: BoundedExecutor | None = None
        self._name = ""
        self._max_parts = 0
        self._width_parts = 0
        self._keys: dict[int, str] = {}
        self._created: set[str] = set()
        self._created_lock = threading.Lock()
        self._sizes: dict[int, tuple[int, str]] = {}
        self._publication: Publication | None = None
        self._pieces: BoundedExecutor | None = None
        self._streams = _Streams(self.jobs)
        self._tail = False  # the last part has been handed over: what starts now is the tail
        self._pace = _Pace()
        self._stopping = Event()  # set by abort, on the main thread too (signalsafe)
        self.bytes_uploaded = 0
        self.manifest_key: str | None = None
        # Before the first part is made, not in ``begin``: install cuts parts while the lease
        # is taken (s3.held), and a part allocated from an arena under glibc's default
        # threshold leaves the arena that size (and fragmented) for the rest of the run, since
        # later parts are served from its free chunks before any mmap (random-512M.img: an
        # arena of ~185 MiB, 70-90 MiB of it free, kept to the end).
        _return_large_buffers_to_the_os()

    def describe(self) -> str:
        return self.location.url()

    def begin(self, name: str, max_parts: int) -> None:
        self._name = name
        self._max_parts = max_parts
        self._width_parts = max_parts
        publication = Publication(self.client, self.location, f"{name}.manifest.xml", acl=self.acl,
                                  attempts=self.attempts, force=self.force, in_use=self.in_use)
        # Synchronous on purpose: begin returns with the lease taken (or raises with it
        # released), so an abort after it finds the lease (an open left running on a pool
        # thread would outlive the abort and leave the lock behind). install runs begin on a
        # thread of its own while the first parts are made (s3.held), and waits for it before
        # aborting.
        publication.open(None)  # lease; a bundle already there is another one: refused or retired
        self._publication = publication
        # Parts are 10 MiB in memory each: ``jobs`` uploading plus two ready keeps every
        # uploader busy while bounding memory whatever the image size. Each of those parts has
        # a worker: a split part's worker waits for its CompleteMultipartUpload (and a whole
        # part's for its MD5) holding no stream, and the next part must not wait for it while
        # a stream is free (``_streams`` bounds the requests carrying bytes to ``jobs``).
        self._pool = BoundedExecutor(self.jobs + 2, self.jobs + 2, name="ami-bundler-s3")
        self._pieces = BoundedExecutor(self.jobs, self.jobs, name="ami-bundler-s3-piece")
        self.progress.start("upload", None)

    def _put(self, key: str, part: Part) -> None:
        # Bytes already (this sink keeps parts, so it gets copies: PartSink): bytes() of bytes
        # is the same object, no copy.
        data = bytes(part.data)
        split = (self.jobs > 1 and piece_sizes(len(data)) is not None
                 and (self._tail or (self._streams.free >= 2
                                     and self._pace.worth_splitting(part.index))))
        if self._tail_sent is not None and len(data) < PART_SIZE:  # the last part
            self._tail_sent.arm(key, 2 if split else 1)
        if split:
            pieces = self._pieces
            assert pieces is not None
            with self._created_lock:
                # Before the upload can complete: an abort racing its answer still removes it.
                self._created.add(key)
            started = time.monotonic()
            # The whole part's MD5 comes out of the pieces' own pass (multipart).
            etag, md5 = put_in_pieces(self.client, self.location.bucket, key, data,
                                      acl=self.acl, attempts=self.attempts,
                                      submit=pieces.submit, streams=self._streams,
                                      stopping=self._stopping)
            if len(data) == PART_SIZE:  # half the part on each stream, and two requests more
                self._pace.sent_whole(2 * (time.monotonic() - started))
        else:
            md5 = part.md5
            with self._streams:
                started = time.monotonic()
                etag = put_bytes(self.client, self.location.bucket, key, data, md5=md5,
                                 acl=self.acl, attempts=self.attempts)
                if len(data) == PART_SIZE:
                    self._pace.sent_whole(time.monotonic() - started)
        with self._created_lock:
            self._created.add(key)
            self._sizes[part.index] = (len(data), etag)
            self.bytes_uploaded += len(data)
        self.progress.advance("upload", len(data))
        if self.on_stored is not None:
            # The MD5, whatever the upload's form: a server-side copy's ETag is the MD5 (etags).
            self.on_stored(part.index, key, len(data), md5.hex())

    def expect_parts(self, count: int) -> None:
        """The pipeline's estimate of the final part count, given before the first part: keys
        get the index width it implies, so the rename in ``commit`` is only needed when the
        estimate crossed a power of ten the wrong way."""
        self._pace.estimate = count
        if not self._keys:
            self._width_parts = max(1, min(count, self._max_parts))

    def put_part(self, part: Part) -> None:
        assert self._pool is not None, "begin() not called"
        key = self.location.key(provisional_name(self._name, part.index, self._width_parts))
        self._keys[part.index] = key
        if part.size < PART_SIZE:
            self._tail = True  # only the last part is short: nothing more will come
        self._pace.cut()
        self._pool.submit(self._put, key, part)

    def _copy(self, index: int, source: str, target: str) -> None:
        with self._created_lock:
            self._created.add(target)  # before the copy's answer: an abort still removes it
            size, etag = self._sizes[index]
        # A copy's ETag is the source's MD5, also of a two-piece source (etags): what the
        # manifest's re-check then expects.
        got = copy_object(self.client, (self.location.bucket, source), self.location.bucket,
                          target, etag=etag, acl=self.acl, attempts=self.attempts)
        log.debug("copied %s → %s (ETag %s)", source, target, got)
        with self._created_lock:
            self._sizes[index] = (size, got or etag)

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        assert self._pool is not None, "begin() not called"
        if self._tail_sent is not None:
            self._tail_sent.committing()
        try:
            self._pool.join()
        finally:
            self._shutdown()
        if len(names) != len(self._keys):
            raise S3Error(f"internal error: {len(self._keys)} parts uploaded, {len(names)} named")
        renames = [(i, self._keys[i], self.location.key(n)) for i, n in enumerate(names)
                   if self._keys[i] != self.location.key(n)]
        if renames:
            # The final index width is only known now; server-side copies are cheap and
            # keep the bytes off this machine.
            log.info("renaming %d parts to their final names", len(renames))
            run_parallel([partial(self._copy, i, s, t) for i, s, t in renames], self.jobs)
            stale = [s for _, s, _ in renames]
            delete_keys(self.client, self.location.bucket, stale, attempts=self.attempts)
            with self._created_lock:
                self._created.difference_update(stale)
        final = [self.location.key(n) for n in names]
        assert self._publication is not None and manifest_name == self._publication.manifest_name
        # Kept after publishing: an abort that follows (a signal held through the commit, a
        # failure in another region) asks it, and a published bundle is never retracted.
        self.manifest_key = self._publication.publish(
            manifest, {k: self._sizes[i] for i, k in enumerate(final)},
            release=not self.release_later)
        if self.release_later:
            self._releasing.start(self._publication.close)  # never raises
        self.progress.finish("upload")

    def released(self) -> None:
        """Wait for the lease's release that ``commit`` left under way (``release_later``)."""
        self._releasing.join()

    def _shutdown(self) -> None:
        """No upload thread outlives this call (parts not started are cancelled)."""
        assert self._pool is not None
        self._pool.shutdown(cancel=True)
        if self._pieces is not None:
            self._pieces.shutdown(cancel=True)
        if self._tail_sent is not None:
            self._tail_sent.close()

    def abort(self) -> None:
        # A release under way after a commit ends first: the one below must not race it.
        self._releasing.join()
        # Two-piece uploads still running are aborted instead of completed.
        self._stopping.set()
        if self._pool is not None:
            self._shutdown()
        self.progress.finish("upload")
        if self._publication is not None:
            publication, self._publication = self._publication, None
            try:
                if publication.retract():
                    self._abort_uploads()
                else:  # published (or the lease lost): nothing of it is ever ours to remove
                    with self._created_lock:
                        self._created.clear()
            finally:
                publication.close()
            return
        self._abort_uploads()

    def _abort_uploads(self) -> None:
        with self._created_lock:
            keys = sorted(self._created)
            self._created.clear()
        if not keys:
            return
        try:
            delete_keys(self.client, self.location.bucket, keys, attempts=self.attempts)
        except BundlerError as exc:
            log.warning("could not remove the partial upload from %s: %s", self.location.url(), exc)


class S3PartSource:
    """PartSource reading parts from S3: a bounded window of parts fetched in parallel, yielded in
    order, each SHA-1 checked (one retry on mismatch). Memory: about ``window`` parts."""

    def __init__(
        self,
        client: S3Client,
        location: S3Location,
        *,
        transfer: TransferConfig = DEFAULT_TRANSFER,
        window: int | None = None,
    ) -> None:
        self.client = client
        self.location = location
        self.jobs = transfer.jobs
        self.window = max(1, window or self.jobs + 2)
        self.attempts = transfer.attempts

    def describe(self) -> str:
        return self.location.url()

    def check_present(self, entries: Sequence[PartEntry]) -> None:
        if not entries:
            return
        keys = [self.location.key(e.filename) for e in entries]
        existing = list_objects(self.client, self.location.bucket, os.path.commonprefix(keys))
        for entry, key in zip(entries, keys, strict=True):
            if key not in existing:
                raise PartMissingError(f"part {entry.filename} (index {entry.index}) is missing "
                                       f"from {self.location.url()}")

    def iter_parts(self,
                   entries: Sequence[PartEntry]) -> Iterator[tuple[PartEntry, Iterable[bytes]]]:
        def fetch(entry: PartEntry) -> list[bytes]:
            return fetch_part_pieces(self.client, self.location.bucket,
                                     self.location.key(entry.filename), entry, self.attempts)

        # A consumer that stops early (error, Ctrl-C) must not leave downloads running:
        # closing the window cancels and waits for them.
        with closing(ordered_window(fetch, entries, jobs=self.jobs, window=self.window,
                                    name="ami-bundler-get")) as fetched:
            yield from fetched
