"""``install``: bundle → parallel PUTs → RegisterImage in one streaming run, into one region or
many — one region is one target.

Design (see also README "Several regions"):

* **Bundle once.** ``multiregion.FanOutSink`` hands every part, as it is cut, to one ``S3Sink``
  per region that needs it; parts go from the compressor straight to S3 (none touch the disk)
  and are identical everywhere. A region whose sink fails is recorded and dropped; the others
  carry on.
* **One manifest per region.** ``bundle()`` signs one manifest, wrapped to the first region's
  EC2 certificate; at commit ``multiregion.region_manifest`` migrates it (re-wraps the AES key
  to each region's EC2 certificate, re-signs). The key never leaves ``bundle()``.
* **Resume without re-bundling.** A re-bundle would draw a fresh random AES key, so parts from
  an earlier run could not be reused. A run therefore first probes every region: a region whose
  manifest is in its bucket, proved to hold this very image (``rerun.existing_bundle``:
  signature, size and the recomputed tar-stream SHA-1), and whose AMI (same name, same image
  location) is registered is done; a region holding a *different* bundle fails unless ``force``
  (and always while an AMI uses it: ``s3.check_replaceable``), with ``force`` it is bundled
  again; a region with the manifest but no AMI only gets registered; a region without the
  manifest is completed with ``copy_bundle`` from a region that has it — server-side
  CopyObject within a partition and endpoint, a bounded GET→PUT stream otherwise — plus its
  migrated manifest (resumable itself). Only when no region has the bundle is the image
  bundled again.
* **Relay within a copy group.** With ``bundle_to`` (publish: one target per account), each
  other target a server-side copy reaches from one of those gets every part copied there as
  soon as it has landed (``s3.relay``), so the copies overlap the upload; its manifest goes
  up last, through the same publish protocol.
* **Bundle while probing.** Nearly every run finds nothing there: with an image that can be
  read again, bundling starts at once and the probes run first in its held set-up
  (``s3.held``), before the gate and the leases. Each only asks whether the target can take a
  bundle and whether its manifest is there. Anything else than "nothing there" on every target
  (a manifest, a failure) stops that bundle before any request of its own — no lease, no
  part — and the run starts over with the full probes, reading the image again.
* **Register last.** Only after a region's manifest is in its bucket, once per region,
  optionally waiting until the AMI is available. A bundle this run has just published (its
  parts and lease re-checked under the lease a round trip before) is registered at once, the
  lease's release beside RegisterImage; one found there or copied is read back first, its parts
  listed (``ec2.preflight``). The EC2 client is made once the last part's requests have gone
  out (``RegionTarget.prepare``): the CPU is idle while they upload.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, cast

from . import signalsafe
from .bundlerun import BundleKeys, BundleOptions, BundleResult
from .bundling import bundle
from .concurrency import run_all
from .ec2 import RegisterOptions, preflight, register_image, wait_available
from .errors import BundlerError, S3Error, UsageError
from .interrupts import critical
from .manifest import ParsedManifest, parse_manifest
from .multiregion import FanOutSink, region_manifest
from .parts import PartSink
from .progress import labelled
from .regions import same_partition
from .rerun import ExistingBundle, ImageFingerprint, existing_bundle, find_registered
from .s3 import (
    InUseLookup,
    S3Location,
    S3Sink,
    check_replaceable,
    copy_bundle,
    ensure_bucket,
    object_exists,
)
from .s3.held import HeldSink
from .s3.ownership import check_bucket_for_bundles
from .s3.relay import RelaySink, RelaySource, SourceLost, relay_hook
from .source import ImageSource
from .transfer import COPY_MODES, DEFAULT_TRANSFER, TransferConfig

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.install")

DEFAULT_WAIT_SECONDS = 900.0


@dataclass
class RegionTarget:
    """Where one region's copy goes and how to reach it."""

    region: str
    location: S3Location
    s3: S3Client
    ec2: EC2Client | None  # None: upload only in this region
    ec2_public_key: RSAPublicKey  # the region's EC2 certificate key the manifest is wrapped to
    ec2_cert: str = "EC2 certificate"  # for messages
    endpoint: str | None = None  # the S3 endpoint override, if any (decides server-side copy)
    in_use: InUseLookup | None = None  # which AMIs use a bundle there (see bundler.inuse)
    account: str | None = None  # whose bucket and AMI (publish plans: several accounts)
    # The caller has just made sure the bucket exists in ``region`` (the CLI does, to pick the
    # region): install does not ask again.
    bucket_ready: bool = False
    # Called once when the last part of a bundle for this target is on its way up (its requests
    # about to go out): what registering needs can be made then, while the link is busy and the
    # CPU idle (the CLI makes its EC2 client). Must not raise.
    prepare: Callable[[], None] | None = None

    @property
    def label(self) -> str:
        """How results and messages name it: the region, or ACCOUNT/REGION with accounts."""
        return f"{self.account}/{self.region}" if self.account else self.region


