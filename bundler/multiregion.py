"""One bundle → many regions: fan-out upload, a region-specific manifest per region, resume.

Design (see also README "Several regions"):

* **Bundle once.** ``FanOutSink`` hands every part, as it is cut, to one ``S3Sink`` per region;
  the parts (and so their digests) are identical everywhere. A region whose sink fails is
  recorded and dropped; the others carry on.
* **One manifest per region.** ``bundle()`` signs one manifest, wrapped to the first region's
  EC2 certificate. At commit time ``FanOutSink`` turns it into each region's manifest with
  ``migrate.migrate``: the AES key and IV are recovered from the ``user_*`` pair with the user's
  private key (which bundling holds anyway), re-wrapped to that region's EC2 certificate and the
  manifest is re-signed. So the key never has to leave ``bundle()``, and ``pipeline.py`` needed
  no change; multi-region and ``migrate-manifest`` share one code path.
* **Resume without re-bundling.** A re-bundle would draw a fresh random AES key, so parts from
  an earlier run could not be reused. A re-run therefore first probes every region: a region
  whose manifest is in its bucket, proved to hold this very image (``rerun.existing_bundle``:
  signature, size and the recomputed tar-stream SHA-1), and whose AMI (same name, same image
  location) is registered is done; a region holding a *different* bundle fails unless
  ``force`` (and always while an AMI uses it: ``s3.check_replaceable``), with ``force`` it is
  bundled again; a region with the manifest but no AMI only gets registered; a region without the
  manifest is completed with ``copy_bundle`` from a region that has it — server-side CopyObject
  within a partition and endpoint, a bounded GET→PUT stream otherwise — plus its migrated
  manifest (resumable itself: parts already there are skipped). Only when no region has the
  bundle is the image bundled again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from . import migrate as migratelib
from .concurrency import run_all
from .errors import BundlerError, S3Error
from .manifest import ParsedManifest, parse_manifest
from .parts import Part, PartSink
from .pipeline import BundleKeys, BundleOptions, bundle
from .progress import NULL_PROGRESS, ProgressListener
from .regions import same_partition
from .rerun import ImageFingerprint, existing_bundle, find_registered
from .s3 import (
    DEFAULT_ACL,
    DEFAULT_ATTEMPTS,
    DEFAULT_JOBS,
    InUseLookup,
    S3Location,
    S3Sink,
    check_replaceable,
    copy_bundle,
    ensure_bucket,
)
from .s3.ownership import check_bucket_for_bundles
from .source import ImageSource

log = logging.getLogger("bundler.multiregion")


# --------------------------------------------------------------------------- fan-out sink


class FanOutSink:
    """A PartSink that hands each part to every child sink.

    A child that raises is recorded in ``failures``, aborted and dropped; the others go on. Only
    when no child is left does the sink itself fail. ``manifest_for(label, manifest)`` gives each
    child its own manifest bytes at commit; children commit in parallel.
    """

    def __init__(self, children: Mapping[str, PartSink], *,
                 manifest_for: Callable[[str, bytes], bytes] | None = None) -> None:
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
            expect = getattr(self.children[label], "expect_parts", None)
            if expect is None:
                continue
            try:
                expect(count)
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
        futures = run_all([partial(one, label) for label in labels], name="ami-bundler-fanout")
        for label, fut in zip(labels, futures, strict=True):
            exc = fut.exception()
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


# --------------------------------------------------------------------------- multi-region install


@dataclass
class RegionTarget:
    """Where one region's copy goes and how to reach it."""

    region: str
    location: S3Location
    s3: Any
    ec2: Any | None
    ec2_public_key: Any
    ec2_cert: str = "EC2 certificate"  # for messages
    endpoint: str | None = None  # the S3 endpoint override, if any (decides server-side copy)
    in_use: InUseLookup | None = None  # which AMIs use a bundle there (see bundler.inuse)


@dataclass
class RegionOutcome:
    region: str
    image_location: str
    action: str = "pending"  # bundled | copied | present | failed
    image_id: str | None = None
    registered: str = "no"  # new | existing | no
    error: str | None = None
    copied_from: str | None = None
    parts_transferred: int = 0
    parts_skipped: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> dict[str, object]:
        return {"region": self.region, "image_location": self.image_location, "action": self.action,
                "image_id": self.image_id, "registered": self.registered, "error": self.error,
                "copied_from": self.copied_from, "parts_transferred": self.parts_transferred,
                "parts_skipped": self.parts_skipped}


