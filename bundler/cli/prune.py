"""prune: retention for a publish plan — deregister the older generations of its AMIs in every
(account, region) and delete their bundles (bundler.publish.prune)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import BundlerError, UsageError
from .common import Printer, count, plural
from .context import AwsContext, add_aws_options, add_retry_option

if TYPE_CHECKING:
    from ..publish.prune import PruneReport, TargetResult

DRY_RUN_CHANGES = 2  # as `terraform plan -detailed-exitcode` (and `publish --dry-run`)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "prune", help="deregister a plan's older generations and delete their bundles",
        description="Keep the newest generations of a publish plan's AMIs in every account and "
        "region; deregister the older ones and delete their bundles. A bundle another "
        "registered AMI uses is kept, and so is an AMI with deregistration protection. "
        "Run with --dry-run first: exit 0 = nothing to do, 2 = something would change.")
    p.add_argument("--plan", required=True, metavar="PLAN.toml", help="the publish plan")
    p.add_argument("--keep", type=count(1, what="--keep"), metavar="N",
                   help="generations to keep, newest first (default 1 with --older-than)")
    p.add_argument("--older-than", type=float, metavar="DAYS", dest="older_than",
                   help="remove only generations created more than DAYS ago (the newest "
                   "--keep stay in any case)")
    p.add_argument("--dry-run", action="store_true",
                   help="change nothing: show what would go and the S3 bytes it would free")
    add_retry_option(p)
    add_aws_options(p, region_help="where STS is asked for the plan's roles (default: the "
                    "plan's first region); the plan names the regions pruned")
    p.set_defaults(func=run_prune)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def run_prune(args: argparse.Namespace, printer: Printer) -> int:
    from ..publish.accounts import open_accounts
    from ..publish.plan import GENERATION_TAG, PLAN_TAG, load_plan
    from ..publish.prune import PruneReport, PruneTarget, Retention, TargetResult, prune

    if args.keep is None and args.older_than is None:
        raise UsageError("prune needs --keep N, --older-than DAYS, or both")
    retention = Retention(keep=args.keep or 1, older_than_days=args.older_than)
    plan = load_plan(args.plan)
    aws = AwsContext(args, printer)
    home = aws.opts.region or plan.regions[0]
    opened = open_accounts(aws.session, plan.accounts, aws.opts, region=home)
    targets: list[PruneTarget] = []
    unreachable: list[TargetResult] = []
    for target in plan.targets:
        account = opened.sessions.get(target.account.id)
        if account is None:
            error = opened.failed[target.account.id]
            unreachable.append(TargetResult(target.account.id, target.region, error=str(error),
                                            exit_code=error.exit_code))
        else:
            targets.append(PruneTarget(account.account_id, target.region, account.session,
                                       bucket=target.bucket, prefix=target.prefix,
                                       manifest_name=plan.manifest_name))
    report = prune(targets, plan=plan.name, retention=retention, opts=aws.opts,
                   plan_tag=PLAN_TAG, generation_tag=GENERATION_TAG, dry_run=args.dry_run,
                   warn=printer.warn, attempts=aws.attempts)
    report = PruneReport(report.plan, report.dry_run, unreachable + report.targets)
    printer.result(report.to_dict(), _human(report))
    for failed in report.failed:
        for line in _errors(failed):
            printer.warn(line)
    if report.failed:
        return _exit_code(report)
    return DRY_RUN_CHANGES if args.dry_run and report.changed else 0


def _exit_code(report: PruneReport) -> int:
    codes = [t.exit_code for t in report.failed if t.exit_code]
    return codes[0] if codes else BundlerError.exit_code


def _errors(target: TargetResult) -> list[str]:
    lines = [f"{target.label}: {target.error}"] if target.error else []
    lines += [f"{target.label}: {i.image_id}: {i.error}" for i in target.images if i.error]
    lines += [f"{target.label}: {b.image_location}: {b.error}" for b in target.bundles
              if b.error]
    return lines


def _human(report: PruneReport) -> list[str]:
    dry = report.dry_run
    lines: list[str] = []
    amis = bundles = 0
    for t in report.targets:
        if t.error:
            lines.append(f"{t.label}: FAILED")
            continue
        kept = ", ".join(t.kept) or "nothing"
        lines.append(f"{t.label}: keeps {kept}")
        for i in t.images:
            what = {"would-deregister": "would deregister", "deregistered": "deregistered",
                    "protected": "kept (deregistration protection is on)",
                    "failed": "FAILED to deregister"}[i.state]
            lines.append(f"  {i.image_id} {i.name}: {what}")
            amis += i.state in ("would-deregister", "deregistered")
        for b in t.bundles:
            size = f"{plural(b.objects, 'object')}, {_size(b.bytes)}"
            what = {"would-delete": f"would delete ({size})", "deleted": f"deleted ({size})",
                    "missing": "already gone",
                    "in-use": f"kept: used by {', '.join(b.kept_for)}",
                    "kept": "kept" + (f" for {', '.join(b.kept_for)}" if b.kept_for else "")
                    }[b.state]
            orphan = " (no AMI uses it)" if b.orphan else ""
            lines.append(f"  s3://{b.image_location}{orphan}: {what}")
            bundles += b.state in ("would-delete", "deleted")
    freed = _size(report.bytes_freed)
    if dry:
        lines.append(f"Dry run: would deregister {plural(amis, 'AMI')} and delete "
                     f"{plural(bundles, 'bundle')}, freeing {freed} of S3; nothing changed")
    else:
        lines.append(f"Deregistered {plural(amis, 'AMI')} and deleted "
                     f"{plural(bundles, 'bundle')} in {plural(len(report.targets), 'target')}; "
                     f"freed {freed} of S3")
    return lines
