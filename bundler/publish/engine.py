"""The publish: one image → every (account, region) of a plan, doing only what is missing.

Data flows left to right: the image's digest (one read: ``rerun.ImageFingerprint``) → the
generation (``state.resolve_generation``) → every target's state read from AWS in parallel
(``state.read_target``) → the diff → the work. The work is ``bundler.install.install``
(bundle ONCE, to one target per account, copy to the others — server-side
within an account, streamed across accounts — register with tags, launch permissions,
deprecation and deregistration protection; every write through the one publish protocol of
``bundler.s3.publish`` and its in-use rules), then the changes existing AMIs lack. A target
that fails, or that holds another image (a conflict), never stops the others; its error is in
its result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

from .. import signalsafe
from ..aws import ec2_errors
from ..bundlerun import BundleKeys, BundleOptions
from ..concurrency import run_all
from ..ec2 import (
    RegisterOptions,
    add_launch_permissions,
    check_public_sharing_allowed,
    parse_register_block_device_mappings,
    protect_from_deregistration,
    set_deprecation,
)
from ..errors import BundlerError, ReplaceRefusedError
from ..install import RegionTarget, install
from ..inuse import InUse
from ..regions import partition_of
from ..rerun import ImageFingerprint
from ..source import ImageSource
from ..transfer import DEFAULT_TRANSFER, TransferConfig
from .plan import BUNDLE_DIGEST_TAG, Plan, Target
from .state import (
    SAME,
    Change,
    Desired,
    TargetState,
    desired,
    plan_images,
    plan_transfers,
    read_target,
    resolve_generation,
)
from .tree import TreeProof, built_image, fingerprint_tree, known_bundle_digests

log = logging.getLogger("bundler.publish")

DONE, FAILED, REFUSED, PENDING = "done", "failed", "refused", "pending"
DEFAULT_MAX_REGIONS = 4  # targets bundled to, or streamed to, at once unless told


@dataclass(frozen=True)
class Connection:
    """A target's clients (made in the main thread: botocore sessions are not thread-safe)."""

    s3: Any
    ec2: Any
    endpoint: str | None = None  # the S3 endpoint override (decides server-side copies)


@dataclass(frozen=True)
class RegionKey:
    """The EC2 certificate a region's manifest is wrapped to."""

    public_key: Any
    name: str  # for messages and the report


@dataclass
class TargetResult:
    account: str
    region: str
    state: str = PENDING  # done | failed | refused | pending (dry run: something to do)
    image_id: str | None = None
    image_location: str | None = None  # BUCKET/PREFIX/GENERATION/NAME.manifest.xml
    error: str | None = None
    changes: list[str] = field(default_factory=list)  # to do (dry run) or done
    exit_code: int | None = None  # of the error (BundlerError.exit_code)

    @property
    def label(self) -> str:
        return f"{self.account}/{self.region}"

    def summary(self) -> dict[str, object]:
        return {"account": self.account, "region": self.region, "state": self.state,
                "image_id": self.image_id, "image_location": self.image_location,
                "error": self.error,
                "changes": list(self.changes)}


@dataclass
class PublishResult:
    plan: str
    generation: str | None
    digest: str | None
    dry_run: bool
    results: list[TargetResult]
    existing_generation: bool = False
    bundled: bool = False
    seconds: float = 0.0

    @property
    def done(self) -> bool:
        return all(r.state == DONE for r in self.results)

    @property
    def has_changes(self) -> bool:
        return any(r.changes for r in self.results)

    @property
    def incomplete(self) -> list[TargetResult]:
        return [r for r in self.results if r.state in (FAILED, REFUSED)]

    def summary(self) -> dict[str, object]:
        """The report (docs/publish.md "Report")."""
        return {"plan": self.plan, "generation": self.generation, "digest": self.digest,
                "dry_run": self.dry_run, "existing_generation": self.existing_generation,
                "bundled": self.bundled, "seconds": round(self.seconds, 3), "done": self.done,
                "targets": [r.summary() for r in self.results]}