@dataclass
class MultiRegionResult:
    name: str
    outcomes: list[RegionOutcome]
    bundled: bool
    seconds: float
    bundle_summary: dict[str, object] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[RegionOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def summary(self) -> dict[str, object]:
        return {"name": self.name, "bundled": self.bundled, "seconds": round(self.seconds, 3),
                "regions": {o.region: o.summary() for o in self.outcomes},
                "failed": [o.region for o in self.failed], "bundle": self.bundle_summary}


@dataclass
class _State:
    target: RegionTarget
    outcome: RegionOutcome
    parsed: ParsedManifest | None = None  # the region's manifest, when it holds this image
    different: bool = False  # the region holds a bundle of that name that is not this image


def _message(exc: BaseException) -> str:
    if isinstance(exc, BundlerError):
        return str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _same_key(a: Any, b: Any) -> bool:
    return a.public_numbers() == b.public_numbers()


def region_manifest(parsed: ParsedManifest, keys: BundleKeys, target: RegionTarget, *,
                    wrapped_to: Any = None) -> bytes:
    """The bundle's manifest for ``target``: as it is when ``wrapped_to`` (the EC2 key its
    ec2_* pair is wrapped to) is already the target's, otherwise migrated (re-wrapped, re-signed)."""
    if wrapped_to is not None and _same_key(wrapped_to, target.ec2_public_key):
        return parsed.raw
    return migratelib.migrate(parsed, private_key=keys.signing_key, verify_key=keys.user_public_key,
                              ec2_public_key=target.ec2_public_key, ec2_cert_name=target.ec2_cert).xml


def install_regions(
    targets: Sequence[RegionTarget],
    *,
    source: ImageSource,
    keys: BundleKeys,
    options: BundleOptions,
    register: Any | None = None,
    acl: str = DEFAULT_ACL,
    jobs: int = DEFAULT_JOBS,
    attempts: int = DEFAULT_ATTEMPTS,
    copy_mode: str = "auto",
    force: bool = False,
    progress: ProgressListener = NULL_PROGRESS,
    enable_bucket_acls: bool = False,
) -> MultiRegionResult:
    """Bundle ``source`` once into every target region (or complete an earlier run), register.

    Never raises for one region's failure: it is in that region's outcome. ``register`` is an
    ``ec2.RegisterOptions`` (None: upload only). ``copy_mode``: auto | server | stream.
    ``force``: replace a different bundle of that name (never one a registered AMI uses).
    """
    started = time.monotonic()
    name = options.name
    manifest_name = f"{name}.manifest.xml"
    states = [_State(t, RegionOutcome(t.region, t.location.image_location(manifest_name))) for t in targets]
    bundled = False
    bundle_summary = None
    image = ImageFingerprint(source, name)
    try:
        _parallel(states, lambda st: _probe(st, manifest_name, keys, image, register, acl, enable_bucket_acls))
        _parallel([st for st in states if st.outcome.ok and st.different],
                  lambda st: check_replaceable(st.target.location, manifest_name, force=force,
                                               in_use=st.target.in_use))
        alive = [st for st in states if st.outcome.ok]
        have = [st for st in alive if st.parsed is not None]
        need = [st for st in alive if st.parsed is None]
        if need and have:
            log.info("%s already in %s: copying it to %s instead of bundling again", name,
                     ", ".join(st.target.region for st in have), ", ".join(st.target.region for st in need))
            _parallel(need, lambda st: _copy_from(st, have, manifest_name, keys, acl, jobs, attempts, copy_mode,
                                                  force))
        elif need:
            bundle_summary = _bundle_to(need, source, keys, options, acl, jobs, attempts, force, progress)
            bundled = True
    finally:
        source.close()  # bundle() closes it too; closing twice is harmless, leaking it is not
    if register is not None:
        _parallel([st for st in states if st.outcome.ok], lambda st: _register(st, register, manifest_name))
    return MultiRegionResult(name, [st.outcome for st in states], bundled, time.monotonic() - started,
                             bundle_summary)


def _parallel(states: Sequence[_State], fn: Callable[[_State], None]) -> None:
    """Run ``fn`` per region in parallel; an exception becomes that region's failure."""
    def guarded(st: _State) -> None:
        try:
            fn(st)
        except Exception as exc:
            log.debug("%s failed", st.target.region, exc_info=True)
            st.outcome.action = "failed"
            st.outcome.error = _message(exc)

    for fut in run_all([partial(guarded, st) for st in states], name="ami-bundler-region"):
        fut.result()  # guarded() keeps Exceptions; a KeyboardInterrupt is raised here


def _probe(st: _State, manifest_name: str, keys: BundleKeys, image: ImageFingerprint, register: Any | None,
           acl: str = DEFAULT_ACL, enable_bucket_acls: bool = False) -> None:
    t = st.target
    ensure_bucket(t.s3, t.location.bucket, location=t.region)
    # Before the first part is bundled: a bucket that cannot take the ACL fails its region here.
    check_bucket_for_bundles(t.s3, t.location.bucket, acl=acl, enable_acls=enable_bucket_acls)
    existing = existing_bundle(t.s3, t.location, manifest_name, image, keys.user_public_key)
    if existing is None:
        return
    if not existing.same_image or existing.parsed is None:
        st.different = True
        return
    st.parsed = existing.parsed
    st.outcome.action = "present"
    if register is not None and t.ec2 is not None:
        image_id = find_registered(t.ec2, register.name, st.outcome.image_location)
        if image_id:
            st.outcome.image_id = image_id
            st.outcome.registered = "existing"


def _server_side(src: RegionTarget, dst: RegionTarget, mode: str) -> bool:
    if mode == "server":
        return True
    if mode == "stream":
        return False
    # CopyObject needs one endpoint that sees both buckets: same partition, same endpoint.
    return same_partition(src.region, dst.region) and src.endpoint == dst.endpoint


def _copy_from(st: _State, have: Sequence[_State], manifest_name: str, keys: BundleKeys, acl: str,
               jobs: int, attempts: int, copy_mode: str, force: bool) -> None:
    t = st.target
    # Prefer a source that allows a server-side copy.
    ranked = sorted(have, key=lambda h: not _server_side(h.target, t, copy_mode))
    src = ranked[0]
    assert src.parsed is not None
    data = region_manifest(src.parsed, keys, t)
    # The copy's own publish protocol decides again about a different bundle there.
    result = copy_bundle(src.target.s3, src.target.location, manifest_name, t.s3, t.location, manifest=data,
                         parsed=src.parsed, server_side=_server_side(src.target, t, copy_mode), acl=acl,
                         jobs=jobs, attempts=attempts, force=force, in_use=t.in_use)
    st.parsed = parse_manifest(data, source=t.location.url(manifest_name))
    st.outcome.action = "copied"
    st.outcome.copied_from = src.target.region
    st.outcome.parts_transferred = result.parts_copied
    st.outcome.parts_skipped = result.parts_skipped


def _bundle_to(need: Sequence[_State], source: ImageSource, keys: BundleKeys, options: BundleOptions, acl: str,
               jobs: int, attempts: int, force: bool, progress: ProgressListener) -> dict[str, object] | None:
    by_region = {st.target.region: st for st in need}
    first = need[0].target
    bundle_keys = BundleKeys(keys.signing_key, keys.user_public_key, first.ec2_public_key)
    sinks = {st.target.region: S3Sink(st.target.s3, st.target.location.bucket, st.target.location.prefix,
                                      acl=acl, jobs=jobs, attempts=attempts, force=force,
                                      in_use=st.target.in_use) for st in need}

    def manifest_for(region: str, data: bytes) -> bytes:
        parsed = parse_manifest(data, source=by_region[region].outcome.image_location)
        return region_manifest(parsed, bundle_keys, by_region[region].target, wrapped_to=first.ec2_public_key)

    fan = FanOutSink(sinks, manifest_for=manifest_for)
    summary = None
    try:
        result = bundle(source, fan, bundle_keys, options, progress)
        summary = result.summary()
    except Exception as exc:
        # Every sink failed (or bundling itself did): every region fails with the reason.
        for st in need:
            if st.outcome.ok:
                cause = fan.failures.get(st.target.region, exc)
                st.outcome.action = "failed"
                st.outcome.error = _message(cause)
        return None
    for region, failure in fan.failures.items():
        by_region[region].outcome.action = "failed"
        by_region[region].outcome.error = _message(failure)
    for region in fan.committed:
        st = by_region[region]
        st.outcome.action = "bundled"
        st.outcome.parts_transferred = len(result.part_names)
    return summary


def _register(st: _State, register: Any, manifest_name: str) -> None:
    from dataclasses import replace

    from .ec2 import preflight, register_image

    t = st.target
    if st.outcome.image_id or t.ec2 is None:
        return
    report = preflight(t.s3, st.outcome.image_location, region=t.region)
    options = replace(register, tags=dict(register.tags), launch_permissions=list(register.launch_permissions))
    if options.architecture is None and report.manifest.arch:
        options.architecture = report.manifest.arch
    st.outcome.image_id = register_image(t.ec2, st.outcome.image_location, options)
    st.outcome.registered = "new"


__all__ = [
    "FanOutSink",
    "MultiRegionResult",
    "RegionOutcome",
    "RegionTarget",
    "find_registered",
    "install_regions",
    "region_manifest",
]
