"""The stand-in EC2's own manifest key pairs, one per partition plus an opt-in region, made at
run time (never committed). Their certificates sit in ``cert_dir`` under the classic file names,
so the tool is given them with ``--ec2cert-dir`` (or ``$AMI_BUNDLER_EC2_CERT_DIR``) exactly as a
user gives it an ec2-ami-tools directory; the private keys stay with the stand-in (and in
``key_dir``, 0600, for tests that check a bundle with openssl)."""

from __future__ import annotations

import atexit
import datetime
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

# key name → certificate file name. "aws" etc. are partitions; anything else is a region that
# has a certificate of its own (an opt-in region).
CERT_FILES = {
    "aws": "cert-ec2.pem",
    "aws-us-gov": "cert-ec2-gov.pem",
    "aws-cn": "cert-ec2-cn-north-1.pem",
    "af-south-1": "cert-ec2-af-south-1.pem",
}


@dataclass
class KeyRing:
    cert_dir: Path
    key_dir: Path
    keys: dict[str, Any] = field(default_factory=dict)

    def name_for(self, region: str) -> str:
        if region in self.keys:
            return region
        from moto.utilities.utils import get_partition

        return get_partition(region)

    def private_key(self, region: str) -> Any | None:
        return self.keys.get(self.name_for(region))

    def cert_path(self, region: str) -> Path:
        return self.cert_dir / CERT_FILES[self.name_for(region)]

    def key_path(self, region: str) -> Path:
        return self.key_dir / f"{self.name_for(region)}-key.pem"

    def remove(self) -> None:
        shutil.rmtree(self.cert_dir.parent, ignore_errors=True)


_ring: KeyRing | None = None
_lock = threading.Lock()


def _make(directory: Path, key_dir: Path, name: str, file_name: str) -> Any:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "strict local AWS"),
                         x509.NameAttribute(NameOID.COMMON_NAME,
                                            f"EC2 AMI manifests {name} (test)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    (directory / file_name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path = key_dir / f"{name}-key.pem"
    with open(path, "xb", opener=lambda p, f: __import__("os").open(p, f, 0o600)) as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return key


def keyring() -> KeyRing:
    """This process's key ring (made on first use)."""
    global _ring
    with _lock:
        if _ring is None:
            root = Path(tempfile.mkdtemp(prefix="strict-aws-ec2-"))
            certs, keys = root / "certs", root / "keys"
            certs.mkdir()
            keys.mkdir(mode=0o700)
            ring = KeyRing(certs, keys)
            for name, file_name in CERT_FILES.items():
                ring.keys[name] = _make(certs, keys, name, file_name)
            atexit.register(ring.remove)
            _ring = ring
        return _ring
