"""Region commands: ``migrate-manifest`` (ec2-migrate-manifest), ``copy-bundle``
(ec2-migrate-bundle) and the multi-region half of ``install --regions``.

Classic flags (spec §9.9, §9.10) are accepted. Differences from the classic tools: the AES key
really is re-wrapped to the target region's EC2 certificate; automatic kernel/ramdisk mapping
through DescribeImages is not implemented (``--no-mapping`` is the behaviour; ``--kernel``,
``--ramdisk`` and ``--mapping-file`` change the ids); copy-bundle can cross regions and
partitions and can register the AMI.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..errors import S3Error, UsageError
from ..s3 import (
    ACLS,
    DEFAULT_ACL,
    DEFAULT_JOBS,
    S3Location,
    bucket_region,
    ensure_bucket,
    location_region,
)
from .common import Printer

log = logging.getLogger("bundler.cli")

COPY_MODES = ("auto", "server", "stream")


# --------------------------------------------------------------------------- parser


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "migrate-manifest", help="re-wrap a manifest's key for another region's EC2 certificate",
        description="Verify the manifest's signature, re-wrap its AES key and IV to the target region's EC2 "
                    "certificate, optionally change kernel/ramdisk, re-sign; everything else is kept. The "
                    "original is saved as MANIFEST.bak first (ec2-migrate-manifest). Parts are not touched.")
    p.add_argument("-c", "--cert", type=Path, required=True, help="user certificate (verifies the signature)")
    p.add_argument("-k", "--privatekey", type=Path, required=True, help="user private key (unwraps the key, re-signs)")
    p.add_argument("-m", "--manifest", type=Path, required=True, help="manifest file, rewritten in place")
    _target_options(p)
    p.add_argument("-a", "--access-key", dest="access_key", help=argparse.SUPPRESS)
    p.add_argument("-s", "--secret-key", dest="secret_key", help=argparse.SUPPRESS)
    p.set_defaults(func=run_migrate_manifest)

    p = sub.add_parser(
        "copy-bundle", help="copy a bundle to another bucket/region with a migrated manifest",
        description="Copy a bundle's parts from -b SRC[/PREFIX] to -d DST[/PREFIX] (server-side CopyObject; "
                    "a streamed GET→PUT between partitions), resumable, parts first; then write the manifest "
                    "migrated to the target region's EC2 certificate last; optionally register the AMI there "
                    "(ec2-migrate-bundle).")
    p.add_argument("-c", "--cert", type=Path, required=True, help="user certificate (verifies the signature)")
    p.add_argument("-k", "--privatekey", type=Path, required=True, help="user private key (unwraps the key, re-signs)")
    p.add_argument("-m", "--manifest", required=True, help="manifest object name (NAME.manifest.xml, no '/')")
    p.add_argument("-b", "--bucket", required=True, metavar="SRC[/PREFIX]", help="source bucket and key prefix")
    p.add_argument("-d", "--destination-bucket", required=True, metavar="DST[/PREFIX]",
                   help="destination bucket and key prefix (created if missing)")
    p.add_argument("--acl", choices=ACLS, default=DEFAULT_ACL, help="canned ACL of the copies (default: %(default)s)")
    p.add_argument("--location", help="destination bucket location if it must be created (EU, US or a region)")
    p.add_argument("--source-region", help="region of the source bucket (default: asked from S3)")
    p.add_argument("--source-endpoint-url", metavar="URL", help="S3 endpoint of the source (default: --endpoint-url)")
    p.add_argument("--copy-mode", choices=COPY_MODES, default="auto",
                   help="server: CopyObject; stream: GET→PUT through this machine; auto: server unless the "
                        "buckets are in different partitions or endpoints (default)")
    p.add_argument("--jobs", type=int, default=DEFAULT_JOBS, metavar="N", help="parallel copies (default: %(default)s)")
    p.add_argument("--retry", action="store_true", help="up to 5 tries per object")
    p.add_argument("--register", action="store_true", help="register the AMI in the target region afterwards")
    p.add_argument("-n", "--name", help="AMI name with --register (default: the bundle name)")
    _target_options(p, with_region=False)
    from ..aws import add_aws_options

    add_aws_options(p)
    p.set_defaults(func=run_copy_bundle)


def _target_options(p: argparse.ArgumentParser, *, with_region: bool = True) -> None:
    g = p.add_argument_group("target region")
    if with_region:
        g.add_argument("--region", help="target region: selects its EC2 certificate")
    g.add_argument("--ec2cert", type=Path, help="target EC2 certificate (default: by region)")
    g.add_argument("--ec2cert-dir", type=Path, help="directory holding cert-ec2*.pem (also $AMI_BUNDLER_EC2_CERT_DIR)")
    g.add_argument("--kernel", help="new kernel id (aki-…), or 'none' to remove it")
    g.add_argument("--ramdisk", help="new ramdisk id (ari-…), or 'none' to remove it")
    g.add_argument("--mapping-file", type=Path, help="CSV of source_id,target_id for kernel/ramdisk ids")
    g.add_argument("--no-mapping", action="store_true",
                   help="no automatic kernel/ramdisk lookup (always the case: only --kernel/--ramdisk/--mapping-file map ids)")
    g.add_argument("--allow-unknown-region", action="store_true",
                   help="accept a well-formed region name this botocore does not list yet")


# --------------------------------------------------------------------------- shared


def _ec2_cert_for(args: argparse.Namespace, region: str | None) -> Path:
    from ..regions import find_ec2_cert

    if args.ec2cert is not None:
        return Path(args.ec2cert)
    if not region:
        raise UsageError("name the target: --region REGION (its EC2 certificate wraps the key) or --ec2cert PATH")
    return find_ec2_cert(region, cert_dir=args.ec2cert_dir)


def _migration_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from ..migrate import KEEP, read_mapping_file

    return {
        "kernel_id": KEEP if args.kernel is None else args.kernel,
        "ramdisk_id": KEEP if args.ramdisk is None else args.ramdisk,
        "mapping": read_mapping_file(args.mapping_file) if args.mapping_file else {},
    }


def _warn_kept_ids(printer: Printer, old: Any, new: Any, args: argparse.Namespace) -> None:
    if args.no_mapping:
        return
    for what, before, after in (("kernel", old.kernel_id, new.kernel_id), ("ramdisk", old.ramdisk_id, new.ramdisk_id)):
        if before and before == after:
            printer.warn(f"{what} {before} kept: AKI/ARI ids differ between regions and automatic mapping is not "
                         f"implemented; pass --{what} ID or --mapping-file if the target region needs another")


def _load_user_keys(args: argparse.Namespace) -> tuple[Any, Any]:
    from ..keys import load_private_key, load_public_key

    return load_private_key(args.privatekey), load_public_key(args.cert)


def _validated_region(args: argparse.Namespace, value: str | None, flag: str) -> str | None:
    from ..regions import validate_region

    if value is None:
        return None
    return validate_region(value, flag, allow_unknown=getattr(args, "allow_unknown_region", False))


# --------------------------------------------------------------------------- migrate-manifest


def run_migrate_manifest(args: argparse.Namespace, printer: Printer) -> int:
    from ..api import parse_manifest_bytes
    from ..keys import load_public_key
    from ..manifest import MAX_MANIFEST_BYTES
    from ..migrate import backup_path, migrate, write_manifest_with_backup

    region = _validated_region(args, args.region, "--region")
    ec2cert = _ec2_cert_for(args, region)
    path = Path(args.manifest)
    bak = backup_path(path)
    if bak.exists() or bak.is_symlink():
        from ..migrate import BackupExistsError

        raise BackupExistsError(f"backup {bak} already exists: a previous migration left it; move it away "
                                "(or restore it over the manifest) and re-run")
    try:
        with open(path, "rb") as fh:
            original = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"manifest {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    parsed = parse_manifest_bytes(original, str(path), args.privatekey)
    private_key, cert_key = _load_user_keys(args)
    migration = migrate(parsed, private_key=private_key, verify_key=cert_key, ec2_public_key=load_public_key(ec2cert),
                        ec2_cert_name=str(ec2cert), **_migration_kwargs(args))
    _warn_kept_ids(printer, parsed.manifest, migration.manifest, args)
    write_manifest_with_backup(path, original, migration.xml)
    data = {**migration.summary(), "manifest": str(path), "backup": str(bak), "region": region,
            "ec2cert": str(ec2cert)}
    printer.result(data, [f"Backed up {path} to {bak}", *migration.changes,
                          f"Migrated manifest {path}" + (f" for {region}" if region else "")])
    return 0


# --------------------------------------------------------------------------- copy-bundle


def _source_client(aws: Any, args: argparse.Namespace, bucket: str) -> tuple[Any, str]:
    from ..aws import s3_client

    opts = aws.opts
    if args.source_endpoint_url:
        opts = dataclasses.replace(opts, endpoint_url=args.source_endpoint_url)
    region = _validated_region(args, args.source_region, "--source-region")
    client = s3_client(opts, session=aws.session, bucket=bucket, region=region, pool=aws.jobs + 4)
    at = bucket_region(client, bucket)
    if at is None:
        raise S3Error(f"source bucket {bucket} does not exist (check -b, --source-region, --endpoint-url)")
    if at != client.meta.region_name:
        if region:
            raise S3Error(f"source bucket {bucket} is in {at}, not {region}: pass --source-region {at}")
        client = s3_client(opts, session=aws.session, bucket=bucket, region=at, pool=aws.jobs + 4)
    return client, at


def run_copy_bundle(args: argparse.Namespace, printer: Printer) -> int:
    from ..ec2 import RegisterOptions, preflight, register_image
    from ..keys import load_public_key
    from ..migrate import migrate
    from ..regions import same_partition
    from ..s3 import copy_bundle, load_remote_manifest
    from .aws import _attempts, _Aws

    source = S3Location.parse(args.bucket)
    destination = S3Location.parse(args.destination_bucket, "-d/--destination-bucket")
    name = args.manifest
    if "/" in name or not name.endswith(".manifest.xml"):
        raise UsageError(f"-m {name!r} must be the manifest object name NAME.manifest.xml (no '/'; "
                         "the key prefix goes in -b)")
    if source == destination:
        raise UsageError("source and destination are the same bucket and prefix")
    if args.name and not args.register:
        raise UsageError("-n/--name is the AMI name for --register")
    aws = _Aws(args, printer)
    src_client, src_region = _source_client(aws, args, source.bucket)

    # The target region: --region, else --location, else where the destination bucket already is.
    target = _validated_region(args, aws.opts.region, "--region")
    if target is None and args.location:
        target = location_region(args.location)
    probe = aws.s3(destination.bucket, region=target)
    existing = bucket_region(probe, destination.bucket)
    if target is None:
        if existing is None:
            raise UsageError(f"destination bucket {destination.bucket} does not exist: pass --region (or --location) "
                             "for the region to create it in")
        target = existing
    elif existing is not None and existing != target:
        raise S3Error(f"destination bucket {destination.bucket} is in {existing}, not {target}: EC2 registers a "
                      f"bundle only from its bucket's region; use another -d or --region {existing}")
    ec2cert = _ec2_cert_for(args, target)
    dst_client = aws.s3(destination.bucket, region=target)
    created = ensure_bucket(dst_client, destination.bucket, location=args.location or target)
    if created:
        printer.note(f"Created bucket {destination.bucket} in {target}")

    private_key, cert_key = _load_user_keys(args)
    parsed, _, _ = load_remote_manifest(src_client, source, name, private_key=private_key)
    migration = migrate(parsed, private_key=private_key, verify_key=cert_key, ec2_public_key=load_public_key(ec2cert),
                        ec2_cert_name=str(ec2cert), **_migration_kwargs(args))
    _warn_kept_ids(printer, parsed.manifest, migration.manifest, args)
    if args.copy_mode == "auto":
        same_endpoint = (args.source_endpoint_url or aws.opts.endpoint_url) == aws.opts.endpoint_url
        server_side = same_partition(src_region, target) and same_endpoint
    else:
        server_side = args.copy_mode == "server"
    if not server_side:
        printer.note(f"Copying through this machine ({src_region} → {target}: different partition or endpoint)")
    result = copy_bundle(src_client, source, name, dst_client, destination, manifest=migration.xml, parsed=parsed,
                         server_side=server_side, acl=args.acl, jobs=aws.jobs, attempts=_attempts(args),
                         progress=printer.progress())
    data: dict[str, Any] = {**result.summary(), **migration.summary(), "source_region": src_region,
                            "region": target, "ec2cert": str(ec2cert), "bucket_created": created}
    human = [f"Copied {result.parts_copied} part(s) ({result.bytes_copied} bytes, {result.mode}-side) in "
             f"{result.seconds:.2f}s" + (f", {result.parts_skipped} already there" if result.parts_skipped else ""),
             *migration.changes, f"Migrated manifest uploaded to: {result.image_location}"]
    if args.register:
        ec2 = aws.ec2(target)
        report = preflight(dst_client, result.image_location, region=target)
        options = RegisterOptions(name=args.name or parsed.manifest.name, architecture=report.manifest.arch)
        data["image_id"] = register_image(ec2, result.image_location, options)
        human.append(f"Registered {data['image_id']} ({options.name}) in {target}")
    human.append(str(data.get("image_id") or result.image_location))
    printer.result(data, human)
    return 0


# --------------------------------------------------------------------------- install --regions


def add_install_region_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several regions")
    g.add_argument("--regions", metavar="R1,R2,…",
                   help="bundle once, upload to a bucket in each of these regions and register in each")
    g.add_argument("--bucket-template", metavar="TEMPLATE",
                   help="bucket per region with --regions, e.g. 'my-amis-{region}' or 'my-amis-{region}/web'")
    g.add_argument("--region-endpoint", action="append", default=[], metavar="REGION=URL",
                   help="endpoint URL for one region's S3 and EC2 (repeatable; default: --endpoint-url)")
    g.add_argument("--copy-mode", choices=COPY_MODES, default="auto",
                   help="how a re-run completes a failed region from one that succeeded (default: auto)")
    g.add_argument("--allow-unknown-region", action="store_true",
                   help="accept a well-formed region name this botocore does not list yet")


def _region_endpoints(args: argparse.Namespace, regions: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in args.region_endpoint:
        region, sep, url = pair.partition("=")
        if not sep or not url.strip():
            raise UsageError(f"--region-endpoint {pair!r}: expected REGION=URL")
        region = _validated_region(args, region, "--region-endpoint") or ""
        if region not in regions:
            raise UsageError(f"--region-endpoint {pair!r}: {region} is not in --regions")
        out[region] = url.strip()
    return out


def run_install_regions(args: argparse.Namespace, printer: Printer) -> int:
    from ..aws import ec2_client, s3_client
    from ..keys import load_public_key
    from ..multiregion import RegionTarget, install_regions
    from ..pipeline import BundleKeys
    from ..regions import bucket_map, cert_filename, parse_regions
    from .aws import _attempts, _Aws, _register_options
    from .core import bundle_options_from_args, image_source_from_args

    if args.region:
        raise UsageError("--region and --regions do not go together: list every region in --regions")
    if args.location:
        raise UsageError("--location does not go with --regions: each bucket is created in its own region")
    regions = parse_regions(args.regions, allow_unknown=args.allow_unknown_region)
    buckets = bucket_map(regions, template=args.bucket_template, pairs=args.bucket or [])
    endpoints = _region_endpoints(args, regions)
    if args.ec2cert is not None and len({cert_filename(r) for r in regions}) > 1:
        raise UsageError("--ec2cert would wrap the key to one certificate for regions of different partitions "
                         "(which have different EC2 certificates): use --ec2cert-dir instead")
    certs = {r: _ec2_cert_for(args, r) for r in regions}  # every certificate found before any work
    public = {path: load_public_key(path) for path in set(certs.values())}
    if not args.cert or not args.privatekey:
        raise UsageError("missing required option(s): --cert, --privatekey")
    keys = BundleKeys.load(args.cert, args.privatekey, certs[regions[0]])

    aws = _Aws(args, printer)
    targets = []
    for region in regions:
        opts = aws.opts if region not in endpoints else dataclasses.replace(aws.opts, endpoint_url=endpoints[region])
        bucket, prefix = buckets[region]
        targets.append(RegionTarget(
            region=region, location=S3Location(bucket, prefix),
            s3=s3_client(opts, session=aws.session, bucket=bucket, region=region, pool=aws.jobs + 4),
            ec2=None if args.no_register else ec2_client(opts, session=aws.session, region=region),
            ec2_public_key=public[certs[region]], ec2_cert=str(certs[region]), endpoint=opts.endpoint_url))
    source = image_source_from_args(args)
    try:
        options = bundle_options_from_args(args, source.name)
        register = None
        if not args.no_register:
            register = _register_options(args, args.name or options.name, full=False)
    except BaseException:
        source.close()
        raise
    result = install_regions(targets, source=source, keys=keys, options=options, register=register, acl=args.acl,
                             jobs=aws.jobs, attempts=_attempts(args), copy_mode=args.copy_mode,
                             progress=printer.progress())
    rows = [("REGION", "RESULT", "AMI", "IMAGE LOCATION")]
    for o in result.outcomes:
        what = o.action + (f" from {o.copied_from}" if o.copied_from else "")
        rows.append((o.region, what, o.image_id or ("-" if o.ok else "FAILED"), o.image_location))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    human = ["  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)).rstrip() for row in rows]
    printer.result(result.summary(), human)
    for o in result.failed:
        printer.warn(f"{o.region}: {o.error}")
    if result.failed:
        printer.warn(f"{len(result.failed)} of {len(result.outcomes)} region(s) failed; re-run the same command to "
                     "complete them (they are copied from a region that has the bundle, not bundled again)")
        return S3Error.exit_code
    return 0


__all__ = ["register", "run_copy_bundle", "run_install_regions", "run_migrate_manifest"]
