"""Bad input: each case ends in one clear line, a non-zero exit, and nothing partial left behind."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from bundler import keys as keylib
from bundler.manifest import PartEntry, insert_signature, parse_manifest, signed_data

PART = 10 * 1024 * 1024


def cli(*args: object, limit_fsize: int | None = None,
        input: bytes | None = None) -> subprocess.CompletedProcess:
    def limits() -> None:
        if limit_fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))

    return subprocess.run([sys.executable, "-m", "bundler", *map(str, args)], capture_output=True,
                          text=True, preexec_fn=limits, input=input)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ami-bundler: error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def bundled(tmp_path, user_key_pair, ec2_key_pair):
    """A two-part bundle of an incompressible image, and the image."""
    image = tmp_path / "img"
    image.write_bytes(os.urandom(PART + 5000))
    dest = tmp_path / "bundle"
    dest.mkdir()
    proc = cli("bundle-image", "-i", image, "-c", user_key_pair.cert_path,
               "-k", user_key_pair.key_path,
               "-u", "123456789012", "--ec2cert", ec2_key_pair.cert_path, "-d", dest,
               "-r", "x86_64")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    out.mkdir()
    return image, dest, dest / "img.manifest.xml", out


def unbundle(manifest: Path, key: Path, out: Path, *extra: object) -> subprocess.CompletedProcess:
    return cli("unbundle", "-m", manifest, "-k", key, "-d", out, *extra)


def test_wrong_key(bundled, ec2_key_pair, tmp_path):
    from tests.support.keypairs import make_key_pair

    _, _, manifest, out = bundled
    stranger = make_key_pair(tmp_path, "stranger")
    err = one_line_error(unbundle(manifest, stranger.key_path, out))
    assert "signature does not verify" in err
    assert leftovers(out) == []


def test_wrong_key_with_signers_cert(bundled, user_key_pair, tmp_path):
    from tests.support.keypairs import make_key_pair

    _, _, manifest, out = bundled
    stranger = make_key_pair(tmp_path, "stranger2")
    err = one_line_error(unbundle(manifest, stranger.key_path, out, "-c", user_key_pair.cert_path))
    assert "decrypt" in err and "key" in err
    assert leftovers(out) == []


def test_tampered_part(bundled, user_key_pair):
    _, dest, manifest, out = bundled
    part = dest / "img.part.1"
    data = bytearray(part.read_bytes())
    data[100] ^= 1
    part.write_bytes(bytes(data))
    err = one_line_error(unbundle(manifest, user_key_pair.key_path, out))
    assert "part img.part.1 (index 1) is corrupt" in err
    assert leftovers(out) == []


def test_truncated_part(bundled, user_key_pair):
    _, dest, manifest, out = bundled
    part = dest / "img.part.0"
    part.write_bytes(part.read_bytes()[:-1])
    err = one_line_error(unbundle(manifest, user_key_pair.key_path, out))
    assert "img.part.0" in err and "corrupt" in err
    assert leftovers(out) == []


def test_missing_part(bundled, user_key_pair):
    _, dest, manifest, out = bundled
    (dest / "img.part.1").unlink()
    err = one_line_error(unbundle(manifest, user_key_pair.key_path, out))
    assert "part img.part.1 (index 1) is missing" in err
    assert leftovers(out) == []
    err = one_line_error(cli("verify", manifest, "-c", user_key_pair.cert_path))
    assert "img.part.1" in err and "missing" in err


def test_edited_manifest(bundled, user_key_pair):
    _, _, manifest, out = bundled
    xml = manifest.read_text()
    edited = re.sub(r"<size>(\d+)</size>", lambda m: f"<size>{int(m.group(1)) + 1}</size>", xml)
    assert edited != xml
    manifest.write_text(edited)
    err = one_line_error(unbundle(manifest, user_key_pair.key_path, out))
    assert "signature does not verify" in err
    assert leftovers(out) == []


def test_truncated_manifest(bundled, user_key_pair):
    _, _, manifest, out = bundled
    manifest.write_bytes(manifest.read_bytes()[: len(manifest.read_bytes()) // 2])
    err = one_line_error(unbundle(manifest, user_key_pair.key_path, out))
    assert "manifest" in err
    assert leftovers(out) == []


BOMB = (b'<?xml version="1.0"?>\n'
        b'<!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>\n'
        b"<manifest><version>&lol3;</version></manifest>")

EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE m [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<manifest><version>2007-10-10</version><image><name>&xxe;</name></image></manifest>"""