@dataclass
class RegionOutcome:
    region: str
    image_location: str
    action: str = "pending"  # bundled | copied | present | failed
    image_id: str | None = None
    registered: str = "no"  # new | existing | no
    state: str | None = None  # with wait: the AMI's final state
    error: str | None = None
    copied_from: str | None = None
    parts_transferred: int = 0
    parts_skipped: int = 0
    bytes_uploaded: int = 0
    account: str | None = None
    exit_code: int | None = None  # of the error, when it failed (BundlerError.exit_code)
    # What failed, for a caller that reports one region's failure as its own error (the CLI's
    # single-region install re-raises it).
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        return f"{self.account}/{self.region}" if self.account else self.region

    def failed(self, exc: BaseException | str, exit_code: int = S3Error.exit_code) -> None:
        self.action = "failed"
        self.error = exc if isinstance(exc, str) else _message(exc)
        self.exit_code = getattr(exc, "exit_code", exit_code)
        if isinstance(exc, BaseException):
            self.exception = exc

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "region": self.region, "image_location": self.image_location, "action": self.action,
            "image_id": self.image_id, "registered": self.registered, "error": self.error,
            "copied_from": self.copied_from, "parts_transferred": self.parts_transferred,
            "parts_skipped": self.parts_skipped, "state": self.state,
        }
        if self.account:
            out["account"] = self.account
        return out


@dataclass
class InstallResult:
    name: str
    outcomes: list[RegionOutcome]
    bundled: bool  # this run bundled the image (False: every region had it or copied it)
    seconds: float
    bundle: BundleResult | None = None

    @property
    def failed(self) -> list[RegionOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name, "bundled": self.bundled, "seconds": round(self.seconds, 3),
            "regions": {o.label: o.summary() for o in self.outcomes},
            "failed": [o.label for o in self.failed],
            "bundle": self.bundle.summary() if self.bundle else None,
        }


@dataclass
class _State:
    target: RegionTarget
    outcome: RegionOutcome
    parsed: ParsedManifest | None = None  # the region's manifest, when it holds this image
    different: bool = False  # the region holds a bundle of that name that is not this image
    # Waits for the release of the lease this run published the region's bundle under, which
    # is under way meanwhile (S3Sink's release_later), beside the registration.
    released: Callable[[], None] | None = None


