"""How transfers run: parallel jobs, whole-object attempts, per-request limits, the canned
ACL and progress — the defaults and limits defined once, and ``TransferConfig`` carrying one
run's choices.

A leaf module (no boto imports): the CLI declares its flags from these constants without
paying for botocore in commands that never talk to AWS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from .errors import UsageError
from .progress import NULL_PROGRESS, ProgressListener

# Parallel transfers (and parts in flight: memory ~ (jobs + 2) x 10 MiB). 10 is what the AWS SDKs'
# transfer managers default to (boto3/s3transfer TransferConfig max_concurrency, the AWS CLI's
# max_concurrent_requests, .NET TransferUtility, PHP S3TransferManager); through 16 MiB/s
# streams it moved random-512M.img's install from 7.5-8.7 s (8) to 6.9-7.3 s (load 8).
DEFAULT_JOBS = 10
MAX_JOBS = 256
DEFAULT_ATTEMPTS = 3
RETRY_ATTEMPTS = 5  # classic --retry: up to 5 tries per object
# The canned ACLs a bundle may get: EC2 reads parts through aws-exec-read; public-read is the
# classic tools' other choice.
CannedAcl = Literal["aws-exec-read", "public-read"]
DEFAULT_ACL: CannedAcl = "aws-exec-read"
ACLS: tuple[CannedAcl, ...] = ("aws-exec-read", "public-read")
# How a bundle moves between buckets: CopyObject (no bytes through this machine), a GET → PUT
# stream, or "auto": server-side within one partition and endpoint, streamed otherwise.
COPY_MODES = ("auto", "server", "stream")

# Per request (botocore): attempts, retry mode, and timeouts. Every request is bounded: a
# stalled connection (accepted, never answered) must end in a ReadTimeoutError that botocore
# retries, never in a hang. Overridable per run (flags) or per environment (tests and chaos
# runs set them short).
DEFAULT_MAX_ATTEMPTS = 8
RETRY_MODES = ("standard", "adaptive", "legacy")
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
CONNECT_TIMEOUT_ENV = "AMI_BUNDLER_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "AMI_BUNDLER_READ_TIMEOUT"
MAX_TIMEOUT = 3600.0


def timeout_value(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number of seconds, got {text!r}") from None
    if not 0 < value <= MAX_TIMEOUT:  # also rejects nan
        raise UsageError(
            f"{what} must be more than 0 and at most {MAX_TIMEOUT:.0f} seconds, got {text!r}"
        )
    return value


def default_timeouts() -> tuple[float, float]:
    """(connect, read) seconds: the environment's $AMI_BUNDLER_CONNECT_TIMEOUT /
    $AMI_BUNDLER_READ_TIMEOUT, else 10 s / 60 s."""
    connect, read = DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT
    if os.environ.get(CONNECT_TIMEOUT_ENV):
        connect = timeout_value(os.environ[CONNECT_TIMEOUT_ENV], f"${CONNECT_TIMEOUT_ENV}")
    if os.environ.get(READ_TIMEOUT_ENV):
        read = timeout_value(os.environ[READ_TIMEOUT_ENV], f"${READ_TIMEOUT_ENV}")
    return connect, read


def canned_acl(text: str) -> CannedAcl:
    for acl in ACLS:
        if text == acl:
            return acl
    raise UsageError(f"--acl must be one of {', '.join(ACLS)}, not {text!r}")


def check_jobs(jobs: int | None) -> int:
    if jobs is None or not 1 <= jobs <= MAX_JOBS:
        raise UsageError(f"--jobs must be between 1 and {MAX_JOBS}")
    return int(jobs)


@dataclass(frozen=True)
class TransferConfig:
    """One run's transfer choices (s3transfer's ``TransferConfig``): how many objects move at
    once, how often each is tried, the ACL the objects get, and who hears about progress.
    Connection limits (per-request attempts, timeouts) are ``aws.AwsOptions``: they shape the
    client, not the transfer."""

    jobs: int = DEFAULT_JOBS
    attempts: int = DEFAULT_ATTEMPTS
    acl: CannedAcl = DEFAULT_ACL
    progress: ProgressListener = field(default=NULL_PROGRESS, compare=False)

    def __post_init__(self) -> None:
        check_jobs(self.jobs)
        if self.attempts < 1:
            raise UsageError(f"attempts must be at least 1, not {self.attempts}")
        canned_acl(self.acl)

    @property
    def pool_size(self) -> int:
        """HTTP connections a client needs: every job plus the calls around them."""
        return self.jobs + 4


# The default run: shared as a default argument (the config is frozen).
DEFAULT_TRANSFER = TransferConfig()
