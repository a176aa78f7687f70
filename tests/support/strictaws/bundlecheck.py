"""What EC2 checks of an instance-store bundle at RegisterImage, against the stand-in's S3.

EC2 reads the manifest at ImageLocation with its own identity (so it needs the aws-exec-read
grant), parses it, decrypts ``ec2_encrypted_key``/``_iv`` with the private key of the region's
EC2 certificate, and reads the parts. Anything it cannot do is ``InvalidManifest``.
This checker is independent of the product's reader (its own XML parsing, OpenSSL-compatible
primitives from ``cryptography``, the standard library's gzip and tarfile).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from defusedxml import ElementTree


@dataclass
class Checked:
    architecture: str | None
    parts: int


def _invalid(message: str) -> Exception:
    from moto.ec2.exceptions import EC2ClientError

    return EC2ClientError("InvalidManifest", message)


def s3_backend(account: str, region: str) -> Any:
    from moto.s3.models import s3_backends
    from moto.utilities.utils import get_partition

    return s3_backends[account][get_partition(region)]


def read_object(account: str, region: str, bucket: str, key: str) -> Any:
    backend = s3_backend(account, region)
    try:
        obj = backend.get_object(bucket, key)
    except Exception:  # noqa: BLE001 - NoSuchBucket / NoSuchKey alike: EC2 cannot read it
        obj = None
    return obj


def check_bundle(account: str, region: str, image_location: str) -> Checked:
    bucket, _, key = image_location.partition("/")
    if not bucket or not key.endswith(".manifest.xml"):
        raise _invalid(f"Invalid manifest location {image_location}")
    obj = read_object(account, region, bucket, key)
    if obj is None:
        raise _invalid(f"Manifest not found: {image_location}")
    try:
        root = ElementTree.fromstring(obj.value)
    except Exception:  # noqa: BLE001 - any parse failure is what EC2 reports as InvalidManifest
        raise _invalid(f"Unable to parse manifest {image_location}") from None
    arch = root.findtext("machine_configuration/architecture")
    parts = root.findall("image/parts/part")
    return Checked(arch, len(parts))