def _message(exc: BaseException) -> str:
    if isinstance(exc, BundlerError):
        return str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def install(
    source: ImageSource,
    keys: BundleKeys,
    options: BundleOptions,
    targets: Sequence[RegionTarget],
    *,
    transfer: TransferConfig = DEFAULT_TRANSFER,
    register: RegisterOptions | None = None,
    wait: bool = False,
    wait_timeout: float = DEFAULT_WAIT_SECONDS,
    copy_mode: str = "auto",
    force: bool = False,
    enable_bucket_acls: bool = False,
    max_regions: int | None = None,
    fingerprint: ImageFingerprint | None = None,
    gate: Callable[[], None] | None = None,
    bundle_to: Collection[str] | None = None,
) -> InstallResult:
    """Bundle ``source`` once into every target (or complete an earlier run) and register it.

    Never raises for one region's failure: it is in that region's outcome (``error``, and the
    exception itself). ``keys``: the signing key and the user's certificate; each target's
    ``ec2_public_key`` is what its manifest is wrapped to. ``register`` None: upload only;
    an empty ``register.name`` means the bundle's name. ``wait``: until each new AMI is
    available. ``copy_mode``: how a region is completed from one that has the bundle (auto |
    server | stream). ``force``: replace a different bundle of that name (never one a
    registered AMI uses). ``max_regions``: at most this many targets worked on at once;
    bundling fans out to the first ones and the others are copied from them (None: all at
    once). ``fingerprint``: the image's, when the caller has computed it already (it reads the
    whole image). ``gate``: called once every target is probed, before anything is uploaded,
    copied or registered (the CLI's image check, run meanwhile); what it raises, install
    raises. When the image is bundled, the gate runs on a thread of its own while the first
    parts are made (``s3.held``: they wait for it, and for each target's lease).
    ``bundle_to``: the labels of the targets bundled to when none has the bundle
    (default: the first ``max_regions``); while ``max_regions`` leaves room, each other target
    that a server-side copy reaches from one of them is relayed to (``s3.relay``: every part
    copied there as soon as it has landed, its manifest last), the rest are copied after the
    bundle is complete. ``source`` is closed.
    """
    started = time.monotonic()
    try:
        if not targets:
            raise UsageError("install needs at least one target region")
        if max_regions is not None and max_regions < 1:
            raise UsageError(f"max_regions must be at least 1, not {max_regions}")
        if copy_mode not in COPY_MODES:
            raise UsageError(f"copy mode must be one of {', '.join(COPY_MODES)}, not {copy_mode!r}")
    except BaseException:
        source.close()
        raise
    name = options.name
    manifest_name = f"{name}.manifest.xml"
    if register is not None and not register.name:
        register = dataclasses.replace(register, name=name)
    states = [
        _State(t, RegionOutcome(t.region, t.location.image_location(manifest_name),
                                account=t.account))
        for t in targets
    ]
    result = InstallResult(name, [st.outcome for st in states], False, 0.0)
    # threading's, not signalsafe's: only run_all's threads take it, which no signal reaches.
    limit = threading.BoundedSemaphore(max_regions) if max_regions else None
    _parallel = partial(_in_parallel, limit=limit)
    image = fingerprint or ImageFingerprint(source, name)
    try:
        plan: _Plan | None = None  # what this run bundles to, when it bundles
        early = (_bundle_while_probing(states, manifest_name, source, keys, options, transfer,
                                       force, gate, enable_bucket_acls, bundle_to, max_regions,
                                       copy_mode)
                 if source.rereadable else None)
        if early is not None:
            plan, result.bundle = early
            have, need = [], plan.rest
        else:
            _parallel(states, lambda st: _probe(st, manifest_name, keys, image, register,
                                                transfer, enable_bucket_acls))
            _parallel([st for st in states if st.outcome.ok and st.different],
                      lambda st: check_replaceable(st.target.location, manifest_name,
                                                   force=force, in_use=st.target.in_use))
            alive = [st for st in states if st.outcome.ok]
            have = [st for st in alive if st.parsed is not None]
            need = [st for st in alive if st.parsed is None]
            if need and not have:
                plan = _plan(need, bundle_to, max_regions, copy_mode)
                need = plan.rest
                result.bundle = _bundle_to(plan.first, plan.relays, source, keys, options,
                                           transfer, force, gate)
            elif gate is not None:
                gate()
        if plan is not None:
            result.bundled = True
            relayed = [st for group in plan.relays.values() for st in group]
            have = [st for st in [*plan.first, *relayed] if st.outcome.ok and st.parsed is not None]
            # A relay whose source failed is completed from one that has the bundle.
            need += [st for st in relayed if st.outcome.ok and st.parsed is None]
            if need and not have:
                for st in need:
                    st.outcome.failed("not bundled: every target it was bundled to first failed")
                need = []
        if need:
            log.info("%s already in %s: copying it to %s instead of bundling again", name,
                     ", ".join(st.target.label for st in have),
                     ", ".join(st.target.label for st in need))
            _parallel(need, lambda st: _copy_from(st, have, manifest_name, keys,
                                                  _shown(transfer, st, len(need)), copy_mode,
                                                  force))
    except BaseException:
        _released(states)
        raise
    finally:
        source.close()  # bundle() closes it too; closing twice is harmless, leaking it is not
    try:
        if register is not None:
            chosen = register
            _parallel([st for st in states if st.outcome.ok],
                      lambda st: _register(st, chosen, wait, wait_timeout))
    finally:
        _released(states)
    result.seconds = time.monotonic() - started
    return result


def _released(states: Sequence[_State]) -> None:
    """No lease release outlives the run (see ``_State.released``): a signal meanwhile waits
    until they have ended, as it did when they were the publication's last step."""
    with critical():
        for st in states:
            if st.released is not None:
                st.released()


