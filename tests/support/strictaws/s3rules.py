"""S3 as it behaves since April 2023, patched into moto's S3 responses (in the server process).

* A new bucket gets Object Ownership ``BucketOwnerEnforced`` (ACLs disabled) and all four Block
  Public Access settings on, unless CreateBucket names an ACL-enabling ownership
  (``x-amz-object-ownership: ObjectWriter | BucketOwnerPreferred``).
* Under ``BucketOwnerEnforced`` every request that sets an ACL (canned ``x-amz-acl``,
  ``x-amz-grant-*``, ``PUT ?acl``) other than ``bucket-owner-full-control`` fails with
  ``AccessControlListNotSupported`` (400), before anything is stored. Reading ACLs still works.
* Under Block Public Access (``BlockPublicAcls``) a public ACL (``public-read``,
  ``public-read-write``, ``authenticated-read``, grants to AllUsers/AuthenticatedUsers) fails
  with ``AccessDenied`` (403).
* ``aws-exec-read`` records the READ grant to EC2's canonical user that real S3 adds (moto drops
  it), so tests and the EC2 bundle check can read the grant back with GetObjectAcl.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import parse_qs, urlparse
from xml.sax.saxutils import escape

ENFORCED = "BucketOwnerEnforced"
ACL_OWNERSHIPS = ("ObjectWriter", "BucketOwnerPreferred")
# The canonical user S3 grants READ to for the aws-exec-read canned ACL (EC2 reading bundles).
EC2_CANONICAL_ID = "6aa5a366c34c1cbe25dc49211496e913e0351eb0e8c37aa3477e40942ec6b97c"
EC2_DISPLAY_NAME = "za-team"
PUBLIC_CANNED = ("public-read", "public-read-write", "authenticated-read")
PUBLIC_URIS = ("http://acs.amazonaws.com/groups/global/AllUsers",
               "http://acs.amazonaws.com/groups/global/AuthenticatedUsers")
_GRANT_HEADER = re.compile(r"^x-amz-grant-")

_installed = False


def error_response(status: int, code: str, message: str,
                   **details: str) -> tuple[int, dict[str, str], str]:
    """S3's REST error: the XML document botocore parses into a ClientError with ``code``;
    ``details`` are the error's own elements (``BucketName``, ``ExpectedDigest``…), in order."""
    extra = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in details.items())
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>{extra}"
            "<RequestId>strict-local-aws</RequestId></Error>")
    return status, {"content-type": "application/xml"}, body


def _error(status: int, code: str, message: str, bucket: str) -> tuple[int, dict[str, str], str]:
    return error_response(status, code, message, BucketName=bucket)


