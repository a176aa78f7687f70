"""The one local manifest reader: a UTF-8 byte order mark means XML to every command (it used
to be "encrypted" to verify/inspect while download-bundle accepted it), the size cap is the
manifest module's, and a missing file raises the caller's error class."""

from __future__ import annotations

import pytest

from bundler import api
from bundler.errors import ManifestError, UsageError
from bundler.localmanifest import read_manifest, read_manifest_bytes
from bundler.manifest import MAX_MANIFEST_BYTES, is_encrypted
from bundler.s3 import MANIFEST_SIZE_CAP, read_local_manifest
from tests.support.bundles import make_fake_bundle

BOM = b"\xef\xbb\xbf"


@pytest.fixture
def bom_bundle(tmp_path, user_key_pair):
    bundle = make_fake_bundle(tmp_path / "b", "bom", [1000, 500], user_key_pair.private_key, seed=1)
    bundle.manifest_path.write_bytes(BOM + bundle.manifest_bytes)
    return bundle


def test_a_manifest_with_a_byte_order_mark_is_xml_not_encrypted(bom_bundle):
    data = bom_bundle.manifest_path.read_bytes()
    assert not is_encrypted(data)
    assert read_manifest(bom_bundle.manifest_path).manifest.name == "bom"  # inspect's reader
    assert read_local_manifest(bom_bundle.manifest_path).manifest.name == "bom"  # upload's


def test_verify_accepts_a_manifest_with_a_byte_order_mark(bom_bundle, user_key_pair):
    result = api.verify(bom_bundle.manifest_path, cert=user_key_pair.cert_path)
    assert result.parts == 2


def test_one_size_cap_for_local_and_s3_manifests(tmp_path):
    assert MANIFEST_SIZE_CAP == MAX_MANIFEST_BYTES
    big = tmp_path / "big.manifest.xml"
    big.write_bytes(b"<" + b" " * MAX_MANIFEST_BYTES)
    assert len(read_manifest_bytes(big)) == MAX_MANIFEST_BYTES + 1  # bounded read
    with pytest.raises(ManifestError, match="larger than"):
        read_manifest(big)


def test_a_missing_manifest_raises_the_callers_error(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "none.manifest.xml")
    with pytest.raises(UsageError, match="does not exist"):
        read_local_manifest(tmp_path / "none.manifest.xml")
