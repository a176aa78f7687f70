"""The library's front door: path-level functions over the pipeline.

These are what ``bundler`` exports and what the CLI calls; they work on any filesystem
Python's ``os`` sees, including a pyfakefs fake one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import ec2certs
from . import keys as keylib
from .bundlerun import BundleKeys, BundleOptions, BundleResult
from .bundling import bundle
from .dirsink import DirectorySink
from .dirsource import DirectorySource
from .errors import (
    IntegrityError,
    OutputError,
    PartMissingError,
    SignatureError,
    UsageError,
)
from .localmanifest import read_manifest
from .manifest import (
    part_mismatch,
    validate_name,
)
from .progress import NULL_PROGRESS, ProgressListener
from .source import open_image
from .unbundling import UnbundleResult
from .unbundling import unbundle as unbundle_parts

log = logging.getLogger("bundler.api")


def resolve_ec2_cert(ec2cert: Path | str | None, region: str | None = None,
                     ec2cert_dir: Path | str | None = None) -> Path:
    """``--ec2cert`` if given, else the certificate for ``region`` (``ec2certs.find``)."""
    return ec2certs.find(region, ec2cert=ec2cert, cert_dir=ec2cert_dir).path


def bundle_image(
    image: Path | str,
    destination: Path | str,
    *,
    cert: Path | str,
    private_key: Path | str,
    user: str,
    ec2cert: Path | str | None = None,
    region: str | None = None,
    ec2cert_dir: Path | str | None = None,
    prefix: str | None = None,
    arch: str | None = "x86_64",
    kernel_id: str | None = None,
    ramdisk_id: str | None = None,
    block_device_mapping: Mapping[str, str] | None = None,
    product_codes: Sequence[str] = (),
    compression: str | int = "default",
    workers: int | None = None,
    allow_large: bool = False,
    overwrite: bool = False,
    progress: ProgressListener = NULL_PROGRESS,
) -> BundleResult:
    """Bundle an image file into ``destination`` (parts + manifest), like ec2-bundle-image."""
    image = Path(image)
    name = validate_name(prefix or image.name)
    keys = BundleKeys.load(Path(cert), Path(private_key),
                           ec2certs.find(region, ec2cert=ec2cert, cert_dir=ec2cert_dir))
    options = BundleOptions(
        name=name, user=user, arch=arch, kernel_id=kernel_id, ramdisk_id=ramdisk_id,
        block_device_mapping=dict(block_device_mapping or {}), product_codes=list(product_codes),
        compression=compression, workers=workers,
    )
    sink = DirectorySink(Path(destination), overwrite=overwrite)
    # Before reading a byte: a clash would only show at commit.
    sink.check_clear(name, inputs=[image])
    source = open_image(image, name=name, allow_large=allow_large)
    return bundle(source, sink, keys, options, progress)


def unbundle(
    manifest: Path | str,
    private_key: Path | str,
    *,
    source: Path | str | None = None,
    destination: Path | str = ".",
    cert: Path | str | None = None,
    overwrite: bool = False,
    progress: ProgressListener = NULL_PROGRESS,
) -> UnbundleResult:
    """Verify and extract a local bundle, like ec2-unbundle but checking everything first."""
    manifest = Path(manifest)
    key = keylib.load_private_key(Path(private_key))
    verify_key = keylib.load_public_key(Path(cert)) if cert else None
    parsed = read_manifest(manifest, private_key)
    parts_dir = Path(source) if source is not None else manifest.parent
    return unbundle_parts(parsed, DirectorySource(parts_dir), Path(destination), key,
                          verify_key=verify_key, overwrite=overwrite, progress=progress,
                          verify_name=f"certificate {cert}" if cert else None)


@dataclass
class VerifyResult:
    manifest: str
    name: str
    signature: str
    parts: int
    bundled_size: int
    problems: list[str] = field(default_factory=list)
    decrypted: bool = False
    image_digest: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, object]:
        return {"manifest": self.manifest, "name": self.name, "signature": self.signature,
                "parts": self.parts, "bundled_size": self.bundled_size, "ok": self.ok,
                "problems": self.problems, "decrypted": self.decrypted,
                "image_digest": self.image_digest}


def verify(
    manifest: Path | str,
    *,
    cert: Path | str | None = None,
    private_key: Path | str | None = None,
    source: Path | str | None = None,
    decrypt: bool = False,
    progress: ProgressListener = NULL_PROGRESS,
) -> VerifyResult:
    """Check a local bundle: signature, every part present with the right SHA-1, total size.

    With ``decrypt`` the whole unbundle runs to nowhere (needs the private key).
    Signature failures raise; part problems are all collected and then raised together.
    """
    manifest = Path(manifest)
    if cert is None and private_key is None:
        raise UsageError("verify needs -c CERT or -k PRIVATEKEY to check the manifest signature")
    parsed = read_manifest(manifest, private_key)
    m = parsed.manifest
    if cert:
        public = keylib.load_public_key(Path(cert))
    else:
        assert private_key is not None  # one of the two, checked above
        public = keylib.load_private_key(Path(private_key)).public_key()
    public_name = (f"certificate {cert}" if cert
                   else f"the public half of private key {private_key} (no -c given)")
    parts_dir = Path(source) if source is not None else manifest.parent
    result = VerifyResult(str(manifest), m.name, "valid", len(m.parts), m.bundled_size)
    try:
        keylib.verify_manifest(parsed, public, cert_name=public_name)
    except SignatureError as exc:  # reported with every other problem below
        result.signature = "invalid"
        result.problems.append(str(exc))
    directory = DirectorySource(parts_dir)
    total = 0
    for entry, chunks in directory.iter_parts(sorted(m.parts, key=lambda e: e.index)):
        hasher = hashlib.sha1()
        try:
            for chunk in chunks:
                hasher.update(chunk)
                total += len(chunk)
        except PartMissingError as exc:
            result.problems.append(str(exc))
            continue
        if hasher.hexdigest() != entry.digest.lower():
            result.problems.append(part_mismatch(entry, hasher.hexdigest(), m.parts))
    if len(result.problems) == (result.signature == "invalid") and total != m.bundled_size:
        result.problems.append(f"parts hold {total} bytes but the manifest's bundled_size is "
                               f"{m.bundled_size}")
    if result.problems:
        more = len(result.problems) - 5
        kind = SignatureError if result.signature == "invalid" else IntegrityError
        error = kind("; ".join(result.problems[:5]) + (f" (and {more} more)" if more > 0 else ""))
        error.result = result.summary()  # --json reports every problem, not only the message
        raise error
    if decrypt:
        if private_key is None:
            raise UsageError("verify --decrypt needs -k PRIVATEKEY")
        key = keylib.load_private_key(Path(private_key))
        unbundled = unbundle_parts(parsed, directory, None, key, verify_key=public,
                                   progress=progress, verify_name=public_name)
        result.decrypted = True
        result.image_digest = unbundled.digest
    return result


def keygen(key_path: Path | str, cert_path: Path | str, *, bits: int = 2048,
           common_name: str = "ami-bundler", days: int = 3650) -> None:
    """A signing key (0600) and self-signed certificate, since AWS no longer issues them."""
    key_path, cert_path = Path(key_path), Path(cert_path)
    if key_path == cert_path:
        raise OutputError("key and certificate paths must differ")
    keylib.keygen(key_path, cert_path, bits=bits, common_name=common_name, days=days)


__all__ = [
    "VerifyResult",
    "bundle_image",
    "keygen",
    "read_manifest",
    "resolve_ec2_cert",
    "unbundle",
    "verify",
]
