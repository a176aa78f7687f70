"""AWS Organizations membership for the stand-in's AMI sharing (moto stores an image's
OrganizationArn / OrganizationalUnitArn launch permissions but never evaluates them).

As EC2 documents it ("Share an AMI with organizations and organizational units"): an image
shared with an organization may be launched — and is seen by DescribeImages — by every account
of that organization; shared with an OU, by every account in that OU or in any OU nested below
it. The owner need not be a member. The organizations and their trees are moto's own
(``moto.organizations``: ``create_organization``, ``create_organizational_unit``, accounts with
a ``parent_id``); ``join`` puts an existing account id into one as a test's setup, as its
administrator would by invitation (moto's CreateAccount only makes new random ids).

``permits(ami, account)`` is the one rule ``accounts``' DescribeImages uses. The ARNs a
ModifyImageAttribute names are checked against EC2's patterns (moto takes any string).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ORG_ARN = re.compile(r"^arn:aws[^:]*:organizations::[0-9]{12}:organization/o-[a-z0-9]{10,32}$")
OU_ARN = re.compile(r"^arn:aws[^:]*:organizations::[0-9]{12}:ou/o-[a-z0-9]{10,32}/"
                    r"ou-[0-9a-z]{4,32}-[0-9a-z]{8,32}$")
_installed = False


@dataclass(frozen=True)
class Membership:
    organization_arn: str
    ou_arns: tuple[str, ...]  # the account's OU and the OUs above it, innermost first


def _backends() -> Any:
    from moto.organizations.models import organizations_backends

    return organizations_backends


def _find(account: str) -> tuple[Any, Any] | None:
    """(the organization's backend, the account's FakeAccount) of the organization holding it."""
    for regions in list(dict.values(_backends())):
        for backend in list(dict.values(regions)):
            if backend.org is None:
                continue
            for member in backend.accounts:
                if member.id == account:
                    return backend, member
    return None


def membership(account: str) -> Membership | None:
    found = _find(account)
    if found is None:
        return None
    backend, member = found
    by_id = {ou.id: ou for ou in backend.ou}
    chain, parent = [], member.parent_id
    while parent in by_id and parent != backend.org.root_id:
        ou = by_id[parent]
        chain.append(ou.arn)
        parent = ou.parent_id
    return Membership(backend.org.arn, tuple(chain))


def permits(launch_permissions: Sequence[dict[str, str]], account: str) -> bool:
    """Whether these launch permissions let ``account`` launch the image (public aside)."""
    if {"UserId": account} in launch_permissions:
        return True
    member = membership(account)
    if member is None:
        return False
    return any(p.get("OrganizationArn") == member.organization_arn
               or p.get("OrganizationalUnitArn") in member.ou_arns for p in launch_permissions)


def join(account: str, *, master: str, ou_path: Sequence[str] = (),
         region: str = "us-east-1") -> Membership:
    """Put ``account`` into ``master``'s organization (made if it has none) at ``ou_path`` (OU
    names from the root, made when missing; empty: the root). Returns where it is now."""
    from moto.organizations.models import FakeAccount

    backend = _backends()[master]["aws"]
    if backend.org is None:
        backend.create_organization(region=region, FeatureSet="ALL")
    parent = backend.org.root_id
    for name in ou_path:
        child = next((ou for ou in backend.ou if ou.parent_id == parent and ou.name == name),
                     None)
        if child is None:
            child = backend.get_organizational_unit_by_id(backend.create_organizational_unit(
                ParentId=parent, Name=name)["OrganizationalUnit"]["Id"])
        parent = child.id
    found = _find(account)
    if found is not None and found[0] is not backend:
        raise ValueError(f"account {account} is in another organization already")
    if found is None:
        member = FakeAccount(backend.org, AccountName=f"member-{account}",
                             Email=f"{account}@example.com")
        member.id = account
        backend.accounts.append(member)
        _backends().master_accounts[account] = (master, "aws")
    else:
        member = found[1]
    member.parent_id = parent
    result = membership(account)
    assert result is not None
    return result


def leave(account: str) -> None:
    """Take ``account`` out of its organization again (a test's teardown)."""
    found = _find(account)
    if found is not None:
        found[0].accounts.remove(found[1])
        _backends().master_accounts.pop(account, None)


def _install_ec2() -> None:
    from moto.ec2.exceptions import InvalidParameterValueError
    from moto.ec2.models.amis import AmiBackend

    original = AmiBackend.validate_permission_targets

    def validate_permission_targets(self: Any, permissions: list[dict[str, str]]) -> None:
        original(self, permissions)
        for perm in permissions:
            for key, pattern in (("OrganizationArn", ORG_ARN),
                                 ("OrganizationalUnitArn", OU_ARN)):
                if key in perm and not pattern.match(perm[key]):
                    raise InvalidParameterValueError(
                        f"{perm[key]} (not an {key})")

    AmiBackend.validate_permission_targets = validate_permission_targets


def install() -> None:
    global _installed
    if not _installed:
        _install_ec2()
        _installed = True


__all__ = ["Membership", "install", "join", "leave", "membership", "permits"]
