"""``publish PLAN.toml``: one image to every region × account of a plan, doing only what is
missing (``bundler.publish``; every key of a plan in docs/publish.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..errors import BundlerError, UsageError
from ..transfer import COPY_MODES
from .common import Printer, count
from .context import AwsContext, add_acl_options, add_aws_options, add_transfer_options

EXIT_CHANGES = 2  # --dry-run: the plan has changes (terraform plan -detailed-exitcode)

EPILOG = """\
exit codes: 0 every target is done (with --dry-run: nothing to do); with --dry-run, 2 means
"there are changes" (as terraform plan -detailed-exitcode) — and 2 is also the usage-error
code, so CI telling them apart reads the --json/--report output (a usage error has none).
A target not done: the exit code of its error (the first such target in plan order): 1 it
holds another image (refused), 3 S3, 4 EC2 or the account; see the report.
Every key of a plan: docs/publish.md; a complete plan: examples/publish.toml."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "publish",
        help="publish one image to every region and account of a plan (idempotent)",
        description="Bundle the plan's image once, copy it to every (account, region) target, "
        "register, share, tag and deprecate it there; a re-run does only what is missing, "
        "read from AWS itself (no state file).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("plan", type=Path, metavar="PLAN.toml", help="the publish plan")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be bundled, copied, registered, shared and tagged per target; "
        "exit 0 if nothing, 2 if something (see below)",
    )
    p.add_argument(
        "--report", type=Path, metavar="FILE", help="write the JSON report here (also on failure)"
    )
    p.add_argument(
        "--max-regions",
        type=count(1, 64, "target count"),
        default=None,
        metavar="N",
        help="targets worked on at once (default: 4 bundled to or streamed to, and every "
        "server-side copy and registration at once: those cost this host nothing)",
    )
    p.add_argument("-c", "--cert", type=Path, help="user certificate (default: the plan's)")
    p.add_argument("-k", "--privatekey", type=Path, help="user private key (default: the plan's)")
    p.add_argument("--ec2cert-dir", type=Path, help="directory holding cert-ec2*.pem")
    p.add_argument(
        "--copy-mode",
        choices=COPY_MODES,
        default="auto",
        help="how targets after the first get the bundle (default: auto)",
    )
    p.add_argument(
        "--region-endpoint",
        action="append",
        default=[],
        metavar="REGION=URL",
        help="endpoint URL for one region's S3 and EC2 (repeatable)",
    )
    add_transfer_options(p, jobs_help="parallel part transfers per target (default: %(default)s)")
    add_acl_options(p)
    add_aws_options(p, region_help="region of STS for assuming roles (default: the plan's first)")
    p.set_defaults(func=run_publish, finish_hint=_finish_hint)


def _finish_hint(args: argparse.Namespace) -> str:
    """A publish interrupted once a region's bundle was published is finished by publishing
    the same plan again: what is there is kept and only what is missing is done."""
    return ("run the same publish again: it keeps what is published and registers what is "
            "missing")


def write_report(path: Path, data: dict[str, Any]) -> None:
    """Atomically (bundler.newfiles): a reader sees the old report or the whole new one."""
    from ..errors import OutputError
    from ..newfiles import write_new_file

    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    try:
        write_new_file(Path(path), text.encode("utf-8"), 0o644, replace=True, umask=True)
    except OSError as exc:
        raise OutputError(f"cannot write the report {path}: {exc.strerror or exc}") from None


def _endpoints(args: argparse.Namespace, regions: tuple[str, ...]) -> dict[str, str]:
    from ..aws import endpoint_url_value

    out: dict[str, str] = {}
    for pair in args.region_endpoint:
        region, sep, url = pair.partition("=")
        if not sep or region not in regions:
            raise UsageError(f"--region-endpoint {pair!r}: expected REGION=URL for a region of "
                             "the plan")
        out[region] = endpoint_url_value(url.strip(), "--region-endpoint") or ""
    return out


def run_publish(args: argparse.Namespace, printer: Printer) -> int:
    from ..publish.plan import load_plan

    plan = load_plan(args.plan)
    report: dict[str, Any] = {"plan": plan.name, "done": False, "targets": [
        {"account": t.account.id, "region": t.region, "state": "pending", "image_id": None,
         "image_location": None, "error": None, "changes": []} for t in plan.targets]}
    try:
        result = _publish(args, printer, plan)
    except BaseException as exc:
        if args.report is not None:
            message = str(exc) if isinstance(exc, BundlerError) else (
                "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}")
            for t in report["targets"]:
                t.update(state="failed", error=message)
            report["error"] = message
            write_report(args.report, report)
        raise
    data = result.summary()
    if args.report is not None:
        write_report(args.report, data)
    printer.result(data, _human(result))
    for r in result.incomplete:
        printer.warn(f"{r.label}: {r.error}")
    if result.incomplete:
        printer.warn(f"{len(result.incomplete)} of {len(result.results)} target(s) not done; "
                     "re-run the same command to complete them")
        return next(r.exit_code or 1 for r in result.incomplete)
    if args.dry_run:
        return EXIT_CHANGES if result.has_changes else 0
    return 0


