"""S3 and EC2 commands: upload-bundle, download-bundle, delete-bundle, register, deregister, install.

Classic flags (spec §9.5–9.8) are accepted; additions: --jobs (parallel transfers), automatic
resume, --dry-run, preflight before RegisterImage, and ``install`` (bundle → S3 → register in
one streaming run with no parts on disk).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..aws import (
    AwsOptions,
    add_aws_options,
    ec2_client,
    make_session,
    options_from_args,
    s3_client,
)
from ..errors import ManifestError, S3Error, UsageError
from ..s3 import (
    ACLS,
    DEFAULT_ACL,
    DEFAULT_ATTEMPTS,
    DEFAULT_JOBS,
    RETRY_ATTEMPTS,
    S3Location,
    S3PartSource,
    S3Sink,
    bucket_region,
    delete_bucket_if_empty,
    delete_keys,
    download_bundle,
    ensure_bucket,
    load_remote_manifest,
    location_region,
    plan_delete,
    split_manifest_location,
    upload_bundle,
)
from .common import Printer, add_bundle_options

log = logging.getLogger("bundler.cli")


# --------------------------------------------------------------------------- parser


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upload-bundle", help="upload a bundle to S3 (parallel, resumable)",
                       description="Upload the parts (in parallel, each checked against the manifest first) and "
                                   "then the manifest to BUCKET/PREFIX with the aws-exec-read ACL "
                                   "(ec2-upload-bundle). A re-run skips the parts already in S3.")
    _s3_common(p)
    p.add_argument("-m", "--manifest", type=Path, required=True, help="local manifest path")
    p.add_argument("-d", "--directory", type=Path, help="directory with the parts (default: the manifest's)")
    p.add_argument("--acl", choices=ACLS, default=DEFAULT_ACL, help="canned ACL (default: %(default)s)")
    p.add_argument("--location", help="bucket location if it must be created (EU, US or a region)")
    p.add_argument("--part", type=int, metavar="N", help="start at part index N (classic; resume is automatic)")
    p.add_argument("--skipmanifest", action="store_true", help="do not upload the manifest")
    p.add_argument("--no-resume", action="store_true", help="re-upload parts that are already in S3")
    add_aws_options(p)
    p.set_defaults(func=run_upload_bundle)

    p = sub.add_parser("download-bundle", help="download a bundle from S3, checking every part",
                       description="Download the manifest and parts (in parallel) from BUCKET/PREFIX; every part's "
                                   "SHA-1 is checked before it gets its final name (ec2-download-bundle).")
    _s3_common(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-m", "--manifest", help="manifest object name (no '/')")
    g.add_argument("-p", "--prefix", help="bundle name (default: image)")
    p.add_argument("-d", "--directory", type=Path, default=Path("."), help="download directory (default: current)")
    p.add_argument("-k", "--privatekey", type=Path, help="user private key: decrypts legacy manifests, verifies the signature")
    p.add_argument("-c", "--cert", type=Path, help="certificate to verify the manifest signature with")
    p.add_argument("--no-verify", action="store_true", help="do not check the manifest signature")
    add_aws_options(p)
    p.set_defaults(func=run_download_bundle)

    p = sub.add_parser("delete-bundle", help="delete a bundle from S3",
                       description="Delete a bundle's manifest and parts (ec2-delete-bundle). -m names a manifest "
                                   "(local file, or the object when no such file exists); -p lists by name.")
    _s3_common(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-m", "--manifest", help="manifest (local path, or object name under the prefix)")
    g.add_argument("-p", "--prefix", help="bundle name: deletes NAME.part.N and NAME.manifest[.xml]")
    p.add_argument("-k", "--privatekey", type=Path, help="decrypts a legacy encrypted manifest")
    p.add_argument("--clear", action="store_true", help="delete the bucket afterwards if it is empty")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    add_aws_options(p)
    p.set_defaults(func=run_delete_bundle)

    p = sub.add_parser("register", help="register an uploaded bundle as an AMI",
                       description="Check the bundle in S3 (manifest, every part, total size), then call "
                                   "RegisterImage with ImageLocation BUCKET/PREFIX/NAME.manifest.xml.")
    p.add_argument("location", help="BUCKET/[PREFIX/]NAME.manifest.xml")
    p.add_argument("-n", "--name", required=True, help="AMI name")
    p.add_argument("-b", "--block-device-mapping", action="append", default=[], metavar="DEV=SPEC",
                   help="DEVICE=ephemeralN|none|snap-id:size:delete:type (repeatable)")
    _register_common(p, full=True)
    add_aws_options(p)
    p.set_defaults(func=run_register)

    p = sub.add_parser("deregister", help="deregister an AMI (and delete its bundle)")
    p.add_argument("image_id", metavar="AMI", help="image id (ami-…)")
    p.add_argument("--delete-bundle", action="store_true", help="also delete the manifest and parts from S3")
    p.add_argument("--location", dest="bundle_location", metavar="BUCKET/PREFIX/NAME.manifest.xml",
                   help="bundle to delete when EC2 does not report the ImageLocation")
    p.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help=argparse.SUPPRESS)
    p.add_argument("--retry", action="store_true", help="up to 5 tries per object")
    add_aws_options(p)
    p.set_defaults(func=run_deregister)

    p = sub.add_parser("install", help="bundle an image, upload it and register the AMI in one run",
                       description="bundle-image → upload-bundle → register, streaming: parts go from the "
                                   "compressor straight to parallel PUTs, none touch the disk.")
    p.add_argument("-i", "--image", required=True, help="image file, or - for standard input (with --image-size)")
    p.add_argument("--image-size", type=int, help="bytes on standard input (required with -i -)")
    add_bundle_options(p, image_flag=True)
    _s3_common(p, multi=True)
    p.add_argument("--acl", choices=ACLS, default=DEFAULT_ACL, help="canned ACL (default: %(default)s)")
    p.add_argument("--location", help="bucket location if it must be created (EU, US or a region)")
    p.add_argument("-n", "--name", help="AMI name (default: the bundle name)")
    p.add_argument("--no-register", action="store_true", help="stop after the upload")
    _register_common(p, full=False)
    from .regions import add_install_region_options

    add_install_region_options(p)
    add_aws_options(p)
    p.set_defaults(func=run_install)


def _s3_common(p: argparse.ArgumentParser, *, multi: bool = False) -> None:
    if multi:
        # install: one -b, or with --regions one REGION=BUCKET[/PREFIX] per region (repeatable).
        p.add_argument("-b", "--bucket", action="append", metavar="BUCKET[/PREFIX]",
                       help="bucket and optional key prefix; with --regions: REGION=BUCKET[/PREFIX] (repeatable)")
    else:
        p.add_argument("-b", "--bucket", required=True, metavar="BUCKET[/PREFIX]",
                       help="bucket and optional key prefix")
    p.add_argument("--jobs", type=int, default=DEFAULT_JOBS, metavar="N",
                   help="parallel transfers (default: %(default)s)")
    p.add_argument("--retry", action="store_true", help="up to 5 tries per object (on top of botocore's retries)")


def _register_common(p: argparse.ArgumentParser, *, full: bool) -> None:
    g = p.add_argument_group("register")
    g.add_argument("--description", help="AMI description")
    if full:
        g.add_argument("--architecture", choices=["i386", "x86_64", "arm64"], help="default: the manifest's")
        g.add_argument("--kernel", help="kernel id (aki-…), overrides the manifest's")
        g.add_argument("--ramdisk", help="ramdisk id (ari-…), overrides the manifest's")
        g.add_argument("--no-preflight", action="store_true", help="skip the S3 checks before RegisterImage")
    g.add_argument("--virtualization-type", choices=["paravirtual", "hvm"])
    g.add_argument("--ena-support", action="store_true", default=None, help="enable ENA")
    g.add_argument("--sriov-net-support", choices=["simple"])
    g.add_argument("--boot-mode", choices=["legacy-bios", "uefi", "uefi-preferred"])
    g.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="tag the AMI (repeatable)")
    g.add_argument("--launch-permission", action="append", default=[], metavar="ACCOUNT|all",
                   help="allow an account (or all) to launch it (repeatable)")
    g.add_argument("--wait", action="store_true", help="wait until the AMI is available")
    g.add_argument("--wait-timeout", type=float, default=900, metavar="SECONDS", help="(default: %(default)s)")


# --------------------------------------------------------------------------- shared plumbing


def _attempts(args: argparse.Namespace) -> int:
    return RETRY_ATTEMPTS if getattr(args, "retry", False) else DEFAULT_ATTEMPTS


def _jobs(args: argparse.Namespace) -> int:
    jobs = getattr(args, "jobs", DEFAULT_JOBS)
    if jobs is None or jobs < 1 or jobs > 256:
        raise UsageError("--jobs must be between 1 and 256")
    return jobs


class _Aws:
    """Lazily made session and clients for one command, in the bucket's region."""

    def __init__(self, args: argparse.Namespace, printer: Printer) -> None:
        self.opts: AwsOptions = options_from_args(args, printer.warn)
        self.session = make_session(self.opts)
        self.jobs = _jobs(args) if hasattr(args, "jobs") else DEFAULT_JOBS

    def s3(self, bucket: str, *, region: str | None = None) -> Any:
        return s3_client(self.opts, session=self.session, bucket=bucket, region=region, pool=self.jobs + 4)

    def s3_in_bucket_region(self, bucket: str, *, must_exist: bool = True) -> tuple[Any, str | None]:
        """A client in the bucket's region; an explicit --region that disagrees is an error,
        because the AMI must later be registered in the bucket's region."""
        client = self.s3(bucket)
        region = bucket_region(client, bucket)
        if region is None:
            if must_exist:
                raise S3Error(f"bucket {bucket} does not exist (check -b, --region and --endpoint-url)")
            return client, None
        if region != client.meta.region_name:
            if self.opts.region:
                raise S3Error(f"bucket {bucket} is in region {region}, not {self.opts.region}: pass --region {region}")
            log.info("bucket %s is in %s; using that region", bucket, region)
            client = self.s3(bucket, region=region)
        return client, region

    def ec2(self, region: str | None) -> Any:
        return ec2_client(self.opts, session=self.session, region=region)


