"""Relayed copies: a bundle being uploaded to one bucket (its *source*, an ``S3Sink``) is copied
part by part, server-side, into other buckets that CopyObject reaches from it, each part as
soon as it has landed in the source — so the copies overlap the upload instead of following
it (publish's fan-out: bundle once, copy to every region of the account).

A ``RelaySink`` is a ``PartSink`` in the bundling's ``FanOutSink``, beside its source's
``RelaySource``. It writes through the one publish protocol (``Publication``): the lease is
taken first (on its own pool, so that the relays' leases do not queue in front of the first
part), each part is copied under the name its source gave it and its copy's ETag checked
against the part's MD5, and at commit every part of the final manifest is re-checked under the
lease before the relay's own manifest goes up last. A copy that fails while pipelined only ends
the pipelining: commit copies whatever is missing again, from the source's final keys, and
that failing fails the relay alone. If its source fails, the relay fails with ``SourceLost``
(the caller may complete it later from a target that has the bundle).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING

from .. import signalsafe
from ..concurrency import BoundedExecutor, run_parallel
from ..errors import BundlerError, S3Error
from ..interrupts import critical
from ..parts import Part, PartSink
from ..signalsafe import Condition
from ..transfer import DEFAULT_TRANSFER, TransferConfig
from .location import S3Location
from .objects import copy_object, delete_keys
from .publish import InUseLookup, Publication

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.s3")


class SourceLost(S3Error):
    """The sink a relay copies from failed: the relay has no bundle to copy."""


class RelaySink:
    """PartSink that copies each part server-side from ``source`` (the bucket the parts are
    uploaded to) once ``stored`` says it has landed there. ``transfer.jobs`` copies at once."""

    def __init__(self, client: S3Client, location: S3Location, source: S3Location, *,
                 transfer: TransferConfig = DEFAULT_TRANSFER, force: bool = False,
                 in_use: InUseLookup | None = None, source_label: str = "") -> None:
        self.client = client
        self.location = location
        self.source = source
        self.source_label = source_label or source.url()
        self.transfer = transfer
        self.force = force
        self.in_use = in_use
        self.parts_copied = 0
        self.bytes_copied = 0
        # A plain lock (its ``with`` cannot be split by a signal on the main thread, where
        # begin, commit and abort run) and a condition for the waits only (signalsafe).
        self._lock = threading.Lock()
        self._changed = Condition(self._lock)
        self._pool: BoundedExecutor | None = None
        self._opened: Future[object] | None = None
        self._publication: Publication | None = None
        self._landed: dict[int, tuple[str, int, str]] = {}  # index → (source key, size, MD5)
        self._copied: dict[int, str] = {}  # index → our key holding the part (ETag checked)
        # our key → the ETag its copy answered: the MD5, or in a KMS bucket one that is not
        # (etags.says_not_md5) and that the publication's re-check must compare with instead
        self._etags: dict[str, str] = {}
        self._running = 0  # pipelined copies submitted and not yet ended
        self._created: set[str] = set()  # keys our requests may have created
        self._source_ok: bool | None = None  # None: the source is still going
        self._pipelining = True  # until the first failed copy, an abort or commit
        self.manifest_key: str | None = None

    def describe(self) -> str:
        return self.location.url()

    # ------------------------------------------------------------------ from the source

    def stored(self, index: int, key: str, size: int, md5: str) -> None:
        """The source's hook: part ``index`` is in the source bucket as ``key``. Never raises
        (it runs on the source's uploader thread)."""
        with self._lock:
            self._landed[index] = (key, size, md5)
            try:
                self._submit(index)
            except Exception:  # the copy is made at commit instead; the upload goes on
                log.debug("could not start the copy of %s", key, exc_info=True)
                self._pipelining = False
            self._changed.notify_all()

    def source_done(self, ok: bool) -> None:
        """The source committed (its parts have their final names) or failed."""
        with self._lock:
            if self._source_ok is None:
                self._source_ok = ok
            self._changed.notify_all()

    # ------------------------------------------------------------------ PartSink

    def begin(self, name: str, max_parts: int) -> None:
        publication = Publication(self.client, self.location, f"{name}.manifest.xml",
                                  acl=self.transfer.acl, attempts=self.transfer.attempts,
                                  force=self.force, in_use=self.in_use)
        # Never full: a submit must not block the source's uploader thread that calls it.
        pool = BoundedExecutor(self.transfer.jobs, max_parts + 2, name="ami-bundler-relay")
        # The lease's future stored with its submit: a signal raised between the two (once
        # the submit's own section ends) would leave abort() waiting for a lease it then does
        # not release.
        with critical(), self._lock:
            self._publication, self._pool = publication, pool
            # A bundle already there is another one (fresh key): refused, or retired first.
            # abort() waits for this before it releases the lease.
            self._opened = pool.submit(publication.open, None)
        self.transfer.progress.start("copy", None)

    def expect_parts(self, count: int) -> None:
        pass  # parts keep the names their source gave them

    def put_part(self, part: Part) -> None:
        # The bytes are not needed (the copy is server-side); what fails this relay early is
        # its lease or its source having failed.
        with self._lock:
            opened, lost = self._opened, self._source_ok is False
        if lost:
            raise SourceLost(f"{self.source_label} failed: nothing to copy to "
                             f"{self.location.url()}")
        failed = (signalsafe.exception(opened)
                  if opened is not None and signalsafe.done(opened) else None)
        if failed is not None:
            raise failed

    def _submit(self, index: int) -> None:
        """Copy a landed part now (called with the lock held)."""
        if (not self._pipelining or self._pool is None or self._source_ok is False
                or index in self._copied):
            return
        src, size, md5 = self._landed[index]
        dst = self.location.key(src[len(self.source.prefix):])
        self._created.add(dst)  # before the request: an interrupted copy may still land
        self._running += 1
        self._pool.submit(self._pipelined, index, src, dst, size, md5)

    def _copy(self, src: str, dst: str, size: int, md5: str) -> None:
        got = copy_object(self.client, (self.source.bucket, src), self.location.bucket, dst,
                          etag=md5, acl=self.transfer.acl, attempts=self.transfer.attempts)
        with self._lock:
            self._etags[dst] = got or md5
            self.parts_copied += 1
            self.bytes_copied += size
        self.transfer.progress.advance("copy", size)

    def _pipelined(self, index: int, src: str, dst: str, size: int, md5: str) -> None:
        try:
            assert self._opened is not None
            self._opened.result()  # our lease first
            self._copy(src, dst, size, md5)
            with self._lock:
                self._copied[index] = dst
        except Exception as exc:
            # Commit copies what is missing again (from the source's final names); only that
            # failing fails this relay.
            log.debug("pipelined copy of %s to %s failed: %s", src, self.location.url(), exc)
            with self._lock:
                self._pipelining = False
        finally:
            with self._lock:
                self._running -= 1
                self._changed.notify_all()

    def _settled(self, count: int) -> bool:
        if self._source_ok is not None or not self._pipelining:
            return self._running == 0
        return self._running == 0 and all(i in self._landed for i in range(count))

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        assert self._pool is not None and self._opened is not None and self._publication
        with self._lock:
            # Every part has landed and been copied, or the source ended, or pipelining did.
            self._changed.wait_for(lambda: self._settled(len(names)))
            self._pipelining = False
        signalsafe.result(self._opened)  # the lease's error, if it had one, is this relay's
        final = [self.location.key(n) for n in names]
        todo = [i for i, key in enumerate(final) if self._copied.get(i) != key]
        with self._lock:
            renamed = any(self._landed.get(i, ("",))[0] != self.source.key(names[i])
                          for i in todo)
            if renamed or any(i not in self._landed for i in todo):
                # Copied from the source's final names, which exist once it has committed.
                self._changed.wait_for(lambda: self._source_ok is not None)
            if self._source_ok is False:
                raise SourceLost(f"{self.source_label} failed: nothing to copy to "
                                 f"{self.location.url()}")
            expected = {final[i]: self._landed[i][1:] for i in range(len(names))
                        if i in self._landed}
        if todo:
            if len(expected) != len(names):
                raise S3Error(f"internal error: {len(names)} parts named, "
                              f"{len(expected)} stored by {self.source_label}")
            log.info("copying %d of %d parts to %s at commit", len(todo), len(names),
                     self.location.url())
            with self._lock:
                self._created.update(final[i] for i in todo)
            run_parallel([partial(self._copy, self.source.key(names[i]), final[i],
                                  *expected[final[i]]) for i in todo],
                         self.transfer.jobs, name="ami-bundler-relay")
        stale = sorted(set(self._copied.values()) - set(final))
        if stale:
            delete_keys(self.client, self.location.bucket, stale, attempts=self.transfer.attempts)
            with self._lock:
                self._created.difference_update(stale)
        assert manifest_name == self._publication.manifest_name
        with self._lock:
            answered = {key: (size, self._etags.get(key, md5))
                        for key, (size, md5) in expected.items()}
        self.manifest_key = self._publication.publish(manifest, answered)
        self._publication = None
        self._pool.shutdown(cancel=False)
        self.transfer.progress.finish("copy")

    def abort(self) -> None:
        with self._lock:
            self._pipelining = False
            pool, publication = self._pool, self._publication
            self._publication = None
        if pool is not None:
            pool.shutdown(cancel=True)  # waits for the lease and the copies under way
        self.transfer.progress.finish("copy")
        if publication is None:
            return
        try:
            opened = (self._opened is not None and not signalsafe.cancelled(self._opened)
                      and signalsafe.exception(self._opened) is None)
            if opened and publication.retract():
                self._remove_created()
        finally:
            publication.close()

    def _remove_created(self) -> None:
        with self._lock:
            keys = sorted(self._created)
            self._created.clear()
        if not keys:
            return
        try:
            delete_keys(self.client, self.location.bucket, keys, attempts=self.transfer.attempts)
        except BundlerError as exc:
            log.warning("could not remove the partial copy from %s: %s", self.location.url(),
                        exc)


class RelaySource:
    """The source's sink in the ``FanOutSink``: the ``S3Sink`` itself, telling its relays when
    it has committed or failed (its ``on_stored`` hook, given at construction, tells them of
    each part: ``relay_hook``)."""

    def __init__(self, sink: PartSink, relays: Sequence[RelaySink]) -> None:
        self.sink = sink
        self.relays = list(relays)

    def describe(self) -> str:
        describe: Callable[[], str] | None = getattr(self.sink, "describe", None)
        return describe() if describe else "relay source"

    def begin(self, name: str, max_parts: int) -> None:
        try:
            self.sink.begin(name, max_parts)
        except BaseException:
            self._done(False)
            raise

    def expect_parts(self, count: int) -> None:
        self.sink.expect_parts(count)

    def put_part(self, part: Part) -> None:
        self.sink.put_part(part)

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        try:
            self.sink.commit(names, manifest_name, manifest)
        except BaseException:
            self._done(False)
            raise
        self._done(True)

    def abort(self) -> None:
        self._done(False)  # first: no relay starts another copy of a part about to be removed
        self.sink.abort()

    def _done(self, ok: bool) -> None:
        for relay in self.relays:
            relay.source_done(ok)


def relay_hook(relays: Sequence[RelaySink]) -> Callable[[int, str, int, str], None]:
    """The source ``S3Sink``'s ``on_stored``: every relay hears of each part that landed."""
    def stored(index: int, key: str, size: int, md5: str) -> None:
        for relay in relays:
            relay.stored(index, key, size, md5)
    return stored


__all__ = ["RelaySink", "RelaySource", "SourceLost", "relay_hook"]
