"""Re-targeting a bundle to another region: the target flags shared by migrate-manifest,
copy-bundle and install --regions, and what they resolve to (region, EC2 certificate, id
mapping, the user's keys)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .common import Printer

if TYPE_CHECKING:
    from ..ec2certs import EC2Certificate


def add_allow_unknown_region_option(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--allow-unknown-region",
        action="store_true",
        help="accept a well-formed region name this botocore does not list yet",
    )


def add_target_options(p: argparse.ArgumentParser, *, with_region: bool = True) -> None:
    g = p.add_argument_group("target region")
    if with_region:
        g.add_argument("--region", help="target region: selects its EC2 certificate")
    g.add_argument("--ec2cert", type=Path, help="target EC2 certificate (default: by region)")
    g.add_argument(
        "--ec2cert-dir",
        type=Path,
        help="directory holding cert-ec2*.pem (also $AMI_BUNDLER_EC2_CERT_DIR)",
    )
    g.add_argument("--kernel", help="new kernel id (aki-…), or 'none' to remove it")
    g.add_argument("--ramdisk", help="new ramdisk id (ari-…), or 'none' to remove it")
    g.add_argument(
        "--mapping-file", type=Path, help="CSV of source_id,target_id for kernel/ramdisk ids"
    )
    g.add_argument(
        "--no-mapping",
        action="store_true",
        help="no automatic kernel/ramdisk lookup (always the case: only "
        "--kernel/--ramdisk/--mapping-file map ids)",
    )
    add_allow_unknown_region_option(g)


def ec2_certificate_for(args: argparse.Namespace, region: str | None) -> EC2Certificate:
    from .. import ec2certs

    if args.ec2cert is None and not region:
        raise UsageError(
            "name the target: --region REGION (its EC2 certificate wraps the key) or --ec2cert PATH"
        )
    return ec2certs.find(region, ec2cert=args.ec2cert, cert_dir=args.ec2cert_dir)


def migration_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from ..migrate import KEEP, read_mapping_file

    return {
        "kernel_id": KEEP if args.kernel is None else args.kernel,
        "ramdisk_id": KEEP if args.ramdisk is None else args.ramdisk,
        "mapping": read_mapping_file(args.mapping_file) if args.mapping_file else {},
    }


def warn_kept_ids(printer: Printer, old: Any, new: Any, args: argparse.Namespace) -> None:
    if args.no_mapping:
        return
    for what, before, after in (
        ("kernel", old.kernel_id, new.kernel_id),
        ("ramdisk", old.ramdisk_id, new.ramdisk_id),
    ):
        if before and before == after:
            printer.warn(
                f"{what} {before} kept: AKI/ARI ids differ between regions and automatic "
                f"mapping is not implemented; pass --{what} ID or --mapping-file if the "
                "target region needs another"
            )


def load_user_keys(args: argparse.Namespace) -> tuple[Any, Any]:
    from ..keys import load_private_key, load_public_key

    return load_private_key(args.privatekey), load_public_key(args.cert)


def validated_region(args: argparse.Namespace, value: str | None, flag: str) -> str | None:
    from ..regions import validate_region

    if value is None:
        return None
    return validate_region(value, flag, allow_unknown=getattr(args, "allow_unknown_region", False))
