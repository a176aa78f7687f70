"""The library API inside a pyfakefs fake filesystem, the way users test their own pipelines."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization

import bundler
from bundler.errors import ImageError, IntegrityError, OutputError


def _write_pair(fs, directory: str, pem: tuple[bytes, bytes]) -> tuple[str, str]:
    key = f"{directory}/key.pem"
    cert = f"{directory}/cert.pem"
    fs.create_file(key, contents=pem[0])
    os.chmod(key, 0o600)
    fs.create_file(cert, contents=pem[1])
    return key, cert


def _pem(pair) -> tuple[bytes, bytes]:
    key = pair.private_key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
    return key, pair.cert_path.read_bytes()


@pytest.fixture
def user_key_pair_pem(user_key_pair):
    # Requested before ``fs``: the real key files must be read before the fake filesystem hides
    # them.
    return _pem(user_key_pair)


@pytest.fixture
def ec2_key_pair_pem(ec2_key_pair):
    return _pem(ec2_key_pair)


def test_bundle_and_unbundle_in_a_fake_filesystem(user_key_pair_pem, ec2_key_pair_pem, fs):
    key, cert = _write_pair(fs, "/keys/user", user_key_pair_pem)
    _, ec2cert = _write_pair(fs, "/keys/ec2", ec2_key_pair_pem)
    image = b"\0" * 100_000 + os.urandom(70_000) + b"\0" * 30_000 + b"end"
    fs.create_file("/images/root.img", contents=image)
    fs.create_dir("/out")

    result = bundler.bundle_image("/images/root.img", "/out", cert=cert, private_key=key,
                                  user="123456789012",
                                  ec2cert=ec2cert, prefix="root", arch="x86_64",
                                  block_device_mapping={"ami": "sda1"})
    assert result.part_names == ["root.part.0"]
    assert sorted(os.listdir("/out")) == ["root.manifest.xml", "root.part.0"]

    parsed = bundler.read_manifest("/out/root.manifest.xml")
    assert parsed.manifest.block_device_mapping == {"ami": "sda1"}
    assert parsed.manifest.size == len(image)

    checked = bundler.verify("/out/root.manifest.xml", cert=cert)
    assert checked.ok

    fs.create_dir("/restored")
    unbundled = bundler.unbundle("/out/root.manifest.xml", key, destination="/restored")
    assert str(unbundled.path) == "/restored/root"
    with open("/restored/root", "rb") as fh:
        assert fh.read() == image
    assert os.listdir("/restored") == ["root"]


def test_tampered_part_in_a_fake_filesystem(user_key_pair_pem, ec2_key_pair_pem, fs):
    key, cert = _write_pair(fs, "/k/u", user_key_pair_pem)
    _, ec2cert = _write_pair(fs, "/k/e", ec2_key_pair_pem)
    fs.create_file("/img", contents=os.urandom(5000))
    fs.create_dir("/b")
    bundler.bundle_image("/img", "/b", cert=cert, private_key=key, user="123456789012",
                         ec2cert=ec2cert)
    with open("/b/img.part.0", "r+b") as fh:
        fh.seek(10)
        fh.write(b"X")
    fs.create_dir("/o")
    with pytest.raises(IntegrityError, match=r"part img\.part\.0 \(index 0\) is corrupt"):
        bundler.unbundle("/b/img.manifest.xml", key, destination="/o")
    assert os.listdir("/o") == []


def test_unreadable_image_is_a_clear_error(user_key_pair_pem, ec2_key_pair_pem, fs):
    from pyfakefs.helpers import set_gid, set_uid

    set_uid(1000)  # an ordinary user: root could read anything
    set_gid(1000)
    key, cert = _write_pair(fs, "/k/u", user_key_pair_pem)
    _, ec2cert = _write_pair(fs, "/k/e", ec2_key_pair_pem)
    fs.create_file("/secret.img", contents=b"x" * 4096)
    os.chmod("/secret.img", 0o000)
    fs.create_dir("/b")
    with pytest.raises(ImageError, match="is not readable"):
        bundler.bundle_image("/secret.img", "/b", cert=cert, private_key=key, user="123456789012",
                             ec2cert=ec2cert)
    assert os.listdir("/b") == []


def test_missing_destination(user_key_pair_pem, ec2_key_pair_pem, fs):
    key, cert = _write_pair(fs, "/k/u", user_key_pair_pem)
    _, ec2cert = _write_pair(fs, "/k/e", ec2_key_pair_pem)
    fs.create_file("/img", contents=b"data")
    with pytest.raises(OutputError, match="destination directory /nowhere does not exist"):
        bundler.bundle_image("/img", "/nowhere", cert=cert, private_key=key, user="123456789012",
                             ec2cert=ec2cert)


class RecordingProgress:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | None]] = []

    def start(self, stage: str, total: int | None) -> None:
        self.events.append(("start", stage, total))

    def advance(self, stage: str, amount: int) -> None:
        self.events.append(("advance", stage, amount))

    def finish(self, stage: str) -> None:
        self.events.append(("finish", stage, None))


def test_progress_events_cover_the_stored_bytes(user_key_pair_pem, ec2_key_pair_pem, fs):
    key, cert = _write_pair(fs, "/k/u", user_key_pair_pem)
    _, ec2cert = _write_pair(fs, "/k/e", ec2_key_pair_pem)
    data = os.urandom(3 << 20)
    fs.create_file("/img", contents=data)
    fs.create_dir("/b")
    progress = RecordingProgress()
    result = bundler.bundle_image("/img", "/b", cert=cert, private_key=key, user="123456789012",
                                  ec2cert=ec2cert, progress=progress)
    assert progress.events[0] == ("start", "bundle", len(data))
    assert sum(n for kind, _, n in progress.events if kind == "advance") == len(data)
    assert progress.events[-1] == ("finish", "bundle", None)

    progress = RecordingProgress()
    fs.create_dir("/o")
    bundler.unbundle("/b/img.manifest.xml", key, destination="/o", progress=progress)
    assert progress.events[0] == ("start", "unbundle", result.bundled_size)
    assert sum(n for kind, _, n in progress.events if kind == "advance") == result.bundled_size
    assert progress.events[-1] == ("finish", "unbundle", None)