def _confirm(question: str, printer: Printer, args: argparse.Namespace) -> bool:
    if getattr(args, "yes", False) or getattr(args, "batch", False):
        return True
    if not sys.stdin.isatty():
        raise UsageError("refusing to delete without confirmation on a non-interactive input: pass -y/--yes")
    printer.stderr.write(f"{question} [y/N] ")
    printer.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# --------------------------------------------------------------------------- upload-bundle


def run_upload_bundle(args: argparse.Namespace, printer: Printer) -> int:
    location = S3Location.parse(args.bucket)
    if args.part is not None and args.part < 0:
        raise UsageError("--part must be 0 or more")
    aws = _Aws(args, printer)
    region = location_region(args.location) if args.location else None
    if region and aws.opts.region and region != aws.opts.region:
        raise UsageError(f"--location {args.location} is in {region} but --region is {aws.opts.region}")
    client, at = aws.s3_in_bucket_region(location.bucket, must_exist=False)
    created = False
    if at is None:
        if region and region != client.meta.region_name:
            client = aws.s3(location.bucket, region=region)
        created = ensure_bucket(client, location.bucket, location=args.location)
        if created:
            printer.note(f"Created bucket {location.bucket} in {region or client.meta.region_name}")
    elif args.location:
        ensure_bucket(client, location.bucket, location=args.location)  # raises on a location conflict
    result = upload_bundle(client, location, args.manifest, directory=args.directory, acl=args.acl,
                           jobs=aws.jobs, attempts=_attempts(args), start_part=args.part,
                           skip_manifest=args.skipmanifest, resume=not args.no_resume, progress=printer.progress())
    result.bucket_created = created
    human = []
    if result.parts_skipped:
        human.append(f"Skipped {_plural(result.parts_skipped, 'part')} already uploaded")
    human.append(f"Uploaded {_plural(result.parts_uploaded, 'part')} ({result.bytes_uploaded} bytes) "
                 f"in {result.seconds:.2f}s")
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
            raise UsageError("-m/--manifest is the manifest's object name (no '/'): put the key prefix in -b")
        return args.manifest
    return f"{args.prefix or 'image'}.manifest.xml"


