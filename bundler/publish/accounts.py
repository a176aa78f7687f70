"""A botocore session per account of a plan, each proven to be that account before anything is done.

The caller's own credentials serve an account without a role; an account with ``role_arn`` is
reached through STS AssumeRole from them (session name ``ami-bundler-publish``, so CloudTrail
in the target account says who came in). Its credentials refresh themselves before they expire
(botocore's RefreshableCredentials calling AssumeRole again), so a publish that runs longer than
the role's session lasts does not fail half-way. STS is asked in the plan's home region
(regional endpoints: no dependency on us-east-1, and the region's own STS answers for it).

Every account is checked with GetCallerIdentity against the plan's account id: a role in the
wrong account, or the caller's own credentials where another account is meant, is a one-line
error naming the account and the role, never a publish into the wrong account.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import signalsafe
from ..aws import (
    BOTO_ERRORS,
    AwsOptions,
    common_error,
    error_code,
    quick_models,
    sts_client,
    translate_errors,
)
from ..errors import AccountError

if TYPE_CHECKING:
    from botocore.session import Session

log = logging.getLogger("bundler.publish.accounts")

SESSION_NAME = "ami-bundler-publish"
# The calls the tool makes need no more; a role allowing longer sessions is still refreshed.
DEFAULT_DURATION = 3600
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})


class AccountRef(Protocol):
    """What this module needs of a plan's account (``bundler.publish.plan`` has more)."""

    @property
    def id(self) -> str | None: ...  # None: whichever account the caller's credentials are

    @property
    def role_arn(self) -> str | None: ...


@dataclass(frozen=True)
class Account:
    """An account given directly (prune's or a test's inputs; plans bring their own)."""

    id: str | None
    role_arn: str | None = None
    external_id: str | None = None


@dataclass(frozen=True)
class AccountSession:
    """One account, reached and verified: ``session`` makes its S3 and EC2 clients."""

    account_id: str
    role_arn: str | None
    session: Session = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return describe(self.account_id, self.role_arn)


def describe(account_id: str | None, role_arn: str | None) -> str:
    """How messages name an account: ``account 210987654321 (role arn:…)``."""
    who = f"account {account_id}" if account_id else "the caller's account"
    return f"{who} (role {role_arn})" if role_arn else f"{who} (own credentials)"


def account_error(exc: BaseException, label: str, action: str) -> AccountError:
    """A boto failure reaching an account, as one line naming the account and the role."""
    common = common_error(exc, f"{label}: {action}", AccountError)
    if common is not None:
        return common  # type: ignore[return-value]
    code = error_code(exc)
    if code in _DENIED:
        return AccountError(f"{label}: {action} was denied ({code}): the role must exist and "
                            "its trust policy must allow the caller's account (sts:AssumeRole)")
    message = " ".join(str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")
                           or exc).split())
    return AccountError(f"{label}: {action} failed ({code or type(exc).__name__}): {message}")


def _assume_role_fetcher(sts: Any, role_arn: str, *, session_name: str, external_id: str | None,
                         duration: int) -> Callable[[], dict[str, Any]]:
    kwargs: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": session_name,
                              "DurationSeconds": duration}
    if external_id:
        kwargs["ExternalId"] = external_id

    def fetch() -> dict[str, Any]:
        # botocore calls this again whenever the credentials come within 15 min of expiring
        creds = sts.assume_role(**kwargs)["Credentials"]
        log.debug("assumed %s (expires %s)", role_arn, creds["Expiration"])
        return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"], "expiry_time": creds["Expiration"].isoformat()}

    return fetch


def _role_session(base: Session, fetch: Callable[[], dict[str, Any]],
                  region: str) -> Session:
    import botocore.session
    from botocore.credentials import (
        CredentialProvider,
        CredentialResolver,
        RefreshableCredentials,
    )

    credentials = RefreshableCredentials.create_from_metadata(
        metadata=fetch(), refresh_using=fetch, method="assume-role")

    class _Assumed(CredentialProvider):
        METHOD = "assume-role"

        def load(self) -> RefreshableCredentials:
            return credentials

    core = botocore.session.Session()
    core.register_component("credential_provider", CredentialResolver([_Assumed()]))
    quick_models(core)
    core.set_config_variable("region", base.get_config_variable("region") or region)
    return core


def caller_account(session: Session, opts: AwsOptions, region: str) -> str:
    """The account the session's credentials belong to (GetCallerIdentity)."""
    return str(sts_client(opts, session=session, region=region).get_caller_identity()["Account"])


def open_account(base: Session, account: AccountRef, opts: AwsOptions, *, region: str,
                 session_name: str = SESSION_NAME,
                 duration: int = DEFAULT_DURATION) -> AccountSession:
    """``account``'s session from the caller's ``base`` session, verified; AccountError if not."""
    role_arn = account.role_arn
    label = describe(account.id, role_arn)
    session = base
    if role_arn:
        external_id = getattr(account, "external_id", None)
        with translate_errors(lambda exc: account_error(exc, label, "AssumeRole")):
            sts = sts_client(opts, session=base, region=region)
            fetch = _assume_role_fetcher(sts, role_arn, session_name=session_name,
                                         external_id=external_id, duration=duration)
            session = _role_session(base, fetch, region)
    with translate_errors(lambda exc: account_error(exc, label, "GetCallerIdentity")):
        actual = caller_account(session, opts, region)
    if account.id is not None and actual != account.id:
        how = (f"the role is in account {actual}: fix the plan's id or role_arn" if role_arn else
               f"the credentials are account {actual}'s: give this account a role_arn or run "
               "with its credentials")
        raise AccountError(f"{label}: wrong account: {how}")
    log.info("%s: verified as account %s", label, actual)
    return AccountSession(actual, role_arn, session)


@dataclass
class OpenedAccounts:
    """Every account reached (by the plan's id, or the caller's own id for ``id=None``) and
    every one that was not, with its one-line error: one failing does not stop the others."""

    sessions: dict[str, AccountSession]
    failed: dict[str, AccountError]


def open_accounts(base: Session, accounts: Sequence[AccountRef], opts: AwsOptions, *,
                  region: str, session_name: str = SESSION_NAME,
                  duration: int = DEFAULT_DURATION) -> OpenedAccounts:
    from ..concurrency import run_all

    def one(account: AccountRef) -> AccountSession:
        return open_account(base, account, opts, region=region, session_name=session_name,
                            duration=duration)

    tasks: list[Callable[[], AccountSession]] = [functools.partial(one, a) for a in accounts]
    done = run_all(tasks, name="ami-bundler-accounts")
    opened = OpenedAccounts({}, {})
    for account, future in zip(accounts, done, strict=True):
        error = signalsafe.exception(future)
        if error is None:
            result = signalsafe.result(future)
            opened.sessions[account.id or result.account_id] = result
        elif isinstance(error, AccountError):
            opened.failed[account.id or "self"] = error
        elif isinstance(error, BOTO_ERRORS):  # pragma: no cover - translated above
            opened.failed[account.id or "self"] = account_error(
                error, describe(account.id, account.role_arn), "access")
        else:
            raise error
    return opened


__all__ = ["Account", "AccountRef", "AccountSession", "DEFAULT_DURATION", "OpenedAccounts",
           "SESSION_NAME", "account_error", "caller_account", "describe", "open_account",
           "open_accounts"]
