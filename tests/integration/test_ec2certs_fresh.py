"""A fresh host (no ec2-ami-tools, clean $HOME and environment): bundling uses the certificates
shipped in the package, refuses opt-in regions without their own, and Packer's default
bundle_vol_command works with no --ec2cert. Run as subprocesses so nothing leaks in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundler import ec2certs
from tests.support.classic import field, openssl_unwrap

REPO = Path(__file__).resolve().parents[2]
CLASSIC_DIRS = ("/opt/aws/amitools/ec2/etc/ec2/amitools",
                "/usr/local/ec2/amitools/etc/ec2/amitools", "/etc/ec2/amitools")


def fresh_env(home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO), "AMI_BUNDLER_IMDS_ENDPOINT": "http://127.0.0.1:9"}


def run(env: dict[str, str], *argv: str | Path, entry: str = "") -> subprocess.CompletedProcess:
    cmd = ([sys.executable, "-c", f"import sys; from bundler.cli import {entry}; sys.argv[0] = "
            f"'{entry.replace('_', '-')}'; sys.exit({entry}())"] if entry else [sys.executable,
                                                                                "-m", "bundler"])
    return subprocess.run([*cmd, *map(str, argv)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    if any(Path(d).exists() for d in CLASSIC_DIRS):
        pytest.skip("an ec2-ami-tools install is present: not a fresh host")
    root = tmp_path_factory.mktemp("fresh")
    image = root / "small.img"
    image.write_bytes(os.urandom(64 * 1024))
    return root, fresh_env(root / "home"), image


@pytest.mark.parametrize(("region", "name"), [("us-east-1", "cert-ec2.pem"),
                                              ("us-gov-west-1", "cert-ec2-gov.pem"),
                                              ("cn-north-1", "cert-ec2-cn-north-1.pem")])
def test_shipped_certificates_are_used(fresh, user_key_pair, region, name):
    root, env, image = fresh
    dest = root / region
    dest.mkdir()
    done = run(env, "bundle-image", "-i", image, "-c", user_key_pair.cert_path,
               "-k", user_key_pair.key_path,
               "-u", "123456789012", "-r", "x86_64", "-d", dest, "--region", region,
               "--json", "--verbose")
    assert done.returncode == 0, done.stderr
    chosen = json.loads(done.stdout)["ec2_certificate"]
    assert chosen["sha256"] == ec2certs.SHIPPED_FINGERPRINTS[name]
    assert Path(chosen["path"]).name == name and Path(chosen["path"]).is_file()
    assert "Amazon" in chosen["subject"]
    assert chosen["sha256"] in done.stderr  # --verbose names it too
    # The key is really wrapped to that certificate's public key.
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(chosen["path"]).read_bytes())
    wrapped = bytes.fromhex(field((dest / "small.img.manifest.xml").read_text(),
                                  "ec2_encrypted_key"))
    assert len(wrapped) == cert.public_key().key_size // 8


def test_opt_in_region_refused_then_its_own_certificate_used(fresh, user_key_pair, tmp_path):
    from tests.support.keypairs import make_key_pair

    root, env, image = fresh
    dest = tmp_path / "out"
    dest.mkdir()
    argv = ["bundle-image", "-i", image, "-c", user_key_pair.cert_path,
            "-k", user_key_pair.key_path,
            "-u", "123456789012", "-r", "x86_64", "-d", dest, "--region", "af-south-1", "--json"]
    refused = run(env, *argv)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cert-ec2-af-south-1.pem" in lines[0] and "--ec2cert" in lines[0]
    assert list(dest.iterdir()) == []
    certs = tmp_path / "certs"
    certs.mkdir()
    cape_town = make_key_pair(tmp_path, "af-south-1")
    (certs / "cert-ec2-af-south-1.pem").write_bytes(cape_town.cert_path.read_bytes())
    done = run(env, *argv, "--ec2cert-dir", certs)
    assert done.returncode == 0, done.stderr
    chosen = json.loads(done.stdout)["ec2_certificate"]["path"]
    assert chosen == str(certs / "cert-ec2-af-south-1.pem")
    xml = (dest / "small.img.manifest.xml").read_text()
    assert openssl_unwrap(cape_town.key_path, field(xml, "ec2_encrypted_key")) == \
        openssl_unwrap(user_key_pair.key_path, field(xml, "user_encrypted_key"))


def test_packer_default_bundle_vol_command_needs_no_ec2cert(fresh, user_key_pair, tmp_path):
    """ec2-bundle-vol -k … -u … -c … -r x86_64 -e PRIVATE/* -d DEST -p image-… --batch
    --no-filter (plus -v and the image's identity: the test bundles a small bootable PV tree,
    not this host's /)."""
    from tests.support import roots

    _, env, _ = fresh
    volume = roots.write_clean_root(tmp_path / "vol", pv=True)
    private = volume / "tmp"
    private.mkdir()
    for name in ("x509-cert.pem", "x509-key.pem"):
        (private / name).write_bytes(user_key_pair.cert_path.read_bytes())
    dest = tmp_path / "dest"
    dest.mkdir()
    done = run(env, "-k", user_key_pair.key_path, "-u", "123456789012",
               "-c", user_key_pair.cert_path,
               "-r", "x86_64", "-e", f"{private}/*", "-d", dest, "-p", "image-1733000000",
               "--batch",
               "--no-filter", "-v", volume, "-P", "none", "-s", "32", "--uuid", roots.UUID,
               "--label", roots.LABEL, "--json", entry="ec2_bundle_vol")
    assert done.returncode == 0, done.stderr
    assert (dest / "image-1733000000.manifest.xml").is_file()
    chosen = json.loads(done.stdout)["ec2_certificate"]
    assert chosen["sha256"] == ec2certs.SHIPPED_FINGERPRINTS["cert-ec2.pem"]
