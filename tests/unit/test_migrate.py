"""migrate.migrate: re-wrap to another EC2 key, re-sign, carry everything else over unchanged."""

from __future__ import annotations

import dataclasses
import os

import pytest

from bundler import keys as keylib
from bundler.errors import DecryptionError, KeyFileError, SignatureError, UsageError
from bundler.manifest import Manifest, PartEntry, parse_manifest
from bundler.migrate import (
    KEEP,
    BackupExistsError,
    backup_path,
    migrate,
    read_mapping_file,
    write_manifest_with_backup,
)
from tests.support.keypairs import make_key_pair

KEY, IV = bytes(range(16)), bytes(range(16, 32))


@pytest.fixture(scope="module")
def other_ec2(tmp_path_factory):
    """A second "EC2 region" key pair, as if the target region had its own certificate."""
    return make_key_pair(tmp_path_factory.mktemp("ec2b"), "ec2-b")


def signed(user, ec2, **changes) -> bytes:
    manifest = Manifest(
        name="web", user="123456789012", digest="ab" * 20, size=12345, bundled_size=678,
        ec2_encrypted_key=keylib.wrap(ec2.public_key, KEY),
        user_encrypted_key=keylib.wrap(user.public_key, KEY),
        ec2_encrypted_iv=keylib.wrap(ec2.public_key, IV),
        user_encrypted_iv=keylib.wrap(user.public_key, IV),
        parts=[PartEntry(0, "web.part.0", "11" * 20), PartEntry(1, "web.part.1", "22" * 20)],
        kernel_id="aki-1111aaaa", ramdisk_id="ari-2222bbbb",
        block_device_mapping={"ami": "sda1", "root": "/dev/sda1"},
        product_codes=["ABCD1234"], ancestry=["ami-00000001"],
        bundler=("ec2-ami-tools", "1.5.3", "20071010"),
    )
    return keylib.sign_manifest(dataclasses.replace(manifest, **changes), user.private_key)


def test_rewraps_to_the_new_ec2_key_and_keeps_everything_else(user_key_pair, ec2_key_pair,
                                                              other_ec2):
    parsed = parse_manifest(signed(user_key_pair, ec2_key_pair))
    result = migrate(parsed, private_key=user_key_pair.private_key,
                     verify_key=user_key_pair.public_key, ec2_public_key=other_ec2.public_key)
    again = parse_manifest(result.xml)
    keylib.verify_manifest(again, user_key_pair.public_key)
    old, new = parsed.manifest, again.manifest
    # Only the target region's EC2 private key opens the ec2_* pair now.
    user_only = dataclasses.replace(new, user_encrypted_key=new.ec2_encrypted_key,
                                    user_encrypted_iv=new.ec2_encrypted_iv)
    assert keylib.unwrap_key_iv(other_ec2.private_key, user_only) == (KEY, IV)
    assert keylib.unwrap(other_ec2.private_key, new.ec2_encrypted_key) == KEY
    # The old EC2 key no longer opens it (implicit rejection may yield random bytes, never the key).
    try:
        assert keylib.unwrap(ec2_key_pair.private_key, new.ec2_encrypted_key) != KEY
    except DecryptionError:
        pass
    assert new.user_encrypted_key == old.user_encrypted_key
    assert new.user_encrypted_iv == old.user_encrypted_iv
    for name in ("name", "user", "digest", "size", "bundled_size", "parts", "kernel_id",
                 "ramdisk_id",
                 "block_device_mapping", "product_codes", "ancestry", "bundler", "arch",
                 "image_type"):
        assert getattr(new, name) == getattr(old, name), name
    assert new.ec2_encrypted_key != old.ec2_encrypted_key
    assert result.changes[0].startswith("AES key and IV re-wrapped")


