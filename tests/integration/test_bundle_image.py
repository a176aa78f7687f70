"""bundle-image → parts + manifest, checked independently with openssl, gunzip and GNU tar,
and unbundle of our own bundles; the CLI contract (exit codes, one-line errors, --json)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.cli import main
from tests.support.classic import classic_extract, field, openssl_unwrap

PART = 10 * 1024 * 1024


def make_sparse_image(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, data in pieces:
            fh.seek(offset)
            fh.write(data)
    return path


def run_cli(*args: str | Path, check: int | None = 0, capsys=None) -> int:
    code = main([str(a) for a in args])
    if check is not None:
        assert code == check
    return code


def bundle(tmp_path: Path, image: Path, user, ec2, *extra: str, dest: Path | None = None) -> Path:
    dest = dest or tmp_path / "bundle"
    dest.mkdir(exist_ok=True)
    run_cli("bundle-image", "-i", image, "-c", user.cert_path, "-k", user.key_path,
            "-u", "1234-5678-9012",
            "--ec2cert", ec2.cert_path, "-d", dest, "-r", "x86_64", "-q", *extra)
    return dest


@pytest.mark.parametrize("layout", ["sparse", "dense", "tiny", "two-parts"])
def test_bundle_is_readable_by_the_classic_toolchain(tmp_path, user_key_pair, ec2_key_pair, layout):
    rnd = os.urandom
    if layout == "sparse":
        image = make_sparse_image(tmp_path / "disk.img", 64 << 20,
                                  [(0, rnd(300_000)), (5 << 20, rnd(1 << 20)),
                                   ((64 << 20) - 4096, rnd(4096))])
    elif layout == "dense":
        image = tmp_path / "disk.img"
        image.write_bytes(rnd(3 << 20) + b"\0" * (1 << 20) + b"x" * 1000)
    elif layout == "tiny":
        image = tmp_path / "disk.img"
        image.write_bytes(b"hello instance store\n")
    else:
        image = tmp_path / "disk.img"
        image.write_bytes(rnd(PART + 4097))  # incompressible: must spill into a second part
    dest = bundle(tmp_path, image, user_key_pair, ec2_key_pair, "-B", "ami=sda1,root=/dev/sda1",
                  "--kernel", "aki-12345678")
    manifest = dest / "disk.img.manifest.xml"
    xml = manifest.read_text()
    assert xml.startswith("<?xml version='1.0'?><manifest><version>2007-10-10</version>")
    assert "\n" not in xml
    assert field(xml, "user") == "123456789012"
    assert field(xml, "size") == str(image.stat().st_size)
    names = re.findall(r"<filename>([^<]+)</filename>", xml)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*names, manifest.name])
    if layout == "two-parts":
        assert names == ["disk.img.part.0", "disk.img.part.1"]
        assert (dest / names[0]).stat().st_size == PART
    assert sum((dest / n).stat().st_size for n in names) == int(field(xml, "bundled_size"))
    for name, digest in zip(names,
                            re.findall(r"</filename><digest algorithm='SHA1'>([0-9a-f]{40})<", xml),
                            strict=True):
        assert hashlib.sha1((dest / name).read_bytes()).hexdigest() == digest

    tar_stream = classic_extract(dest, manifest, user_key_pair.key_path, tmp_path / "x")
    image_digest = re.search(r"<image>.*?<digest algorithm='SHA1'>([0-9a-f]{40})", xml)
    assert image_digest and hashlib.sha1(tar_stream).hexdigest() == image_digest.group(1)
    extracted = tmp_path / "x" / "disk.img"
    assert extracted.read_bytes() == image.read_bytes()
    # the EC2 copy of the key is the same key
    assert openssl_unwrap(ec2_key_pair.key_path, field(xml, "ec2_encrypted_key")) == \
        openssl_unwrap(user_key_pair.key_path, field(xml, "user_encrypted_key"))
    # signature over the literal machine_configuration+image bytes, checked by openssl
    signed = re.search(r"(<machine_configuration>.*</machine_configuration>)", xml).group(1) + \
        re.search(r"(<image>.*</image>)", xml).group(1)
    (tmp_path / "signed").write_bytes(signed.encode())
    (tmp_path / "sig").write_bytes(bytes.fromhex(field(xml, "signature")))
    pub = subprocess.run(["openssl", "x509",
                          "-pubkey", "-noout", "-in", str(user_key_pair.cert_path)],
                         capture_output=True, check=True).stdout
    (tmp_path / "pub.pem").write_bytes(pub)
    verified = subprocess.run(["openssl", "dgst", "-sha1", "-verify", str(tmp_path / "pub.pem"),
                               "-signature",
                               str(tmp_path / "sig"), str(tmp_path / "signed")],
                              capture_output=True, text=True)
    assert verified.stdout.strip() == "Verified OK"

    # and our own reader gives the same image back, holes kept
    out = tmp_path / "out"
    out.mkdir()
    run_cli("unbundle", "-m", manifest, "-k", user_key_pair.key_path, "-d", out, "-q")
    assert (out / "disk.img").read_bytes() == image.read_bytes()
    if layout == "sparse":
        assert (out / "disk.img").stat().st_blocks * 512 < 4 << 20


def test_holes_and_zero_runs_are_not_stored(tmp_path, user_key_pair, ec2_key_pair):
    image = make_sparse_image(tmp_path / "zeros.img", 1 << 30,
                              [(512 << 20, b"\0" * (8 << 20)), (600 << 20, b"data")])
    dest = bundle(tmp_path, image, user_key_pair, ec2_key_pair)
    parts = [p for p in dest.iterdir() if ".part." in p.name]
    assert len(parts) == 1 and parts[0].stat().st_size < 64 * 1024
    out = tmp_path / "out"
    out.mkdir()
    run_cli("unbundle", "-m", dest / "zeros.img.manifest.xml", "-k", user_key_pair.key_path,
            "-d", out, "-q")
    got = out / "zeros.img"
    assert got.stat().st_size == 1 << 30
    with open(got, "rb") as fh:
        fh.seek(600 << 20)
        assert fh.read(4) == b"data"
    assert got.stat().st_blocks * 512 <= 1 << 20


def test_part_naming_and_json_result(tmp_path, user_key_pair, ec2_key_pair, capsys):
    image = tmp_path / "rand.img"
    image.write_bytes(os.urandom(PART * 10 + 1))  # 11 parts → two-digit names
    dest = tmp_path / "b"
    dest.mkdir()
    capsys.readouterr()
    run_cli("bundle-image", "-i", image, "-c", user_key_pair.cert_path,
            "-k", user_key_pair.key_path,
            "-u", "123456789012", "--ec2cert", ec2_key_pair.cert_path, "-d", dest, "-r", "x86_64",
            "-p", "web", "--compression", "fast", "--json")
    result = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in result["parts"]] == [f"web.part.{i:02d}" for i in range(11)]
    assert result["manifest_path"] == str(dest / "web.manifest.xml")
    assert result["bundled_size"] == sum(p["size"] for p in result["parts"])
    assert all(hashlib.sha1((dest / p["name"]).read_bytes()).hexdigest() == p["sha1"]
               for p in result["parts"])


def test_stdin_image(tmp_path, user_key_pair, ec2_key_pair):
    data = os.urandom(100_000) + bytes(1 << 20)
    dest = tmp_path / "b"
    dest.mkdir()

    def cmd(size: int, prefix: str) -> list[str]:
        return [sys.executable, "-m", "bundler", "bundle-image",
                "-i", "-", "--image-size", str(size), "-p", prefix,
                "-c", str(user_key_pair.cert_path), "-k", str(user_key_pair.key_path),
                "-u", "123456789012",
                "--ec2cert", str(ec2_key_pair.cert_path), "-d", str(dest), "-r", "x86_64"]

    subprocess.run(cmd(len(data), "piped"), input=data, check=True, capture_output=True)
    out = tmp_path / "out"
    out.mkdir()
    run_cli("unbundle", "-m", dest / "piped.manifest.xml", "-k", user_key_pair.key_path, "-d", out,
            "-q")
    assert (out / "piped").read_bytes() == data
    short = subprocess.run(cmd(len(data) + 1, "piped2"), input=data, capture_output=True)
    assert short.returncode != 0
    assert b"standard input ended after" in short.stderr
    assert not list(dest.glob("piped2*")) and not list(dest.glob(".ami-bundler*"))


@pytest.mark.parametrize("level", ["fast", "default", "best", "3"])
def test_compression_levels_roundtrip(tmp_path, user_key_pair, ec2_key_pair, level):
    image = tmp_path / "text.img"
    image.write_bytes(b"".join(b"line %d of a compressible image\n" % i for i in range(200_000)))
    dest = bundle(tmp_path, image, user_key_pair, ec2_key_pair, "--compression", level)
    out = tmp_path / "out"
    out.mkdir()
    run_cli("unbundle", "-m", dest / "text.img.manifest.xml", "-k", user_key_pair.key_path,
            "-d", out, "-q")
    assert (out / "text.img").read_bytes() == image.read_bytes()


def test_verify_and_inspect(tmp_path, user_key_pair, ec2_key_pair, capsys):
    image = make_sparse_image(tmp_path / "v.img", 8 << 20, [(4096, os.urandom(50_000))])
    dest = bundle(tmp_path, image, user_key_pair, ec2_key_pair, "--productcodes", "AAA,BBB")
    manifest = dest / "v.img.manifest.xml"
    capsys.readouterr()
    run_cli("verify", manifest, "-c", user_key_pair.cert_path, "--json")
    assert json.loads(capsys.readouterr().out)["ok"] is True
    run_cli("verify", manifest, "-k", user_key_pair.key_path, "--decrypt", "--json")
    assert json.loads(capsys.readouterr().out)["decrypted"] is True
    run_cli("inspect", manifest, "--json")
    info = json.loads(capsys.readouterr().out)
    assert info["product_codes"] == ["AAA", "BBB"] and info["size"] == 8 << 20 and info["signed"]
    run_cli("inspect", manifest)
    assert "v.img" in capsys.readouterr().out


def test_classic_entry_point_and_no_traceback(tmp_path, user_key_pair, ec2_key_pair):
    """A user error through the installed script: one line on stderr, exit 1, no traceback."""
    missing = tmp_path / "nope.img"
    proc = subprocess.run([sys.executable,
                           "-c", "import sys; from bundler.cli import ec2_bundle_image; "
                           "sys.argv[0]='ec2-bundle-image'; ec2_bundle_image()",
                           "-i", str(missing), "-c", str(user_key_pair.cert_path),
                           "-k", str(user_key_pair.key_path),
                           "-u", "123456789012", "--ec2cert", str(ec2_key_pair.cert_path),
                           "-d", str(tmp_path), "--batch"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"ec2-bundle-image: error: image {missing} does not exist"


def test_region_selects_the_ec2_certificate(tmp_path, user_key_pair, ec2_key_pair, monkeypatch,
                                            capsys):
    from tests.support.keypairs import make_key_pair

    china = make_key_pair(tmp_path, "china-ec2")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "cert-ec2.pem").write_bytes(ec2_key_pair.cert_path.read_bytes())
    (certs / "cert-ec2-cn-north-1.pem").write_bytes(china.cert_path.read_bytes())
    image = tmp_path / "r.img"
    image.write_bytes(os.urandom(1000))
    for region, pair, env in (("cn-north-1", china, False), ("eu-west-1", ec2_key_pair, True)):
        dest = tmp_path / region
        dest.mkdir()
        if env:
            monkeypatch.setenv("AMI_BUNDLER_EC2_CERT_DIR", str(certs))
            where = []
        else:
            where = ["--ec2cert-dir", str(certs)]
        run_cli("bundle-image", "-i", image, "-c", user_key_pair.cert_path,
                "-k", user_key_pair.key_path,
                "-u", "123456789012", "-d", dest, "-r", "x86_64", "--region", region, "-q", *where)
        xml = (dest / "r.img.manifest.xml").read_text()
        assert openssl_unwrap(pair.key_path, field(xml, "ec2_encrypted_key")) == \
            openssl_unwrap(user_key_pair.key_path, field(xml, "user_encrypted_key"))
    monkeypatch.delenv("AMI_BUNDLER_EC2_CERT_DIR")
    monkeypatch.delenv("EC2_AMITOOL_HOME", raising=False)
    monkeypatch.delenv("EC2_HOME", raising=False)
    capsys.readouterr()
    code = main(["bundle-image", "-i", str(image), "-c", str(user_key_pair.cert_path),
                 "-k", str(user_key_pair.key_path),
                 "-u", "123456789012", "-d", str(tmp_path), "-r", "x86_64",
                 "--region", "af-south-1", "--ec2cert-dir", str(certs)])
    err = capsys.readouterr().err  # an opt-in region needs a certificate of its own
    assert code != 0 and "cert-ec2-af-south-1.pem" in err and "--ec2cert" in err
