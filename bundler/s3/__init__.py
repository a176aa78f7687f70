"""Bundles in S3, one concern per module; this package only re-exports the public names.

Layout and order follow spec §6: keys are ``keyprefix + file name``, every object gets the
canned ACL ``aws-exec-read`` (EC2 must read them), parts go up before the manifest so that a
visible manifest always means a complete bundle. Parts are ≤ 10 MiB, so an object is one PUT
with Content-MD5 and its ETag is the MD5 of the bytes; only the tail of a streaming upload goes
in two pieces (multipart.py), whose ETag etags.py computes from the bytes too — which is what
makes resume cheap: one listing tells which parts are already there intact.
"""

from ..concurrency import run_parallel
from ..parts import PART_SIZE
from .buckets import (
    BucketLocationError,
    bucket_region,
    delete_bucket_if_empty,
    ensure_bucket,
    location_region,
)
from .copy import CopyResult, copy_bundle
from .delete import DeletePlan, existing_keys, keys_by_prefix, keys_from_manifest, plan_delete
from .download import DownloadResult, download_bundle, load_remote_manifest
from .location import S3Location, split_manifest_location
from .lock import LOCK_STALE_SECONDS, LOCK_SUFFIX, ConcurrentUploadError, UploadLock
from .objects import (
    ACLS,
    DEFAULT_ACL,
    DEFAULT_ATTEMPTS,
    DEFAULT_JOBS,
    DELETE_BATCH,
    MANIFEST_SIZE_CAP,
    MAX_PART_BYTES,
    RETRY_ATTEMPTS,
    copy_object,
    delete_keys,
    fetch_manifest,
    get_bytes,
    list_objects,
    object_exists,
    put_bytes,
    s3_error,
)
from .publish import InUseLookup, Publication, bundle_identity, check_replaceable
from .stream import S3PartSource, S3Sink
from .upload import (
    LocalPart,
    UploadResult,
    prepare_upload,
    read_local_manifest,
    upload_bundle,
    verify_local_parts,
)

__all__ = [
    "ACLS",
    "InUseLookup",
    "Publication",
    "bundle_identity",
    "check_replaceable",
    "BucketLocationError",
    "ConcurrentUploadError",
    "CopyResult",
    "DEFAULT_ACL",
    "DEFAULT_ATTEMPTS",
    "DEFAULT_JOBS",
    "DELETE_BATCH",
    "DeletePlan",
    "DownloadResult",
    "LOCK_STALE_SECONDS",
    "LOCK_SUFFIX",
    "LocalPart",
    "MANIFEST_SIZE_CAP",
    "MAX_PART_BYTES",
    "PART_SIZE",
    "RETRY_ATTEMPTS",
    "S3Location",
    "S3PartSource",
    "S3Sink",
    "UploadLock",
    "UploadResult",
    "bucket_region",
    "copy_bundle",
    "copy_object",
    "delete_bucket_if_empty",
    "delete_keys",
    "download_bundle",
    "ensure_bucket",
    "existing_keys",
    "fetch_manifest",
    "get_bytes",
    "keys_by_prefix",
    "keys_from_manifest",
    "list_objects",
    "load_remote_manifest",
    "location_region",
    "object_exists",
    "plan_delete",
    "put_bytes",
    "read_local_manifest",
    "run_parallel",
    "s3_error",
    "split_manifest_location",
    "prepare_upload",
    "upload_bundle",
    "verify_local_parts",
]
