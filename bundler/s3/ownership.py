"""Can this bucket hold a bundle EC2 can read? Object Ownership and Block Public Access.

Since April 2023 S3 creates buckets with ACLs disabled (Object Ownership ``BucketOwnerEnforced``)
and Block Public Access on. EC2 reads a bundle through the ``aws-exec-read`` ACL, so a bucket
with ACLs disabled refuses every part with ``AccessControlListNotSupported``. This is checked
once per bucket before anything is written (and fixed with ``--enable-bucket-acls``); a missing
``s3:GetBucketOwnershipControls``/``s3:GetBucketPublicAccessBlock`` permission only warns, since
the upload may well work.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import botocore.exceptions as bexc

from ..aws import error_code
from ..errors import S3Error
from .objects import (
    DEFAULT_ACL,
    DEFAULT_ATTEMPTS,
    PUBLIC_ACLS,
    acls_disabled,
    public_blocked,
    s3_error,
    with_attempts,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import OwnershipControlsTypeDef

log = logging.getLogger("bundler.s3")

ENFORCED = "BucketOwnerEnforced"
# What --enable-bucket-acls sets: objects stay the bucket owner's.
ACL_ENABLING: Final = "BucketOwnerPreferred"
_DENIED = ("AccessDenied", "403", "AllAccessDisabled")
# An ACL the bucket accepts even with ACLs disabled (it grants nothing beyond the owner).
_ALWAYS_ACCEPTED = (None, "", "bucket-owner-full-control")


def ownership(client: S3Client, bucket: str) -> str | None:
    """The bucket's Object Ownership setting; None if it has none (ACLs enabled, a pre-2023
    bucket)."""
    resp = with_attempts(lambda: client.get_bucket_ownership_controls(Bucket=bucket),
                         DEFAULT_ATTEMPTS, f"read the ownership controls of s3://{bucket}")
    rules = resp.get("OwnershipControls", {}).get("Rules", [])
    return rules[0].get("ObjectOwnership") if rules else None


def check_bucket_for_bundles(client: S3Client, bucket: str, *, acl: str | None = DEFAULT_ACL,
                             enable_acls: bool = False) -> None:
    """Refuse (or with ``enable_acls`` fix) a bucket that cannot take ``acl``, before any write."""
    if acl in _ALWAYS_ACCEPTED:
        return
    try:
        setting = ownership(client, bucket)
    except bexc.ClientError as exc:
        code = error_code(exc)
        if code == "OwnershipControlsNotFoundError":
            setting = None
        elif code in _DENIED:
            log.warning("cannot read the ownership controls of s3://%s (no "
                        "s3:GetBucketOwnershipControls): going on; if S3 answers "
                        "AccessControlListNotSupported, the bucket has ACLs disabled", bucket)
            setting = "unknown"
        else:
            raise s3_error(exc, "read the ownership controls of", bucket) from None
    except bexc.BotoCoreError as exc:
        raise s3_error(exc, "read the ownership controls of", bucket) from None
    if setting == ENFORCED:
        if not enable_acls:
            raise S3Error(acls_disabled(bucket, acl))
        _enable_acls(client, bucket)
    if acl in PUBLIC_ACLS:
        _check_public_allowed(client, bucket, acl)


def _enable_acls(client: S3Client, bucket: str) -> None:
    controls: OwnershipControlsTypeDef = {"Rules": [{"ObjectOwnership": ACL_ENABLING}]}
    try:
        with_attempts(lambda: client.put_bucket_ownership_controls(Bucket=bucket,
                                                                   OwnershipControls=controls),
                      DEFAULT_ATTEMPTS, f"enable ACLs on s3://{bucket}")
    except (bexc.ClientError, bexc.BotoCoreError) as exc:
        raise s3_error(exc, "enable ACLs (put-bucket-ownership-controls) on", bucket) from None
    log.warning("enabled ACLs on s3://%s (Object Ownership %s), as --enable-bucket-acls asked",
                bucket, ACL_ENABLING)


def _check_public_allowed(client: S3Client, bucket: str, acl: str) -> None:
    try:
        resp = with_attempts(lambda: client.get_public_access_block(Bucket=bucket),
                             DEFAULT_ATTEMPTS, f"read the public access block of s3://{bucket}")
    except bexc.ClientError as exc:
        code = error_code(exc)
        if code == "NoSuchPublicAccessBlockConfiguration":
            return
        if code in _DENIED:
            log.warning("cannot read the public access block of s3://%s (no "
                        "s3:GetBucketPublicAccessBlock): going on", bucket)
            return
        raise s3_error(exc, "read the public access block of", bucket) from None
    except bexc.BotoCoreError as exc:
        raise s3_error(exc, "read the public access block of", bucket) from None
    if resp.get("PublicAccessBlockConfiguration", {}).get("BlockPublicAcls"):
        raise S3Error(public_blocked(bucket, acl))


__all__ = ["ACL_ENABLING", "ENFORCED", "check_bucket_for_bundles", "ownership"]
