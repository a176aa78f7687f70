"""Reading what other tools write: the classic golden bundles, euca2ools-style and v3 manifests."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from xml.dom import minidom

import pytest

from bundler import keys as keylib
from bundler.cli import main
from bundler.manifest import signed_data


def images_txt(golden: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for line in (golden / "images.txt").read_text().splitlines():
        name, size, sha1 = line.split()
        out[name] = (int(size), sha1)
    return out


@pytest.mark.parametrize("name", ["tiny", "two-part", "sparse"])
def test_classic_golden_bundles_unbundle_exactly(golden_dir, tmp_path, name):
    size, sha1 = images_txt(golden_dir)[name]
    key = tmp_path / "user-key.pem"
    shutil.copy(golden_dir / "keys" / "user-key.pem", key)
    key.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["unbundle", "-m", str(golden_dir / name / f"{name}.manifest.xml"), "-k", str(key),
                 "-c", str(golden_dir / "keys" / "user-cert.pem"), "-d", str(out), "-q"]) == 0
    image = out / name
    assert image.stat().st_size == size
    assert hashlib.sha1(image.read_bytes()).hexdigest() == sha1
    assert main(["verify", str(golden_dir / name / f"{name}.manifest.xml"), "-c",
                 str(golden_dir / "keys" / "user-cert.pem"), "-q"]) == 0


def test_golden_bundle_with_the_ec2_key(golden_dir, tmp_path):
    """The EC2 holder's key can unbundle too (euca2ools' fallback to the ec2_* pair)."""
    key = tmp_path / "ec2-key.pem"
    shutil.copy(golden_dir / "keys" / "ec2-key.pem", key)
    key.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["unbundle", "-m", str(golden_dir / "tiny" / "tiny.manifest.xml"), "-k", str(key),
                 "-c", str(golden_dir / "keys" / "user-cert.pem"), "-d", str(out), "-q"]) == 0
    assert (out / "tiny").read_bytes() == b"hello instance store\n"


@pytest.fixture
def our_bundle(tmp_path, user_key_pair, ec2_key_pair):
    image = tmp_path / "img"
    with open(image, "wb") as fh:
        fh.truncate(4 << 20)
        fh.write(os.urandom(200_000))
    dest = tmp_path / "b"
    dest.mkdir()
    assert main(["bundle-image", "-i", str(image), "-c", str(user_key_pair.cert_path),
                 "-k", str(user_key_pair.key_path), "-u", "123456789012",
                 "--ec2cert", str(ec2_key_pair.cert_path), "-d", str(dest),
                 "-r", "x86_64", "-B", "ami=sda1,root=/dev/sda1", "-q"]) == 0
    return image, dest, dest / "img.manifest.xml"


def _resign(text: bytes, private_key) -> bytes:
    body = re.sub(rb"\s*<signature>[^<]*</signature>", b"", text)
    sig = keylib.sign(private_key, signed_data(body))
    return body.replace(b"</manifest>", b"<signature>" + sig.encode() + b"</signature></manifest>")


def test_euca2ools_style_manifest(our_bundle, user_key_pair, tmp_path):
    """Double quotes, pretty-printed, an encoding in the declaration, signed over those raw
    bytes."""
    image, dest, manifest = our_bundle
    unsigned = re.sub(rb"<signature>[^<]*</signature>", b"", manifest.read_bytes())
    pretty = minidom.parseString(unsigned).toprettyxml(indent="  ").encode()
    pretty = re.sub(rb"^<\?xml[^>]*\?>", b"<?xml version='1.0' encoding='ASCII'?>", pretty)
    pretty = pretty.replace(b"<name>ami-bundler</name>", b"<name>euca2ools</name>")
    assert b'algorithm="SHA1"' in pretty and b"\n  <image>" in pretty
    euca = dest / "euca.manifest.xml"
    euca.write_bytes(_resign(pretty, user_key_pair.private_key))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["unbundle", "-m", str(euca), "-k", str(user_key_pair.key_path), "-d", str(out),
                 "-q"]) == 0
    assert (out / "img").read_bytes() == image.read_bytes()


def test_v3_manifest_signed_over_image_only(our_bundle, user_key_pair, tmp_path):
    image, dest, manifest = our_bundle
    text = manifest.read_bytes()
    text = re.sub(rb"<version>2007-10-10</version>", b"<version>3</version>", text)
    text = re.sub(rb"<machine_configuration>.*?</machine_configuration>", b"", text)
    text = re.sub(rb"<type>machine</type>", b"", text)
    v3 = dest / "v3.manifest.xml"
    v3.write_bytes(_resign(text, user_key_pair.private_key))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["unbundle", "-m", str(v3), "-k", str(user_key_pair.key_path), "-d", str(out),
                 "-q"]) == 0
    assert (out / "img").read_bytes() == image.read_bytes()
    assert main(["inspect", str(v3), "--json"]) == 0


def test_parts_are_taken_in_index_order_not_name_order(our_bundle, user_key_pair, tmp_path,
                                                       ec2_key_pair):
    """Part order comes from the manifest's indexes only (euca2ools names sort wrongly past 99)."""
    image = tmp_path / "big"
    image.write_bytes(os.urandom(25 << 20))  # 3 parts
    dest = tmp_path / "b3"
    dest.mkdir()
    assert main(["bundle-image", "-i", str(image), "-c", str(user_key_pair.cert_path),
                 "-k", str(user_key_pair.key_path), "-u", "123456789012",
                 "--ec2cert", str(ec2_key_pair.cert_path), "-d", str(dest),
                 "-r", "x86_64", "--compression", "fast", "-q"]) == 0
    manifest = dest / "big.manifest.xml"
    text = manifest.read_bytes()
    # rename the parts so that name order differs from index order, and list them out of order
    renames = {b"big.part.0": b"z-first", b"big.part.1": b"a-second", b"big.part.2": b"m-third"}
    for old, new in renames.items():
        (dest / old.decode()).rename(dest / new.decode())
        text = text.replace(b"<filename>" + old + b"</filename>",
                            b"<filename>" + new + b"</filename>")
    parts = re.findall(rb"<part index='\d'>.*?</part>", text)
    text = text.replace(b"".join(parts), b"".join(reversed(parts)))
    manifest.write_bytes(_resign(text, user_key_pair.private_key))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["unbundle", "-m", str(manifest), "-k", str(user_key_pair.key_path), "-d", str(out),
                 "-q"]) == 0
    assert (out / "big").read_bytes() == image.read_bytes()
