"""EC2 manifest certificates: the ones shipped in the package, and which one wraps a bundle's key.

EC2 decrypts ``ec2_encrypted_key``/``_iv`` with the private key behind its region's certificate.
Three public certificates (the ones every ec2-ami-tools release carries) ship in
``bundler/certs/``, pinned by SHA-256 fingerprint and never rejected for their long-past
``notAfter``: EC2 still uses those keys. Regions that must be opted into (every ``aws``-partition
region not enabled by default) have certificates of their own that are not shipped; bundling
for one needs its ``cert-ec2-<region>.pem`` (or ``--ec2cert``) — wrapping to ``cert-ec2.pem``
there would make a bundle EC2 cannot decrypt.

Lookup (``find``): ``--ec2cert``; then, over ``--ec2cert-dir``, ``$AMI_BUNDLER_EC2_CERT_DIR``,
``$EC2_AMITOOL_HOME``/``$EC2_HOME`` ``etc/ec2/amitools`` and the classic install paths, a
region-specific ``cert-ec2-<region>.pem`` before the partition's file; then the shipped
certificate of the region's partition (not for opt-in regions).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from .errors import KeyFileError

log = logging.getLogger("bundler.ec2certs")

CERT_DIR_ENV = "AMI_BUNDLER_EC2_CERT_DIR"
DEFAULT_CERT = "cert-ec2.pem"
PARTITION_CERTS: dict[str, str] = {
    "aws": DEFAULT_CERT,
    "aws-cn": "cert-ec2-cn-north-1.pem",
    "aws-us-gov": "cert-ec2-gov.pem",
}
# SHA-256 fingerprints (of the DER certificate) of the shipped files.
SHIPPED_FINGERPRINTS: dict[str, str] = {
    "cert-ec2.pem":
        "F5:70:7A:ED:B5:42:51:79:8F:6B:BC:C1:A1:0A:9C:FD:"
        "1F:21:FC:69:90:9E:A1:27:63:19:AA:2F:09:8E:47:90",
    "cert-ec2-gov.pem":
        "49:56:F9:66:C8:A0:E7:5D:22:B9:B2:34:42:95:94:64:"
        "46:8F:20:A6:76:01:0C:E8:23:B4:59:92:E1:22:F7:A9",
    "cert-ec2-cn-north-1.pem":
        "84:80:E2:B6:0A:0E:51:3C:32:2E:04:60:1F:81:A5:FF:"
        "67:A9:CA:D5:53:89:92:5C:6C:B6:ED:6D:01:89:AA:09",
}
# The aws-partition regions enabled by default; cert-ec2.pem is theirs. Any other aws region is
# opt-in and has a certificate of its own.
DEFAULT_ENABLED_REGIONS = frozenset({
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "sa-east-1", "eu-west-1",
    "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1",
    "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2",
})
# Strings, not Path objects, so that Paths are built at call time (keeps pyfakefs honest).
_CLASSIC_SUBDIR = "etc/ec2/amitools"
_SYSTEM_DIRS = (
    "/opt/aws/amitools/ec2/etc/ec2/amitools",
    "/usr/local/ec2/amitools/etc/ec2/amitools",
    "/etc/ec2/amitools",
)


@dataclass(frozen=True)
class EC2Certificate:
    """The certificate a bundle's key is wrapped to, as -v and --json report it."""

    path: Path
    subject: str
    sha256: str  # colon-separated upper-case hex, as openssl prints it
    shipped: bool = False

    def as_json(self) -> dict[str, str]:
        return {"path": str(self.path), "subject": self.subject, "sha256": self.sha256}


def partition(region: str | None) -> str:
    if not region:
        return "aws"
    region = region.strip().lower()
    try:
        from .regions import partition_of

        return partition_of(region)
    except Exception:  # botocore's data unreadable (e.g. under a fake filesystem)
        log.debug("no partition data for %s; going by its prefix", region, exc_info=True)
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def is_opt_in(region: str | None) -> bool:
    """An ``aws``-partition region that is not enabled by default (needs its own certificate)."""
    if not region:
        return False
    region = region.strip().lower()
    return partition(region) == "aws" and region not in DEFAULT_ENABLED_REGIONS