@pytest.mark.parametrize("payload", [BOMB, EXTERNAL], ids=["xml-bomb", "external-entity"])
def test_hostile_xml(tmp_path, user_key_pair, payload):
    manifest = tmp_path / "evil.manifest.xml"
    manifest.write_bytes(payload)
    out = tmp_path / "out"
    out.mkdir()
    err = one_line_error(unbundle(manifest, user_key_pair.key_path, out))
    assert "hostile XML" in err or "DTD" in err or "entit" in err
    assert "root:" not in err
    assert leftovers(out) == []


def test_part_named_outside_the_source(bundled, user_key_pair, tmp_path):
    """A correctly signed manifest whose part name climbs out of the directory is refused."""
    _, dest, manifest, out = bundled
    m = parse_manifest(manifest.read_bytes()).manifest
    m.parts[1] = PartEntry(1, "../x", m.parts[1].digest)
    evil = dest / "evil.manifest.xml"
    unsigned = m.to_unsigned_xml()
    signature = keylib.sign(user_key_pair.private_key, signed_data(unsigned))
    evil.write_bytes(insert_signature(unsigned, signature))
    (tmp_path / "x").write_bytes((dest / "img.part.1").read_bytes())
    err = one_line_error(unbundle(evil, user_key_pair.key_path, out))
    assert "unsafe part name" in err and "../x" in err
    assert leftovers(out) == []


def test_destination_disk_full_on_unbundle(bundled, user_key_pair):
    _, _, manifest, out = bundled
    err = one_line_error(cli("unbundle", "-m", manifest, "-k", user_key_pair.key_path, "-d", out,
                             limit_fsize=1 << 20))
    assert "file size limit exceeded" in err or "no space left" in err
    assert leftovers(out) == []


def test_destination_disk_full_on_bundle(tmp_path, user_key_pair, ec2_key_pair):
    image = tmp_path / "img"
    image.write_bytes(os.urandom(3 * PART))
    dest = tmp_path / "b"
    dest.mkdir()
    proc = cli("bundle-image", "-i", image, "-c", user_key_pair.cert_path,
               "-k", user_key_pair.key_path,
               "-u", "123456789012", "--ec2cert", ec2_key_pair.cert_path, "-d", dest,
               "-r", "x86_64", limit_fsize=PART // 2)
    err = one_line_error(proc)
    assert "file size limit exceeded" in err or "no space left" in err
    assert leftovers(dest) == []


def test_missing_image(tmp_path, user_key_pair, ec2_key_pair):
    proc = cli("bundle-image", "-i", tmp_path / "none.img", "-c", user_key_pair.cert_path, "-k",
               user_key_pair.key_path, "-u", "123456789012", "--ec2cert", ec2_key_pair.cert_path,
               "-d", tmp_path)
    missing = tmp_path / "none.img"
    assert one_line_error(proc) == f"ami-bundler: error: image {missing} does not exist"


def test_empty_image(tmp_path, user_key_pair, ec2_key_pair):
    (tmp_path / "empty.img").write_bytes(b"")
    dest = tmp_path / "b"
    dest.mkdir()
    proc = cli("bundle-image", "-i", tmp_path / "empty.img", "-c", user_key_pair.cert_path, "-k",
               user_key_pair.key_path, "-u", "123456789012", "--ec2cert", ec2_key_pair.cert_path,
               "-d", dest)
    assert "is empty (0 bytes)" in one_line_error(proc)
    assert leftovers(dest) == []


def test_existing_bundle_is_not_overwritten(bundled, user_key_pair, ec2_key_pair):
    image, dest, manifest, _ = bundled
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    proc = cli("bundle-image", "-i", image, "-c", user_key_pair.cert_path,
               "-k", user_key_pair.key_path,
               "-u", "123456789012", "--ec2cert", ec2_key_pair.cert_path, "-d", dest,
               "-r", "x86_64")
    assert "already holds" in one_line_error(proc)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


def test_mismatched_cert_and_key(tmp_path, user_key_pair, ec2_key_pair):
    image = tmp_path / "i.img"
    image.write_bytes(b"abc" * 1000)
    proc = cli("bundle-image", "-i", image, "-c", ec2_key_pair.cert_path,
               "-k", user_key_pair.key_path,
               "-u", "123456789012", "--ec2cert", ec2_key_pair.cert_path, "-d", tmp_path)
    assert "does not belong to private key" in one_line_error(proc)


def test_debug_shows_traceback(tmp_path, user_key_pair, ec2_key_pair):
    proc = cli("bundle-image", "-i", tmp_path / "none.img", "-c", user_key_pair.cert_path, "-k",
               user_key_pair.key_path, "-u", "123456789012", "--ec2cert", ec2_key_pair.cert_path,
               "-d", tmp_path, "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
