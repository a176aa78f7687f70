"""One bundle, many destinations: the sink that fans parts out, and each region's manifest.

* ``FanOutSink`` hands every part, as it is cut, to one child sink per destination; the parts
  (and so their digests) are identical everywhere. A child that fails is recorded and dropped;
  the others carry on.
* ``bundle()`` signs one manifest, wrapped to one EC2 certificate. ``region_manifest`` turns it
  into another region's with ``migrate.migrate``: the AES key and IV are recovered from the
  ``user_*`` pair with the user's private key (which bundling holds anyway), re-wrapped to that
  region's EC2 certificate and the manifest re-signed. So the key never has to leave
  ``bundle()``; multi-region install and ``migrate-manifest`` share one code path.

The install that drives them (probe, copy, bundle, register per region): ``bundler.install``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

from . import migrate as migratelib
from . import signalsafe
from .bundlerun import BundleKeys
from .concurrency import run_all
from .errors import BundlerError, S3Error
from .interrupts import critical
from .manifest import ParsedManifest
from .parts import Part, PartSink

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

log = logging.getLogger("bundler.multiregion")


class FanOutSink:
    """A PartSink that hands each part to every child sink.

    A child that raises is recorded in ``failures``, aborted and dropped; the others go on. Only
    when no child is left does the sink itself fail. ``manifest_for(label, manifest)`` gives each
    child its own manifest bytes at commit; children commit in parallel.
    """

    def __init__(
        self,
        children: Mapping[str, PartSink],
        *,
        manifest_for: Callable[[str, bytes], bytes] | None = None,
    ) -> None:
        if not children:
            raise ValueError("FanOutSink needs at least one child sink")
        self.children = dict(children)
        self.failures: dict[str, BaseException] = {}
        self.committed: list[str] = []
        self._manifest_for = manifest_for
        self._lock = threading.Lock()

    @property
    def live(self) -> list[str]:
        with self._lock:
            return [label for label in self.children if label not in self.failures]

    def _drop(self, label: str, exc: BaseException) -> None:
        with self._lock:
            if label in self.failures:
                return
            self.failures[label] = exc
        log.warning("%s: dropped from this run: %s", label, exc)
        try:
            self.children[label].abort()
        except Exception:  # abort must not raise, but a sink that does cannot stop the others
            log.debug("abort of %s failed", label, exc_info=True)

    def _require_live(self) -> None:
        if self.live:
            return
        details = "; ".join(f"{label}: {exc}" for label, exc in self.failures.items())
        first = next(iter(self.failures.values()))
        if isinstance(first, BundlerError) and len(self.failures) == 1:
            raise first
        raise S3Error(f"every destination failed: {details}")

    def begin(self, name: str, max_parts: int) -> None:
        for label in self.live:
            try:
                self.children[label].begin(name, max_parts)
            except Exception as exc:
                self._drop(label, exc)
        self._require_live()

    def expect_parts(self, count: int) -> None:
        for label in self.live:
            try:
                self.children[label].expect_parts(count)
            except Exception as exc:
                self._drop(label, exc)
        self._require_live()

    def put_part(self, part: Part) -> None:
        # Sequential hand-off: each child's own pool uploads in parallel, and its bounded queue
        # is what applies back-pressure; the part's bytes are shared, not copied.
        for label in self.live:
            try:
                self.children[label].put_part(part)
            except Exception as exc:
                self._drop(label, exc)
        self._require_live()

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        def one(label: str) -> None:
            data = self._manifest_for(label, manifest) if self._manifest_for else manifest
            self.children[label].commit(names, manifest_name, data)

        labels = self.live
        # A signal waits until every child's commit has ended: interrupting the wait would let
        # abort() retract a child's parts while its thread is still publishing the manifest.
        # A child that has not reached its commit point yet stops there (s3.publish); one past
        # it is published, and its abort keeps it.
        with critical():
            futures = run_all([partial(one, label) for label in labels], name="ami-bundler-fanout")
        for label, fut in zip(labels, futures, strict=True):
            exc = signalsafe.exception(fut)
            if exc is None:
                self.committed.append(label)
            elif isinstance(exc, Exception):
                self._drop(label, exc)
            else:
                raise exc
        self._require_live()

    def abort(self) -> None:
        for label in self.live:
            try:
                self.children[label].abort()
            except Exception:
                log.debug("abort of %s failed", label, exc_info=True)


def region_manifest(
    parsed: ParsedManifest,
    keys: BundleKeys,
    ec2_public_key: RSAPublicKey,
    ec2_cert: str = "EC2 certificate",
    *,
    wrapped_to: RSAPublicKey | None = None,
) -> bytes:
    """The bundle's manifest for a region whose EC2 key is ``ec2_public_key`` (``ec2_cert``
    names it in messages): as it is when ``wrapped_to`` (the EC2 key its ec2_* pair is wrapped
    to) is already that key, otherwise migrated (re-wrapped, re-signed)."""
    if wrapped_to is not None and wrapped_to.public_numbers() == ec2_public_key.public_numbers():
        return parsed.raw
    return migratelib.migrate(
        parsed,
        private_key=keys.signing_key,
        verify_key=keys.user_public_key,
        ec2_public_key=ec2_public_key,
        ec2_cert_name=ec2_cert,
    ).xml


__all__ = ["FanOutSink", "region_manifest"]
