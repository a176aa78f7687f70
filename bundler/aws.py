"""AWS access through botocore only: options, sessions, clients, and error translation.

The sessions are botocore's own, never boto3's: boto3 adds nothing the product calls (its S3
transfer methods and resources are unused) and its import (s3transfer's with it) cost ~20 ms
on every command's path. Credentials come from botocore's default chain (environment,
profiles, SSO, container and IMDSv2 instance roles) unless the classic ``-a/-s/-t`` flags
override them. Retries for throttling, 5xx and connection errors are botocore's
(standard/adaptive mode); callers add their own per-object retry only for what botocore cannot
see (a checksum mismatch).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import botocore.exceptions as bexc

from .errors import BundlerError, EC2Error, S3Error, UsageError
from .transfer import DEFAULT_MAX_ATTEMPTS, default_timeouts

if TYPE_CHECKING:  # botocore's session and config cost ~0.1 s to import: only when AWS is used
    from botocore.config import Config
    from botocore.session import Session
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.aws")

DEFAULT_REGION = "us-east-1"
NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_PROFILE (or --profile), "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, run 'aws sso login', or run on an instance with an "
    "IAM role"
)

_AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws", ".c2s.ic.gov",
                      ".sc2s.sgov.gov")
# A virtual-hosted bucket must be a DNS label sequence that also matches the TLS wildcard
# certificate, so dots force path style as well (spec §6.3).
_VIRTUAL_HOST_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-\d+$")


@dataclass
class AwsOptions:
    """How to reach AWS; every field None means "botocore's default"."""

    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_mode: str = "standard"
    connect_timeout: float = field(default_factory=lambda: default_timeouts()[0])
    read_timeout: float = field(default_factory=lambda: default_timeouts()[1])

    def __repr__(self) -> str:  # never show secrets in logs or tracebacks
        return (f"AwsOptions(profile={self.profile!r}, region={self.region!r}, "
                f"endpoint_url={self.endpoint_url!r}, "
                f"access_key={'set' if self.access_key else None}, "
                f"max_attempts={self.max_attempts}, retry_mode={self.retry_mode!r}, "
                f"connect_timeout={self.connect_timeout}, read_timeout={self.read_timeout})")


def endpoint_url_value(text: str | None, what: str = "--endpoint-url") -> str | None:
    """An endpoint URL botocore will take: http(s)://HOST[:PORT][/PATH], checked here so a
    missing scheme is a usage error and not botocore's ValueError at the first request."""
    if text is None:
        return None
    from urllib.parse import urlsplit

    value = text.strip()
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise UsageError(f"{what} {value!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        hint = (f"write it as https://{value} (or http:// for a local endpoint)"
                if "://" not in value else None)
        raise UsageError(f"{what} {value!r} needs a scheme: http:// or https://", hint=hint)
    if not parts.hostname or any(c.isspace() for c in value) or not value.isprintable():
        raise UsageError(f"{what} {value!r} names no host")
    del port
    return value


def check_region(region: str, flag: str) -> str:
    """A syntactic check only: any region botocore can sign for is accepted, known or not."""
    if not _REGION_RE.match(region):
        raise UsageError(f"{flag} {region!r} is not a region name like us-east-1 or eu-central-2")
    return region


def plain_dict_models(core: Any) -> None:
    """Load ``core``'s (a botocore session's) service models with plain dicts.

    botocore parses every model file (a service's API, its endpoint rules) with
    ``object_pairs_hook=OrderedDict``; a dict keeps the same order since Python 3.7 and parses
    in half the time: the S3 client is made in ~75 ms instead of ~110, EC2's in ~50 instead of
    ~75, on the path of every command before its first request."""
    import json
    import os

    from botocore.loaders import JSONFileLoader

    class _PlainJSONFileLoader(JSONFileLoader):
        def _load_file(self, full_path: str, open_method: Callable[..., Any]) -> Any:
            if not os.path.isfile(full_path):
                return None
            with open_method(full_path, "rb") as fp:
                return json.loads(fp.read())

    core.get_component("data_loader").file_loader = _PlainJSONFileLoader()


class _ServicesOnDemand:
    """What ``Loader.list_available_services`` answers, found service by service.

    botocore asks it before it loads any service's model of a type (its API, its endpoint
    rules, its paginators), only to check that the service is known, and answers it by walking
    every service's directory (~450 directory listings and ~1,400 stats: ~20 ms, once per
    model type and session; S3's API and endpoint rules are on every command's path before its
    first request, its paginators before the first listing). Whether one service is known is
    what ``list_api_versions`` finds for it alone, from the same search path and with the same
    test (some API version holds the type's file); anything else (the list of known services
    in an unknown service's error) walks as before."""

    def __init__(self, loader: Any, type_name: str, walk: Callable[[str], list[str]]) -> None:
        self._loader = loader
        self._type_name = type_name
        self._walk = walk

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            return bool(self._loader.list_api_versions(name, self._type_name))
        except (bexc.DataNotFoundError, OSError):  # OSError: a file of that name, not a service
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._walk(self._type_name))

    def __len__(self) -> int:
        return len(self._walk(self._type_name))


