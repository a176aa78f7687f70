"""Fixtures for the S3/EC2 tests (integration and reliability alike; a pytest plugin loaded by
tests/conftest.py): the strict local AWS on 127.0.0.1 (HTTP, server mode), fake credentials with
no real AWS configuration read, keys, buckets, a fault proxy, bundles already in S3."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.bundles import make_fake_bundle
from tests.support.cli import KIB, MIB, install_argv, run, sparse_image, upload
from tests.support.faultproxy import FaultProxy
from tests.support.s3kit import plain_client
from tests.support.strictaws import StrictEndpoint

REGION_B = "af-south-1"  # the stand-in EC2 has a key pair of its own there (an opt-in region)
# The regions cert_dir has EC2 keys for: the commercial partition's certificate and China's own.
CERT_REGIONS = ("us-east-1", "eu-west-1", "cn-north-1")


@pytest.fixture(scope="session")
def moto_server(strict_aws: StrictEndpoint) -> str:
    return strict_aws.url


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Fake credentials; no ~/.aws files, no instance metadata, no proxies, no endpoint env."""
    nowhere = tmp_path_factory.getbasetemp() / "no-aws-config"
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_EC2",
                "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def endpoint(moto_server: str, aws_env: None) -> str:
    return moto_server


@pytest.fixture
def s3(endpoint: str):
    return plain_client("s3", endpoint)


@pytest.fixture
def ec2(endpoint: str):
    return plain_client("ec2", endpoint)


@pytest.fixture
def bucket(s3) -> str:
    """A bucket prepared for bundles: ACLs enabled (EC2 reads through the aws-exec-read grant)."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name, ObjectOwnership="ObjectWriter")
    return name


@pytest.fixture
def proxy(moto_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server) as p:
        yield p


@pytest.fixture(scope="session")
def user_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private key, certificate) made once per session."""
    from bundler import keys as keylib

    d = tmp_path_factory.mktemp("keys")
    key, cert = d / "user-key.pem", d / "user-cert.pem"
    keylib.keygen(key, cert)
    return key, cert


@pytest.fixture(scope="session")
def ec2_keys(strict_aws: StrictEndpoint) -> tuple[Path, Path]:
    """(private key, certificate) of the stand-in EC2 in us-east-1: bundles wrapped to it pass
    RegisterImage's checks there."""
    return strict_aws.keys.key_path("us-east-1"), strict_aws.keys.cert_path("us-east-1")


@pytest.fixture(scope="session")
def ec2_cert_dir(strict_aws: StrictEndpoint) -> Path:
    """The stand-in EC2's certificates under their classic names (for --ec2cert-dir)."""
    return strict_aws.keys.cert_dir


@pytest.fixture(scope="session")
def signing_key(user_keys):
    from bundler import keys as keylib

    return keylib.load_private_key(user_keys[0])


@pytest.fixture(scope="session")
def cert_dir(strict_aws: StrictEndpoint) -> tuple[Path, dict[str, Path]]:
    """The stand-in EC2's certificate directory and its private key per region of CERT_REGIONS:
    the commercial cert, and China's own (a different key pair); RegisterImage in each region
    decrypts with that region's key."""
    keys = strict_aws.keys
    return keys.cert_dir, {r: keys.key_path(r) for r in CERT_REGIONS}


@pytest.fixture(scope="session")
def region_b(strict_aws: StrictEndpoint) -> SimpleNamespace:
    """Region B's EC2 key pair: the stand-in's, so RegisterImage there can decrypt a copy."""
    return SimpleNamespace(cert_path=strict_aws.keys.cert_path(REGION_B),
                           key_path=strict_aws.keys.key_path(REGION_B))


@pytest.fixture
def source_bundle(capsys, endpoint, s3, bucket, tmp_path, user_keys, ec2_keys):
    """A real bundle (3 parts) installed in ``bucket/src`` in us-east-1: (image SHA-1, parts)."""
    image = tmp_path / "disk.img"
    digest = sparse_image(image, 24 * MIB)
    argv = install_argv(image, user_keys, endpoint, bucket=f"{bucket}/src", ec2cert=ec2_keys[1],
                        name="disk", register=False)
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return digest, json.loads(out)["parts"]


@pytest.fixture
def reg_bundle(capsys, endpoint, bucket, tmp_path, signing_key):
    """A 3-part bundle ``reg`` uploaded to ``bucket/amis``, ready to register."""
    bundle = make_fake_bundle(tmp_path / "b", "reg", [64 * KIB, 64 * KIB, 10 * KIB], signing_key)
    code, _, err = upload(capsys, endpoint, f"{bucket}/amis", bundle)
    assert code == 0, err
    return bundle
