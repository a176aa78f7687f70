"""Several AWS accounts in the stand-in, kept apart as AWS keeps them (patched into moto's STS,
S3 and EC2 responses, in the server process).

moto already maps the credentials AssumeRole returns to the account in the role ARN, so S3
buckets, EC2 images and GetCallerIdentity are per account. Where moto is more lenient than AWS:

* **AssumeRole** succeeds for any ARN in moto. Here the role must exist in its account and its
  trust policy must allow the caller (``Principal.AWS`` = the account id, ``arn:…:root``, the
  caller's ARN, or ``*``; ``Action`` ``sts:AssumeRole``; an ``sts:ExternalId`` condition must
  match), else ``AccessDenied`` as STS words it. RoleSessionName and DurationSeconds are
  checked against STS's documented limits (2-64 of ``[\\w+=,.@-]``; 900 s to the role's
  MaxSessionDuration).
* **S3**: bucket names are global (moto agrees); a request from one account to a bucket owned
  by another is ``AccessDenied`` (403) — moto allows it. No bucket policies or cross-account
  grants are modelled: nothing in the product relies on them. EC2 reading a bundle for
  RegisterImage is not a request of the caller (``bundlecheck`` reads with EC2's own grant).
* **EC2 images** are per (account, region) in moto, and an image shared with another account
  stays invisible to it. Here account B sees account A's image in the same region when A made
  it public or gave B a launch permission (``UserId``, or the ARN of B's organization or of
  an OU B is in, below it too: ``organizations``): DescribeImages by ImageIds, with
  ExecutableUsers (``self``/B/``all``), with Owners naming A, or with no scope at all — and,
  as in AWS, without A's tags (tags are the viewer's own). ExecutableUsers means explicit
  launch permissions, as in EC2 (moto returned every public image for any value).

``make_role`` creates a role in any account directly in the backend (a test's setup, as an
administrator of that account would); ``StrictEndpoint.make_role`` calls it.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlparse

from . import organizations
from .organizations import permits
from .s3rules import error_response

BASE_ACCOUNT = "123456789012"  # moto's default: any credentials it did not issue itself
SECOND_ACCOUNT = "210987654321"
PUBLISH_ROLE = "ami-bundler-publish"
UNTRUSTED_ROLE = "ami-bundler-untrusted"

_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
_ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):role/(?:.*/)?([\w+=,.@-]{1,64})$")
MIN_DURATION = 900
_installed = False


def _partition(region: str) -> str:
    from moto.utilities.utils import get_partition

    return str(get_partition(region))


def trust_policy(trusted: Iterable[str], external_id: str | None = None) -> str:
    """A role trust policy letting these accounts (ids) or principals (ARNs) assume it."""
    principals = [p if p.startswith("arn:") else f"arn:aws:iam::{p}:root" for p in trusted]
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": {"AWS": principals},
                                 "Action": "sts:AssumeRole"}
    if external_id is not None:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def make_role(account: str, name: str = PUBLISH_ROLE, *, trusted: Sequence[str] = (BASE_ACCOUNT,),
              external_id: str | None = None, max_session: int = 3600) -> str:
    """Create (or keep) role ``name`` in ``account`` trusting ``trusted``; returns its ARN."""
    from moto.iam.models import iam_backends

    iam = iam_backends[account]["aws"]
    arn = f"arn:aws:iam::{account}:role/{name}"
    try:
        role = iam.get_role(name)
        role.assume_role_policy_document = trust_policy(trusted, external_id)
        role.max_session_duration = max_session
    except Exception:  # noqa: BLE001 - moto's NoSuchEntity: create it
        iam.create_role(name, trust_policy(trusted, external_id), "/", None, "", [],
                        str(max_session))
    return arn


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _principal_matches(principal: Any, account: str, caller_arn: str) -> bool:
    if principal == "*":
        return True
    values = _as_list(principal.get("AWS", [])) if isinstance(principal, dict) else []
    names = {account, f"arn:aws:iam::{account}:root", caller_arn}
    assumed = re.match(r"^arn:aws:sts::(\d{12}):assumed-role/([^/]+)/", caller_arn)
    if assumed:  # role chaining: the trust policy names the role, not the session
        names.add(f"arn:aws:iam::{assumed.group(1)}:role/{assumed.group(2)}")
    return "*" in values or bool(names & set(values))


def _conditions_hold(condition: Any, external_id: str | None) -> bool:
    for operator, tests in (condition or {}).items():
        for key, wanted in tests.items():
            if key.lower() != "sts:externalid" or operator != "StringEquals":
                return False  # a condition the stand-in cannot evaluate never grants
            if external_id not in _as_list(wanted):
                return False
    return True


def trusts(document: str, account: str, caller_arn: str, external_id: str | None) -> bool:
    """Whether a trust policy lets this caller AssumeRole (an explicit Deny wins)."""
    try:
        policy = json.loads(document)
    except (TypeError, ValueError):
        return False
    allowed = False
    for stmt in _as_list(policy.get("Statement", [])):
        actions = {a.lower() for a in _as_list(stmt.get("Action", []))}
        if not actions & {"sts:assumerole", "sts:*", "*"}:
            continue
        if not _principal_matches(stmt.get("Principal", {}), account, caller_arn):
            continue
        if not _conditions_hold(stmt.get("Condition"), external_id):
            continue
        if stmt.get("Effect") == "Deny":
            return False
        allowed = allowed or stmt.get("Effect") == "Allow"
    return allowed


def _install_sts() -> None:
    from moto.iam.models import iam_backends
    from moto.sts.exceptions import STSClientError, STSValidationError
    from moto.sts.responses import TokenResponse

    orig_assume = TokenResponse.assume_role
    from moto.core import errors

    # AccessDenied is one of AWS's common errors, so STS's model has no shape for it: without
    # this moto warns at every refusal
    if "AccessDenied" not in errors.COMMON_ERROR_CODES:
        errors.COMMON_ERROR_CODES.append("AccessDenied")

    @functools.wraps(orig_assume)
    def assume_role(self: Any) -> Any:
        role_arn = self._get_param("RoleArn") or ""
        session_name = self._get_param("RoleSessionName") or ""
        duration = self._get_int_param("DurationSeconds", 3600)
        external_id = self._get_param("ExternalId")
        if not _SESSION_NAME.match(session_name):
            raise STSValidationError(f"1 validation error detected: Value '{session_name}' at "
                                     "'roleSessionName' failed to satisfy constraint: Member must "
                                     "satisfy regular expression pattern: [\\w+=,.@-]*")
        _, caller_arn, caller_account = self.backend.get_caller_identity(
            self.get_access_key(), self.region)
        denied = STSClientError("AccessDenied", f"User: {caller_arn} is not authorized to perform: "
                                f"sts:AssumeRole on resource: {role_arn}")
        match = _ROLE_ARN.match(role_arn)
        if not match:
            raise STSValidationError(f"{role_arn} is invalid")
        role_account = match.group(2)
        accounts = dict.get(iam_backends, role_account)  # never create an account by asking
        iam = dict.get(accounts, _partition(self.region)) if accounts is not None else None
        role = next((r for r in (iam.get_roles() if iam is not None else [])
                     if r.arn == role_arn), None)
        if role is None or not trusts(role.assume_role_policy_document, caller_account,
                                      caller_arn, external_id):
            raise denied
        longest = int(role.max_session_duration or 3600)
        if not MIN_DURATION <= duration <= longest:
            raise STSValidationError(
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
                if duration > longest else
                f"1 validation error detected: Value '{duration}' at 'durationSeconds' failed "
                f"to satisfy constraint: Member must have value greater than or equal to "
                f"{MIN_DURATION}")
        return orig_assume(self)

    TokenResponse.assume_role = assume_role


def _s3_denied(name: str) -> tuple[int, dict[str, str], str]:
    return error_response(403, "AccessDenied", "Access Denied", BucketName=name)


def bucket_owner(name: str) -> str | None:
    from moto.s3.models import s3_backends

    entry = s3_backends.bucket_accounts.get(name)
    return entry[1] if entry else None


def _install_s3() -> None:
    from moto.s3 import responses

    cls = responses.S3Response
    orig_bucket, orig_key = cls._bucket_response, cls._key_response

    def foreign(self: Any, request: Any, full_url: str, *, bucket_call: bool) -> Any:
        name = self.parse_bucket_name_from_url(request, full_url)
        owner = bucket_owner(name) if name else None
        if owner is None or owner == self.current_account:
            return None
        query = parse_qs(urlparse(full_url).query, keep_blank_values=True)
        creating = bucket_call and request.method == "PUT" and not query
        return None if creating else _s3_denied(name)  # moto answers BucketAlreadyExists

    @functools.wraps(orig_bucket)
    def _bucket_response(self: Any, request: Any, full_url: str) -> Any:
        return foreign(self, request, full_url, bucket_call=True) or orig_bucket(self, request,
                                                                                 full_url)

    @functools.wraps(orig_key)
    def _key_response(self: Any, request: Any, full_url: str) -> Any:
        return foreign(self, request, full_url, bucket_call=False) or orig_key(self, request,
                                                                               full_url)

    cls._bucket_response = _bucket_response
    cls._key_response = _key_response


def _foreign_images(viewer: Any) -> list[Any]:
    """Other accounts' own images in the viewer's region that the viewer may launch, as the
    viewer sees them (its own tags, none of the owner's)."""
    from moto.ec2.models import ec2_backends

    me, region = viewer.account_id, viewer.region_name
    seen = []
    for account, regions in list(dict.items(ec2_backends)):
        backend = dict.get(regions, region) if account != me else None
        if backend is None:
            continue
        for ami in list(backend.amis.values()):
            # moto gives every account its own copy of the public catalogue: skip those
            if ami.owner_id != account:
                continue
            if ami.is_public or permits(ami.launch_permissions, me):
                view = copy.copy(ami)
                view.ec2_backend = viewer
                seen.append(view)
    return seen


def _install_ec2() -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import InvalidAMIIdError
    from moto.ec2.responses.amis import AmisResponse
    from moto.ec2.utils import generic_filter

    def describe_images(self: Any) -> Any:
        self.error_on_dryrun()
        ami_ids = self._get_param("ImageIds", [])
        filters = self._filters_from_querystring()
        owners = self._get_param("Owners", [])
        exec_users = self._get_param("ExecutableUsers", [])
        backend = self.ec2_backend
        me = backend.account_id
        users = {me if u == "self" else u for u in exec_users}

        def launchable(ami: Any) -> bool:
            # EC2: "explicit launch permissions" (``all``: public); moto adds every public image
            return ("all" in users and ami.is_public) or any(
                permits(ami.launch_permissions, u) for u in users)

        shared = _foreign_images(backend)
        if ami_ids:
            shared = [a for a in shared if a.id in ami_ids]
        else:
            if exec_users:
                shared = [a for a in shared if launchable(a)]
            if owners:
                wanted = {me if o == "self" else o for o in owners}
                shared = [a for a in shared if a.owner_id in wanted]
            if filters:
                shared = list(generic_filter(filters, shared))
        try:
            own = backend.describe_images(ami_ids=ami_ids, filters=filters, owners=owners)
        except InvalidAMIIdError:
            if not shared:
                raise
            own = []
        if exec_users and not ami_ids:
            own = [a for a in own if launchable(a)]
        return ActionResult({"Images": list(own) + shared})

    AmisResponse.describe_images = describe_images


def install() -> None:
    """Patch moto's STS, S3 and EC2 (idempotent; in the process that runs the server)."""
    global _installed
    if _installed:
        return
    _install_sts()
    _install_s3()
    _install_ec2()
    organizations.install()
    _installed = True
