"""What every AWS command shares: the AWS and transfer flags (declared once, here) and the
session and clients one run makes from them.

A command module adds the groups it needs (``add_aws_options``, ``add_transfer_options``,
``add_bucket_option``) and builds one ``AwsContext`` from the parsed args. A new AWS or
transfer flag goes here, never in a command module, so every command that takes it spells
it, defaults it and validates it the same way.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import S3Error, UsageError
from ..transfer import (
    CONNECT_TIMEOUT_ENV,
    DEFAULT_ACL,
    DEFAULT_ATTEMPTS,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_JOBS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_READ_TIMEOUT,
    MAX_JOBS,
    READ_TIMEOUT_ENV,
    RETRY_ATTEMPTS,
    RETRY_MODES,
    TransferConfig,
    canned_acl,
    check_jobs,
    default_timeouts,
    timeout_value,
)
from .common import Printer, count, seconds

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_s3 import S3Client

    from ..aws import AwsOptions

log = logging.getLogger("bundler.cli")


# --------------------------------------------------------------------------- flags


def add_aws_options(
    parser: argparse.ArgumentParser,
    *,
    credentials: bool = True,
    title: str = "AWS",
    region_help: str | None = None,
) -> argparse._ArgumentGroup:
    """The AWS connection flags shared by every command that talks to AWS.

    ``credentials=False`` leaves out the classic -a/-s/-t (unbundle's -s means --source).
    Returns the group, for a command's own AWS flags.
    """
    g = parser.add_argument_group(title)
    g.add_argument(
        "--profile", help="named profile from ~/.aws/config (default: AWS_PROFILE or default chain)"
    )
    g.add_argument(
        "--region", help=region_help or "AWS region (default: profile/AWS_REGION, else us-east-1)"
    )
    g.add_argument(
        "--endpoint-url",
        "--url",
        dest="endpoint_url",
        metavar="URL",
        help="custom endpoint, e.g. http://127.0.0.1:5000 (classic --url accepted)",
    )
    if credentials:
        g.add_argument(
            "-a",
            "--access-key",
            dest="access_key",
            metavar="AKID",
            help="access key id (prefer the environment or a profile)",
        )
        g.add_argument(
            "-s",
            "--secret-key",
            dest="secret_key",
            metavar="SECRET",
            help="secret key (visible in ps: prefer AWS_SECRET_ACCESS_KEY or a profile)",
        )
        g.add_argument(
            "-t",
            "--delegation-token",
            "--session-token",
            dest="session_token",
            metavar="TOKEN",
            help="session token for temporary credentials",
        )
    g.add_argument(
        "--max-attempts",
        type=count(1, 100, "attempt count"),
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help=f"botocore attempts per request (default {DEFAULT_MAX_ATTEMPTS})",
    )
    g.add_argument(
        "--retry-mode",
        choices=RETRY_MODES,
        default="standard",
        help="botocore retry mode (default standard)",
    )
    g.add_argument(
        "--connect-timeout",
        type=seconds,
        metavar="SECONDS",
        help=f"seconds to wait for a connection (default ${CONNECT_TIMEOUT_ENV} or "
        f"{DEFAULT_CONNECT_TIMEOUT:.0f})",
    )
    g.add_argument(
        "--read-timeout",
        type=seconds,
        metavar="SECONDS",
        help="seconds to wait for data on a connection before retrying "
        f"(default ${READ_TIMEOUT_ENV} "
        f"or {DEFAULT_READ_TIMEOUT:.0f})",
    )
    if credentials:
        g.add_argument("--sigv", choices=["2", "4"], default="4", help=argparse.SUPPRESS)
    return g


def add_jobs_option(
    parser: Any,
    *,
    help: str = "parallel transfers (default: %(default)s)",
    metavar: str | None = "N",
) -> None:
    parser.add_argument(
        "--jobs",
        type=count(1, MAX_JOBS, "job count"),
        default=DEFAULT_JOBS,
        metavar=metavar,
        help=help,
    )


def add_retry_option(parser: Any, *, help: str = "up to 5 tries per object") -> None:
    parser.add_argument("--retry", action="store_true", help=help)


def add_transfer_options(
    parser: Any,
    *,
    jobs_help: str = "parallel transfers (default: %(default)s)",
    retry_help: str = "up to 5 tries per object (on top of botocore's retries)",
) -> None:
    """--jobs and --retry: how many objects move at once and how often each is tried."""
    add_jobs_option(parser, help=jobs_help)
    add_retry_option(parser, help=retry_help)


def add_bucket_option(parser: argparse.ArgumentParser, *, multi: bool = False) -> None:
    if multi:
        # install: one -b, or with --regions one REGION=BUCKET[/PREFIX] per region (repeatable).
        parser.add_argument(
            "-b",
            "--bucket",
            action="append",
            metavar="BUCKET[/PREFIX]",
            help="bucket and optional key prefix; with --regions: REGION=BUCKET[/PREFIX] "
            "(repeatable)",
        )
    else:
        parser.add_argument(
            "-b",
            "--bucket",
            required=True,
            metavar="BUCKET[/PREFIX]",
            help="bucket and optional key prefix",
        )


def add_acl_options(parser: argparse.ArgumentParser, *, what: str = "canned ACL") -> None:
    """--acl and --enable-bucket-acls: what EC2 reads the bundle through, and the bucket side."""
    from ..transfer import ACLS

    parser.add_argument(
        "--acl", choices=ACLS, default=DEFAULT_ACL, help=f"{what} (default: %(default)s)"
    )
    parser.add_argument(
        "--enable-bucket-acls",
        action="store_true",
        help="if the bucket has ACLs disabled (BucketOwnerEnforced), set its Object Ownership "
        "to BucketOwnerPreferred so the ACL EC2 needs can be set",
    )


# --------------------------------------------------------------------------- flags → values


def aws_options_from_args(
    args: argparse.Namespace, warn: Callable[[str], None] | None = None
) -> AwsOptions:
    # bundler.aws (botocore) is imported only by the commands that use AWS: bundle-image and
    # unbundle declare AWS flags but must not pay for botocore at start-up.
    from ..aws import AwsOptions, check_region, endpoint_url_value

    if getattr(args, "sigv", "4") == "2" and warn:
        warn("--sigv 2 is not supported by S3 in new regions; signing with SigV4")
    if getattr(args, "secret_key", None) and warn:
        warn(
            "-s/--secret-key is visible to other users in 'ps'; "
            "prefer AWS_SECRET_ACCESS_KEY or --profile"
        )
    if bool(getattr(args, "access_key", None)) != bool(getattr(args, "secret_key", None)):
        raise UsageError(
            "-a/--access-key and -s/--secret-key must be given together "
            "(or neither: use the environment or a profile)"
        )
    attempts = getattr(args, "max_attempts", DEFAULT_MAX_ATTEMPTS)
    if attempts < 1:
        raise UsageError("--max-attempts must be at least 1")
    region = getattr(args, "region", None)
    if region is not None:
        check_region(region, "--region")
    connect, read = default_timeouts()
    if getattr(args, "connect_timeout", None) is not None:
        connect = timeout_value(str(args.connect_timeout), "--connect-timeout")
    if getattr(args, "read_timeout", None) is not None:
        read = timeout_value(str(args.read_timeout), "--read-timeout")
    return AwsOptions(
        profile=getattr(args, "profile", None),
        region=region,
        endpoint_url=endpoint_url_value(getattr(args, "endpoint_url", None)),
        access_key=getattr(args, "access_key", None),
        secret_key=getattr(args, "secret_key", None),
        session_token=getattr(args, "session_token", None),
        max_attempts=attempts,
        retry_mode=getattr(args, "retry_mode", "standard"),
        connect_timeout=connect,
        read_timeout=read,
    )


def attempts_from_args(args: argparse.Namespace) -> int:
    """Whole-object tries: classic --retry raises them (botocore retries each request anyway)."""
    return RETRY_ATTEMPTS if getattr(args, "retry", False) else DEFAULT_ATTEMPTS


def jobs_from_args(args: argparse.Namespace) -> int:
    return check_jobs(getattr(args, "jobs", DEFAULT_JOBS))


def transfer_from_args(args: argparse.Namespace, printer: Printer) -> TransferConfig:
    """--jobs, --retry and --acl (where the command has them) and the printer's progress."""
    return TransferConfig(
        jobs=jobs_from_args(args),
        attempts=attempts_from_args(args),
        acl=canned_acl(getattr(args, "acl", None) or DEFAULT_ACL),
        progress=printer.progress(),
    )


# --------------------------------------------------------------------------- the run's AWS access


class AwsContext:
    """Lazily made session and clients for one command, in the bucket's region."""

    def __init__(self, args: argparse.Namespace, printer: Printer) -> None:
        from ..aws import make_session

        self.opts: AwsOptions = aws_options_from_args(args, printer.warn)
        self.session = make_session(self.opts)
        self.transfer = transfer_from_args(args, printer)
        self.jobs = self.transfer.jobs
        self.attempts = self.transfer.attempts

    def s3(
        self, bucket: str, *, region: str | None = None, opts: AwsOptions | None = None
    ) -> S3Client:
        from ..aws import s3_client

        return s3_client(
            opts or self.opts,
            session=self.session,
            bucket=bucket,
            region=region,
            pool=self.transfer.pool_size,
        )

    def s3_in_bucket_region(
        self, bucket: str, *, must_exist: bool = True
    ) -> tuple[S3Client, str | None]:
        """A client in the bucket's region; an explicit --region that disagrees is an error,
        because the AMI must later be registered in the bucket's region."""
        from ..s3 import bucket_region

        client = self.s3(bucket)
        region = bucket_region(client, bucket)
        if region is None:
            if must_exist:
                raise S3Error(
                    f"bucket {bucket} does not exist (check -b, --region and --endpoint-url)"
                )
            return client, None
        if region != client.meta.region_name:
            if self.opts.region:
                raise S3Error(
                    f"bucket {bucket} is in region {region}, not {self.opts.region}: "
                    f"pass --region {region}"
                )
            log.info("bucket %s is in %s; using that region", bucket, region)
            client = self.s3(bucket, region=region)
        return client, region

    def ec2(self, region: str | None, *, opts: AwsOptions | None = None) -> EC2Client:
        from ..aws import ec2_client

        return ec2_client(opts or self.opts, session=self.session, region=region)


__all__ = [
    "AwsContext",
    "add_aws_options",
    "add_bucket_option",
    "add_jobs_option",
    "add_retry_option",
    "add_transfer_options",
    "attempts_from_args",
    "aws_options_from_args",
    "jobs_from_args",
    "transfer_from_args",
]