@dataclass
class PublishOptions:
    dry_run: bool = False
    # Targets worked on at once. None (auto): DEFAULT_MAX_REGIONS bundled to or streamed to,
    # and every server-side copy and registration at once (they cost the build host nothing).
    max_regions: int | None = None
    transfer: TransferConfig = DEFAULT_TRANSFER  # jobs: parallel part transfers per target
    copy_mode: str = "auto"
    enable_bucket_acls: bool = False
    notify: Callable[[str, str], None] | None = None  # (target label, what happened)


def _message(exc: BaseException) -> str:
    if isinstance(exc, BundlerError):
        return str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _bounded(items: Sequence[Any], fn: Callable[[Any], Any], limit: int | None) -> list[Any]:
    """``fn(item)`` for each item in parallel, at most ``limit`` at once; each result is the
    value or the Exception it raised (one target's failure is only that target's)."""
    # threading's, not signalsafe's: only run_all's threads take it, which no signal reaches.
    gate = threading.BoundedSemaphore(limit) if limit else None

    def one(item: Any) -> Any:
        try:
            if gate is None:
                return fn(item)
            with gate:
                return fn(item)
        except Exception as exc:
            log.debug("%s failed", getattr(item, "label", item), exc_info=True)
            return exc

    futures = run_all([partial(one, item) for item in items], name="ami-bundler-publish")
    return [signalsafe.result(f) for f in futures]


def register_options(plan: Plan, want: Desired, *, digest: str, generation: str,
                     now: datetime.datetime) -> RegisterOptions:
    boot = plan.boot
    return RegisterOptions(
        name=generation,
        description=plan.rendered_description(digest=digest, generation=generation),
        architecture=boot.architecture,
        virtualization_type=boot.virtualization_type,
        kernel_id=boot.kernel_id,
        ramdisk_id=boot.ramdisk_id,
        block_device_mappings=parse_register_block_device_mappings(
            list(boot.block_device_mappings)),
        ena_support=boot.ena_support,
        sriov_net_support=boot.sriov_net_support,
        boot_mode=boot.boot_mode,
        tags=dict(want.tags),
        launch_permissions=list(want.launch_permissions),
        imds_support=boot.imds_support,
        deprecate_at=None if want.deprecate_after is None else now + want.deprecate_after,
        deregistration_protection=want.deregistration_protection,
    )


def bundle_options(plan: Plan) -> BundleOptions:
    return BundleOptions(name=plan.bundle_name, user=plan.user, arch=plan.boot.architecture,
                         kernel_id=plan.boot.kernel_id, ramdisk_id=plan.boot.ramdisk_id,
                         compression=plan.compression)


