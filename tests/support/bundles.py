"""Small bundles for S3 tests, made without the bundling pipeline (fast, any part count)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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


def make_fake_bundle(directory: Path, name: str, sizes: list[int], signing_key, *, seed: int | None = None) -> FakeBundle:
    """Random part bytes of the given sizes and a signed manifest naming them (not decryptable:
    the wrapped key fields are placeholders; upload/download/delete/register never decrypt)."""
    directory.mkdir(parents=True, exist_ok=True)
    rnd = os.urandom if seed is None else __import__("random").Random(seed).randbytes
    parts = [Part.of(i, rnd(size)) for i, size in enumerate(sizes)]
    names = part_names(name, len(parts))
    for part_name, part in zip(names, parts, strict=True):
        (directory / part_name).write_bytes(part.data)
    placeholder = "ab" * 128
    manifest = Manifest(
        name=name, user="123456789012", digest="0" * 40, size=sum(sizes), bundled_size=sum(sizes),
        ec2_encrypted_key=placeholder, user_encrypted_key=placeholder,
        ec2_encrypted_iv=placeholder, user_encrypted_iv=placeholder,
        parts=[PartEntry(i, n, p.sha1) for i, (n, p) in enumerate(zip(names, parts, strict=True))],
        arch="x86_64",
    )
    data = keylib.sign_manifest(manifest, signing_key)
    path = directory / f"{name}.manifest.xml"
    path.write_bytes(data)
    return FakeBundle(directory, name, path, parts, data)
