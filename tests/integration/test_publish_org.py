"""publish's Organization / OU launch permissions, evaluated as EC2 does in the strict local
AWS (tests/support/strictaws/organizations.py): an AMI shared with an OU is seen by the
accounts in that OU (DescribeImages ExecutableUsers=self, ImageIds) and by no other; shared
with the organization, by every member and still by no outsider."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.integration.test_publish import assumed
from tests.support.cli import run
from tests.support.strictaws import organizations
from tests.support.strictaws.accounts import BASE_ACCOUNT, SECOND_ACCOUNT

REGION = "us-east-1"
OTHER_MEMBER = "555566667777"  # in the organization, in another OU
OUTSIDER = "444455556666"  # in no organization


def _sees(session: boto3.Session, endpoint: str, image_id: str) -> tuple[bool, bool]:
    """(listed with ExecutableUsers=self, found by its id) for that account."""
    ec2 = session.client("ec2", endpoint_url=endpoint, region_name=REGION)
    listed = image_id in {i["ImageId"] for i in ec2.describe_images(
        ExecutableUsers=["self"])["Images"]}
    try:
        found = [i["ImageId"] for i in ec2.describe_images(ImageIds=[image_id])["Images"]]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "InvalidAMIID.NotFound", exc
        found = []
    return listed, found == [image_id]


@pytest.fixture
def org(strict_aws):
    web = organizations.join(SECOND_ACCOUNT, master=BASE_ACCOUNT, ou_path=("web",))
    organizations.join(OTHER_MEMBER, master=BASE_ACCOUNT, ou_path=("db",))
    roles = {a: strict_aws.make_role(a) for a in (SECOND_ACCOUNT, OTHER_MEMBER, OUTSIDER)}
    yield web, roles
    organizations.leave(SECOND_ACCOUNT)
    organizations.leave(OTHER_MEMBER)


def test_an_ou_share_reaches_its_members_only_and_an_org_share_every_member(
        capsys, org, endpoint, tmp_path, user_keys, ec2_cert_dir):
    web, roles = org
    assert organizations.membership(OUTSIDER) is None
    tag = uuid.uuid4().hex[:8]
    image = tmp_path / "org.img"
    with open(image, "wb") as fh:
        fh.truncate(1 << 20)
        fh.write(b"org share " * 1000)
    key, cert = user_keys
    plan = tmp_path / "plan.toml"

    def publish(*shares: str) -> dict:
        plan.write_text(f'name = "org-{tag}"\nami_name = "org-{tag}"\n'
                        f'regions = ["{REGION}"]\nbucket = "org-{tag}-{{region}}"\n'
                        f"launch_permissions = {json.dumps(list(shares))}\n"
                        f'[source]\nimage = "{image.name}"\n'
                        f'[bundle]\ncert = "{cert}"\nprivate_key = "{key}"\n'
                        f'[[accounts]]\nid = "{BASE_ACCOUNT}"\n')
        code, out, err = run(capsys, "publish", str(plan), "--endpoint-url", endpoint,
                             "--ec2cert-dir", str(ec2_cert_dir), "--json")
        assert code == 0, err
        return json.loads(out)

    [ou_arn] = web.ou_arns[:1]
    result = publish(ou_arn)
    [target] = result["targets"]
    image_id = target["image_id"]
    assert f"share {ou_arn}" in target["changes"]
    sessions = {a: assumed(endpoint, r) for a, r in roles.items()}
    assert _sees(sessions[SECOND_ACCOUNT], endpoint, image_id) == (True, True)
    assert _sees(sessions[OTHER_MEMBER], endpoint, image_id) == (False, False)
    assert _sees(sessions[OUTSIDER], endpoint, image_id) == (False, False)

    # The organization too: the re-run adds only that share; every member sees it now.
    result = publish(ou_arn, web.organization_arn)
    [target] = result["targets"]
    assert target["image_id"] == image_id
    assert target["changes"] == [f"share {web.organization_arn}"]
    assert _sees(sessions[OTHER_MEMBER], endpoint, image_id) == (True, True)
    assert _sees(sessions[SECOND_ACCOUNT], endpoint, image_id) == (True, True)
    assert _sees(sessions[OUTSIDER], endpoint, image_id) == (False, False)


def test_the_stand_in_refuses_a_malformed_organization_arn(ec2, tmp_path):
    from moto.ec2.models import ec2_backends

    image = ec2_backends[BASE_ACCOUNT][REGION].register_image(name=f"x-{uuid.uuid4().hex[:6]}")
    with pytest.raises(ClientError) as info:
        ec2.modify_image_attribute(ImageId=image.id, LaunchPermission={"Add": [
            {"OrganizationArn": "o-abcdefghij"}]})
    assert info.value.response["Error"]["Code"] == "InvalidParameterValue"