def run_download_bundle(args: argparse.Namespace, printer: Printer) -> int:
    from ..keys import load_private_key, load_public_key

    location = S3Location.parse(args.bucket)
    name = _manifest_object_name(args)
    private_key = load_private_key(args.privatekey) if args.privatekey else None
    verify_key = None
    if not args.no_verify:
        if args.cert:
            verify_key = load_public_key(args.cert)
        elif private_key is not None:
            verify_key = private_key.public_key()
    aws = _Aws(args, printer)
    client, _ = aws.s3_in_bucket_region(location.bucket)
    result = download_bundle(client, location, name, args.directory, private_key=private_key,
                             verify_key=verify_key, jobs=aws.jobs, attempts=_attempts(args),
                             progress=printer.progress())
    human = [f"Downloaded {_plural(result.parts_downloaded, 'part')} ({result.bytes_downloaded} bytes) "
             f"in {result.seconds:.2f}s" + (f", {result.parts_skipped} already present" if result.parts_skipped else ""),
             f"Every part matches the manifest{' (signature verified)' if result.verified_signature else ''}",
             f"Manifest: {result.manifest_path}"]
    if result.plaintext_path:
        human.append(f"Decrypted manifest: {result.plaintext_path}")
    printer.result(result.summary(), human)
    return 0