def _shown(transfer: TransferConfig, st: _State, together: int) -> TransferConfig:
    """One target's progress: the run's own display when it is alone, else a bar of its own
    (named for it), so several never interleave on one."""
    if together <= 1:
        return transfer
    return dataclasses.replace(transfer, progress=labelled(transfer.progress, st.target.label))


def _in_parallel(states: Sequence[_State], fn: Callable[[_State], None], *,
                 limit: threading.BoundedSemaphore | None = None) -> None:
    """Run ``fn`` per region in parallel (at most ``limit`` at once); an exception becomes that
    region's failure."""
    def guarded(st: _State) -> None:
        try:
            if limit is None:
                fn(st)
            else:
                with limit:
                    fn(st)
        except Exception as exc:
            log.debug("%s failed", st.target.label, exc_info=True)
            st.outcome.failed(exc)

    for fut in run_all([partial(guarded, st) for st in states], name="ami-bundler-region"):
        signalsafe.result(fut)  # guarded() keeps Exceptions; a KeyboardInterrupt is raised here


def _probe(st: _State, manifest_name: str, keys: BundleKeys, image: ImageFingerprint,
           register: RegisterOptions | None, transfer: TransferConfig,
           enable_bucket_acls: bool) -> None:
    t = st.target
    existing = cast("ExistingBundle | None", _fit_and(
        st, transfer.acl, enable_bucket_acls,
        partial(existing_bundle, t.s3, t.location, manifest_name, image, keys.user_public_key)))
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


class _Replan(Exception):
    """The probes of a run that started bundling found something there (or failed): that
    bundle stops before any request of its own, and the run probes again in full."""


@dataclass
class _Plan:
    first: list[_State]  # bundled to
    relays: dict[str, list[_State]]  # relayed to, by the label of the target bundled to
    rest: list[_State]  # completed by a copy once the bundle is there


def _plan(need: Sequence[_State], bundle_to: Collection[str] | None, max_regions: int | None,
          copy_mode: str) -> _Plan:
    """Which of ``need`` (no target has the bundle) are bundled to, relayed to or copied to."""
    if bundle_to is not None:
        first = [st for st in need if st.target.label in bundle_to]
        rest = [st for st in need if st.target.label not in bundle_to]
        # One whose target to bundle to failed its probe is bundled to itself.
        for st in list(rest):
            if (not any(_server_side(f.target, st.target, copy_mode) for f in first)
                    and (max_regions is None or len(first) < max_regions)):
                first.append(st)
                rest.remove(st)
    else:
        first, rest = ((list(need[:max_regions]), list(need[max_regions:])) if max_regions
                       else (list(need), []))
    relays = _relays(first, rest, copy_mode, max_regions)
    relayed = [st for group in relays.values() for st in group]
    return _Plan(first, relays, [st for st in rest if all(st is not r for r in relayed)])


def _bundle_while_probing(
    states: Sequence[_State], manifest_name: str, source: ImageSource, keys: BundleKeys,
    options: BundleOptions, transfer: TransferConfig, force: bool,
    gate: Callable[[], None] | None, enable_bucket_acls: bool,
    bundle_to: Collection[str] | None, max_regions: int | None, copy_mode: str,
) -> tuple[_Plan, BundleResult | None] | None:
    """Bundle as if every probe will find nothing there, the probes running first in the
    bundle's held set-up (before the gate and the leases). None: they found something there
    or failed, the bundle stopped before any request of its own, and ``source`` is still open
    for the run to probe in full and read again."""
    plan = _plan(states, bundle_to, max_regions, copy_mode)

    def probe_then_gate() -> None:
        looks = run_all([partial(_nothing_there, st, manifest_name, transfer.acl,
                                 enable_bucket_acls) for st in states], name="ami-bundler-probe")
        if not all(f.exception() is None and f.result() for f in looks):
            raise _Replan()
        if gate is not None:
            gate()

    try:
        bundled = _bundle_to(plan.first, plan.relays, cast("ImageSource", _Unclosed(source)),
                             keys, options, transfer, force, probe_then_gate)
    except _Replan:
        log.info("%s: found at a target or a probe failed: probing in full", options.name)
        return None
    return plan, bundled


def _nothing_there(st: _State, manifest_name: str, acl: str | None,
                   enable_bucket_acls: bool) -> bool:
    """The probe of a run that is bundling already: whether the target's bucket can take the
    bundle and holds no manifest of that name."""
    t = st.target
    return not _fit_and(st, acl, enable_bucket_acls,
                        partial(object_exists, t.s3, t.location.bucket,
                                t.location.key(manifest_name)))