def services_on_demand(core: Any) -> None:
    """``core``'s (a botocore session's) loader finds a service when asked about it instead
    of listing every service first (see ``_ServicesOnDemand``)."""
    loader = core.get_component("data_loader")
    walk = loader.list_available_services
    loader.list_available_services = lambda type_name: _ServicesOnDemand(loader, type_name, walk)


def quick_models(core: Any) -> None:
    """Every session the product makes loads its models these cheaper ways (plain dicts,
    services found on demand): the same models, sooner."""
    plain_dict_models(core)
    services_on_demand(core)


def make_session(opts: AwsOptions) -> Session:
    """A botocore session as ``boto3.Session(profile_name=, aws_access_key_id=, ...,
    region_name=)`` made it (without boto3's user agent, resources and S3 transfer methods)."""
    import botocore.session

    # botocore takes a half-given key pair (or a token alone) silently and fails inside request
    # signing; classic -a/-s/-t go together.
    if opts.session_token and not (opts.access_key and opts.secret_key):
        raise UsageError("-t/--session-token needs -a/--access-key and -s/--secret-key too")
    if bool(opts.access_key) != bool(opts.secret_key):
        given, other = (("-a/--access-key", "-s/--secret-key") if opts.access_key
                        else ("-s/--secret-key", "-a/--access-key"))
        raise UsageError(f"{given} needs {other} too (or use a profile or the environment)")
    try:
        session = botocore.session.Session(profile=opts.profile)
        # boto3.Session's "any of the three given": after the checks above, the key pair.
        if opts.access_key and opts.secret_key:
            session.set_credentials(opts.access_key, opts.secret_key, opts.session_token)
        if opts.region is not None:
            session.set_config_variable("region", opts.region)
        # The first look at the config files (an unknown profile raises ProfileNotFound here).
        quick_models(session)
        return session
    except bexc.ProfileNotFound:
        raise UsageError(f"AWS profile {opts.profile!r} not found in the AWS config "
                         "files") from None
    except bexc.BotoCoreError as exc:
        raise UsageError(f"cannot set up AWS access: {exc}") from None


def session_region(session: Session, opts: AwsOptions) -> str:
    return opts.region or session.get_config_variable("region") or DEFAULT_REGION


def require_credentials(session: Session) -> None:
    """Fail early, with the fix, instead of on the first request of a long transfer."""
    try:
        creds = session.get_credentials()
    except bexc.BotoCoreError as exc:
        raise S3Error(f"cannot load AWS credentials: {_one_line(exc)}") from None
    if creds is None:
        raise S3Error(NO_CREDENTIALS)


def is_aws_endpoint(url: str | None) -> bool:
    if not url:
        return True
    host = (urlsplit(url if "://" in url else "https://" + url).hostname or "").lower()
    return any(host.endswith(suffix) for suffix in _AWS_HOST_SUFFIXES)


def needs_path_style(bucket: str | None, endpoint_url: str | None) -> bool:
    """Path style for non-AWS endpoints (127.0.0.1, MinIO…) and bucket names that cannot be
    hosts."""
    if not is_aws_endpoint(endpoint_url):
        return True
    return bool(bucket) and not _VIRTUAL_HOST_BUCKET.match(bucket or "")


def _config(opts: AwsOptions, region: str, *, pool: int, path_style: bool) -> Config:
    from botocore.config import Config

    return Config(
        region_name=region,
        # mode is one of RETRY_MODES (checked where the flag is parsed)
        retries={"total_max_attempts": opts.max_attempts,  # type: ignore[arg-type]
                 "mode": opts.retry_mode},
        max_pool_connections=pool,
        connect_timeout=opts.connect_timeout,
        read_timeout=opts.read_timeout,
        s3={"addressing_style": "path" if path_style else "auto"},
        # We send Content-MD5 from the digest computed while cutting the part and check SHA-1
        # on the way back; extra CRC trailers would cost a pass and break some S3 clones.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="ami-bundler",
    )


def s3_client(opts: AwsOptions, *, session: Session | None = None, bucket: str | None = None,
              region: str | None = None, pool: int = 10,
              check_credentials: bool = True) -> S3Client:
    session = session or make_session(opts)
    if check_credentials:
        require_credentials(session)
    region = region or session_region(session, opts)
    path_style = needs_path_style(bucket, opts.endpoint_url)
    client = cast("S3Client", session.create_client(
        "s3", endpoint_url=opts.endpoint_url,
        config=_config(opts, region, pool=pool, path_style=path_style)))
    # The endpoint may come from AWS_ENDPOINT_URL(_S3) or the profile rather than a flag.
    if not path_style and not is_aws_endpoint(client.meta.endpoint_url):
        client = cast("S3Client", session.create_client(
            "s3", endpoint_url=opts.endpoint_url,
            config=_config(opts, region, pool=pool, path_style=True)))
    log.debug("s3 client: region %s endpoint %s", region, client.meta.endpoint_url)
    return client