# --------------------------------------------------------------------------- delete-bundle


def run_delete_bundle(args: argparse.Namespace, printer: Printer) -> int:
    location = S3Location.parse(args.bucket)
    if not args.manifest and not args.prefix:
        raise UsageError("delete-bundle needs -m MANIFEST or -p PREFIX")
    aws = _Aws(args, printer)
    client, _ = aws.s3_in_bucket_region(location.bucket)
    if args.manifest:
        local = Path(args.manifest)
        name = local.name
        if local.is_file():
            from ..api import read_manifest

            parsed = read_manifest(local, args.privatekey)
        else:
            if "/" in args.manifest:
                raise UsageError(f"{args.manifest} is not a local file; to use the object, give its name "
                                 "(no '/') and put the key prefix in -b")
            from ..keys import load_private_key

            key = load_private_key(args.privatekey) if args.privatekey else None
            parsed, _, _ = load_remote_manifest(client, location, name, private_key=key)
        plan = plan_delete(client, location, manifest=(name, parsed))
    else:
        plan = plan_delete(client, location, name=args.prefix)

    data: dict[str, Any] = {"bucket": location.bucket, "keys": plan.keys, "missing": plan.missing,
                            "dry_run": bool(args.dry_run), "deleted": 0, "bucket_deleted": False}
    if not plan.keys:
        human = [f"Nothing to delete in {location.url()}"]
        if args.clear and not args.dry_run:
            data["bucket_deleted"] = delete_bucket_if_empty(client, location.bucket)
            human.append(f"Deleted bucket {location.bucket}" if data["bucket_deleted"]
                         else f"Bucket {location.bucket} is not empty: kept")
        printer.result(data, human)
        return 0
    if plan.missing:
        printer.note(f"{_plural(len(plan.missing), 'object')} named by the manifest are not in S3 (already deleted?)")
    if args.dry_run:
        printer.result(data, [f"Would delete s3://{location.bucket}/{k}" for k in plan.keys]
                       + [f"{_plural(len(plan.keys), 'object')} would be deleted (dry run)"])
        return 0
    if not (args.yes or args.batch):
        for key in plan.keys:
            printer.note(f"  s3://{location.bucket}/{key}")
    if not _confirm(f"Delete {_plural(len(plan.keys), 'object')} from s3://{location.bucket}?", printer, args):
        printer.result(data, "Nothing deleted.")
        return 1
    data["deleted"] = delete_keys(client, location.bucket, plan.keys, attempts=_attempts(args))
    human = [f"Deleted {_plural(data['deleted'], 'object')} from s3://{location.bucket}/{location.prefix}"]
    if args.clear:
        data["bucket_deleted"] = delete_bucket_if_empty(client, location.bucket)
        human.append(f"Deleted bucket {location.bucket}" if data["bucket_deleted"]
                     else f"Bucket {location.bucket} is not empty: kept")
    printer.result(data, human)
    return 0