def _fit_and(st: _State, acl: str | None, enable_bucket_acls: bool,
             read: Callable[[], object]) -> object:
    """Every probe's first step: the bucket (made if it must be), then its fitness for bundles
    and ``read`` — independent reads, each a round trip: asked together. Before the first part
    is bundled, a bucket that cannot take the ACL fails its region (its error first)."""
    t = st.target
    if not t.bucket_ready:
        ensure_bucket(t.s3, t.location.bucket, location=t.region)
    reads: list[Callable[[], object]] = [
        partial(check_bucket_for_bundles, t.s3, t.location.bucket, acl=acl,
                enable_acls=enable_bucket_acls),
        read,
    ]
    fitness, found = run_all(reads, name="ami-bundler-probe")
    fitness.result()
    return found.result()


class _Unclosed:
    """``source`` lent to a bundle that may be stopped by its probes: closing it is left to
    its owner, who may read it again."""

    def __init__(self, source: ImageSource) -> None:
        self._source = source

    def __getattr__(self, name: str) -> object:
        return getattr(self._source, name)

    def close(self) -> None:
        pass


def _server_side(src: RegionTarget, dst: RegionTarget, mode: str) -> bool:
    if mode == "server":
        return True
    if mode == "stream":
        return False
    # CopyObject needs one endpoint that sees both buckets (same partition, same endpoint) and
    # credentials that can read the source: the destination's account's, so the same account.
    return (same_partition(src.region, dst.region) and src.endpoint == dst.endpoint
            and src.account == dst.account)


def _copy_from(st: _State, have: Sequence[_State], manifest_name: str, keys: BundleKeys,
               transfer: TransferConfig, copy_mode: str, force: bool) -> None:
    t = st.target
    # Prefer a source that allows a server-side copy.
    src = sorted(have, key=lambda h: not _server_side(h.target, t, copy_mode))[0]
    assert src.parsed is not None
    data = region_manifest(src.parsed, keys, t.ec2_public_key, t.ec2_cert)
    # The copy's own publish protocol decides again about a different bundle there.
    copied = copy_bundle(
        src.target.s3, src.target.location, manifest_name, t.s3, t.location, manifest=data,
        parsed=src.parsed, server_side=_server_side(src.target, t, copy_mode), transfer=transfer,
        force=force, in_use=t.in_use,
    )
    st.parsed = parse_manifest(data, source=t.location.url(manifest_name))
    st.outcome.action = "copied"
    st.outcome.copied_from = src.target.label
    st.outcome.parts_transferred = copied.parts_copied
    st.outcome.parts_skipped = copied.parts_skipped
    st.outcome.bytes_uploaded = copied.bytes_copied


def _relays(first: Sequence[_State], rest: Sequence[_State], copy_mode: str,
            max_regions: int | None) -> dict[str, list[_State]]:
    """Which of ``rest`` each target bundled to relays to: those a server-side copy reaches
    from it, as many as ``max_regions`` leaves room for beside ``first``."""
    room = None if max_regions is None else max(0, max_regions - len(first))
    out: dict[str, list[_State]] = {st.target.label: [] for st in first}
    for st in rest:
        if room is not None and room <= 0:
            break
        src = next((f for f in first if _server_side(f.target, st.target, copy_mode)), None)
        if src is not None:
            out[src.target.label].append(st)
            room = None if room is None else room - 1
    return out


