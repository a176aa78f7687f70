"""An AMI's settings after RegisterImage (deprecation, deregistration protection, launch
permissions): one call each in bundler.ec2, whose failure says whether the AMI was just
registered (it exists now without the setting: the user must hear of it) or already existed."""
from __future__ import annotations

import datetime

import boto3
import pytest
from botocore.stub import Stubber

from bundler.ec2 import (
    RegisterOptions,
    add_launch_permissions,
    protect_from_deregistration,
    register_image,
    set_deprecation,
)
from bundler.errors import EC2Error
from bundler.publish.engine import apply_changes
from bundler.publish.state import Change

AT = datetime.datetime(2027, 1, 1, tzinfo=datetime.timezone.utc)
IMAGE = "ami-0123456789abcdef0"


@pytest.fixture
def ec2():
    client = boto3.client("ec2", region_name="eu-west-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def test_a_failed_setting_after_register_names_the_new_ami_and_the_ways_out(ec2):
    client, stub = ec2
    stub.add_response("register_image", {"ImageId": IMAGE},
                      {"ImageLocation": "b/p/img.manifest.xml", "Name": "web"})
    stub.add_client_error("enable_image_deprecation", "InvalidParameterValue", "bad time",
                          expected_params={"ImageId": IMAGE, "DeprecateAt": AT})
    options = RegisterOptions(name="web", deprecate_at=AT)
    with pytest.raises(EC2Error) as caught:
        register_image(client, "b/p/img.manifest.xml", options)
    message = str(caught.value)
    assert message == (f"registered {IMAGE} but could not set its deprecation time: "
                       f"InvalidParameterValue: bad time; fix it and set it on {IMAGE} with the "
                       "aws CLI, or deregister it")


@pytest.mark.parametrize("call, op, what", [
    (lambda c, **kw: set_deprecation(c, IMAGE, AT, **kw), "enable_image_deprecation",
     "set its deprecation time"),
    (lambda c, **kw: protect_from_deregistration(c, IMAGE, **kw),
     "enable_image_deregistration_protection", "turn on deregistration protection"),
    (lambda c, **kw: add_launch_permissions(c, IMAGE, ["111122223333"], **kw),
     "modify_image_attribute", "set launch permissions"),
])
def test_each_setting_words_its_failure_by_whether_the_ami_is_new(ec2, call, op, what):
    client, stub = ec2
    stub.add_client_error(op, "UnauthorizedOperation", "no")
    with pytest.raises(EC2Error, match=f"^{what} on {IMAGE}: access denied"):
        call(client)
    stub.add_client_error(op, "InvalidAMIID.Unavailable", "gone")
    with pytest.raises(EC2Error, match=f"^registered {IMAGE} but could not {what}: "
                                       "InvalidAMIID.Unavailable: gone; fix it"):
        call(client, just_registered=True)


def test_sharing_with_all_under_block_public_access_is_one_clear_line(ec2):
    client, stub = ec2
    for _ in range(2):
        stub.add_client_error("modify_image_attribute", "OperationNotPermitted", "blocked")
    with pytest.raises(EC2Error, match=f"^{IMAGE}: block public access for AMIs is on in "
                                       "eu-west-1"):
        add_launch_permissions(client, IMAGE, ["all"])
    with pytest.raises(EC2Error, match=f"^registered {IMAGE} but block public access"):
        add_launch_permissions(client, IMAGE, ["all"], just_registered=True)


def test_publish_mends_an_existing_ami_through_the_same_calls(ec2):
    client, stub = ec2
    stub.add_response("enable_image_deprecation", {"Return": True},
                      {"ImageId": IMAGE, "DeprecateAt": AT})
    stub.add_response("enable_image_deregistration_protection", {"Return": "enabled"},
                      {"ImageId": IMAGE})
    apply_changes(client, IMAGE, [Change("deprecate", AT.isoformat()), Change("protect", "")])
    stub.add_client_error("enable_image_deregistration_protection", "InvalidAMIID.NotFound", "x")
    with pytest.raises(EC2Error, match=f"^turn on deregistration protection on {IMAGE}: "):
        apply_changes(client, IMAGE, [Change("protect", "")])
