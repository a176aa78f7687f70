"""migrate-manifest end to end: re-wrapped for a second "EC2 region" key pair, the target's EC2
private key unbundles the image (through keys.unwrap_key_iv's ec2_* fallback); bad input."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.support.cli import MIB, run, sparse_image
from tests.support.keypairs import make_key_pair


@pytest.fixture
def bundled(capsys, tmp_path, user_keys, ec2_keys):
    key, cert = user_keys
    image = tmp_path / "disk.img"
    digest = sparse_image(image, 24 * MIB)
    out = tmp_path / "bundle"
    out.mkdir()
    code, _, err = run(capsys, "bundle-image", "-i", str(image), "-p", "disk", "-c", str(cert),
                       "-k", str(key),
                       "-u", "123456789012", "-r", "x86_64", "--ec2cert", str(ec2_keys[1]),
                       "-d", str(out), "--kernel", "aki-1111aaaa")
    assert code == 0, err
    return out / "disk.manifest.xml", digest


@pytest.fixture(scope="module")
def region_b(tmp_path_factory):
    return make_key_pair(tmp_path_factory.mktemp("ec2-region-b"), "ec2-b")


def unbundle_with(capsys, manifest, key, cert, dest):
    dest.mkdir()
    return run(capsys, "unbundle", "-m", str(manifest), "-k", str(key), "-c", str(cert),
               "-d", str(dest))


def test_migrated_manifest_unbundles_with_the_target_ec2_key(capsys, tmp_path, bundled, user_keys,
                                                             ec2_keys, region_b):
    manifest, digest = bundled
    original = manifest.read_bytes()
    key, cert = user_keys
    # Before: the target region's EC2 key cannot open this bundle.
    code, _, err = unbundle_with(capsys, manifest, region_b.key_path, cert, tmp_path / "before")
    assert code != 0 and "cannot decrypt the AES key" in err

    code, out, err = run(capsys, "migrate-manifest", "-c", str(cert), "-k",
                         str(key), "-m", str(manifest), "--ec2cert", str(region_b.cert_path),
                         "--kernel", "aki-2222bbbb", "--batch", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["kernel_id"] == "aki-2222bbbb"
    assert (tmp_path / "bundle" / "disk.manifest.xml.bak").read_bytes() == original

    code, _, err = unbundle_with(capsys, manifest, region_b.key_path, cert, tmp_path / "after")
    assert code == 0, err
    assert hashlib.sha1((tmp_path / "after" / "disk").read_bytes()).hexdigest() == digest
    # The user's own key still works (user_* unchanged), the old EC2 key no longer does.
    code, _, err = unbundle_with(capsys, manifest, key, cert, tmp_path / "user")
    assert code == 0, err
    code, _, _ = unbundle_with(capsys, manifest, ec2_keys[0], cert, tmp_path / "old-ec2")
    assert code != 0
    assert not (tmp_path / "old-ec2" / "disk").exists()

    # A second migration refuses to overwrite the backup (classic exit 2) and changes nothing.
    now = manifest.read_bytes()
    code, _, err = run(capsys, "migrate-manifest", "-c", str(cert), "-k", str(key),
                       "-m", str(manifest), "--ec2cert", str(region_b.cert_path))
    assert code == 2 and "disk.manifest.xml.bak already exists" in err
    assert manifest.read_bytes() == now


def test_region_selects_the_partition_certificate(capsys, tmp_path, bundled, user_keys, region_b):
    manifest, digest = bundled
    key, cert = user_keys
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "cert-ec2-cn-north-1.pem").write_bytes(region_b.cert_path.read_bytes())
    code, out, err = run(capsys, "migrate-manifest", "-c", str(cert), "-k", str(key),
                         "-m", str(manifest),
                         "--region", "cn-northwest-1", "--ec2cert-dir", str(certs),
                         "--no-mapping", "--json")
    assert code == 0, err
    assert json.loads(out)["ec2cert"] == str(certs / "cert-ec2-cn-north-1.pem")
    code, _, err = unbundle_with(capsys, manifest, region_b.key_path, cert, tmp_path / "cn")
    assert code == 0, err
    assert hashlib.sha1((tmp_path / "cn" / "disk").read_bytes()).hexdigest() == digest


def test_kept_kernel_is_warned_about(capsys, bundled, user_keys, region_b):
    manifest, _ = bundled
    key, cert = user_keys
    code, _, err = run(capsys, "migrate-manifest", "-c", str(cert), "-k", str(key),
                       "-m", str(manifest), "--ec2cert", str(region_b.cert_path))
    assert code == 0, err
    assert "kernel aki-1111aaaa kept" in err


def test_unknown_region_suggests(capsys, bundled, user_keys):
    manifest, _ = bundled
    key, cert = user_keys
    code, _, err = run(capsys, "migrate-manifest", "-c", str(cert), "-k", str(key),
                       "-m", str(manifest), "--region", "eu-wset-1")
    assert code == 2 and "did you mean eu-west-1?" in err
    assert not os.path.exists(f"{manifest}.bak")


def test_missing_certificate_names_where_it_looked(capsys, tmp_path, bundled, user_keys,
                                                   monkeypatch):
    manifest, _ = bundled
    key, cert = user_keys
    for var in ("EC2_AMITOOL_HOME", "EC2_HOME", "AMI_BUNDLER_EC2_CERT_DIR"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty-certs"
    empty.mkdir()
    code, _, err = run(capsys, "migrate-manifest", "-c", str(cert), "-k", str(key),
                       "-m", str(manifest), "--region", "af-south-1", "--ec2cert-dir", str(empty))
    assert code != 0  # an opt-in region needs a certificate of its own
    assert "cert-ec2-af-south-1.pem" in err and "--ec2cert" in err
    assert not os.path.exists(f"{manifest}.bak")


def test_tampered_manifest_is_refused_and_left_alone(capsys, bundled, user_keys, region_b):
    manifest, _ = bundled
    key, cert = user_keys
    data = manifest.read_bytes().replace(b"<kernel_id>aki-1111aaaa</kernel_id>",
                                         b"<kernel_id>aki-6666eeee</kernel_id>")
    manifest.write_bytes(data)
    code, _, err = run(capsys, "migrate-manifest", "-c", str(cert), "-k", str(key),
                       "-m", str(manifest), "--ec2cert", str(region_b.cert_path))
    assert code != 0 and "signature does not verify" in err
    assert manifest.read_bytes() == data
    assert not os.path.exists(f"{manifest}.bak")


def test_needs_a_target(capsys, bundled, user_keys):
    manifest, _ = bundled
    key, cert = user_keys
    code, _, err = run(capsys, "migrate-manifest", "-c", str(cert), "-k", str(key),
                       "-m", str(manifest))
    assert code == 2 and "--region REGION" in err and "--ec2cert" in err