def publish(
    plan: Plan,
    *,
    source: ImageSource | None,
    keys: BundleKeys,
    region_keys: Mapping[str, RegionKey],
    connections: Mapping[str, Connection],
    unreachable: Mapping[str, BaseException | str] | None = None,
    options: PublishOptions | None = None,
    when: datetime.datetime | None = None,
    now: datetime.datetime | None = None,
) -> PublishResult:
    """Publish (or with ``options.dry_run`` only diff) ``plan``. ``connections`` by target
    label; ``unreachable``: label → why it has no connection (its account's error: could not be
    reached). ``when`` renders ``{date}``/``{time}``; ``now`` anchors deprecation. ``source``:
    the opened image, None for a directory source (``plan.source.directory``: fingerprinted
    here, imaged by bundle-vol only when a target needs it bundled, see ``publish.tree``)."""
    opts = options or PublishOptions()
    started = time.monotonic()
    now = now or datetime.datetime.now(datetime.timezone.utc)
    when = when or now
    unreachable = dict(unreachable or {})
    results = {t.label: TargetResult(t.account.id, t.region) for t in plan.targets}

    def fail(label: str, error: BaseException | str, state: str = FAILED,
             exit_code: int | None = None) -> None:
        r = results[label]
        r.state, r.error = state, error if isinstance(error, str) else _message(error)
        r.exit_code = exit_code or getattr(error, "exit_code", None) or BundlerError.exit_code
        if opts.notify:
            opts.notify(label, f"{state}: {r.error}")

    for label, why in unreachable.items():
        fail(label, why)  # an AccountError: its exit code
    live = [t for t in plan.targets if t.label in connections and t.label not in unreachable]
    fingerprint: ImageFingerprint
    try:
        if plan.source.directory is not None:
            fingerprint = TreeProof(fingerprint_tree(plan.source.directory, plan.source.volume,
                                                     plan.bundle_name))
        else:
            assert source is not None, "an image source needs its opened image"
            fingerprint = ImageFingerprint(source, plan.bundle_name, opts.transfer.progress)
        digest = fingerprint.digest()
        found = _bounded(live, lambda t: plan_images(connections[t.label].ec2, plan.name),
                         opts.max_regions)
        images: list[dict[str, Any]] = []
        for t, answer in zip(live, found, strict=True):
            if isinstance(answer, Exception):
                fail(t.label, answer)
            else:
                images += answer
        live = [t for t in live if results[t.label].state == PENDING]
        generation, existing = resolve_generation(plan, images, digest=digest, when=when)
        if isinstance(fingerprint, TreeProof):
            for known in known_bundle_digests(images, digest=digest, generation=generation):
                fingerprint.add(known)
        log.info("plan %s: generation %s (%s)", plan.name, generation,
                 "completing it" if existing else "new")
        want = desired(plan, digest=digest, generation=generation)

        def read(t: Target) -> TargetState:
            c = connections[t.label]
            return read_target(plan, t, generation, s3=c.s3, ec2=c.ec2, fingerprint=fingerprint,
                               user_public_key=keys.user_public_key, want=want, now=now)

        states: list[TargetState] = []
        for t, answer in zip(live, _bounded(live, read, opts.max_regions), strict=True):
            if isinstance(answer, Exception):
                fail(t.label, answer)
                continue
            states.append(answer)
            results[t.label].image_location = answer.image_location
            results[t.label].image_id = answer.image_id
            if answer.conflict:
                fail(t.label, answer.conflict, REFUSED, ReplaceRefusedError.exit_code)
        states = [st for st in states if st.conflict is None]
        plan_transfers(states, opts.max_regions or DEFAULT_MAX_REGIONS,
                       _copy_group(opts, connections))
        for st in states:
            results[st.target.label].changes = [str(c) for c in st.changes]
            if not st.changes:
                results[st.target.label].state = DONE
        result = PublishResult(plan.name, generation, digest, opts.dry_run,
                               list(results.values()), existing)
        if not opts.dry_run:
            result.bundled = _apply(plan, states, results, fail, source=source, keys=keys,
                                    region_keys=region_keys, connections=connections, opts=opts,
                                    options=register_options(plan, want, digest=digest,
                                                             generation=generation, now=now),
                                    fingerprint=fingerprint, want=want)
    finally:
        if source is not None:
            source.close()
    result.seconds = time.monotonic() - started
    return result


def _apply(plan: Plan, states: Sequence[TargetState], results: Mapping[str, TargetResult],
           fail: Callable[..., None], *, source: ImageSource | None, keys: BundleKeys,
           region_keys: Mapping[str, RegionKey], connections: Mapping[str, Connection],
           opts: PublishOptions, options: RegisterOptions, fingerprint: ImageFingerprint,
           want: Desired) -> bool:
    """Do the changes; returns whether the image was bundled."""
    work = [st for st in states if st.changes and st.image is None]
    # Complete targets take part as sources: the others are copied from them, not bundled.
    sources = [st for st in states if st.image is not None and st.bundle == SAME]
    bundled = False
    with contextlib.ExitStack() as stack:
        if work and isinstance(fingerprint, TreeProof):
            source, options, sources, work = _tree_work(plan, stack, fingerprint, options,
                                                        sources, work, fail, opts)
        if work:
            assert source is not None
            bundled = _install(plan, work, sources, results, fail, source=source, keys=keys,
                               region_keys=region_keys, connections=connections, opts=opts,
                               options=options, fingerprint=fingerprint)
    fix = [st for st in states if st.changes and st.image is not None]

    def one(st: TargetState) -> None:
        apply_changes(connections[st.target.label].ec2, str(st.image_id), st.changes)

    for st, answer in zip(fix, _bounded(fix, one, opts.max_regions), strict=True):
        if isinstance(answer, Exception):
            fail(st.target.label, answer)
        else:
            results[st.target.label].state = DONE
            if opts.notify:
                opts.notify(st.target.label, ", ".join(str(c) for c in st.changes))
    return bundled