def test_kernel_ramdisk_explicit_mapping_and_removal(user_key_pair, ec2_key_pair, other_ec2):
    parsed = parse_manifest(signed(user_key_pair, ec2_key_pair))
    kw = dict(private_key=user_key_pair.private_key, ec2_public_key=other_ec2.public_key)
    mapped = migrate(parsed, mapping={"aki-1111aaaa": "aki-9999ffff"}, **kw).manifest
    assert (mapped.kernel_id, mapped.ramdisk_id) == ("aki-9999ffff", "ari-2222bbbb")
    explicit = migrate(parsed, kernel_id="aki-12345678", ramdisk_id="none",
                       mapping={"aki-1111aaaa": "aki-9999ffff"}, **kw)
    assert (explicit.manifest.kernel_id, explicit.manifest.ramdisk_id) == ("aki-12345678", None)
    assert b"ramdisk_id" not in explicit.xml
    assert any("ramdisk ari-2222bbbb → (none)" in c for c in explicit.changes)
    assert migrate(parsed, kernel_id=KEEP, **kw).manifest.kernel_id == "aki-1111aaaa"
    with pytest.raises(UsageError, match="not an image id"):
        migrate(parsed, kernel_id="vmlinuz", **kw)


def test_tampered_manifest_is_refused(user_key_pair, ec2_key_pair, other_ec2):
    data = signed(user_key_pair, ec2_key_pair).replace(b"<size>12345</size>", b"<size>12346</size>")
    with pytest.raises(SignatureError, match="does not verify"):
        migrate(parse_manifest(data), private_key=user_key_pair.private_key,
                ec2_public_key=other_ec2.public_key)


def test_private_key_must_match_certificate(user_key_pair, ec2_key_pair, other_ec2):
    parsed = parse_manifest(signed(user_key_pair, ec2_key_pair))
    with pytest.raises(KeyFileError, match="does not belong"):
        migrate(parsed, private_key=other_ec2.private_key, verify_key=user_key_pair.public_key,
                ec2_public_key=other_ec2.public_key)


def test_older_version_is_written_as_2007_10_10(user_key_pair, ec2_key_pair, other_ec2):
    # <version> is outside the signed region, so this is still a validly signed 2007-08-29 manifest.
    data = signed(user_key_pair, ec2_key_pair).replace(b"<version>2007-10-10</version>",
                                                       b"<version>2007-08-29</version>")
    parsed = parse_manifest(data)
    assert parsed.manifest.version == "2007-08-29"
    result = migrate(parsed, private_key=user_key_pair.private_key,
                     ec2_public_key=other_ec2.public_key)
    assert b"<version>2007-10-10</version>" in result.xml
    assert "manifest version 2007-08-29 → 2007-10-10" in result.changes


def test_backup_then_atomic_write(tmp_path):
    path = tmp_path / "web.manifest.xml"
    path.write_bytes(b"old")
    bak = write_manifest_with_backup(path, b"old", b"new")
    assert bak == backup_path(path) and bak.read_bytes() == b"old" and path.read_bytes() == b"new"
    with pytest.raises(BackupExistsError, match="already exists") as info:
        write_manifest_with_backup(path, b"new", b"newer")
    assert info.value.exit_code == 2
    assert path.read_bytes() == b"new"
    # No temporary files left.
    assert sorted(os.listdir(tmp_path)) == ["web.manifest.xml", "web.manifest.xml.bak"]


def test_mapping_file(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("source_id,target_id\n# old fedora kernels\naki-1111aaaa, "
                    "aki-2222bbbb\n\nari-3,ari-4\n")
    assert read_mapping_file(path) == {"aki-1111aaaa": "aki-2222bbbb", "ari-3": "ari-4"}
    path.write_text("aki-1111aaaa,aki-2222bbbb,extra\n")
    with pytest.raises(UsageError, match="line 1"):
        read_mapping_file(path)
    with pytest.raises(UsageError, match="does not exist"):
        read_mapping_file(tmp_path / "nope.csv")
