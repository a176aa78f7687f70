"""Which registered AMIs use a bundle: asked of EC2 before a bundle is replaced or deleted.

An instance-store AMI *is* its bundle: EC2 reads the manifest and parts at every launch. So
before anything replaces or deletes the bundle at ``BUCKET/PREFIX/NAME.manifest.xml``, EC2 is
asked (DescribeImages, owner self, filter ``manifest-location``) which of this account's AMIs
in the bucket's region use it. Without the permission (``ec2:DescribeImages`` denied) that
cannot be known: a warning says so, and the caller decides as if none did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bexc

from .aws import ec2_errors, error_code

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger("bundler.inuse")

_DENIED = frozenset(
    {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure"}
)


def images_using(
    ec2: EC2Client,
    image_location: str,
    *,
    exclude: Iterable[str] = (),
    warn: Callable[[str], None] | None = None,
) -> list[str] | None:
    """Ids of this account's registered AMIs whose manifest is ``image_location`` (sorted), or
    None when EC2 refused to say (access denied: warned). Other failures raise EC2Error."""
    skip = set(exclude)
    found: set[str] = set()
    with ec2_errors(f"look up the AMIs that use {image_location}"):
        try:
            pages = ec2.get_paginator("describe_images").paginate(
                Owners=["self"], Filters=[{"Name": "manifest-location", "Values": [image_location]}]
            )
            for page in pages:
                for image in page.get("Images", []):
                    if image.get("State") != "deregistered" and image.get("ImageId") not in skip:
                        found.add(image["ImageId"])
        except bexc.ClientError as exc:
            if error_code(exc) not in _DENIED:
                raise
            message = (
                f"cannot check whether a registered AMI uses {image_location} "
                f"(ec2:DescribeImages denied: {error_code(exc)}); going on as if none did"
            )
            (warn or log.warning)(message)
            return None
    return sorted(found)


@dataclass
class InUse:
    """``InUseLookup`` for the publish protocol (bundler.s3.publish) and delete-bundle.

    ``connect`` makes the EC2 client (in the bucket's region) the first time it is needed: most
    runs find nothing to replace and never talk to EC2. ``exclude``: AMIs to leave out (the one
    being deregistered)."""

    connect: Callable[[], Any]
    exclude: Sequence[str] = field(default_factory=tuple)
    warn: Callable[[str], None] | None = None
    _ec2: EC2Client | None = field(default=None, repr=False)

    def __call__(self, image_location: str) -> list[str] | None:
        if self._ec2 is None:
            self._ec2 = self.connect()
        return images_using(self._ec2, image_location, exclude=self.exclude, warn=self.warn)


__all__ = ["InUse", "images_using"]
