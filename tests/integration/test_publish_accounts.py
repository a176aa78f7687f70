"""bundler.publish.accounts against the strict local AWS with two accounts: sessions per
account, AssumeRole with refreshing credentials, every account proven by GetCallerIdentity."""

from __future__ import annotations

import uuid

import pytest
from botocore.session import Session

from bundler.aws import AwsOptions, make_session, s3_client
from bundler.errors import AccountError
from bundler.publish.accounts import Account, open_account, open_accounts


@pytest.fixture
def base(endpoint) -> Session:
    return make_session(AwsOptions(region="us-east-1"))  # the caller's, as the CLI makes it


@pytest.fixture
def opts(endpoint) -> AwsOptions:
    return AwsOptions(endpoint_url=endpoint, region="us-east-1", max_attempts=1)


def test_own_account_and_an_assumed_one(base, opts, strict_aws_accounts):
    own = open_account(base, Account(None), opts, region="us-east-1")
    assert own.account_id == strict_aws_accounts.base and own.session is base
    named = open_account(base, Account(strict_aws_accounts.base), opts, region="us-east-1")
    assert named.account_id == strict_aws_accounts.base
    other = open_account(base, Account(strict_aws_accounts.second, strict_aws_accounts.role_arn),
                         opts, region="eu-west-1")
    assert (other.account_id, other.role_arn) == (strict_aws_accounts.second,
                                                  strict_aws_accounts.role_arn)
    bucket = f"acct-{uuid.uuid4().hex[:12]}"  # what the session makes is the second account's
    s3_client(opts, session=other.session).create_bucket(Bucket=bucket)
    names = [b["Name"] for b in s3_client(opts, session=other.session).list_buckets()["Buckets"]]
    assert bucket in names
    mine = s3_client(opts, session=base).list_buckets()["Buckets"]
    assert bucket not in [b["Name"] for b in mine]


def test_credentials_refresh_before_they_expire(base, opts, strict_aws_accounts):
    # 15-minute sessions are inside botocore's refresh window: every use asks STS again
    other = open_account(base, Account(strict_aws_accounts.second, strict_aws_accounts.role_arn),
                         opts, region="us-east-1", duration=900)
    creds = other.session.get_credentials()
    first = creds.get_frozen_credentials().access_key
    second = creds.get_frozen_credentials().access_key
    assert first != second
    assert s3_client(opts, session=other.session).list_buckets()["ResponseMetadata"]


@pytest.mark.parametrize("case", ["untrusted", "missing", "wrong-id", "own-for-other"])
def test_refusals_are_one_line_naming_account_and_role(base, opts, strict_aws_accounts, case):
    second = strict_aws_accounts.second
    account, expected = {
        "untrusted": (Account(second, strict_aws_accounts.untrusted_role_arn),
                      "AssumeRole was denied (AccessDenied)"),
        "missing": (Account(second, f"arn:aws:iam::{second}:role/nope"),
                    "AssumeRole was denied (AccessDenied)"),
        "wrong-id": (Account("111122223333", strict_aws_accounts.role_arn),
                     f"wrong account: the role is in account {second}"),
        "own-for-other": (Account(second), "wrong account: the credentials are account "
                          f"{strict_aws_accounts.base}'s"),
    }[case]
    with pytest.raises(AccountError) as exc:
        open_account(base, account, opts, region="us-east-1")
    message = str(exc.value)
    assert "\n" not in message and expected in message
    assert message.startswith(f"account {account.id} (")
    assert (account.role_arn or "own credentials") in message
    assert exc.value.exit_code == 4 and exc.value.code == "account"


def test_one_failing_account_does_not_stop_the_others(base, opts, strict_aws_accounts):
    second = strict_aws_accounts.second
    opened = open_accounts(base, [Account(None), Account(second, strict_aws_accounts.role_arn),
                                  Account("111122223333", strict_aws_accounts.untrusted_role_arn)],
                           opts, region="us-east-1")
    assert sorted(opened.sessions) == sorted([strict_aws_accounts.base, second])
    assert list(opened.failed) == ["111122223333"]
    assert "AssumeRole was denied" in str(opened.failed["111122223333"])