def _compact(changes: list[str]) -> str:
    """``bundle, register, share 333333333333, tag ×4, protect``: one line per target (--json
    and --report have every detail)."""
    if not changes:
        return "-"
    kinds: dict[str, list[str]] = {}
    for change in changes:
        kind, _, detail = change.partition(" ")
        kinds.setdefault(kind, []).append(detail)
    out = []
    for kind, details in kinds.items():
        if kind == "copy" or (kind == "share" and len(details) <= 2):
            out.append(f"{kind} {', '.join(details)}")
        elif kind in ("tag", "share"):
            out.append(f"{kind} ×{len(details)}")
        else:
            out.append(kind)
    return ", ".join(out)


def _human(result: Any) -> list[str]:
    what = "would publish" if result.dry_run else "published"
    lines = [f"plan {result.plan}: {what} generation {result.generation}"
             + (" (completing it)" if result.existing_generation else " (new)")]
    rows = [("TARGET", "STATE", "AMI", "CHANGES" if result.dry_run else "DONE")]
    for r in result.results:
        changes = _compact(r.changes)
        rows.append((r.label, r.state, r.image_id or "-", changes))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines += ["  ".join([*(c.ljust(widths[i]) for i, c in enumerate(row[:3])), row[3]]).rstrip()
              for row in rows]
    if result.dry_run and not result.has_changes and not result.incomplete:
        lines.append("No changes: every target is up to date.")
    return lines


def _publish(args: argparse.Namespace, printer: Printer, plan: Any) -> Any:
    from .. import ec2certs
    from ..aws import ec2_client, s3_client
    from ..bundlerun import BundleKeys
    from ..images import open_source
    from ..keys import load_public_key
    from ..publish.accounts import open_accounts
    from ..publish.engine import Connection, PublishOptions, RegionKey, publish
    from ..publish.plan import publish_time

    cert = args.cert or plan.keys.cert
    private_key = args.privatekey or plan.keys.private_key
    if cert is None or private_key is None:
        raise UsageError("the plan's [bundle] has no cert/private_key: pass -c and -k")
    cert_dir = args.ec2cert_dir or plan.keys.ec2cert_dir
    chosen = {r: ec2certs.find(r, cert_dir=cert_dir) for r in plan.regions}
    region_keys = {r: RegionKey(load_public_key(c.path), str(c.path)) for r, c in chosen.items()}
    keys = BundleKeys.load(cert, private_key, chosen[plan.regions[0]])
    endpoints = _endpoints(args, plan.regions)
    when = publish_time(os.environ)

    aws = AwsContext(args, printer)
    opened = open_accounts(aws.session, plan.accounts, aws.opts,
                           region=aws.opts.region or plan.regions[0])
    connections: dict[str, Connection] = {}
    unreachable: dict[str, BaseException | str] = {}
    for t in plan.targets:
        if t.account.id in opened.failed:
            unreachable[t.label] = opened.failed[t.account.id]
            continue
        session = opened.sessions[t.account.id].session
        opts = aws.opts
        if t.region in endpoints:
            opts = dataclasses.replace(opts, endpoint_url=endpoints[t.region])
        connections[t.label] = Connection(
            s3=s3_client(opts, session=session, bucket=t.bucket, region=t.region,
                         pool=aws.transfer.pool_size),
            ec2=ec2_client(opts, session=session, region=t.region),
            endpoint=opts.endpoint_url)
    # A directory is fingerprinted by the engine and imaged only when a target needs it.
    source = None if plan.source.image is None else open_source(
        plan.source.image, name=plan.bundle_name, fmt=plan.source.format,
        allow_backing=plan.source.allow_backing_file)
    options = PublishOptions(
        dry_run=args.dry_run, max_regions=args.max_regions, transfer=aws.transfer,
        copy_mode=args.copy_mode, enable_bucket_acls=args.enable_bucket_acls,
        notify=lambda label, what: printer.note(f"{label}: {what}"))
    return publish(plan, source=source, keys=keys, region_keys=region_keys,
                   connections=connections, unreachable=unreachable, options=options, when=when)