class _NoImage:
    """The image of a directory source that every target gets by copy: never read."""

    name = ""
    size = 0
    mode = 0o600
    mtime = 0
    rereadable: ClassVar[bool] = False

    def regions(self) -> list[tuple[int, int]] | None:
        raise AssertionError("a copied bundle's image is never read")

    def chunks(self) -> Iterator[bytes]:
        raise AssertionError("a copied bundle's image is never read")

    def close(self) -> None:
        pass


def _tree_work(plan: Plan, stack: contextlib.ExitStack, proof: TreeProof,
               options: RegisterOptions, sources: list[TargetState], work: list[TargetState],
               fail: Callable[..., None], opts: PublishOptions
               ) -> tuple[ImageSource, RegisterOptions, list[TargetState], list[TargetState]]:
    """A directory source's image and the bundle digest its new AMIs record: the bundle the
    targets that have it hold (copied from them), else one built now by bundle-vol."""
    assert plan.source.directory is not None
    have = [st for st in [*sources, *work] if st.bundle == SAME]
    if have:
        chosen = have[0].bundle_digest
        assert chosen is not None
        # Every AMI registered now records the one bundle it is registered from.
        sources = [st for st in sources if st.bundle_digest == chosen]
        for st in work:
            if st.bundle == SAME and st.bundle_digest != chosen:
                fail(st.target.label, f"{st.image_location} holds another bundle of this tree "
                     f"(digest {st.bundle_digest}, not {chosen}): register it by hand or delete "
                     "it and re-run", REFUSED, ReplaceRefusedError.exit_code)
        work = [st for st in work if st.bundle != SAME or st.bundle_digest == chosen]
        image: ImageSource = _NoImage()
    else:
        built = stack.enter_context(built_image(
            plan.source.directory, plan.source.volume, plan.bundle_name, proof.fingerprint,
            progress=opts.transfer.progress))
        chosen = built.bundle_digest
        proof.add(chosen)
        image = built.source()
    tags = {**options.tags, BUNDLE_DIGEST_TAG: chosen}
    return image, dataclasses.replace(options, tags=tags), sources, work


def _copy_group(opts: PublishOptions, connections: Mapping[str, Connection]
                ) -> Callable[[TargetState], Hashable] | None:
    """Which targets a server-side copy reaches from each other (as install decides it: the
    same account, partition and endpoint; ``--copy-mode server``: all; ``stream``: none)."""
    if opts.copy_mode == "stream":
        return None
    if opts.copy_mode == "server":
        return lambda st: "all"
    return lambda st: (st.target.account.id, partition_of(st.target.region),
                       connections[st.target.label].endpoint)


def _limit(opts: PublishOptions, work: Sequence[TargetState], sources: Sequence[TargetState],
           connections: Mapping[str, Connection]) -> int | None:
    """install's ``max_regions``: the user's, else none when every target without the bundle
    gets it by a server-side copy (only requests leave the host), else the default."""
    if opts.max_regions is not None:
        return opts.max_regions
    group = _copy_group(opts, connections)
    have = [st for st in [*work, *sources]
            if st.bundle == SAME or (st.changes and st.changes[0].kind == "bundle")]
    reach = {group(st) for st in have} if group is not None else set()
    if group is not None and all(group(st) in reach for st in work):
        return None
    return DEFAULT_MAX_REGIONS


