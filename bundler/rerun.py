"""Re-runs of install: is the bundle already at the target a bundle of *this* image?

A re-bundle draws a fresh AES key, so an existing bundle is reused only when it is proved to
hold the same image: its manifest's signature verifies with the user's certificate, it is of an
image of this size, and its tar-stream SHA-1 is the one this image gives now (recomputed
without compressing or encrypting; holes are not read). Anything less is a different bundle,
which the publish protocol then refuses to replace unless told to.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .aws import ec2_errors
from .errors import EC2Error
from .imagetar import tar_digest
from .manifest import ParsedManifest
from .progress import NULL_PROGRESS, ProgressListener
from .s3 import S3Location, load_remote_manifest, object_exists
from .source import ImageSource

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.rerun")


class ImageFingerprint:
    """The image's tar-stream SHA-1, computed at most once (probes of several regions share it)."""

    def __init__(
        self, source: ImageSource, name: str, progress: ProgressListener = NULL_PROGRESS
    ) -> None:
        self.source = source
        self.name = name
        self.progress = progress
        self._digest: str | None = None
        self._lock = threading.Lock()

    def matches(self, parsed: ParsedManifest) -> bool:
        manifest = parsed.manifest
        if manifest.size != self.source.size:
            return False
        if not self.source.rereadable:
            log.info(
                "%s: the image comes from a stream and cannot be compared before bundling",
                parsed.source,
            )
            return False
        log.info("comparing the image with %s", parsed.source)
        return self.digest() == manifest.digest.lower()

    def digest(self) -> str:
        """The SHA-1 a manifest of this image as ``name`` carries (read once, then kept)."""
        with self._lock:
            if self._digest is None:
                self._digest = tar_digest(self.source, self.name, self.progress)
            return self._digest


@dataclass
class ExistingBundle:
    parsed: ParsedManifest | None  # None: there, but not readable as ours (e.g. legacy encrypted)
    same_image: bool


def existing_bundle(
    s3: S3Client,
    location: S3Location,
    manifest_name: str,
    image: ImageFingerprint,
    user_public_key: RSAPublicKey,
) -> ExistingBundle | None:
    """The bundle at ``location``, if there is one, and whether it holds ``image``. A manifest
    not signed by the user's key is a different bundle (it cannot be proved to be ours)."""
    from .errors import BundlerError
    from .keys import verify_manifest

    if not object_exists(s3, location.bucket, location.key(manifest_name)):
        return None
    try:
        parsed, _, _ = load_remote_manifest(s3, location, manifest_name)
    except BundlerError as exc:
        log.info("%s: not provably this image: %s", location.url(manifest_name), exc)
        return ExistingBundle(None, False)
    try:
        verify_manifest(parsed, user_public_key, cert_name="the user certificate (-c)")
    except BundlerError as exc:
        log.info("%s: not provably this image: %s", parsed.source, exc)
        return ExistingBundle(parsed, False)
    return ExistingBundle(parsed, image.matches(parsed))


def find_registered(ec2: EC2Client, name: str, image_location: str) -> str | None:
    """The id of our AMI called ``name`` in this region, None if there is none; an AMI of that
    name for another bundle is an error (names are unique per region and account)."""
    from .ec2 import image_location_of

    with ec2_errors(f"look up AMI {name}"):
        images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])[
            "Images"
        ]
    for image in images:
        if image.get("State") in ("deregistered",):
            continue
        where = image_location_of(image)
        if where == image_location:
            return image["ImageId"]
        raise EC2Error(
            f"an AMI named {name} ({image['ImageId']}) already exists for another bundle "
            f"({where or 'unknown location'}): pick another -n/--name or deregister it"
        )
    return None


__all__ = ["ExistingBundle", "ImageFingerprint", "existing_bundle", "find_registered"]