def _bundle_to(need: Sequence[_State], relays: dict[str, list[_State]], source: ImageSource,
               keys: BundleKeys, options: BundleOptions, transfer: TransferConfig,
               force: bool, gate: Callable[[], None] | None) -> BundleResult | None:
    """Bundle once to ``need`` (uploaded) and ``relays`` (copied from the one they are listed
    under, part by part as each lands). A relay whose source failed is left as it was (no
    bundle, not failed), for the caller to complete otherwise.

    Bundling starts at once: ``gate`` and every sink's ``begin`` (its lease and listing) run on
    a thread meanwhile, and the first parts wait for them (``HeldSink``, at most as many as a
    sink keeps in flight). What ``gate`` raises is raised."""
    everyone = [*need, *(r for st in need for r in relays.get(st.target.label, []))]
    by_label = {st.target.label: st for st in everyone}
    first = need[0].target
    bundle_keys = BundleKeys(keys.signing_key, keys.user_public_key, first.ec2_public_key,
                             keys.ec2_certificate)
    sinks: dict[str, S3Sink] = {}
    children: dict[str, PartSink] = {}
    relay_sinks: dict[str, RelaySink] = {}
    for st in need:
        label = st.target.label
        group = [RelaySink(r.target.s3, r.target.location, st.target.location,
                           transfer=_shown(transfer, r, len(everyone)), force=force,
                           in_use=r.target.in_use, source_label=label)
                 for r in relays.get(label, [])]
        sinks[label] = S3Sink(st.target.s3, st.target.location,
                              transfer=_shown(transfer, st, len(everyone)), force=force,
                              in_use=st.target.in_use,
                              on_stored=relay_hook(group) if group else None,
                              release_later=True, on_tail_sent=st.target.prepare)
        st.released = sinks[label].released
        children[label] = RelaySource(sinks[label], group) if group else sinks[label]
        for r, relay in zip(relays.get(label, []), group, strict=True):
            children[r.target.label] = relay_sinks[r.target.label] = relay

    def manifest_for(label: str, data: bytes) -> bytes:
        st = by_label[label]
        parsed = parse_manifest(data, source=st.outcome.image_location)
        out = region_manifest(parsed, bundle_keys, st.target.ec2_public_key, st.target.ec2_cert,
                              wrapped_to=first.ec2_public_key)
        # Later targets are copied from this one: they need its own manifest.
        st.parsed = parse_manifest(out, source=st.outcome.image_location)
        return out

    def failed(st: _State, failure: BaseException) -> None:
        if isinstance(failure, SourceLost):
            st.parsed = None  # not failed: another target may have the bundle to copy
        elif st.outcome.ok:
            st.outcome.failed(failure)

    fan = FanOutSink(children, manifest_for=manifest_for)
    held = HeldSink(fan, gate, hold=transfer.jobs + 2)
    try:
        bundled = bundle(source, held, bundle_keys, options, transfer.progress)
    except Exception as exc:
        if held.setup_error is not None:
            if held.setup_error is exc:
                raise
            raise held.setup_error from exc  # the gate stopped the run: its error is the run's
        # Every sink failed (or bundling itself did): every region fails with the reason.
        for st in everyone:
            failed(st, fan.failures.get(st.target.label, exc))
        return None
    for label, failure in fan.failures.items():
        failed(by_label[label], failure)
    for label in fan.committed:
        outcome = by_label[label].outcome
        if label in relay_sinks:
            relay = relay_sinks[label]
            outcome.action, outcome.copied_from = "copied", relay.source_label
            outcome.parts_transferred = relay.parts_copied
            outcome.bytes_uploaded = relay.bytes_copied
            continue
        outcome.action = "bundled"
        outcome.parts_transferred = len(bundled.part_names)
        outcome.bytes_uploaded = sinks[label].bytes_uploaded
    return bundled


def _register(st: _State, register: RegisterOptions, wait: bool, wait_timeout: float) -> None:
    t = st.target
    if st.outcome.image_id or t.ec2 is None:
        return
    if st.outcome.action == "bundled" and st.parsed is not None:
        # This run has just published it through its S3Sink: its preflight would only repeat
        # the publication's own checks, made a round trip ago under the lease (every part, in
        # a bucket probed or made in the target's region), or the PUT itself (the manifest's
        # bytes). The lease is released beside RegisterImage, so another run of ours cannot
        # have replaced it before EC2 reads it (a replacement needs the lease first, then
        # --force).
        manifest = st.parsed.manifest
    else:
        # A manifest found there or copied by this run: read back with the parts' listing in
        # one round trip.
        manifest = preflight(t.s3, st.outcome.image_location, region=t.region,
                             published=st.parsed).manifest
    options = dataclasses.replace(register, tags=dict(register.tags),
                                  launch_permissions=list(register.launch_permissions))
    if options.architecture is None and manifest.arch:
        options.architecture = manifest.arch
    st.outcome.image_id = register_image(t.ec2, st.outcome.image_location, options)
    st.outcome.registered = "new"
    if wait:
        st.outcome.state = wait_available(t.ec2, st.outcome.image_id, timeout=wait_timeout)


__all__ = [
    "InstallResult",
    "RegionOutcome",
    "RegionTarget",
    "install",
]
