"""S3 and EC2 commands: upload-bundle, download-bundle, delete-bundle, register, deregister.

Classic flags (spec §9.5–9.8) are accepted; additions: --jobs (parallel transfers), automatic
resume, --dry-run and preflight before RegisterImage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BundleInUseError, ManifestError, S3Error, UsageError
from ..inuse import InUse
from ..s3 import (
    S3Location,
    delete_bucket_if_empty,
    delete_keys,
    download_bundle,
    ensure_bucket,
    load_remote_manifest,
    location_region,
    plan_delete,
    prepare_upload,
    split_manifest_location,
    upload_bundle,
)
from ..s3.ownership import check_bucket_for_bundles
from .checking import add_no_check_option, check_registered_bundle
from .common import Printer, count, ensure_directory, plural, remove_if_empty
from .context import (
    AwsContext,
    add_acl_options,
    add_aws_options,
    add_bucket_option,
    add_jobs_option,
    add_retry_option,
    add_transfer_options,
    jobs_from_args,
)
from .registration import add_register_options, register_and_report, register_options_from_args

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.cli")


# --------------------------------------------------------------------------- parser


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("upload-bundle", help="upload a bundle to S3 (parallel, resumable)",
                       description="Upload the parts (in parallel, each checked against the "
                                   "manifest first) and then the manifest to BUCKET/PREFIX with "
                                   "the aws-exec-read ACL (ec2-upload-bundle). A re-run skips the "
                                   "parts already in S3.")
    add_bucket_option(p)
    add_transfer_options(p)
    p.add_argument("-m", "--manifest", type=Path, required=True, help="local manifest path")
    p.add_argument("-d", "--directory", type=Path,
                   help="directory with the parts (default: the manifest's)")
    add_acl_options(p)
    p.add_argument("--location", help="bucket location if it must be created (EU, US or a region)")
    p.add_argument("--part", type=count(0, 99_999, "part index"), metavar="N",
                   help="start at part index N (classic; resume is automatic)")
    p.add_argument("--skipmanifest", action="store_true", help="do not upload the manifest")
    p.add_argument("--no-resume", action="store_true",
                   help="re-upload parts that are already in S3")
    p.add_argument("--force", action="store_true",
                   help="replace a different bundle of the same name (never one a registered AMI "
                        "uses)")
    add_aws_options(p)
    p.set_defaults(func=run_upload_bundle)

    p = sub.add_parser("download-bundle", help="download a bundle from S3, checking every part",
                       description="Download the manifest and parts (in parallel) from "
                                   "BUCKET/PREFIX; every part's SHA-1 is checked before it gets "
                                   "its final name (ec2-download-bundle).")
    add_bucket_option(p)
    add_transfer_options(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-m", "--manifest", help="manifest object name (no '/')")
    g.add_argument("-p", "--prefix", help="bundle name (default: image)")
    p.add_argument("-d", "--directory", type=Path, default=Path("."),
                   help="download directory, created when missing (default: current)")
    p.add_argument("-k", "--privatekey", type=Path,
                   help="user private key: decrypts legacy manifests, verifies the signature")
    p.add_argument("-c", "--cert", type=Path,
                   help="certificate to verify the manifest signature with")
    p.add_argument("--no-verify", action="store_true", help="do not check the manifest signature")
    add_aws_options(p)
    p.set_defaults(func=run_download_bundle)

    p = sub.add_parser("delete-bundle", help="delete a bundle from S3",
                       description="Delete a bundle's manifest and parts (ec2-delete-bundle). -m "
                                   "names a manifest (local file, or the object when no such file "
                                   "exists); -p lists by name.")
    add_bucket_option(p)
    add_transfer_options(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-m", "--manifest", help="manifest (local path, or object name under the "
                                            "prefix)")
    g.add_argument("-p", "--prefix", help="bundle name: deletes NAME.part.N and "
                                          "NAME.manifest[.xml]")
    p.add_argument("-k", "--privatekey", type=Path, help="decrypts a legacy encrypted manifest")
    p.add_argument("--clear", action="store_true",
                   help="delete the bucket afterwards if it is empty")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    p.add_argument("--force", action="store_true",
                   help="delete it even though a registered AMI uses it")
    add_aws_options(p)
    p.set_defaults(func=run_delete_bundle)

    p = sub.add_parser("register", help="register an uploaded bundle as an AMI",
                       description="Check the bundle in S3 (manifest, every part, total size), "
                                   "then call RegisterImage with ImageLocation "
                                   "BUCKET/PREFIX/NAME.manifest.xml.")
    p.add_argument("location", help="BUCKET/[PREFIX/]NAME.manifest.xml")
    p.add_argument("-n", "--name", required=True, help="AMI name")
    p.add_argument("-b", "--block-device-mapping", action="append", default=[], metavar="DEV=SPEC",
                   help="DEVICE=ephemeralN|none|snap-id:size:delete:type (repeatable)")
    add_register_options(p, full=True)
    checks = p.add_argument_group("check before --launch-permission all")
    checks.add_argument("-k", "--privatekey", type=Path,
                        help="user private key: decrypt the bundle and check it (check --public) "
                             "before making it public")
    checks.add_argument("--work-dir", type=Path,
                        help="where the checked image is unpacked, privately")
    add_no_check_option(checks, what="the bundle")
    add_aws_options(p)
    p.set_defaults(func=run_register)

    p = sub.add_parser("deregister", help="deregister an AMI (and delete its bundle)")
    p.add_argument("image_id", metavar="AMI", help="image id (ami-…)")
    p.add_argument("--delete-bundle", action="store_true",
                   help="also delete the manifest and parts from S3")
    p.add_argument("--location", dest="bundle_location", metavar="BUCKET/PREFIX/NAME.manifest.xml",
                   help="bundle to delete when EC2 does not report the ImageLocation")
    add_jobs_option(p, help=argparse.SUPPRESS, metavar=None)
    add_retry_option(p)
    add_aws_options(p)
    p.set_defaults(func=run_deregister)

# --------------------------------------------------------------------------- shared plumbing


def _confirm(question: str, printer: Printer, args: argparse.Namespace) -> bool:
    # Classic meanings: -y answers yes; --batch only means "never prompt", so without -y
    # nothing is deleted (the classic tool asked anyway and, with no answer, skipped).
    if getattr(args, "yes", False):
        return True
    if getattr(args, "batch", False):
        raise UsageError("--batch never prompts, so it deletes nothing without -y/--yes",
                         hint="add -y to delete; --dry-run lists what would go")
    if not sys.stdin.isatty():
        raise UsageError("refusing to delete without confirmation on a non-interactive input: pass "
                         "-y/--yes")
    printer.stderr.write(f"{question} [y/N] ")
    printer.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


# --------------------------------------------------------------------------- upload-bundle


def run_upload_bundle(args: argparse.Namespace, printer: Printer) -> int:
    location = S3Location.parse(args.bucket)
    if args.part is not None and args.part < 0:
        raise UsageError("--part must be 0 or more")
    # The local bundle first: a bad one fails before anything remote (no bucket made for it).
    prepared = prepare_upload(args.manifest, args.directory, jobs=jobs_from_args(args))
    aws = AwsContext(args, printer)
    region = location_region(args.location) if args.location else None
    if region and aws.opts.region and region != aws.opts.region:
        raise UsageError(f"--location {args.location} is in {region} but --region is "
                         f"{aws.opts.region}")
    client, at = aws.s3_in_bucket_region(location.bucket, must_exist=False)
    created = False
    if at is None:
        if region and region != client.meta.region_name:
            client = aws.s3(location.bucket, region=region)
        created = ensure_bucket(client, location.bucket, location=args.location)
        if created:
            printer.note(f"Created bucket {location.bucket} in {region or client.meta.region_name}")
    elif args.location:
        # Raises on a location conflict.
        ensure_bucket(client, location.bucket, location=args.location)
    check_bucket_for_bundles(client, location.bucket, acl=args.acl,
                             enable_acls=args.enable_bucket_acls)
    result = upload_bundle(
        client, location, args.manifest, transfer=aws.transfer, directory=args.directory,
        start_part=args.part, skip_manifest=args.skipmanifest, resume=not args.no_resume,
        force=args.force, prepared=prepared,
        in_use=InUse(lambda: aws.ec2(at or client.meta.region_name), warn=printer.warn),
    )
    result.bucket_created = created
    human = []
    if result.parts_skipped:
        human.append(f"Skipped {plural(result.parts_skipped, 'part')} already uploaded")
    human.append(f"Uploaded {plural(result.parts_uploaded, 'part')} ({result.bytes_uploaded} "
                 f"bytes) in {result.seconds:.2f}s")
    if result.manifest_key:
        human.append(f"Manifest uploaded to: {result.image_location}")
    else:
        human.append("Manifest not uploaded (--skipmanifest)")
    printer.result(result.summary(), human)
    return 0


# --------------------------------------------------------------------------- download-bundle


def _manifest_object_name(args: argparse.Namespace) -> str:
    if args.manifest:
        if "/" in args.manifest:
            raise UsageError("-m/--manifest is the manifest's object name (no '/'): "
                             "put the key prefix in -b")
        return str(args.manifest)
    return f"{args.prefix or 'image'}.manifest.xml"


def run_download_bundle(args: argparse.Namespace, printer: Printer) -> int:
    from ..keys import load_private_key, load_public_key

    location = S3Location.parse(args.bucket)
    name = _manifest_object_name(args)
    if "/" in name:
        # -p x/img: the manifest is BUCKET/x/img.manifest.xml, and its parts are beside it.
        folder, _, name = name.rpartition("/")
        location = S3Location.parse(f"{location.bucket}/{location.prefix}{folder}",
                                    "-b/--bucket with -p")
    private_key = load_private_key(args.privatekey) if args.privatekey else None
    verify_key = verify_name = None
    if not args.no_verify:
        if args.cert:
            verify_key, verify_name = load_public_key(args.cert), f"certificate {args.cert}"
        elif private_key is not None:
            verify_key = private_key.public_key()
            verify_name = f"the public half of private key {args.privatekey} (no -c given)"
    aws = AwsContext(args, printer)
    client, _ = aws.s3_in_bucket_region(location.bucket)
    created = ensure_directory(args.directory, "-d/--directory")
    try:
        result = download_bundle(client, location, name, args.directory, private_key=private_key,
                                 verify_key=verify_key, verify_name=verify_name,
                                 transfer=aws.transfer)
    except BaseException:
        if created:
            remove_if_empty(args.directory)
        raise
    present = f", {result.parts_skipped} already present" if result.parts_skipped else ""
    checked = " (signature verified)" if result.verified_signature else " (signature NOT checked)"
    human = [f"Downloaded {plural(result.parts_downloaded, 'part')} ({result.bytes_downloaded} "
             f"bytes) in {result.seconds:.2f}s{present}",
             f"Every part matches the manifest{checked}",
             f"Manifest: {result.manifest_path}"]
    if result.plaintext_path:
        human.append(f"Decrypted manifest: {result.plaintext_path}")
    if not result.verified_signature:
        why = "--no-verify" if args.no_verify else "no -c CERT or -k PRIVATEKEY given"
        printer.warn(f"the manifest signature was not checked ({why}): the parts match the "
                     "manifest, but nothing shows who made it; check with: ami-bundler verify -c "
                     f"CERT {result.manifest_path}")
    printer.result(result.summary(), human)
    return 0


# --------------------------------------------------------------------------- delete-bundle


def run_delete_bundle(args: argparse.Namespace, printer: Printer) -> int:
    location = S3Location.parse(args.bucket)
    if not args.manifest and not args.prefix:
        raise UsageError("delete-bundle needs -m MANIFEST or -p PREFIX")
    aws = AwsContext(args, printer)
    client, _ = aws.s3_in_bucket_region(location.bucket)
    if args.manifest:
        local = Path(args.manifest)
        name = local.name
        if local.is_file():
            from ..api import read_manifest

            parsed = read_manifest(local, args.privatekey)
        else:
            if "/" in args.manifest:
                raise UsageError(f"{args.manifest} is not a local file; to use the object, give "
                                 "its name (no '/') and put the key prefix in -b")
            from ..keys import load_private_key

            key = load_private_key(args.privatekey) if args.privatekey else None
            parsed, _, _ = load_remote_manifest(client, location, name, private_key=key)
        plan = plan_delete(client, location, manifest=(name, parsed))
        # Objects of the same bundle name that this manifest does not list (S3 holds another
        # version of the bundle than the local manifest describes) are kept: say so.
        from ..s3 import keys_by_prefix
        from ..s3.publish import bundle_name

        listed = set(plan.keys) | set(plan.missing)
        kept = [k for k in keys_by_prefix(client, location, bundle_name(name)) if k not in listed]
        if kept:
            printer.warn(f"{plural(len(kept), 'other object')} of bundle {bundle_name(name)} in "
                         f"{location.url()} {'is' if len(kept) == 1 else 'are'} not named by "
                         f"{args.manifest} and kept (e.g. {kept[0]}): S3 holds another version of "
                         f"this bundle; see them with: delete-bundle -b {args.bucket} -p "
                         f"{bundle_name(name)} "
                         "--dry-run")
    else:
        plan = plan_delete(client, location, name=args.prefix)

    data: dict[str, Any] = {"bucket": location.bucket, "keys": plan.keys, "missing": plan.missing,
                            "dry_run": bool(args.dry_run), "deleted": 0, "bucket_deleted": False}
    data["in_use_by"] = _refuse_deleting_in_use(aws, client, location, plan.keys, args, printer)
    if not plan.keys:
        human = [f"Nothing to delete in {location.url()}"]
        if args.clear and not args.dry_run:
            data["bucket_deleted"] = delete_bucket_if_empty(client, location.bucket)
            human.append(f"Deleted bucket {location.bucket}" if data["bucket_deleted"]
                         else f"Bucket {location.bucket} is not empty: kept")
        printer.result(data, human)
        return 0
    if plan.missing:
        printer.note(f"{plural(len(plan.missing), 'object')} named by the manifest are not in S3 "
                     "(already deleted?)")
    if args.dry_run:
        printer.result(data, [f"Would delete s3://{location.bucket}/{k}" for k in plan.keys]
                       + [f"{plural(len(plan.keys), 'object')} would be deleted (dry run)"])
        return 0
    if not (args.yes or args.batch):
        for object_key in plan.keys:
            printer.note(f"  s3://{location.bucket}/{object_key}")
    if not _confirm(f"Delete {plural(len(plan.keys), 'object')} from s3://{location.bucket}?",
                    printer, args):
        printer.result(data, "Nothing deleted.")
        return 1
    data["deleted"] = delete_keys(client, location.bucket, plan.keys, attempts=aws.attempts)
    human = [f"Deleted {plural(data['deleted'], 'object')} from "
             f"s3://{location.bucket}/{location.prefix}"]
    if args.clear:
        data["bucket_deleted"] = delete_bucket_if_empty(client, location.bucket)
        human.append(f"Deleted bucket {location.bucket}" if data["bucket_deleted"]
                     else f"Bucket {location.bucket} is not empty: kept")
    printer.result(data, human)
    return 0


def _refuse_deleting_in_use(aws: AwsContext, client: S3Client, location: S3Location,
                            keys: Sequence[str],
                            args: argparse.Namespace, printer: Printer) -> list[str]:
    """EC2 first: the manifests among ``keys`` that a registered AMI uses are refused without
    --force (with it, a warning names the AMIs). Returns the AMI ids."""
    lookup = InUse(lambda: aws.ec2(client.meta.region_name), warn=printer.warn)
    users: list[str] = []
    for key in keys:
        if not key.endswith((".manifest.xml", ".manifest")):
            continue
        ids = lookup(f"{location.bucket}/{key}") or []
        if not ids:
            continue
        users.extend(ids)
        where, amis = f"s3://{location.bucket}/{key}", ", ".join(ids)
        if args.force:
            printer.warn(f"{where} is the bundle of the registered AMI(s) {amis}: deleting it "
                         "anyway (--force); they will fail to launch")
        elif args.dry_run:
            printer.warn(f"{where} is the bundle of the registered AMI(s) {amis}: delete-bundle "
                         "refuses it without --force")
        else:
            raise BundleInUseError(f"{where} is the bundle of the registered AMI(s) {amis}: "
                                   "nothing was deleted; deregister them first (ami-bundler "
                                   "deregister AMI --delete-bundle), or pass --force to delete it "
                                   "anyway")
    return sorted(set(users))


# --------------------------------------------------------------------------- register / deregister


def run_register(args: argparse.Namespace, printer: Printer) -> int:
    from ..ec2 import normalize_image_location, preflight

    image_location = normalize_image_location(args.location)
    location, _ = split_manifest_location(image_location)
    options = register_options_from_args(args, args.name, full=True)
    aws = AwsContext(args, printer)
    client, bucket_at = aws.s3_in_bucket_region(location.bucket)
    region = aws.opts.region or bucket_at
    extra: dict[str, Any] = {}
    if not args.no_preflight:
        report = preflight(client, image_location, region=region)
        if options.architecture is None and report.manifest.arch:
            options.architecture = report.manifest.arch
        extra["preflight"] = report.summary()
    check_registered_bundle(args, printer, client, image_location)
    return register_and_report(aws, region, image_location, options, args, extra, printer, [])


def run_deregister(args: argparse.Namespace, printer: Printer) -> int:
    from ..ec2 import deregister_image, describe_image, image_location_of

    aws = AwsContext(args, printer)
    ec2 = aws.ec2(None)
    image_location = None
    if args.delete_bundle:
        image_location = (args.bundle_location
                          or image_location_of(describe_image(ec2, args.image_id)))
        if not image_location:
            raise UsageError(f"{args.image_id} has no ImageLocation (not an instance-store AMI?): "
                             "pass --location BUCKET/PREFIX/NAME.manifest.xml to delete its bundle")
    else:
        describe_image(ec2, args.image_id)  # a clear "not found" before the delete call
    deregister_image(ec2, args.image_id)
    data: dict[str, Any] = {"image_id": args.image_id, "deregistered": True,
                            "image_location": image_location, "deleted": 0}
    human = [f"Deregistered {args.image_id}"]
    others: list[str] = []
    if image_location:
        # Another AMI registered from the same manifest still launches from it: keep the bundle.
        in_use = InUse(lambda: ec2, exclude=[args.image_id], warn=printer.warn)
        others = in_use(image_location) or []
        data["kept_for"] = others
    if others:
        human.append(f"Kept the bundle {image_location}: the registered AMI(s) {', '.join(others)} "
                     "still use it (deregister them with --delete-bundle to delete it)")
    elif image_location:
        location, name = split_manifest_location(image_location)
        client, _ = aws.s3_in_bucket_region(location.bucket)
        try:
            parsed, _, _ = load_remote_manifest(client, location, name)
            plan = plan_delete(client, location, manifest=(name, parsed))
        except ManifestError as exc:
            raise S3Error(f"deregistered {args.image_id}, but cannot read its bundle to delete it: "
                          f"{exc}") from None
        data["deleted"] = delete_keys(client, location.bucket, plan.keys, attempts=aws.attempts)
        human.append(f"Deleted {plural(data['deleted'], 'object')} of {image_location}")
    printer.result(data, human)
    return 0
