"""Small bundles for S3 tests, made without the bundling pipeline (fast, any part count)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bundler import keys as keylib
from bundler.manifest import Manifest, PartEntry, part_names
from bundler.parts import Part


@dataclass
class FakeBundle:
    directory: Path
    name: str
    manifest_path: Path
    parts: list[Part]
    manifest_bytes: bytes

    @property
    def part_names(self) -> list[str]:
        return part_names(self.name, len(self.parts))

    @property
    def bundled_size(self) -> int:
        return sum(len(p.data) for p in self.parts)


def _gzip_member(payload: bytes, pad: int) -> bytes:
    """A stored (level 0) gzip member of ``payload`` whose header carries a ``pad``-byte file name,
    so its length can be set to the byte."""
    name = b"p" * pad + b"\0" if pad else b""
    header = b"\x1f\x8b\x08" + (b"\x08" if pad else b"\x00") + b"\0\0\0\0\x00\xff" + name
    body = zlib.compressobj(0, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = body.compress(payload) + body.flush()
    return header + data + struct.pack("<II", zlib.crc32(payload), len(payload) & 0xFFFFFFFF)


def _tar_of(name: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def encrypted_stream(total: int, name: str, rnd) -> tuple[bytes, bytes, bytes, bytes] | None:
    """(ciphertext of exactly ``total`` bytes, key, iv, tar) — AES-128-CBC of a gzip'd tar of one
    random file, as a real bundle is; None when ``total`` is not a whole number of AES blocks or
    too small to hold a tar stream."""
    if total % 16 or total < 12 * 1024:
        return None
    content = rnd(max(0, total - 12 * 1024))
    while True:
        tar = _tar_of(name, content)
        plain_len = len(_gzip_member(tar, 0))
        # PKCS#7 adds 1..16 bytes: the gzip must be 16 short of ``total`` at most, 1 at least.
        pad = total - 16 - plain_len
        if pad >= 0:
            break
        content = content[: max(0, len(content) + pad - 1024)]
    key, iv = os.urandom(16), os.urandom(16)
    gz = _gzip_member(tar, pad) if pad else _gzip_member(tar, 0)
    padder = sym_padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    data = enc.update(padder.update(gz) + padder.finalize()) + enc.finalize()
    assert len(data) == total, (len(data), total)
    return data, key, iv, tar


def make_fake_bundle(directory: Path, name: str, sizes: list[int], signing_key, *,
                     seed: int | None = None, ec2_public_key=None) -> FakeBundle:
    """A signed manifest and parts of exactly the given sizes. When the sizes add up to whole AES
    blocks the parts are a real bundle — AES-128-CBC of a gzip'd tar, the key wrapped to the user
    and to ``ec2_public_key`` (default: the strict local AWS's key for us-east-1), so EC2's
    RegisterImage checks pass; otherwise random bytes with placeholder key fields."""
    directory.mkdir(parents=True, exist_ok=True)
    rnd = os.urandom if seed is None else __import__("random").Random(seed).randbytes
    total = sum(sizes)
    real = encrypted_stream(total, name, rnd)
    if real is not None:
        data, key, iv, tar = real
        if ec2_public_key is None:
            from tests.support.strictaws.keyring import keyring

            ec2_public_key = keyring().private_key("us-east-1").public_key()
        user_public = signing_key.public_key()
        offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        parts = [Part.of(i, data[offsets[i]:offsets[i + 1]]) for i in range(len(sizes))]
        fields = {"ec2_encrypted_key": keylib.wrap(ec2_public_key, key),
                  "user_encrypted_key": keylib.wrap(user_public, key),
                  "ec2_encrypted_iv": keylib.wrap(ec2_public_key, iv),
                  "user_encrypted_iv": keylib.wrap(user_public, iv)}
        digest, size = hashlib.sha1(tar).hexdigest(), len(tar)
    else:
        parts = [Part.of(i, rnd(size)) for i, size in enumerate(sizes)]
        placeholder = "ab" * 128
        fields = dict.fromkeys(("ec2_encrypted_key", "user_encrypted_key", "ec2_encrypted_iv",
                                "user_encrypted_iv"), placeholder)
        digest, size = "0" * 40, total
    names = part_names(name, len(parts))
    for part_name, part in zip(names, parts, strict=True):
        (directory / part_name).write_bytes(part.data)
    manifest = Manifest(
        name=name, user="123456789012", digest=digest, size=size, bundled_size=total, **fields,
        parts=[PartEntry(i, n, p.sha1) for i, (n, p) in enumerate(zip(names, parts, strict=True))],
        arch="x86_64",
    )
    data = keylib.sign_manifest(manifest, signing_key)
    path = directory / f"{name}.manifest.xml"
    path.write_bytes(data)
    return FakeBundle(directory, name, path, parts, data)
