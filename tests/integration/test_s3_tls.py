"""install and unbundle --from-s3 over HTTPS, the way AWS is reached: the strict local AWS served
with TLS (a self-signed certificate for 127.0.0.1, trusted through ``AWS_CA_BUNDLE``, so botocore
verifies it as it verifies AWS's).

Over plain HTTP, which every other test uses, botocore hashes each body for the signature; over
HTTPS it does not, and the bodies go out through ``ssl``'s ``sendall``: a part PUT whole, and a
piece of a split part, whose body is a file whose reads are views of the part
(``bundler.s3.multipart``)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.support.cli import MIB, install_argv, run
from tests.support.strictaws import StrictEndpoint


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    endpoint = StrictEndpoint(tls=(cert, key))
    url = endpoint.start()
    try:
        yield url, cert
    finally:
        endpoint.stop()


def test_install_and_unbundle_from_s3_over_https(capsys, monkeypatch, aws_env, tls_endpoint,
                                                 tmp_path, user_keys, ec2_keys):
    url, cert = tls_endpoint
    assert url.startswith("https://127.0.0.1:")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", verify=str(cert),
                      aws_access_key_id="testing", aws_secret_access_key="testing",
                      config=Config(s3={"addressing_style": "path"}))
    bucket = f"tls-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, ObjectOwnership="ObjectWriter")
    image = tmp_path / "disk.img"
    # 26 MiB that do not compress: two full 10 MiB parts and a short last one over 5 MiB,
    # which goes in two pieces (the tail is always split) while the others may go whole.
    data = hashlib.shake_256(b"tls").digest(26 * MIB)
    image.write_bytes(data)
    code, _, err = run(capsys, *install_argv(image, user_keys, url, bucket=bucket,
                                             ec2cert=ec2_keys[1], name="disk"),
                       "-n", f"tls-{uuid.uuid4().hex[:8]}", "--jobs", "2", "--no-check")
    assert code == 0, err
    listed = {o["Key"]: o["ETag"].strip('"')
              for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    parts = sorted(k for k in listed if ".part." in k)
    assert len(parts) == 3 and "disk.manifest.xml" in listed
    assert listed[parts[-1]].endswith("-2")  # the last part went up in its two pieces

    restored = tmp_path / "restored"
    code, _, err = run(capsys, "unbundle", "--from-s3", "-m", f"{bucket}/disk.manifest.xml",
                       "-k", user_keys[0], "-d", restored, "--endpoint-url", url)
    assert code == 0, err
    assert (restored / "disk").read_bytes() == data