def _headers(request: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def _query(full_url: str) -> dict[str, list[str]]:
    return parse_qs(urlparse(full_url).query, keep_blank_values=True)


def acl_in_request(request: Any, query: dict[str, list[str]],
                   body: bytes) -> tuple[bool, bool, bool]:
    """(sets an ACL at all, sets only bucket-owner-full-control, sets a public ACL)."""
    headers = _headers(request)
    canned = headers.get("x-amz-acl")
    grants = {k: v for k, v in headers.items() if _GRANT_HEADER.match(k)}
    xml_acl = "acl" in query and request.method == "PUT" and bool(body)
    if (canned is None and not grants and not xml_acl
            and not ("acl" in query and request.method == "PUT")):
        return False, False, False
    text = body.decode(errors="replace") if xml_acl else ""
    public = (canned in PUBLIC_CANNED
              or any(uri in v for v in grants.values() for uri in PUBLIC_URIS)
              or any(uri in text for uri in PUBLIC_URIS))
    owner_full_only = canned == "bucket-owner-full-control" and not grants and not xml_acl
    return True, owner_full_only, public


def _bucket(backend: Any, name: str) -> Any:
    try:
        return backend.get_bucket(name)
    except Exception:  # noqa: BLE001 - missing bucket: moto answers NoSuchBucket itself
        return None


def check_acl(resp: Any, request: Any, full_url: str, bucket_name: str, *, creating: bool) -> Any:
    """The response S3 would give instead of moto's, or None to let moto handle the request."""
    query = _query(full_url)
    body = resp.body if isinstance(resp.body, bytes) else (resp.body or "").encode()
    sets_acl, owner_full_only, public = acl_in_request(request, query, body)
    if not sets_acl:
        return None
    if creating:
        ownership = _headers(request).get("x-amz-object-ownership", ENFORCED)
        if (ownership == ENFORCED and not owner_full_only
                and _headers(request).get("x-amz-acl") != "private"):
            return _error(400, "InvalidBucketAclWithObjectOwnership",
                          "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced "
                          "setting", bucket_name)
        return None
    bucket = _bucket(resp.backend, bucket_name)
    if bucket is None:
        return None
    if (bucket.ownership_rule or ENFORCED) == ENFORCED and not owner_full_only:
        return _error(400, "AccessControlListNotSupported", "The bucket does not allow ACLs",
                      bucket_name)
    pab = bucket.public_access_block
    if public and pab is not None and pab.block_public_acls:
        return _error(403, "AccessDenied", "Access Denied", bucket_name)
    return None


def _is_create_bucket(request: Any, full_url: str, key_name: str | None) -> bool:
    return request.method == "PUT" and not key_name and not _query(full_url)


def install() -> None:
    """Patch moto's S3 (idempotent; in the process that runs the server)."""
    global _installed
    if _installed:
        return
    from moto.s3 import models, responses
    from moto.s3.models import FakeGrant, FakeGrantee, PublicAccessBlock

    original_canned = models.get_canned_acl

    def get_canned_acl(acl: str) -> Any:
        result = original_canned(acl)
        if acl == "aws-exec-read":
            ec2 = FakeGrantee(grantee_id=EC2_CANONICAL_ID, display_name=EC2_DISPLAY_NAME)
            result.grants.append(FakeGrant([ec2], ["READ"]))
        return result

    models.get_canned_acl = get_canned_acl
    responses.get_canned_acl = get_canned_acl

    cls = responses.S3Response
    orig_bucket, orig_key = cls._bucket_response, cls._key_response

    @functools.wraps(orig_bucket)
    def _bucket_response(self: Any, request: Any, full_url: str) -> Any:
        name = self.parse_bucket_name_from_url(request, full_url)
        if name and request.method in ("PUT", "POST"):
            creating = _is_create_bucket(request, full_url, None)
            existed = _bucket(self.backend, name) is not None
            refused = check_acl(self, request, full_url, name, creating=creating and not existed)
            if refused is not None:
                return refused
            result = orig_bucket(self, request, full_url)
            if creating and not existed:
                new = _bucket(self.backend, name)
                if new is not None:
                    if not new.ownership_rule:
                        new.ownership_rule = ENFORCED
                    if new.public_access_block is None:
                        new.public_access_block = PublicAccessBlock("true", "true", "true", "true")
            return result
        return orig_bucket(self, request, full_url)

    @functools.wraps(orig_key)
    def _key_response(self: Any, request: Any, full_url: str) -> Any:
        name = self.parse_bucket_name_from_url(request, full_url)
        if name and request.method in ("PUT", "POST"):
            refused = check_acl(self, request, full_url, name, creating=False)
            if refused is not None:
                return refused
        return orig_key(self, request, full_url)

    cls._bucket_response = _bucket_response
    cls._key_response = _key_response
    _installed = True


def object_grants_ec2_read(obj: Any) -> bool:
    """Whether a stored object's ACL lets EC2 read it (the aws-exec-read grant)."""
    acl = getattr(obj, "acl", None)
    for grant in getattr(acl, "grants", None) or []:
        if any(g.id == EC2_CANONICAL_ID for g in grant.grantees) and \
                ({"READ", "FULL_CONTROL"} & set(grant.permissions)):
            return True
    return False
