"""ec2certs: shipped certificates (pinned, expired, still used), lookup order, opt-in regions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bundler import ec2certs
from bundler.errors import KeyFileError

SHIPPED = Path(ec2certs.__file__).parent / "certs"


@pytest.mark.parametrize(("region", "name"), [
    (None, "cert-ec2.pem"), ("us-east-1", "cert-ec2.pem"), ("eu-north-1", "cert-ec2.pem"),
    ("us-gov-west-1", "cert-ec2-gov.pem"), ("US-GOV-EAST-1", "cert-ec2-gov.pem"),
    ("cn-north-1", "cert-ec2-cn-north-1.pem"), ("cn-northwest-1", "cert-ec2-cn-north-1.pem"),
])
def test_shipped_certificate_by_partition(region, name):
    found = ec2certs.find(region, env={})
    assert found.path.name == name and found.shipped
    assert found.sha256 == ec2certs.SHIPPED_FINGERPRINTS[name]
    assert found.as_json() == {"path": str(found.path), "subject": found.subject,
                               "sha256": found.sha256}
    assert "O=Amazon" in found.subject


def test_fingerprints_match_the_shared_readme_and_the_files_are_expired():
    from cryptography import x509

    assert ec2certs.SHIPPED_FINGERPRINTS["cert-ec2.pem"].startswith("F5:70:7A:ED")
    cert = x509.load_pem_x509_certificate((SHIPPED / "cert-ec2.pem").read_bytes())
    # Expired long ago, still EC2's key: never rejected.
    assert cert.not_valid_after_utc.year == 2006


@pytest.mark.parametrize("region",
                         ["af-south-1", "me-south-1", "il-central-1", "ap-southeast-5",
                                    "eu-south-2"])
def test_opt_in_regions_are_refused_without_their_own_certificate(region):
    assert ec2certs.is_opt_in(region)
    with pytest.raises(KeyFileError) as info:
        ec2certs.find(region, env={})
    text = str(info.value)
    assert "\n" not in text and f"cert-ec2-{region}.pem" in text and "--ec2cert" in text


def test_default_enabled_regions_are_not_opt_in():
    assert not any(ec2certs.is_opt_in(r) for r in ec2certs.DEFAULT_ENABLED_REGIONS)
    assert not ec2certs.is_opt_in("cn-north-1") and not ec2certs.is_opt_in("us-gov-west-1")


def test_lookup_order(fs):
    fs.add_real_directory(str(SHIPPED))
    real = (SHIPPED / "cert-ec2.pem").read_bytes()
    env = {"AMI_BUNDLER_EC2_CERT_DIR": "/env/certs", "EC2_AMITOOL_HOME": "/amitool",
           "EC2_HOME": "/ec2home"}
    dirs = ["/cli/certs", "/env/certs", "/amitool/etc/ec2/amitools", "/ec2home/etc/ec2/amitools",
            "/opt/aws/amitools/ec2/etc/ec2/amitools", "/usr/local/ec2/amitools/etc/ec2/amitools",
            "/etc/ec2/amitools"]
    for d in dirs:
        fs.create_file(f"{d}/cert-ec2.pem", contents=real)
    fs.create_file("/etc/ec2/amitools/cert-ec2-eu-west-1.pem", contents=real)
    # A region-specific file anywhere wins over the partition's file in any directory.
    assert ec2certs.find("eu-west-1", cert_dir=Path("/cli/certs"), env=env).path == \
        Path("/etc/ec2/amitools/cert-ec2-eu-west-1.pem")
    os.remove("/etc/ec2/amitools/cert-ec2-eu-west-1.pem")
    for i, d in enumerate(dirs):  # each removal exposes the next directory
        found = ec2certs.find("eu-west-1", cert_dir=Path("/cli/certs"), env=env)
        assert found.path == Path(d, "cert-ec2.pem") and not found.shipped, i
        os.remove(found.path)
    # Then the package's.
    assert ec2certs.find("eu-west-1", cert_dir=Path("/cli/certs"), env=env).shipped
    # --ec2cert beats everything, even for an opt-in region.
    fs.create_file("/mine/x.pem", contents=real)
    assert ec2certs.find("af-south-1", ec2cert="/mine/x.pem", env=env).path == Path("/mine/x.pem")
    fs.create_file("/env/certs/cert-ec2-af-south-1.pem", contents=real)
    assert ec2certs.find("af-south-1", env=env).path == Path("/env/certs/cert-ec2-af-south-1.pem")


def test_a_damaged_shipped_certificate_is_refused(tmp_path, monkeypatch):
    from tests.support.keypairs import make_key_pair

    copy = tmp_path / "certs"
    shutil.copytree(SHIPPED, copy)
    other = make_key_pair(tmp_path, "other")
    (copy / "cert-ec2.pem").write_bytes(other.cert_path.read_bytes())
    monkeypatch.setattr(ec2certs, "shipped_path", lambda name: copy / name)
    with pytest.raises(KeyFileError, match="installation is damaged"):
        ec2certs.find("us-east-1", env={})


def test_not_a_certificate(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(KeyFileError, match="not an X.509 certificate"):
        ec2certs.find("us-east-1", ec2cert=junk)
