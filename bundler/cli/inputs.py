"""Bundle inputs: the flags that say what to bundle and how, and what they resolve to
(the image source, the keys, the bundle options).

bundle-image, bundle-vol and install take the same bundling flags; they are declared and
resolved only here, so the three commands cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import ec2certs
from ..bundlerun import BundleKeys, BundleOptions, BundleResult
from ..errors import UsageError
from ..images import FORMATS as IMAGE_FORMATS
from ..images import open_source, stdin_stream
from ..manifest import parse_block_device_mapping, parse_product_codes, validate_name
from ..source import ImageSource, StreamImageSource
from .common import account_id, count, detect_arch, require

CERT_REGION_HELP = "region whose EC2 certificate wraps the key (default: us-east-1's)"


# --------------------------------------------------------------------------- flags


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """-i/--image and --image-size: a file, or standard input of a stated size."""
    parser.add_argument(
        "-i",
        "--image",
        required=True,
        help="image file, or - for standard input (with --image-size)",
    )
    parser.add_argument(
        "--image-size",
        type=count(1, 1 << 62, "byte count"),
        help="bytes on standard input (required with -i -), or the decompressed size "
        "of a compressed image that does not record it (saves a read pass)",
    )
    parser.add_argument(
        "--image-format",
        choices=IMAGE_FORMATS,
        metavar="FORMAT",
        help=f"{' | '.join(IMAGE_FORMATS)} (default: by content)",
    )
    parser.add_argument(
        "--allow-backing-file",
        action="store_true",
        help="read a qcow2 image's backing files (only from the image's directory)",
    )


def add_cert_region_option(parser: argparse._ActionsContainer) -> None:
    """--region for commands that only bundle: it picks the EC2 certificate, nothing else."""
    parser.add_argument("--region", help=CERT_REGION_HELP)


def add_bundle_options(parser: argparse.ArgumentParser, *, image_flag: bool) -> None:
    """The classic bundling flags shared by bundle-image, bundle-vol and install (spec §9.2)."""
    g = parser.add_argument_group("bundle")
    g.add_argument(
        "-c", "--cert", type=Path, help="user X.509 certificate (PEM) the AES key is wrapped to"
    )
    g.add_argument(
        "-k", "--privatekey", type=Path, help="user RSA private key (PEM) that signs the manifest"
    )
    g.add_argument("-u", "--user", help="AWS account id (12 digits, hyphens allowed)")
    g.add_argument(
        "-r",
        "--arch",
        choices=["i386", "x86_64", "arm64"],
        help="architecture (default: this machine's)",
    )
    g.add_argument(
        "-p",
        "--prefix",
        help="bundle name (default: the image file name)"
        if image_flag
        else "bundle and image name (default: image)",
    )
    g.add_argument(
        "--ec2cert",
        type=Path,
        help="EC2 certificate the AES key is also wrapped to (default: by --region)",
    )
    g.add_argument(
        "--ec2cert-dir",
        type=Path,
        help="directory holding cert-ec2*.pem (also $AMI_BUNDLER_EC2_CERT_DIR)",
    )
    g.add_argument("--kernel", help="default kernel id (aki-…)")
    g.add_argument("--ramdisk", help="default ramdisk id (ari-…)")
    g.add_argument(
        "-B",
        "--block-device-mapping",
        action="append",
        default=[],
        metavar="MAPS",
        help="virtual=device[,virtual=device…] (repeatable)",
    )
    g.add_argument("--productcodes", help="comma-separated product codes")
    g.add_argument("--no-size-checks", action="store_true", help="allow images over 10 GiB")
    g.add_argument("--compression", default="default", help="default | fast | best | 1-9")
    g.add_argument(
        "--jobs-compress",
        type=count(1, 1024, "thread count"),
        default=None,
        metavar="N",
        help="compression threads (default: all cores)",
    )


# --------------------------------------------------------------------------- flags → inputs


def resolve_bundle_keys(args: argparse.Namespace) -> BundleKeys:
    require(args, "cert", "privatekey")
    ec2cert = ec2certs.find(
        getattr(args, "region", None), ec2cert=args.ec2cert, cert_dir=args.ec2cert_dir
    )
    return BundleKeys.load(args.cert, args.privatekey, ec2cert)


def bundle_options_from_args(args: argparse.Namespace, name: str) -> BundleOptions:
    require(args, "user")
    return BundleOptions(
        name=validate_name(name),
        user=account_id(args.user),
        arch=args.arch or detect_arch(),
        kernel_id=args.kernel,
        ramdisk_id=args.ramdisk,
        block_device_mapping=parse_block_device_mapping(args.block_device_mapping),
        product_codes=parse_product_codes(args.productcodes),
        compression=args.compression,
        workers=args.jobs_compress,
    )


def image_source_from_args(args: argparse.Namespace) -> ImageSource:
    fmt = getattr(args, "image_format", None)
    if args.image == "-":
        if args.image_size is None:
            raise UsageError("-i - (standard input) needs --image-size BYTES")
        if not args.prefix:
            raise UsageError("-i - (standard input) needs -p/--prefix to name the bundle")
        return StreamImageSource(
            stdin_stream(sys.stdin.buffer, fmt),
            args.image_size,
            validate_name(args.prefix),
            allow_large=args.no_size_checks,
        )
    path = Path(args.image)
    return open_source(
        path,
        name=args.prefix,
        fmt=fmt,
        image_size=args.image_size,
        allow_large=args.no_size_checks,
        allow_backing=getattr(args, "allow_backing_file", False),
    )


def source_and_options(args: argparse.Namespace) -> tuple[ImageSource, BundleOptions]:
    """The image source and the bundle options; the source is closed if the options are bad."""
    source = image_source_from_args(args)
    try:
        options = bundle_options_from_args(args, source.name)
    except BaseException:
        source.close()
        raise
    return source, options


def bundle_inputs(args: argparse.Namespace) -> tuple[ImageSource, BundleKeys, BundleOptions]:
    """Everything bundle-image's flags resolve to; ``install`` uses it so the flags match."""
    keys = resolve_bundle_keys(args)
    source, options = source_and_options(args)
    return source, keys, options


def bundle_human(result: BundleResult, where: str) -> list[str]:
    return [
        f"Bundled {result.manifest.name}: {result.size} bytes → {len(result.part_names)} part(s), "
        f"{result.bundled_size} bytes in {result.seconds:.2f}s",
        f"Manifest: {where}",
    ]
