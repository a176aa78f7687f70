"""Buckets: their region, creating one in the right place, removing an empty one."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bexc

from ..aws import NO_SUCH_BUCKET, error_code, response_header
from ..errors import S3Error
from .objects import DEFAULT_ATTEMPTS, s3_errors, with_attempts

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.s3")


class BucketLocationError(S3Error):
    """The bucket exists in another location than --location asked for (classic exit 10)."""

    exit_code = 10


def bucket_region(client: S3Client, bucket: str) -> str | None:
    """The bucket's region, or None if it does not exist."""
    with s3_errors("check bucket", bucket):
        try:
            resp = with_attempts(lambda: client.head_bucket(Bucket=bucket), DEFAULT_ATTEMPTS,
                                 f"check s3://{bucket}")
        except bexc.ClientError as exc:
            code = error_code(exc)
            region = response_header(exc, "x-amz-bucket-region")
            if code in NO_SUCH_BUCKET:
                return None
            if not region:
                raise
            if code in ("403", "AccessDenied"):  # a 301/400/403 still names the region
                log.info("no s3:ListBucket on %s; assuming it exists in %s", bucket, region)
            return region
    headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return resp.get("BucketRegion") or headers.get("x-amz-bucket-region") or client.meta.region_name


def location_region(location: str) -> str:
    """Classic --location values: EU → eu-west-1, US → us-east-1, otherwise a region name."""
    upper = location.upper()
    if upper == "EU":
        return "eu-west-1"
    if upper == "US":
        return "us-east-1"
    from ..aws import check_region

    return check_region(location, "--location")


def ensure_bucket(client: S3Client, bucket: str, *, location: str | None = None) -> bool:
    """Create ``bucket`` if missing (LocationConstraint per spec §6.2); True when created.

    An existing bucket in another place than an explicit --location is refused (classic exit 10).
    """
    region = bucket_region(client, bucket)
    wanted = location_region(location) if location else None
    if region is not None:
        if wanted and region != wanted:
            raise BucketLocationError(f"bucket {bucket} already exists in {region} and --location "
                                      f"{location} "
                                      "was given: drop --location or use another bucket")
        return False
    target = wanted or client.meta.region_name or "us-east-1"
    # Since April 2023 a new bucket has ACLs disabled (BucketOwnerEnforced); EC2 reads bundles
    # through the aws-exec-read grant, so the bucket must take ACLs from the object writer.
    params: dict[str, Any] = {"Bucket": bucket, "ObjectOwnership": "ObjectWriter"}
    if target != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": target}
    log.info("creating bucket %s in %s", bucket, target)
    with s3_errors("create bucket", bucket):
        try:
            client.create_bucket(**params)
        except bexc.ClientError as exc:
            if error_code(exc) in ("BucketAlreadyOwnedByYou",):
                return False
            if error_code(exc) == "BucketAlreadyExists":
                raise S3Error(f"bucket name {bucket} is taken by another account: choose another "
                              "-b") from None
            raise
    return True


def delete_bucket_if_empty(client: S3Client, bucket: str) -> bool:
    with s3_errors("delete bucket", bucket):
        try:
            resp = client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            if resp.get("KeyCount", 0) or resp.get("Contents"):
                return False
            client.delete_bucket(Bucket=bucket)
        except bexc.ClientError as exc:
            if error_code(exc) == "BucketNotEmpty":
                return False
            raise
    return True
