"""Shared by ``check``, ``boot-test`` and the commands that check what they build: the
SOURCE options (directory, image, local or S3 bundle) and the findings table."""

from __future__ import annotations

import argparse
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BundlerError, UsageError
from .common import Printer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from ..parts import PartSource
from .context import AwsContext, add_aws_options, add_jobs_option


class CheckFailed(BundlerError):
    """The check found errors (the findings were printed)."""


def add_source_options(p: argparse.ArgumentParser, *, what: str) -> None:
    p.add_argument("source", nargs="?", type=Path,
                   help=f"root filesystem directory or disk image to {what} (or -m MANIFEST)")
    g = p.add_argument_group("bundle source (instead of SOURCE)")
    g.add_argument("-m", "--manifest",
                   help="bundle manifest (BUCKET/PREFIX/NAME.manifest.xml with --from-s3)")
    g.add_argument("-k", "--privatekey", type=Path,
                   help="user private key that decrypts the bundle")
    g.add_argument("-c", "--cert", type=Path,
                   help="certificate to verify the manifest with (default: public half of -k)")
    g.add_argument("-s", "--parts", dest="parts_dir", type=Path,
                   help="directory with the parts (default: the manifest's)")
    g.add_argument("--from-s3", action="store_true", help="read the bundle from S3")
    g.add_argument("--work-dir", type=Path,
                   help="where a bundle's image is unpacked (and boot-test's overlay made), "
                        "privately, while it is read (default: $TMPDIR)")
    a = add_aws_options(p, credentials=False, title="S3 (with --from-s3)",
                        region_help="AWS region of the bucket")
    add_jobs_option(a, help="parts fetched in parallel (default: %(default)s)")


def _bundle_inputs(args: argparse.Namespace, printer: Printer) -> tuple[Any, Any, Any, Any]:
    """(parsed manifest, part source, private key, verify key) of -m/-k [--from-s3]."""
    from ..keys import load_private_key, load_public_key

    if args.privatekey is None:
        raise UsageError("a bundle source (-m) needs -k PRIVATEKEY to decrypt it")
    private_key = load_private_key(args.privatekey)
    verify_key = load_public_key(args.cert) if args.cert else None
    if args.from_s3:
        from ..s3 import S3PartSource, load_remote_manifest, split_manifest_location

        location, name = split_manifest_location(str(args.manifest), "-m")
        aws = AwsContext(args, printer)
        client, _ = aws.s3_in_bucket_region(location.bucket)
        parsed, _, _ = load_remote_manifest(client, location, name, private_key=private_key)
        source: PartSource = S3PartSource(client, location, transfer=aws.transfer)
    else:
        from .. import api
        from ..dirsource import DirectorySource

        manifest = Path(args.manifest)
        parsed = api.read_manifest(manifest, args.privatekey)
        source = DirectorySource(args.parts_dir or manifest.parent)
    return parsed, source, private_key, verify_key


def _check_exclusive(args: argparse.Namespace) -> None:
    if args.source is not None and args.manifest:
        raise UsageError("give either SOURCE or -m MANIFEST, not both")
    if args.source is None and not args.manifest:
        raise UsageError("give a SOURCE (directory or image) or -m MANIFEST -k KEY")
    if args.from_s3 and not args.manifest:
        raise UsageError("--from-s3 needs -m BUCKET/PREFIX/NAME.manifest.xml")


@contextlib.contextmanager
def open_source_tree(args: argparse.Namespace, printer: Printer) -> Iterator[Any]:
    """The Tree of SOURCE or of the bundle (unpacked privately, removed on exit)."""
    from ..check.sources import bundle_tree, open_tree

    _check_exclusive(args)
    if args.source is not None:
        with open_tree(args.source) as tree:
            yield tree
        return
    parsed, source, key, verify_key = _bundle_inputs(args, printer)
    with bundle_tree(parsed, source, key, verify_key=verify_key, work_dir=args.work_dir,
                     progress=printer.progress()) as tree:
        yield tree


@contextlib.contextmanager
def open_source_image(args: argparse.Namespace, printer: Printer) -> Iterator[Path]:
    """The image file of SOURCE or of the bundle (unpacked privately, removed on exit)."""
    from ..check.sources import unbundled_image

    _check_exclusive(args)
    if args.source is not None:
        if not Path(args.source).is_file():
            raise UsageError(f"{args.source} is not an image file")
        yield Path(args.source)
        return
    parsed, source, key, verify_key = _bundle_inputs(args, printer)
    with unbundled_image(parsed, source, key, verify_key=verify_key, work_dir=args.work_dir,
                         progress=printer.progress()) as image:
        yield image


# ------------------------------------------------------------------------------ output

_MARK = {"error": "ERROR", "warning": "WARN", "note": "note"}