# --------------------------------------------------------------------------- register / deregister


def _register_options(args: argparse.Namespace, name: str, *, full: bool) -> Any:
    from ..ec2 import (
        RegisterOptions,
        parse_launch_permissions,
        parse_register_block_device_mappings,
        parse_tags,
    )

    return RegisterOptions(
        name=name,
        description=args.description,
        architecture=getattr(args, "architecture", None) if full else None,
        virtualization_type=args.virtualization_type,
        kernel_id=getattr(args, "kernel", None) if full else None,
        ramdisk_id=getattr(args, "ramdisk", None) if full else None,
        block_device_mappings=parse_register_block_device_mappings(args.block_device_mapping) if full else [],
        ena_support=args.ena_support,
        sriov_net_support=args.sriov_net_support,
        boot_mode=args.boot_mode,
        tags=parse_tags(args.tag),
        launch_permissions=parse_launch_permissions(args.launch_permission),
    )


def _register_and_report(aws: _Aws, region: str | None, image_location: str, options: Any,
                         args: argparse.Namespace, extra: dict[str, Any], printer: Printer,
                         human: list[str]) -> int:
    from ..ec2 import register_image, wait_available

    ec2 = aws.ec2(region)
    image_id = register_image(ec2, image_location, options)
    state = None
    if args.wait:
        state = wait_available(ec2, image_id, timeout=args.wait_timeout)
    data = {**extra, "image_id": image_id, "image_location": image_location, "name": options.name,
            "region": ec2.meta.region_name, "state": state}
    printer.result(data, [*human, f"Registered {image_id} ({options.name}) in {ec2.meta.region_name}"
                          + (f": {state}" if state else ""), image_id])
    return 0


def run_register(args: argparse.Namespace, printer: Printer) -> int:
    from ..ec2 import normalize_image_location, preflight

    image_location = normalize_image_location(args.location)
    location, _ = split_manifest_location(image_location)
    options = _register_options(args, args.name, full=True)
    aws = _Aws(args, printer)
    client, bucket_at = aws.s3_in_bucket_region(location.bucket)
    region = aws.opts.region or bucket_at
    extra: dict[str, Any] = {}
    if not args.no_preflight:
        report = preflight(client, image_location, region=region)
        if options.architecture is None and report.manifest.arch:
            options.architecture = report.manifest.arch
        extra["preflight"] = report.summary()
    return _register_and_report(aws, region, image_location, options, args, extra, printer, [])


def run_deregister(args: argparse.Namespace, printer: Printer) -> int:
    from ..ec2 import deregister_image, describe_image, image_location_of

    aws = _Aws(args, printer)
    ec2 = aws.ec2(None)
    image_location = None
    if args.delete_bundle:
        image_location = args.bundle_location or image_location_of(describe_image(ec2, args.image_id))
        if not image_location:
            raise UsageError(f"{args.image_id} has no ImageLocation (not an instance-store AMI?): "
                             "pass --location BUCKET/PREFIX/NAME.manifest.xml to delete its bundle")
    else:
        describe_image(ec2, args.image_id)  # a clear "not found" before the delete call
    deregister_image(ec2, args.image_id)
    data: dict[str, Any] = {"image_id": args.image_id, "deregistered": True, "image_location": image_location,
                            "deleted": 0}
    human = [f"Deregistered {args.image_id}"]
    if image_location:
        location, name = split_manifest_location(image_location)
        client, _ = aws.s3_in_bucket_region(location.bucket)
        try:
            parsed, _, _ = load_remote_manifest(client, location, name)
            plan = plan_delete(client, location, manifest=(name, parsed))
        except ManifestError as exc:
            raise S3Error(f"deregistered {args.image_id}, but cannot read its bundle to delete it: {exc}") from None
        data["deleted"] = delete_keys(client, location.bucket, plan.keys, attempts=_attempts(args))
        human.append(f"Deleted {_plural(data['deleted'], 'object')} of {image_location}")
    printer.result(data, human)
    return 0


