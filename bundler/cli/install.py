"""``install``: bundle an image, upload it and register the AMI in one streaming run, in one
region or several — both through ``bundler.install.install`` (one region is one target).
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ..aws import endpoint_url_value
from ..concurrency import BackgroundTask
from ..errors import S3Error, UsageError
from ..inuse import InUse
from ..s3 import S3Location, ensure_bucket, location_region
from ..transfer import COPY_MODES
from .checking import add_no_check_option, check_install_image
from .common import Printer, plural
from .context import (
    AwsContext,
    add_acl_options,
    add_aws_options,
    add_bucket_option,
    add_transfer_options,
)
from .inputs import add_bundle_options, add_image_options, bundle_inputs, source_and_options
from .migration import (
    add_allow_unknown_region_option,
    ec2_certificate_for,
    validated_region,
)
from .registration import add_register_options, register_options_from_args

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

    from ..bundlerun import BundleKeys, BundleOptions
    from ..install import InstallResult
    from ..source import ImageSource

T = TypeVar("T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install",
        help="bundle an image, upload it and register the AMI in one run",
        description="bundle-image → upload-bundle → register, streaming: parts go from the "
        "compressor straight to parallel PUTs, none touch the disk.",
    )
    add_image_options(p)
    add_bundle_options(p, image_flag=True)
    add_bucket_option(p, multi=True)
    add_transfer_options(p)
    add_acl_options(p)
    p.add_argument("--location", help="bucket location if it must be created (EU, US or a region)")
    p.add_argument("-n", "--name", help="AMI name (default: the bundle name)")
    p.add_argument("--no-register", action="store_true", help="stop after the upload")
    add_no_check_option(
        p, what="the image (boot rules; sharing rules too with --launch-permission all)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a different bundle of the same name (never one a registered AMI uses)",
    )
    add_register_options(p, full=False)
    add_region_options(p)
    add_aws_options(p)
    p.set_defaults(func=run_install, finish_hint=_finish_hint)


def _finish_hint(args: argparse.Namespace) -> str | None:
    """An install interrupted once its bundle was published is finished by the same command:
    it finds that bundle (the same image), uploads nothing and registers the AMI with the
    settings given — which a bare register command would not all repeat."""
    if args.no_register:
        return None
    return ("run the same command again: it finds the published bundle, uploads nothing and "
            "registers the AMI")


def add_region_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several regions")
    g.add_argument(
        "--regions",
        metavar="R1,R2,…",
        help="bundle once, upload to a bucket in each of these regions and register in each",
    )
    g.add_argument(
        "--bucket-template",
        metavar="TEMPLATE",
        help="bucket per region with --regions, e.g. 'my-amis-{region}' or 'my-amis-{region}/web'",
    )
    g.add_argument(
        "--region-endpoint",
        action="append",
        default=[],
        metavar="REGION=URL",
        help="endpoint URL for one region's S3 and EC2 (repeatable; default: --endpoint-url)",
    )
    g.add_argument(
        "--copy-mode",
        choices=COPY_MODES,
        default="auto",
        help="how a re-run completes a failed region from one that succeeded (default: auto)",
    )
    add_allow_unknown_region_option(g)


def run_install(args: argparse.Namespace, printer: Printer) -> int:
    if args.regions:
        return _install_regions(args, printer)
    if args.bucket_template or args.region_endpoint:
        raise UsageError("--bucket-template and --region-endpoint go with --regions")
    if not args.bucket or len(args.bucket) != 1:
        raise UsageError(
            "install needs one -b BUCKET[/PREFIX] (or --regions R1,R2 with --bucket-template "
            "or -b REGION=BUCKET per region)"
        )
    return _install_one(args, printer)


class _HeldWarnings(Printer):
    """A printer whose warnings wait in a list (the check's findings, printed by the main
    thread at the gate: in order, and not at all when the run failed before it)."""

    def __init__(self, printer: Printer) -> None:
        super().__init__(json_mode=printer.json_mode, quiet=printer.quiet, stdout=printer.stdout,
                         stderr=printer.stderr)
        self.held: list[str] = []

    def warn(self, message: str) -> None:
        self.held.append(message)


class _Later(Generic[T]):
    """A value made on a thread of its own, so that its CPU and I/O overlap the main thread's
    set-up (botocore's session, clients and first round trips) instead of preceding or following
    it. ``get`` waits for it and raises what making it raised; ``join`` only waits. ``lazy``:
    made once ``start`` is called, or ``get``."""

    def __init__(self, make: Callable[[], T], *, name: str, lazy: bool = False) -> None:
        self._value: T | None = None
        self._make_it = make
        self._task = BackgroundTask(name=name)
        self._started = False
        # threading's: a C lock's ``with`` cannot be split by a signal (see bundler.signalsafe)
        self._starting = threading.Lock()
        if not lazy:
            self.start()

    def start(self) -> None:
        with self._starting:
            if not self._started:
                self._started = True
                self._task.start(partial(self._make, self._make_it))

    def _make(self, make: Callable[[], T]) -> None:
        self._value = make()

    def join(self) -> None:
        self._task.join()

    def get(self) -> T:
        self.start()
        self._task.join()
        if self._task.error is not None:
            raise self._task.error
        assert self._value is not None
        return self._value

    @property
    def made(self) -> T | None:
        """The value once made (after ``join``), None if making it failed."""
        return self._value


class _ClientLater(_Later["EC2Client"]):
    """The EC2 client, made on a thread of its own once the bundle's last part's requests have
    gone out (RegionTarget.prepare), or when first used: loading EC2's service model costs
    ~50-75 ms of CPU, and its JSON parse holds the GIL for ~20 ms at a stretch, which while the
    image is bundled keeps the pipeline from handing the deflate threads their next blocks (and
    would delay those requests); while the last part uploads the CPU is idle. Attribute access
    (the client's methods) waits for it; no other client is made meanwhile (a botocore session
    is not safe for that)."""

    def __init__(self, make: Callable[[], EC2Client]) -> None:
        super().__init__(make, name="ami-bundler-ec2-client", lazy=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


class _ImageCheck:
    """install's image check (``checking.check_install_image``: debugfs over the whole image,
    ~0.3 s for a 2 GiB root filesystem) on a thread of its own, started before the S3 and EC2
    set-up so that it overlaps their round trips instead of preceding them. ``wait`` is
    install()'s gate: called before anything is bundled, copied or registered, it prints the
    findings and re-raises what the check raised (CheckFailed stops the run there, nothing
    uploaded). With --no-check the findings are still printed, as the option promises: they
    only do not stop the run."""

    def __init__(self, args: argparse.Namespace, printer: Printer) -> None:
        self._printer = printer
        self._task: BackgroundTask | None = None
        self._held = _HeldWarnings(printer)
        if getattr(args, "image", None) in (None, "-"):
            check_install_image(args, printer)  # nothing to read: only its usage rule
            return
        self._task = BackgroundTask(name="ami-bundler-check")
        self._task.start(partial(check_install_image, args, self._held))

    def wait(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.join()
        for message in self._held.held:
            self._printer.warn(message)
        if task.error is not None:
            raise task.error

    def close(self) -> None:
        """After a failure before the gate: no thread outlives the run; findings dropped."""
        task, self._task = self._task, None
        if task is not None:
            task.join()


# --------------------------------------------------------------------------- one region


Inputs = tuple["ImageSource", "BundleKeys", "BundleOptions"]


def _install_one(args: argparse.Namespace, printer: Printer) -> int:
    location = S3Location.parse(args.bucket[0])
    check = _ImageCheck(args, printer)
    # The keys and the image, opened meanwhile: opening an image scans its data for zero runs
    # (all of a 2 GiB root filesystem's blocks), which then overlaps the AWS set-up.
    inputs: _Later[Inputs] = _Later(partial(bundle_inputs, args), name="ami-bundler-inputs")
    try:
        return _install_one_checked(args, printer, location, check, inputs)
    except BaseException as exc:
        inputs.join()  # no thread outlives the run, no image left open
        made = inputs.made
        if made is not None:
            made[0].close()  # install() closes it too: closing twice is harmless
        if isinstance(exc, Exception):
            check.close()
        raise


def _install_one_checked(args: argparse.Namespace, printer: Printer, location: S3Location,
                         check: _ImageCheck, inputs: _Later[Inputs]) -> int:
    from ..install import RegionTarget, install

    aws = AwsContext(args, printer)
    region = location_region(args.location) if args.location else None
    if region and aws.opts.region and region != aws.opts.region:
        raise UsageError(
            f"--location {args.location} is in {region} but --region is {aws.opts.region}"
        )
    # Everything that can fail cheaply (credentials, bucket, flags) fails before bundling; the
    # bucket's fitness for bundles (ACLs) is install()'s first step, before the first part.
    client, at = aws.s3_in_bucket_region(location.bucket, must_exist=False)
    if at is None:
        if region and region != client.meta.region_name:
            client = aws.s3(location.bucket, region=region)
        if ensure_bucket(client, location.bucket, location=args.location):
            printer.note(f"Created bucket {location.bucket} in {client.meta.region_name}")
        at = client.meta.region_name
    elif args.location:
        ensure_bucket(client, location.bucket, location=args.location)
    # The EC2 region follows the bucket's region unless --region says otherwise.
    ec2_region = aws.opts.region or at
    ec2 = None if args.no_register else _ClientLater(partial(aws.ec2, ec2_region))
    try:
        source, keys, bundle_options = inputs.get()
    except BaseException:
        if ec2 is not None:
            ec2.join()
        raise
    try:
        options = None
        if not args.no_register:
            options = register_options_from_args(
                args, args.name or bundle_options.name, full=False
            )
    except BaseException:
        source.close()
        if ec2 is not None:
            ec2.join()
        raise
    cert = keys.ec2_certificate
    target = RegionTarget(
        region=ec2_region,
        location=location,
        s3=client,
        ec2=None if ec2 is None else cast("EC2Client", ec2),
        ec2_public_key=keys.ec2_public_key,
        ec2_cert=str(cert.path) if cert else "EC2 certificate",
        endpoint=aws.opts.endpoint_url,
        in_use=InUse(partial(aws.ec2, ec2_region) if ec2 is None else ec2.get,
                     warn=printer.warn),
        prepare=None if ec2 is None else ec2.start,
        bucket_ready=True,  # found or created above, in the region it is in
    )

    def gate() -> None:
        check.wait()


    try:
        result = install(
            source,
            keys,
            bundle_options,
            [target],
            transfer=aws.transfer,
            register=options,
            gate=gate,
            **_flag_options(args),
        )
    finally:
        if ec2 is not None:
            ec2.join()  # no thread outlives the run

    outcome = result.outcomes[0]
    if outcome.exception is not None:
        raise outcome.exception  # one region: its failure is the command's, with its exit code
    if not outcome.ok:
        raise S3Error(outcome.error or "install failed")
    b = result.bundle
    data = _one_region_summary(result)
    if b is None:
        human = [f"{outcome.image_location} already holds this image: nothing bundled or uploaded"]
    else:
        human = [
            f"Bundled and uploaded {b.manifest.name}: {b.size} bytes → "
            f"{plural(len(b.part_names), 'part')}, {b.bundled_size} bytes in {b.seconds:.2f}s",
            f"Manifest uploaded to: {outcome.image_location}",
        ]
    if options is None:
        printer.result(data, human)
        return 0
    data.update(
        image_id=outcome.image_id, ami_name=options.name, region=outcome.region,
        state=outcome.state,
    )
    if outcome.registered == "existing":
        human += [
            f"Already registered as {outcome.image_id} ({options.name}) in {outcome.region}",
            str(outcome.image_id),
        ]
    else:
        human += [
            f"Registered {outcome.image_id} ({options.name}) in {outcome.region}"
            + (f": {outcome.state}" if outcome.state else ""),
            str(outcome.image_id),
        ]
    printer.result(data, human)
    return 0


def _flag_options(args: argparse.Namespace) -> dict[str, Any]:
    """install()'s keywords taken from the flags as they are, for one region and for many."""
    return {
        "wait": args.wait,
        "wait_timeout": args.wait_timeout,
        "force": args.force,
        "enable_bucket_acls": args.enable_bucket_acls,
    }


