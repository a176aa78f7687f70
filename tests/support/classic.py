"""Reading a bundle the classic way, with the command-line tools only (openssl, cat, gzip, tar):
the independent check that our bundles are what ec2-unbundle reads."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def field(xml: str, tag: str) -> str:
    m = re.search(rf"<{tag}(?: [^>]*)?>([^<]*)</{tag}>", xml)
    assert m, tag
    return m.group(1)


def openssl_unwrap(key_path: Path, hex_ciphertext: str) -> str:
    out = subprocess.run(["openssl", "pkeyutl", "-decrypt", "-inkey", str(key_path)],
                         input=bytes.fromhex(hex_ciphertext), capture_output=True, check=True)
    return out.stdout.decode()


def classic_extract(bundle_dir: Path, manifest: Path, key_path: Path, out_dir: Path) -> bytes:
    """What ec2-unbundle does, with the command-line tools only: returns the tar stream."""
    xml = manifest.read_text()
    key = openssl_unwrap(key_path, field(xml, "user_encrypted_key"))
    iv = openssl_unwrap(key_path, field(xml, "user_encrypted_iv"))
    assert re.fullmatch(r"[0-9a-f]{32}", key) and re.fullmatch(r"[0-9a-f]{32}", iv)
    parts = re.findall(r"<filename>([^<]+)</filename>", xml)
    cat = subprocess.run(["cat", *[str(bundle_dir / p) for p in parts]], capture_output=True,
                         check=True).stdout
    # The key goes to openssl on its command line here only because this is a test of the format.
    plain = subprocess.run(["openssl", "enc", "-d", "-aes-128-cbc", "-K", key, "-iv", iv],
                           input=cat, capture_output=True, check=True).stdout
    gunzip = subprocess.run(["gzip", "-dc"], input=plain, capture_output=True, check=True)
    tar_stream = gunzip.stdout
    out_dir.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(out_dir)], input=tar_stream, check=True)
    return tar_stream