# --------------------------------------------------------------------------- unbundle --from-s3


def unbundle_from_s3(args: argparse.Namespace, printer: Printer) -> Any:
    """``unbundle --from-s3 -m BUCKET/PREFIX/NAME.manifest.xml``: S3 → image, no parts on disk."""
    from ..keys import load_private_key, load_public_key
    from ..pipeline import unbundle

    location, name = split_manifest_location(str(args.manifest))
    private_key = load_private_key(args.privatekey)
    verify_key = load_public_key(args.cert) if getattr(args, "cert", None) else None
    aws = _Aws(args, printer)
    client, _ = aws.s3_in_bucket_region(location.bucket)
    parsed, _, _ = load_remote_manifest(client, location, name, private_key=private_key)
    source = S3PartSource(client, location.bucket, location.prefix, jobs=aws.jobs, attempts=_attempts(args))
    return unbundle(parsed, source, Path(args.destination), private_key, verify_key=verify_key,
                    overwrite=getattr(args, "force", False), progress=printer.progress())


# --------------------------------------------------------------------------- install


def run_install(args: argparse.Namespace, printer: Printer) -> int:
    from ..pipeline import bundle
    from .core import bundle_inputs

    if getattr(args, "regions", None):
        from .regions import run_install_regions

        return run_install_regions(args, printer)
    if getattr(args, "bucket_template", None) or getattr(args, "region_endpoint", None):
        raise UsageError("--bucket-template and --region-endpoint go with --regions")
    if not args.bucket or len(args.bucket) != 1:
        raise UsageError("install needs one -b BUCKET[/PREFIX] (or --regions R1,R2 with --bucket-template "
                         "or -b REGION=BUCKET per region)")
    location = S3Location.parse(args.bucket[0])
    aws = _Aws(args, printer)
    region = location_region(args.location) if args.location else None
    if region and aws.opts.region and region != aws.opts.region:
        raise UsageError(f"--location {args.location} is in {region} but --region is {aws.opts.region}")
    # Everything that can fail cheaply (credentials, bucket, flags) fails before bundling.
    client, at = aws.s3_in_bucket_region(location.bucket, must_exist=False)
    if at is None:
        if region and region != client.meta.region_name:
            client = aws.s3(location.bucket, region=region)
        if ensure_bucket(client, location.bucket, location=args.location):
            printer.note(f"Created bucket {location.bucket} in {client.meta.region_name}")
        at = client.meta.region_name
    elif args.location:
        ensure_bucket(client, location.bucket, location=args.location)
    options = None
    if not args.no_register:
        options = _register_options(args, args.name or "", full=False)
    source, keys, bundle_options = bundle_inputs(args, printer)
    if options is not None and not options.name:
        options.name = bundle_options.name
    progress = printer.progress()
    sink = S3Sink(client, location.bucket, location.prefix, acl=args.acl, jobs=aws.jobs,
                  attempts=_attempts(args), progress=progress)
    result = bundle(source, sink, keys, bundle_options, progress)
    image_location = location.image_location(result.manifest_name)
    data: dict[str, Any] = {**result.summary(), "image_location": image_location,
                            "bytes_uploaded": sink.bytes_uploaded}
    human = [f"Bundled and uploaded {result.manifest.name}: {result.size} bytes → "
             f"{_plural(len(result.part_names), 'part')}, {result.bundled_size} bytes in {result.seconds:.2f}s",
             f"Manifest uploaded to: {image_location}"]
    if options is None:
        printer.result(data, human)
        return 0
    # The EC2 region follows the bucket's region unless --region says otherwise.
    return _register_and_report(aws, aws.opts.region or at, image_location, options, args, data, printer, human)
