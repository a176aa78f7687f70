"""Core commands: keygen, bundle-image, unbundle, verify, inspect."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import api
from ..bundling import bundle
from ..dirsink import DirectorySink
from ..errors import UsageError
from .common import Printer, count, ensure_directory, remove_if_empty
from .context import AwsContext, add_aws_options, add_jobs_option
from .inputs import (
    add_bundle_options,
    add_cert_region_option,
    add_image_options,
    bundle_human,
    bundle_inputs,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keygen", help="create a signing key and self-signed certificate",
                       description="Create an RSA key (mode 0600) and a self-signed X.509 "
                                   "certificate for signing bundles; AWS no longer issues these.")
    p.add_argument("--key", type=Path, default=Path("ami-bundler-key.pem"),
                   help="private key path (default: %(default)s)")
    p.add_argument("--cert", type=Path, default=Path("ami-bundler-cert.pem"),
                   help="certificate path (default: %(default)s)")
    p.add_argument("--bits", type=int, default=2048, choices=[2048, 3072, 4096])
    p.add_argument("--common-name", default="ami-bundler", help="certificate subject CN")
    p.add_argument("--days", type=count(1, 36500, "day count"), default=3650,
                   help="certificate validity in days")
    p.set_defaults(func=run_keygen)

    p = sub.add_parser("bundle-image", help="bundle a disk image into parts and a signed manifest",
                       description="Bundle an image file (or standard input) into encrypted 10 MiB "
                                   "parts and a signed manifest, in one streaming pass "
                                   "(ec2-bundle-image).")
    add_image_options(p)
    p.add_argument("-d", "--destination", type=Path, default=Path("/tmp"),
                   help="output directory, created when missing (default: %(default)s)")
    add_cert_region_option(p)
    p.add_argument("--force", action="store_true",
                   help="replace an existing bundle of the same name")
    add_bundle_options(p, image_flag=True)
    p.set_defaults(func=run_bundle_image)

    p = sub.add_parser("unbundle", help="verify and extract the image from a bundle",
                       description="Verify the manifest signature and every part, then extract the "
                                   "image (ec2-unbundle). Nothing is written under its final name "
                                   "unless every check passes.")
    p.add_argument("-m", "--manifest", required=True,
                   help="manifest file (or BUCKET/PREFIX/NAME.manifest.xml with --from-s3)")
    p.add_argument("-k", "--privatekey", type=Path, required=True, help="user private key")
    p.add_argument("-c", "--cert", type=Path,
                   help="certificate to verify the signature with (default: public half of -k)")
    p.add_argument("-s", "--source", type=Path,
                   help="directory with the parts (default: the manifest's)")
    p.add_argument("-d", "--destination", type=Path, default=Path("."),
                   help="output directory, created mode 0700 when missing (default: current)")
    p.add_argument("--force", action="store_true", help="replace an existing image file")
    p.add_argument("--from-s3", action="store_true",
                   help="stream the parts from S3 (-m BUCKET/PREFIX/NAME.manifest.xml)")
    # Long options only: unbundle's classic -s means --source, not --secret-key.
    g = add_aws_options(p, credentials=False,
                        title="S3 (with --from-s3; credentials from the usual AWS chain)",
                        region_help="AWS region of the bucket")
    add_jobs_option(g, help="parts fetched in parallel (default: %(default)s)")
    p.set_defaults(func=run_unbundle)

    p = sub.add_parser("verify", help="check a bundle's signature, parts and digests",
                       description="Check the signature, that every part is present with the right "
                                   "SHA-1, and the total size; --decrypt also runs the whole "
                                   "unbundle to nowhere.")
    p.add_argument("manifest", type=Path, nargs="?", help="manifest file")
    p.add_argument("-m", "--manifest", dest="manifest_opt", type=Path, help=argparse.SUPPRESS)
    p.add_argument("-c", "--cert", type=Path, help="certificate to verify the signature with")
    p.add_argument("-k", "--privatekey", type=Path,
                   help="private key (public half verifies; needed for --decrypt)")
    p.add_argument("-s", "--source", type=Path,
                   help="directory with the parts (default: the manifest's)")
    p.add_argument("--decrypt", action="store_true",
                   help="also decrypt, decompress and check the image digest")
    p.set_defaults(func=run_verify)

    p = sub.add_parser("inspect", help="show a readable summary of a manifest")
    p.add_argument("manifest", type=Path)
    p.add_argument("-k", "--privatekey", type=Path, help="to read a legacy encrypted manifest")
    p.set_defaults(func=run_inspect)


# ------------------------------------------------------------------ handlers


def run_keygen(args: argparse.Namespace, printer: Printer) -> int:
    api.keygen(args.key, args.cert, bits=args.bits, common_name=args.common_name, days=args.days)
    printer.result({"key": str(args.key), "cert": str(args.cert), "bits": args.bits},
                   [f"Private key: {args.key} (mode 0600)", f"Certificate: {args.cert}"])
    return 0


def run_bundle_image(args: argparse.Namespace, printer: Printer) -> int:
    source, keys, options = bundle_inputs(args)
    sink = DirectorySink(args.destination, overwrite=args.force)
    created = False
    try:
        created = ensure_directory(args.destination, "-d/--destination")
        # Fail before reading the image, not at commit; never write over the input itself.
        sink.check_clear(options.name, inputs=[] if args.image == "-" else [args.image])
        result = bundle(source, sink, keys, options, printer.progress())
    except BaseException:
        source.close()
        if created:
            remove_if_empty(args.destination)
        raise
    manifest_path = args.destination / result.manifest_name
    data = result.summary()
    data["manifest_path"] = str(manifest_path)
    data["directory"] = str(args.destination)
    printer.result(data, bundle_human(result, str(manifest_path)))
    return 0


def run_unbundle(args: argparse.Namespace, printer: Printer) -> int:
    # Created private: it is about to hold the decrypted image.
    created = ensure_directory(args.destination, "-d/--destination", mode=0o700)
    try:
        if args.from_s3:
            result = _unbundle_from_s3(args, printer)
        else:
            result = api.unbundle(args.manifest, args.privatekey, source=args.source,
                                  destination=args.destination, cert=args.cert,
                                  overwrite=args.force, progress=printer.progress())
    except BaseException:
        if created:
            remove_if_empty(args.destination)
        raise
    printer.result(result.summary(), [f"Unbundled {result.path} ({result.size} bytes, sha1 of tar "
                                      f"stream {result.digest})", "Unbundle complete."])
    return 0


def _unbundle_from_s3(args: argparse.Namespace, printer: Printer) -> Any:
    """``unbundle --from-s3 -m BUCKET/PREFIX/NAME.manifest.xml``: S3 → image, no parts on disk."""
    from ..keys import load_private_key, load_public_key
    from ..s3 import S3PartSource, load_remote_manifest, split_manifest_location
    from ..unbundling import unbundle

    location, name = split_manifest_location(str(args.manifest), "-m")
    private_key = load_private_key(args.privatekey)
    verify_key = load_public_key(args.cert) if getattr(args, "cert", None) else None
    aws = AwsContext(args, printer)
    client, _ = aws.s3_in_bucket_region(location.bucket)
    parsed, _, _ = load_remote_manifest(client, location, name, private_key=private_key)
    source = S3PartSource(client, location, transfer=aws.transfer)
    return unbundle(parsed, source, Path(args.destination), private_key, verify_key=verify_key,
                    overwrite=getattr(args, "force", False), progress=printer.progress(),
                    verify_name=f"certificate {args.cert}" if verify_key is not None else None)


def run_verify(args: argparse.Namespace, printer: Printer) -> int:
    manifest = args.manifest or args.manifest_opt
    if manifest is None:
        raise UsageError("verify needs a manifest path")
    result = api.verify(manifest, cert=args.cert, private_key=args.privatekey, source=args.source,
                        decrypt=args.decrypt, progress=printer.progress())
    human = [f"{manifest}: signature valid, {result.parts} part(s) present with matching SHA-1, "
             f"{result.bundled_size} bytes"]
    if result.decrypted:
        human.append(f"decrypted and decompressed: image digest {result.image_digest} matches")
    printer.result(result.summary(), human)
    return 0


def run_inspect(args: argparse.Namespace, printer: Printer) -> int:
    parsed = api.read_manifest(args.manifest, args.privatekey)
    m = parsed.manifest
    data = {
        "manifest": str(args.manifest), "version": m.version,
        "bundler": list(m.bundler) if m.bundler else None,
        "name": m.name, "user": m.user, "type": m.image_type, "arch": m.arch,
        "kernel_id": m.kernel_id, "ramdisk_id": m.ramdisk_id, "kernel_name": m.kernel_name,
        "block_device_mapping": m.block_device_mapping, "product_codes": m.product_codes,
        "ancestry": m.ancestry, "size": m.size, "bundled_size": m.bundled_size, "digest": m.digest,
        "cipher": m.cipher,
        "parts": [{"index": p.index, "name": p.filename, "sha1": p.digest} for p in m.parts],
        "signed": bool(m.signature and m.signature != "UNSIGNED"),
        "user_key_bits": len(m.user_encrypted_key) * 4,
        "ec2_key_bits": len(m.ec2_encrypted_key) * 4,
    }
    human = [
        f"Manifest      {args.manifest} (version {m.version}, written by "
        f"{' '.join(m.bundler) if m.bundler else 'unknown'})",
        f"Image         {m.name} ({m.image_type}, {m.arch or 'arch not set'}), account {m.user}",
        f"Size          {m.size} bytes; bundled {m.bundled_size} bytes in {len(m.parts)} part(s)",
        f"Digest        sha1 {m.digest} (tar stream)",
    ]
    if m.kernel_id or m.ramdisk_id:
        human.append(f"Kernel        {m.kernel_id or '-'}  ramdisk {m.ramdisk_id or '-'}")
    if m.block_device_mapping:
        human.append("Devices       " + ", ".join(f"{k}={v}" for k, v
                                                  in sorted(m.block_device_mapping.items())))
    if m.product_codes:
        human.append("Product codes " + ", ".join(m.product_codes))
    if m.ancestry:
        human.append("Ancestry      " + ", ".join(m.ancestry))
    human.append(f"Keys          AES-128-CBC key wrapped for user ({data['user_key_bits']}-bit) "
                 f"and EC2 ({data['ec2_key_bits']}-bit)")
    human.append(f"""Signature     {'present (verify with: ami-bundler verify -c CERT)'
                                   if data['signed'] else 'none'}""")
    for p in m.parts[:3]:
        human.append(f"  part {p.index:>4}  {p.filename}  {p.digest}")
    if len(m.parts) > 3:
        human.append(f"  … {len(m.parts) - 3} more part(s)")
    printer.result(data, human)
    return 0
