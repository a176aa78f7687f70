"""The RegisterImage flags shared by ``register`` and ``install``, what they resolve to, and
the one way a command registers an AMI and reports it."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Printer, seconds
from .context import AwsContext


def add_register_options(p: argparse.ArgumentParser, *, full: bool) -> None:
    """``full``: also the flags that override the manifest (register reads a finished bundle;
    install writes the manifest itself from the bundle flags)."""
    g = p.add_argument_group("register")
    g.add_argument("--description", help="AMI description")
    if full:
        g.add_argument(
            "--architecture", choices=["i386", "x86_64", "arm64"], help="default: the manifest's"
        )
        g.add_argument("--kernel", help="kernel id (aki-…), overrides the manifest's")
        g.add_argument("--ramdisk", help="ramdisk id (ari-…), overrides the manifest's")
        g.add_argument(
            "--no-preflight", action="store_true", help="skip the S3 checks before RegisterImage"
        )
    g.add_argument("--virtualization-type", choices=["paravirtual", "hvm"])
    g.add_argument("--ena-support", action="store_true", default=None, help="enable ENA")
    g.add_argument("--sriov-net-support", choices=["simple"])
    g.add_argument("--boot-mode", choices=["legacy-bios", "uefi", "uefi-preferred"])
    g.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="tag the AMI (repeatable)"
    )
    g.add_argument(
        "--launch-permission",
        action="append",
        default=[],
        metavar="ACCOUNT|all|ARN",
        help="allow an account, all, an organization or an OU (arn:aws:organizations::…) to "
        "launch it (repeatable)",
    )
    g.add_argument(
        "--imds-support", choices=["v2.0"], help="instances launched from it require IMDSv2"
    )
    g.add_argument(
        "--deprecate-at",
        metavar="TIME",
        help="deprecate the AMI at TIME (ISO 8601, UTC by default)",
    )
    g.add_argument(
        "--deregistration-protection",
        action="store_true",
        help="turn on deregistration protection (DeregisterImage refused until it is off)",
    )
    g.add_argument("--wait", action="store_true", help="wait until the AMI is available")
    g.add_argument(
        "--wait-timeout",
        type=seconds,
        default=900,
        metavar="SECONDS",
        help="(default: %(default)s)",
    )


def register_options_from_args(args: argparse.Namespace, name: str, *, full: bool) -> Any:
    from ..ec2 import (
        RegisterOptions,
        parse_deprecate_at,
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
        block_device_mappings=parse_register_block_device_mappings(args.block_device_mapping)
        if full
        else [],
        ena_support=args.ena_support,
        sriov_net_support=args.sriov_net_support,
        boot_mode=args.boot_mode,
        tags=parse_tags(args.tag),
        launch_permissions=parse_launch_permissions(args.launch_permission),
        imds_support=args.imds_support,
        deprecate_at=parse_deprecate_at(args.deprecate_at) if args.deprecate_at else None,
        deregistration_protection=args.deregistration_protection,
    )


def register_and_report(
    aws: AwsContext,
    region: str | None,
    image_location: str,
    options: Any,
    args: argparse.Namespace,
    extra: dict[str, Any],
    printer: Printer,
    human: list[str],
) -> int:
    from ..ec2 import register_image, wait_available

    ec2 = aws.ec2(region)
    image_id = register_image(ec2, image_location, options)
    state = None
    if args.wait:
        state = wait_available(ec2, image_id, timeout=args.wait_timeout)
    data = {
        **extra,
        "image_id": image_id,
        "image_location": image_location,
        "ami_name": options.name,
        "region": ec2.meta.region_name,
        "state": state,
    }
    printer.result(
        data,
        [
            *human,
            f"Registered {image_id} ({options.name}) in {ec2.meta.region_name}"
            + (f": {state}" if state else ""),
            image_id,
        ],
    )
    return 0