def ec2_client(opts: AwsOptions, *, session: Session | None = None,
               region: str | None = None, check_credentials: bool = True) -> EC2Client:
    session = session or make_session(opts)
    if check_credentials:
        require_credentials(session)
    region = region or session_region(session, opts)
    client = cast("EC2Client", session.create_client(
        "ec2", endpoint_url=opts.endpoint_url,
        config=_config(opts, region, pool=10, path_style=False)))
    log.debug("ec2 client: region %s endpoint %s", region, client.meta.endpoint_url)
    return client


def sts_client(opts: AwsOptions, *, session: Session | None = None,
               region: str | None = None) -> Any:
    """STS in ``region``, at that region's own endpoint (botocore's default
    ``sts_regional_endpoints = regional``): no dependency on us-east-1 being reachable."""
    session = session or make_session(opts)
    region = region or session_region(session, opts)
    client = session.create_client("sts", endpoint_url=opts.endpoint_url,
                                   config=_config(opts, region, pool=2, path_style=False))
    log.debug("sts client: region %s endpoint %s", region, client.meta.endpoint_url)
    return client


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# "No such thing" as S3 and EC2 say it, named once. A HEAD answer has no body, so S3 can only
# say 404 there (botocore calls it NotFound); GET/PUT/COPY name the missing object or bucket.
NO_SUCH_OBJECT = frozenset({"NoSuchKey", "404", "NotFound"})
NO_SUCH_BUCKET = frozenset({"NoSuchBucket", "404", "NotFound"})
NO_SUCH_IMAGE = frozenset({"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable",
                           "InvalidAMIID.Malformed"})
BOTO_ERRORS = (bexc.ClientError, bexc.BotoCoreError)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, bexc.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def response_header(exc: BaseException, name: str) -> str | None:
    if isinstance(exc, bexc.ClientError):
        headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
        return headers.get(name.lower())
    return None


def common_error(exc: BaseException, what: str,
                 cls: type[BundlerError] = S3Error) -> BundlerError | None:
    """Credential and connection failures phrased the same way for S3 and EC2; None otherwise."""
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError)):
        return cls(NO_CREDENTIALS)
    if isinstance(exc,
                  (bexc.SSOTokenLoadError, bexc.UnauthorizedSSOTokenError,
                        bexc.TokenRetrievalError)):
        return cls(f"{what}: the SSO session has expired or is missing: run 'aws sso login'")
    if isinstance(exc, bexc.EndpointConnectionError):
        return cls(f"{what}: cannot connect to {exc.kwargs.get('endpoint_url', 'the endpoint')}: "
                   "check the network, --region and --endpoint-url")
    if isinstance(exc, (bexc.ConnectionError, bexc.ReadTimeoutError, bexc.ConnectTimeoutError)):
        return cls(f"{what}: connection failed after retries ({type(exc).__name__}): "
                   "check the network; re-run to resume")
    code = error_code(exc)
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
                "AuthFailure", "InvalidToken", "UnrecognizedClientException"):
        return cls(f"{what}: AWS rejected the credentials ({code}): check the access key, secret "
                   "and session token")
    if code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"):
        return cls(f"{what}: the credentials have expired ({code}): refresh them (e.g. 'aws sso "
                   "login') and re-run")
    return None


def is_not_found(exc: BaseException, codes: frozenset[str] = NO_SUCH_OBJECT) -> bool:
    return error_code(exc) in codes


@contextmanager
def translate_errors(translate: Callable[[BaseException], BaseException]) -> Iterator[None]:
    """Every boto failure in the block leaves it as ``translate(exc)`` (one line for the user,
    no botocore chain); anything else, our own errors included, passes unchanged.

    The one shape of boto error handling (httpx's exception mapping): a caller that treats a
    code specially (a 404 that means "absent") catches it inside the block and re-raises the rest.
    """
    try:
        yield
    except BOTO_ERRORS as exc:
        raise translate(exc) from None


def ec2_errors(what: str) -> AbstractContextManager[None]:
    """``translate_errors`` for EC2 calls: ``ec2_error(exc, what)``."""
    return translate_errors(lambda exc: ec2_error(exc, what))


def ec2_error(exc: BaseException, what: str) -> BundlerError:
    common = common_error(exc, what, EC2Error)
    if common is not None:
        return common
    if isinstance(exc, bexc.ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException"):
            return EC2Error(f"{what}: access denied ({code}): the credentials need the matching "
                            "ec2: permission")
        return EC2Error(f"{what}: {code}: {_one_line(Exception(message))}")
    return EC2Error(f"{what}: {_one_line(exc)}")


__all__ = [
    "AwsOptions",
    "DEFAULT_REGION",
    "NO_CREDENTIALS",
    "check_region",
    "BOTO_ERRORS",
    "NO_SUCH_BUCKET",
    "NO_SUCH_IMAGE",
    "NO_SUCH_OBJECT",
    "common_error",
    "default_timeouts",
    "ec2_client",
    "ec2_error",
    "ec2_errors",
    "is_not_found",
    "translate_errors",
    "error_code",
    "is_aws_endpoint",
    "make_session",
    "plain_dict_models",
    "quick_models",
    "services_on_demand",
    "needs_path_style",
    "require_credentials",
    "response_header",
    "s3_client",
    "session_region",
    "sts_client",
]
