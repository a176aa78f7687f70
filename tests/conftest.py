"""Shared fixtures: throwaway RSA key pairs (made per test session, never committed)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.keypairs import KeyPair, make_key_pair
from tests.support.threads import no_thread_left  # noqa: F401 - a fixture for every test

# A runner may start the suite with SIGINT/SIGHUP ignored (a background job without job
# control, nohup). The CLI rightly keeps an ignored signal ignored, so the tests that deliver
# signals to it would see runs carry on. They test delivery: give the suite, and every child it
# forks or starts, the signals' ordinary dispositions.
for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_signum) is signal.SIG_IGN:
        signal.signal(_signum, signal.default_int_handler if _signum == signal.SIGINT
                      else signal.SIG_DFL)

# The S3/EC2 fixtures (strict local AWS, buckets, keys), for integration and reliability tests.
pytest_plugins = ["tests.support.awsfixtures"]

# The golden vectors live in the shared folder beside the repository (never copied into it).
GOLDEN_DIR = Path(os.environ.get("AMI_BUNDLER_VECTORS",
                                 Path(__file__).resolve().parents[1].parent / "shared" / "vectors"))


@pytest.fixture(scope="session")
def user_key_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key_pair(tmp_path_factory.mktemp("user-keys"), "user")


@pytest.fixture(scope="session")
def ec2_key_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key_pair(tmp_path_factory.mktemp("ec2-keys"), "ec2")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Bundles made by the classic Ruby tools (see its README.md)."""
    if not (GOLDEN_DIR / "tiny" / "tiny.manifest.xml").is_file():
        message = f"golden vectors not found in {GOLDEN_DIR} (set AMI_BUNDLER_VECTORS)"
        # CI must compare against the classic tools' bundles: a missing checkout is a failure
        # there, not a quiet skip. Locally (a worktree without ../shared) it stays a skip.
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI is set, so the interop checks cannot be skipped")
        pytest.skip(message)
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def strict_aws() -> Iterator[object]:
    """The strict local AWS (tests/support/strictaws: moto patched to behave as AWS does where
    bundles break) on 127.0.0.1, one per session; its ``keys`` are the stand-in EC2's key pairs."""
    from tests.support.strictaws import StrictEndpoint

    endpoint = StrictEndpoint()
    endpoint.start()
    yield endpoint
    endpoint.stop()


@dataclass(frozen=True)
class StrictAccounts:
    """Two accounts in the strict local AWS: ``base`` (the fake ``testing`` credentials' account)
    and ``second``, reached by assuming ``role_arn`` (its trust policy names ``base``);
    ``untrusted_role_arn`` exists in ``second`` but trusts nobody (AssumeRole → AccessDenied)."""

    endpoint: object
    base: str
    second: str
    role_arn: str
    untrusted_role_arn: str


@pytest.fixture(scope="session")
def strict_aws_accounts(strict_aws: Any) -> StrictAccounts:
    from tests.support.strictaws import accounts

    role = strict_aws.make_role(accounts.SECOND_ACCOUNT, accounts.PUBLISH_ROLE)
    untrusted = strict_aws.make_role(accounts.SECOND_ACCOUNT, accounts.UNTRUSTED_ROLE, trusted=())
    return StrictAccounts(strict_aws, accounts.BASE_ACCOUNT, accounts.SECOND_ACCOUNT, role,
                          untrusted)