def _install(plan: Plan, work: Sequence[TargetState], sources: Sequence[TargetState],
             results: Mapping[str, TargetResult], fail: Callable[..., None], *,
             source: ImageSource, keys: BundleKeys, region_keys: Mapping[str, RegionKey],
             connections: Mapping[str, Connection], opts: PublishOptions,
             options: RegisterOptions, fingerprint: ImageFingerprint) -> bool:
    """Bundle once (or copy) to the targets without an AMI and register them there.

    One ``install``: when ``plan_transfers`` bundles to some of the targets (one per copy
    group), those are its ``bundle_to``, and the others of their groups get every part copied
    server-side as soon as it has landed there (relayed); the rest are copied afterwards, and
    every target is registered, all in parallel (``--max-regions``)."""
    def target(st: TargetState) -> RegionTarget:
        c = connections[st.target.label]
        key = region_keys[st.target.region]
        return RegionTarget(
            region=st.target.region,
            location=st.target.location(st.generation),
            s3=c.s3, ec2=c.ec2, ec2_public_key=key.public_key, ec2_cert=key.name,
            endpoint=c.endpoint, in_use=InUse(partial(lambda e: e, c.ec2)),
            account=st.target.account.id,
            bucket_ready=st.bucket_exists)  # just found in its region: not asked again

    leaders = {st.target.label for st in work if st.changes and st.changes[0].kind == "bundle"}
    outcome = install(
        source, keys, bundle_options(plan), [target(st) for st in [*work, *sources]],
        transfer=opts.transfer, register=options, copy_mode=opts.copy_mode, force=False,
        enable_bucket_acls=opts.enable_bucket_acls,
        max_regions=_limit(opts, work, sources, connections), fingerprint=fingerprint,
        bundle_to=leaders or None)
    mine = {st.target.label for st in work}
    for o in outcome.outcomes:
        if o.label not in mine:
            continue
        r = results[o.label]
        r.image_id = o.image_id or r.image_id
        if not o.ok:
            fail(o.label, o.exception or o.error or "failed", FAILED, o.exit_code)
        elif o.image_id:
            r.state = DONE
            # How the bundle actually got there: copied from which target, or bundled to it
            # (in place of a target to bundle to that failed).
            done = (f"copy from {o.copied_from}" if o.copied_from else
                    f"bundle {o.image_location}" if o.action == "bundled" else None)
            if done:
                r.changes = [done if c.split(" ", 1)[0] in ("copy", "bundle") else c
                             for c in r.changes]
            if opts.notify:
                how = {"bundled": "bundled", "copied": f"copied from {o.copied_from}",
                       "present": "bundle present"}.get(o.action, o.action)
                opts.notify(o.label, f"{how}, registered {o.image_id}")
    return outcome.bundled


def apply_changes(ec2: Any, image_id: str, changes: Sequence[Change]) -> None:
    """What an existing AMI lacks (``state.drift``): launch permissions, tags, deprecation,
    deregistration protection. Tags go first: they are what marks the AMI as the plan's."""
    tags = [c.detail.split("=", 1) for c in changes if c.kind == "tag"]
    if tags:
        with ec2_errors(f"tag {image_id}"):
            ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in tags])
    shares = [c.detail for c in changes if c.kind == "share"]
    if shares:
        if "all" in shares:
            check_public_sharing_allowed(ec2)
        add_launch_permissions(ec2, image_id, shares)
    for c in changes:
        if c.kind == "deprecate":
            set_deprecation(ec2, image_id, datetime.datetime.fromisoformat(c.detail))
        elif c.kind == "protect":
            protect_from_deregistration(ec2, image_id)


__all__ = [
    "Connection",
    "DONE",
    "FAILED",
    "PENDING",
    "PublishOptions",
    "PublishResult",
    "REFUSED",
    "RegionKey",
    "TargetResult",
    "apply_changes",
    "bundle_options",
    "publish",
    "register_options",
]
