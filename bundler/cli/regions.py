"""Region commands: ``migrate-manifest`` (ec2-migrate-manifest) and ``copy-bundle``
(ec2-migrate-bundle).

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

from ..aws import endpoint_url_value
from ..errors import S3Error, UsageError
from ..inuse import InUse
from ..s3 import S3Location, bucket_region, ensure_bucket, location_region
from ..s3.ownership import check_bucket_for_bundles
from ..transfer import COPY_MODES
from .common import Printer
from .context import AwsContext, add_acl_options, add_aws_options, add_jobs_option, add_retry_option
from .migration import (
    add_target_options,
    ec2_certificate_for,
    load_user_keys,
    migration_kwargs,
    validated_region,
    warn_kept_ids,
)

log = logging.getLogger("bundler.cli")


# --------------------------------------------------------------------------- parser


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "migrate-manifest", help="re-wrap a manifest's key for another region's EC2 certificate",
        description="Verify the manifest's signature, re-wrap its AES key and IV to the target "
                    "region's EC2 certificate, optionally change kernel/ramdisk, re-sign; "
                    "everything else is kept. The original is saved as MANIFEST.bak first "
                    "(ec2-migrate-manifest). Parts are not touched.")
    p.add_argument("-c", "--cert", type=Path, required=True,
                   help="user certificate (verifies the signature)")
    p.add_argument("-k", "--privatekey", type=Path, required=True,
                   help="user private key (unwraps the key, re-signs)")
    p.add_argument("-m", "--manifest", type=Path, required=True,
                   help="manifest file, rewritten in place")
    add_target_options(p)
    p.add_argument("-a", "--access-key", dest="access_key", help=argparse.SUPPRESS)
    p.add_argument("-s", "--secret-key", dest="secret_key", help=argparse.SUPPRESS)
    p.set_defaults(func=run_migrate_manifest)

    p = sub.add_parser(
        "copy-bundle", help="copy a bundle to another bucket/region with a migrated manifest",
        description="Copy a bundle's parts from -b SRC[/PREFIX] to -d DST[/PREFIX] (server-side "
                    "CopyObject; a streamed GET→PUT between partitions), resumable, parts first; "
                    "then write the manifest migrated to the target region's EC2 certificate last; "
                    "optionally register the AMI there (ec2-migrate-bundle).")
    p.add_argument("-c", "--cert", type=Path, required=True,
                   help="user certificate (verifies the signature)")
    p.add_argument("-k", "--privatekey", type=Path, required=True,
                   help="user private key (unwraps the key, re-signs)")
    p.add_argument("-m", "--manifest", required=True,
                   help="manifest object name (NAME.manifest.xml, no '/')")
    p.add_argument("-b", "--bucket", required=True, metavar="SRC[/PREFIX]",
                   help="source bucket and key prefix")
    p.add_argument("-d", "--destination-bucket", required=True, metavar="DST[/PREFIX]",
                   help="destination bucket and key prefix (created if missing)")
    add_acl_options(p, what="canned ACL of the copies")
    p.add_argument("--location", help="destination bucket location if it must be created (EU, US "
                                      "or a region)")
    p.add_argument("--source-region", help="region of the source bucket (default: asked from S3)")
    p.add_argument("--source-endpoint-url", metavar="URL",
                   help="S3 endpoint of the source (default: --endpoint-url)")
    p.add_argument("--copy-mode", choices=COPY_MODES, default="auto",
                   help="server: CopyObject; stream: GET→PUT through this machine; auto: server "
                        "unless the buckets are in different partitions or endpoints (default)")
    add_jobs_option(p, help="parallel copies (default: %(default)s)")
    add_retry_option(p)
    p.add_argument("--register", action="store_true",
                   help="register the AMI in the target region afterwards")
    p.add_argument("--force", action="store_true",
                   help="replace a different bundle of that name at the destination (never one a "
                        "registered AMI uses)")
    p.add_argument("-n", "--name", help="AMI name with --register (default: the bundle name)")
    add_target_options(p, with_region=False)
    add_aws_options(p)
    p.set_defaults(func=run_copy_bundle)


# --------------------------------------------------------------------------- migrate-manifest


def run_migrate_manifest(args: argparse.Namespace, printer: Printer) -> int:
    from ..keys import load_public_key
    from ..localmanifest import parse_manifest_bytes, read_manifest_bytes
    from ..migrate import backup_path, migrate, write_manifest_with_backup

    region = validated_region(args, args.region, "--region")
    chosen = ec2_certificate_for(args, region)
    ec2cert = chosen.path
    path = Path(args.manifest)
    bak = backup_path(path)
    if bak.exists() or bak.is_symlink():
        from ..migrate import BackupExistsError

        raise BackupExistsError(f"backup {bak} already exists: a previous migration left it; move "
                                "it away (or restore it over the manifest) and re-run")
    original = read_manifest_bytes(path, error=UsageError)
    parsed = parse_manifest_bytes(original, str(path), args.privatekey)
    private_key, cert_key = load_user_keys(args)
    migration = migrate(parsed, private_key=private_key, verify_key=cert_key,
                        ec2_public_key=load_public_key(ec2cert),
                        ec2_cert_name=str(ec2cert), **migration_kwargs(args))
    warn_kept_ids(printer, parsed.manifest, migration.manifest, args)
    write_manifest_with_backup(path, original, migration.xml)
    data = {**migration.summary(), "manifest": str(path), "backup": str(bak), "region": region,
            "ec2cert": str(ec2cert), "ec2_certificate": chosen.as_json()}
    printer.result(data, [f"Backed up {path} to {bak}", *migration.changes,
                          f"Migrated manifest {path}" + (f" for {region}" if region else "")])
    return 0


# --------------------------------------------------------------------------- copy-bundle


def _source_client(aws: AwsContext, args: argparse.Namespace, bucket: str) -> tuple[Any, str]:
    opts = aws.opts
    if args.source_endpoint_url:
        opts = dataclasses.replace(opts, endpoint_url=endpoint_url_value(args.source_endpoint_url,
                                                                          "--source-endpoint-url"))
    region = validated_region(args, args.source_region, "--source-region")
    client = aws.s3(bucket, region=region, opts=opts)
    at = bucket_region(client, bucket)
    if at is None:
        raise S3Error(f"source bucket {bucket} does not exist (check -b, --source-region, "
                      "--endpoint-url)")
    if at != client.meta.region_name:
        if region:
            raise S3Error(f"source bucket {bucket} is in {at}, not {region}: pass --source-region "
                          f"{at}")
        client = aws.s3(bucket, region=at, opts=opts)
    return client, at


def run_copy_bundle(args: argparse.Namespace, printer: Printer) -> int:
    from ..ec2 import RegisterOptions, preflight, register_image
    from ..keys import load_public_key
    from ..migrate import migrate
    from ..regions import same_partition
    from ..s3 import copy_bundle, load_remote_manifest

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
    aws = AwsContext(args, printer)
    src_client, src_region = _source_client(aws, args, source.bucket)

    # The target region: --region, else --location, else where the destination bucket already is.
    target = validated_region(args, aws.opts.region, "--region")
    if target is None and args.location:
        target = location_region(args.location)
    probe = aws.s3(destination.bucket, region=target)
    existing = bucket_region(probe, destination.bucket)
    if target is None:
        if existing is None:
            raise UsageError(f"destination bucket {destination.bucket} does not exist: pass "
                             "--region (or --location) for the region to create it in")
        target = existing
    elif existing is not None and existing != target:
        raise S3Error(f"destination bucket {destination.bucket} is in {existing}, not {target}: "
                      "EC2 registers a bundle only from its bucket's region; use another -d or "
                      f"--region {existing}")
    chosen = ec2_certificate_for(args, target)
    ec2cert = chosen.path
    dst_client = aws.s3(destination.bucket, region=target)
    created = ensure_bucket(dst_client, destination.bucket, location=args.location or target)
    if created:
        printer.note(f"Created bucket {destination.bucket} in {target}")
    check_bucket_for_bundles(dst_client, destination.bucket, acl=args.acl,
                             enable_acls=args.enable_bucket_acls)

    private_key, cert_key = load_user_keys(args)
    parsed, _, _ = load_remote_manifest(src_client, source, name, private_key=private_key)
    migration = migrate(parsed, private_key=private_key, verify_key=cert_key,
                        ec2_public_key=load_public_key(ec2cert),
                        ec2_cert_name=str(ec2cert), **migration_kwargs(args))
    warn_kept_ids(printer, parsed.manifest, migration.manifest, args)
    if args.copy_mode == "auto":
        same_endpoint = (args.source_endpoint_url or aws.opts.endpoint_url) == aws.opts.endpoint_url
        server_side = same_partition(src_region, target) and same_endpoint
    else:
        server_side = args.copy_mode == "server"
    if not server_side:
        printer.note(f"Copying through this machine ({src_region} → {target}: different partition "
                     "or endpoint)")
    result = copy_bundle(
        src_client, source, name, dst_client, destination, manifest=migration.xml, parsed=parsed,
        server_side=server_side, transfer=aws.transfer, force=args.force,
        in_use=InUse(lambda: aws.ec2(target), warn=printer.warn),
    )
    data: dict[str, Any] = {**result.summary(), **migration.summary(), "source_region": src_region,
                            "region": target, "ec2cert": str(ec2cert),
                            "ec2_certificate": chosen.as_json(), "bucket_created": created}
    human = [f"Copied {result.parts_copied} part(s) ({result.bytes_copied} bytes, "
             f"{result.mode}-side) in {result.seconds:.2f}s"
             + (f", {result.parts_skipped} already there" if result.parts_skipped else ""),
             *migration.changes, f"Migrated manifest uploaded to: {result.image_location}"]
    if args.register:
        ec2 = aws.ec2(target)
        report = preflight(dst_client, result.image_location, region=target)
        options = RegisterOptions(name=args.name or parsed.manifest.name,
                                  architecture=report.manifest.arch)
        data["image_id"] = register_image(ec2, result.image_location, options)
        human.append(f"Registered {data['image_id']} ({options.name}) in {target}")
    human.append(str(data.get("image_id") or result.image_location))
    printer.result(data, human)
    return 0


__all__ = ["register", "run_copy_bundle", "run_migrate_manifest"]