def report_lines(report: Any, *, tty: bool, width: int = 100) -> list[str]:
    """The findings as a table (on a terminal) or as one line each (for logs and pipes)."""
    findings = report.findings
    lines: list[str] = []
    if tty and findings:
        idw = max(len(f.id) for f in findings)
        pathw = min(max(len(f.path or "-") for f in findings), 36)
        lines.append(f"{'SEVERITY':8} {'ID':{idw}} {'PATH':{pathw}} MESSAGE")
        for f in findings:
            path = f.path or "-"
            if len(path) > pathw:
                path = "…" + path[-(pathw - 1):]
            lines.append(f"{_MARK[f.severity]:8} {f.id:{idw}} {path:{pathw}} {f.message}")
            lines.append(f"{'':8} {'':{idw}} {'':{pathw}} fix: {f.fix}")
    else:
        for f in findings:
            lines.append(f"{f.severity}: {f.id}: {f.path or '-'}: {f.message} (fix: {f.fix})")
    c = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "note")}
    verdict = "no errors" if report.ok else "NOT READY"
    lines.append(f"{report.source}: {verdict}: {c['error']} error(s), {c['warning']} warning(s), "
                 f"{c['note']} note(s) in {report.entries} entries ({report.seconds:.1f} s)")
    return lines


def print_report(report: Any, printer: Printer) -> None:
    tty = printer.stdout.isatty()
    width = shutil.get_terminal_size((100, 20)).columns
    printer.result(report.summary(), report_lines(report, tty=tty, width=width))


def warn_findings(report: Any, printer: Printer, *, what: str) -> None:
    """For commands that check what they build: findings as warnings on stderr."""
    for f in report.findings:
        if f.severity != "note":
            printer.warn(f"{what}: {f.id}: {f.path or '-'}: {f.message} (fix: {f.fix})")


# ------------------------------------------------------------------------------ gates

def add_no_check_option(p: argparse._ActionsContainer, *, what: str) -> None:
    p.add_argument("--no-check", action="store_true",
                   help=f"do not stop on errors found by the checks of {what} (ami-bundler check)")


def check_image_file(image: Path, printer: Printer, *, what: str, no_check: bool,
                     boot: bool = True, public: bool = False, stop: bool = True,
                     built_here: bool = False) -> Any:
    """Run ``check``'s rules on an image this command builds or ships, print the findings as
    warnings, and raise CheckFailed on an error unless ``no_check`` (or not ``stop``).
    An image check cannot read (not ext2/3/4) is a warning, not a failure. ``built_here``:
    the command made the image itself (bundle-vol), so an XFS/btrfs one may be mounted
    read-only to be checked (never an image from elsewhere)."""
    from ..check import check_tree
    from ..check.debugfs import CheckSourceError, ImageTree

    try:
        try:
            with ImageTree(image) as tree:
                report = check_tree(tree, public=public, boot=boot, share=public)
        except CheckSourceError:
            if not built_here:
                raise
            from ..check.mounted import mounted_tree

            with mounted_tree(image) as mtree:
                report = check_tree(mtree, public=public, boot=boot, share=public)
    except CheckSourceError as exc:
        printer.warn(f"{what}: not checked: {exc}")
        return None
    warn_findings(report, printer, what=what)
    errors = report.errors()
    if errors and stop and not no_check:
        first = errors[0]
        raise CheckFailed(f"{what}: {len(errors)} check error(s), first: {first.id}: "
                          f"{first.message} (fix: {first.fix}); pass --no-check to go on anyway")
    return report


def going_public(args: argparse.Namespace) -> bool:
    return any(p.strip().lower() == "all" for p in getattr(args, "launch_permission", []) or [])


def check_install_image(args: argparse.Namespace, printer: Printer) -> None:
    """install: the boot rules on the image it bundles, and the sharing rules as errors too
    when it will be public (--launch-permission all)."""
    image = getattr(args, "image", None)
    public = going_public(args)
    if image in (None, "-"):
        if public and not args.no_check:
            raise UsageError("--launch-permission all: an image on standard input cannot be "
                             "checked before it is made public; give a file or pass --no-check")
        return
    check_image_file(Path(image), printer, what="install", no_check=args.no_check,
                     public=public)


def check_registered_bundle(args: argparse.Namespace, printer: Printer, client: S3Client,
                            image_location: str) -> None:
    """register --launch-permission all -k KEY: the sharing rules on the bundle in S3 first."""
    if not going_public(args) or args.no_check:
        return
    if args.privatekey is None:
        printer.warn("register: the image is made public unchecked: pass -k PRIVATEKEY to check "
                     "it first (ami-bundler check --public)")
        return
    from ..check import check_tree
    from ..check.sources import bundle_tree
    from ..keys import load_private_key
    from ..s3 import S3PartSource, load_remote_manifest, split_manifest_location

    location, name = split_manifest_location(image_location)
    key = load_private_key(args.privatekey)
    parsed, _, _ = load_remote_manifest(client, location, name, private_key=key)
    source = S3PartSource(client, location)
    printer.note(f"checking {image_location} before making it public ...")
    with bundle_tree(parsed, source, key, work_dir=args.work_dir,
                     progress=printer.progress()) as tree:
        report = check_tree(tree, public=True, boot=False)
    warn_findings(report, printer, what="register")
    errors = report.errors()
    if errors:
        raise CheckFailed(f"register: {len(errors)} error(s) for a public AMI, first: "
                          f"{errors[0].id}: {errors[0].path or '-'}: {errors[0].message}; "
                          "nothing was registered (pass --no-check to register anyway)")