def partition_cert_name(region: str | None) -> str:
    return PARTITION_CERTS.get(partition(region), DEFAULT_CERT)


def region_cert_name(region: str) -> str:
    return f"cert-ec2-{region.strip().lower()}.pem"


def search_dirs(cert_dir: Path | None = None, env: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    dirs: list[Path] = []
    if cert_dir is not None:
        dirs.append(Path(cert_dir))
    if env.get(CERT_DIR_ENV):
        dirs.append(Path(env[CERT_DIR_ENV]))
    for var in ("EC2_AMITOOL_HOME", "EC2_HOME"):
        if env.get(var):
            dirs.append(Path(env[var]) / _CLASSIC_SUBDIR)
    dirs.extend(Path(d) for d in _SYSTEM_DIRS)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def shipped_path(name: str) -> Path:
    return Path(str(resources.files("bundler") / "certs" / name))


def fingerprint(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def describe(path: Path, *, shipped: bool = False) -> EC2Certificate:
    """Subject and SHA-256 fingerprint of the certificate (or public key) at ``path``; expiry is
    not checked (EC2's keys outlive their certificates)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read EC2 certificate {path}: {exc.strerror or exc}") from None
    from cryptography import x509  # the largest import of a run: only when a cert is read

    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
        return EC2Certificate(path, cert.subject.rfc4514_string(),
                              fingerprint(cert.public_bytes(serialization.Encoding.DER)), shipped)
    except ValueError:
        pass
    try:  # a bare public key is accepted as --ec2cert too
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{path} is not an X.509 certificate or public key: "
                           "pass the EC2 certificate (cert-ec2*.pem)") from None
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return EC2Certificate(path, "", fingerprint(der), shipped)


def shipped(name: str) -> EC2Certificate:
    """A shipped certificate, checked against its pinned fingerprint."""
    found = describe(shipped_path(name), shipped=True)
    if found.sha256 != SHIPPED_FINGERPRINTS[name]:
        raise KeyFileError(f"the shipped EC2 certificate {found.path} has fingerprint "
                           f"{found.sha256}, not {SHIPPED_FINGERPRINTS[name]}: the installation is "
                           "damaged; reinstall ami-bundler or pass --ec2cert")
    return found


def find(region: str | None = None, *, ec2cert: Path | str | None = None,
         cert_dir: Path | str | None = None,
         env: Mapping[str, str] | None = None) -> EC2Certificate:
    """The certificate a bundle for ``region`` wraps its key to (see the module's lookup order)."""
    if ec2cert is not None:
        return describe(Path(ec2cert))
    dirs = search_dirs(Path(cert_dir) if cert_dir is not None else None, env)
    names = [region_cert_name(region)] if region else []
    opt_in = is_opt_in(region)
    if not opt_in:
        names.append(partition_cert_name(region))
    for name in dict.fromkeys(names):
        for directory in dirs:
            candidate = directory / name
            if candidate.is_file():
                log.debug("EC2 certificate %s", candidate)
                return describe(candidate)
    if opt_in:
        assert region is not None
        raise KeyFileError(
            f"region {region} is opt-in and has an EC2 certificate of its own: put "
            f"{region_cert_name(region)} (etc/ec2/amitools of an ec2-ami-tools install) in "
            f"--ec2cert-dir or ${CERT_DIR_ENV}, or pass --ec2cert PATH; cert-ec2.pem would make a "
            "bundle EC2 cannot decrypt there")
    return shipped(partition_cert_name(region))


__all__ = [
    "CERT_DIR_ENV",
    "DEFAULT_CERT",
    "DEFAULT_ENABLED_REGIONS",
    "EC2Certificate",
    "PARTITION_CERTS",
    "SHIPPED_FINGERPRINTS",
    "describe",
    "find",
    "is_opt_in",
    "partition",
    "partition_cert_name",
    "region_cert_name",
    "search_dirs",
    "shipped",
    "shipped_path",
]
