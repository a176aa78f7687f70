"""What a bundle run takes (its options and keys) and what it gives back (its result)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from . import ec2certs
from . import keys as keylib
from .ec2certs import EC2Certificate
from .errors import KeyFileError
from .manifest import Manifest

log = logging.getLogger("bundler.pipeline")  # its name before the split: users filter by it


@dataclass
class BundleOptions:
    """What goes into the manifest besides the data (classic bundle-image flags)."""

    name: str
    user: str
    arch: str | None = "x86_64"
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    block_device_mapping: dict[str, str] = field(default_factory=dict)
    product_codes: list[str] = field(default_factory=list)
    ancestry: list[str] = field(default_factory=list)
    compression: str | int = "default"
    workers: int | None = None


@dataclass
class BundleKeys:
    """The three keys bundling needs: sign with the user's key, wrap to user and EC2 certs."""

    signing_key: rsa.RSAPrivateKey
    user_public_key: rsa.RSAPublicKey
    ec2_public_key: rsa.RSAPublicKey
    ec2_certificate: EC2Certificate | None = None  # reported in results; None for a bare key

    @classmethod
    def load(cls, cert: Path, private_key: Path, ec2cert: Path | EC2Certificate) -> BundleKeys:
        signing_key = keylib.load_private_key(Path(private_key))
        user_public = keylib.load_public_key(Path(cert))
        if signing_key.public_key().public_numbers() != user_public.public_numbers():
            # Classic tools do not notice; the bundle could then never be unbundled by its owner.
            raise KeyFileError(f"certificate {cert} does not belong to private key {private_key}")
        chosen = (ec2cert if isinstance(ec2cert, EC2Certificate)
                  else ec2certs.describe(Path(ec2cert)))
        log.info("EC2 certificate %s (subject %s, sha256 %s)", chosen.path, chosen.subject or "-",
                 chosen.sha256)
        return cls(signing_key, user_public, keylib.load_public_key(chosen.path), chosen)


@dataclass
class BundleResult:
    manifest: Manifest
    manifest_name: str
    manifest_bytes: bytes
    part_names: list[str]
    part_sizes: list[int]
    size: int
    bundled_size: int
    digest: str
    tar_size: int
    seconds: float
    ec2_certificate: EC2Certificate | None = None

    def summary(self) -> dict[str, object]:
        cert = {"ec2_certificate": self.ec2_certificate.as_json()} if self.ec2_certificate else {}
        return {
            "name": self.manifest.name,
            "manifest": self.manifest_name,
            "parts": [{"name": n, "size": s, "sha1": p.digest}
                      for n, s, p in zip(self.part_names, self.part_sizes, self.manifest.parts,
                                         strict=True)],
            "size": self.size,
            "bundled_size": self.bundled_size,
            "digest": self.digest,
            "tar_size": self.tar_size,
            "seconds": round(self.seconds, 3),
            **cert,
        }
