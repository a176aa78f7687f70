"""aws.make_session: botocore sessions made as boto3.Session made them (profile, explicit keys,
region, the same errors), and no path of the product imports boto3 (its import and
s3transfer's cost ~20 ms of every command's start-up)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap

import botocore.session
import pytest

from bundler.aws import AwsOptions, make_session, s3_client, session_region
from bundler.errors import UsageError

CONFIG = """\
[default]
region = eu-west-2
[profile other]
region = ap-south-1
aws_access_key_id = AKIDOTHER
aws_secret_access_key = othersecret
"""


@pytest.fixture
def aws_config(monkeypatch, tmp_path):
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    (tmp_path / "config").write_text(CONFIG)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _frozen(session):
    creds = session.get_credentials()
    return creds and (creds.method, *creds.get_frozen_credentials()[:3])


def test_profile_keys_and_region_as_boto3_session_took_them(aws_config):
    plain = make_session(AwsOptions())
    assert type(plain) is botocore.session.Session
    assert plain.get_config_variable("region") == "eu-west-2" and _frozen(plain) is None
    other = make_session(AwsOptions(profile="other"))
    assert other.profile == "other" and other.get_config_variable("region") == "ap-south-1"
    assert _frozen(other) == ("config-file", "AKIDOTHER", "othersecret", None)
    given = make_session(AwsOptions(profile="other", region="us-west-2", access_key="AKIDX",
                                    secret_key="sx", session_token="tok"))
    assert given.get_config_variable("region") == "us-west-2"
    assert _frozen(given) == ("explicit", "AKIDX", "sx", "tok")
    assert session_region(given, AwsOptions()) == "us-west-2"


def test_profile_not_found_is_the_same_usage_error(aws_config, monkeypatch):
    with pytest.raises(UsageError, match="AWS profile 'nope' not found in the AWS config files"):
        make_session(AwsOptions(profile="nope"))
    monkeypatch.setenv("AWS_PROFILE", "gone")
    with pytest.raises(UsageError, match="not found in the AWS config files"):
        make_session(AwsOptions())


def test_requests_say_botocore_and_ami_bundler(aws_config):
    opts = AwsOptions(region="us-east-1", access_key="AKIDX", secret_key="sx")
    client = s3_client(opts, session=make_session(opts))
    sent = []

    class Stop(Exception):
        pass

    def capture(request, **kwargs):
        sent.append(request.headers["User-Agent"].decode())
        raise Stop

    client.meta.events.register("before-send.s3.ListBuckets", capture)
    with pytest.raises(Stop):
        client.list_buckets()
    [agent] = sent
    assert agent.startswith("Botocore/") and agent.endswith("ami-bundler")
    assert "Boto3" not in agent


NO_BOTO3 = textwrap.dedent("""
    import datetime, sys
    from bundler.aws import AwsOptions, ec2_client, make_session, s3_client, sts_client
    from bundler.publish.accounts import _role_session
    import bundler.cli.install, bundler.cli.publish, bundler.cli.prune

    opts = AwsOptions(region="eu-west-1", access_key="AKIDX", secret_key="sx",
                      endpoint_url="http://127.0.0.1:9")
    session = make_session(opts)
    clients = [s3_client(opts, session=session, bucket="b"), ec2_client(opts, session=session),
               sts_client(opts, session=session)]
    expiry = (datetime.datetime.now(datetime.timezone.utc)
              + datetime.timedelta(hours=1)).isoformat()
    fetch = lambda: {"access_key": "AKIDR", "secret_key": "sr", "token": "tr",
                     "expiry_time": expiry}
    role = _role_session(session, fetch, "us-east-1")
    clients.append(s3_client(opts, session=role))
    assert role.get_config_variable("region") == "eu-west-1", role
    assert role.get_credentials().get_frozen_credentials().access_key == "AKIDR"
    print(sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "s3transfer")))
""")


def test_no_product_path_imports_boto3():
    # A subprocess: other tests (and their plain boto3 clients) have imported boto3 here.
    env = {**os.environ, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_EC2_METADATA_DISABLED": "true"}
    env.pop("AWS_PROFILE", None)
    out = subprocess.run([sys.executable, "-c", NO_BOTO3], capture_output=True, text=True,
                         env=env, check=True)
    assert out.stdout.strip() == "[]", out.stderr
    # install --help as ``ami-bundler`` parses it (sys.modules: -X importtime does not see
    # importlib.import_module, which loads the command modules)
    code = ("import sys, bundler.cli\nbundler.cli.main(['install', '--help'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 's3transfer')),"
            " 'bundler.cli.install' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "[] True", out.stdout


def test_role_sessions_keep_the_base_sessions_region(aws_config, monkeypatch):
    from bundler.publish.accounts import _role_session

    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    creds = {"access_key": "AKIDR", "secret_key": "sr", "token": "tr",
             "expiry_time": expiry.isoformat()}
    base = make_session(AwsOptions(profile="other"))
    role = _role_session(base, lambda: creds, "us-east-1")
    assert role.get_config_variable("region") == "ap-south-1"
    assert _frozen(role) == ("assume-role", "AKIDR", "sr", "tr")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)  # a base without a region: the home one
    no_region = make_session(AwsOptions())
    assert no_region.get_config_variable("region") is None
    assert _role_session(no_region, lambda: creds, "us-east-1").get_config_variable(
        "region") == "us-east-1"