def _one_region_summary(result: InstallResult) -> dict[str, Any]:
    """``install`` without --regions reports flat: the bundle's summary (when it bundled) and
    where it went."""
    outcome = result.outcomes[0]
    data: dict[str, Any] = {
        **(result.bundle.summary() if result.bundle else {}),
        "image_location": outcome.image_location,
        "bytes_uploaded": outcome.bytes_uploaded,
        "action": outcome.action,
        "registered": outcome.registered,
    }
    if outcome.image_id is not None:
        data.update(image_id=outcome.image_id, region=outcome.region, state=outcome.state)
    return data


# --------------------------------------------------------------------------- several regions


def _region_endpoints(args: argparse.Namespace, regions: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in args.region_endpoint:
        region, sep, url = pair.partition("=")
        if not sep or not url.strip():
            raise UsageError(f"--region-endpoint {pair!r}: expected REGION=URL")
        region = validated_region(args, region, "--region-endpoint") or ""
        if region not in regions:
            raise UsageError(f"--region-endpoint {pair!r}: {region} is not in --regions")
        out[region] = url.strip()
    return out


def _install_regions(args: argparse.Namespace, printer: Printer) -> int:
    check = _ImageCheck(args, printer)
    try:
        return _install_regions_checked(args, printer, check)
    except Exception:
        check.close()
        raise


def _install_regions_checked(args: argparse.Namespace, printer: Printer,
                             check: _ImageCheck) -> int:
    from ..bundlerun import BundleKeys
    from ..ec2certs import partition_cert_name
    from ..install import RegionTarget, install
    from ..keys import load_public_key
    from ..regions import bucket_map, parse_regions

    if args.region:
        raise UsageError(
            "--region and --regions do not go together: list every region in --regions"
        )
    if args.location:
        raise UsageError(
            "--location does not go with --regions: each bucket is created in its own region"
        )
    regions = parse_regions(args.regions, allow_unknown=args.allow_unknown_region)
    buckets = bucket_map(regions, template=args.bucket_template, pairs=args.bucket or [])
    endpoints = _region_endpoints(args, regions)
    if args.ec2cert is not None and len({partition_cert_name(r) for r in regions}) > 1:
        raise UsageError(
            "--ec2cert would wrap the key to one certificate for regions of different partitions "
            "(which have different EC2 certificates): use --ec2cert-dir instead"
        )
    chosen = {
        r: ec2_certificate_for(args, r) for r in regions
    }  # every certificate found before any work
    certs = {r: c.path for r, c in chosen.items()}
    public = {path: load_public_key(path) for path in set(certs.values())}
    if not args.cert or not args.privatekey:
        raise UsageError("missing required option(s): --cert, --privatekey")
    keys = BundleKeys.load(args.cert, args.privatekey, chosen[regions[0]])

    aws = AwsContext(args, printer)
    targets = []
    for region in regions:
        opts = (
            aws.opts
            if region not in endpoints
            else dataclasses.replace(
                aws.opts, endpoint_url=endpoint_url_value(endpoints[region], "--region-endpoint")
            )
        )
        bucket, prefix = buckets[region]
        targets.append(
            RegionTarget(
                region=region,
                location=S3Location(bucket, prefix),
                s3=aws.s3(bucket, region=region, opts=opts),
                ec2=None if args.no_register else aws.ec2(region, opts=opts),
                ec2_public_key=public[certs[region]],
                ec2_cert=str(certs[region]),
                endpoint=opts.endpoint_url,
                in_use=InUse(partial(aws.ec2, region, opts=opts), warn=printer.warn),
            )
        )
    source, options = source_and_options(args)
    try:
        register = None
        if not args.no_register:
            register = register_options_from_args(args, args.name or options.name, full=False)
    except BaseException:
        source.close()
        raise
    result = install(
        source,
        keys,
        options,
        targets,
        transfer=aws.transfer,
        register=register,
        copy_mode=args.copy_mode,
        gate=check.wait,
        **_flag_options(args),
    )
    rows = [("REGION", "RESULT", "AMI", "IMAGE LOCATION")]
    for o in result.outcomes:
        what = o.action + (f" from {o.copied_from}" if o.copied_from else "")
        rows.append((o.region, what, o.image_id or ("-" if o.ok else "FAILED"), o.image_location))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    human = [
        "  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]
    data = result.summary()
    by_region = data["regions"]
    assert isinstance(by_region, dict)  # MultiRegionResult.summary: region → outcome
    for region, outcome in by_region.items():
        outcome["ec2_certificate"] = chosen[region].as_json()
    printer.result(data, human)
    for o in result.failed:
        printer.warn(f"{o.region}: {o.error}")
    if result.failed:
        printer.warn(
            f"{len(result.failed)} of {len(result.outcomes)} region(s) failed; "
            "re-run the same command to "
            "complete them (they are copied from a region that has the bundle, not bundled again)"
        )
        return S3Error.exit_code
    return 0
