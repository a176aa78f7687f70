"""Fuzz harness shared by the property tests (hypothesis) and scripts/fuzz.py (atheris).

Each ``check_*`` function takes arbitrary bytes and feeds them to one parser or stream
reader. The contract under test: every input ends in a ``BundlerError`` (whose message is
one non-empty line) or in a result that is provably right; never another exception, a hang
or unbounded memory. Anything else escapes the ``check_*`` call and is a finding.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from bundler import keys as keylib
from bundler.errors import BundlerError, ManifestError, PartMissingError
from bundler.manifest import Manifest, PartEntry, parse_manifest, part_names
from bundler.pipeline import AesCbcEncryptor, DecryptedStream, unbundle
from bundler.tarreader import TarReader

# Fuzzed streams are small; a reader that produces more than this from one input is unbounded.
OUTPUT_CAP = 8 * 1024 * 1024
KEY = bytes(range(16))
IV = bytes(range(16, 32))


class Finding(AssertionError):
    """An outcome that breaks the contract (wrong bytes accepted, unclear error, no bound)."""


def check_error(exc: BundlerError) -> None:
    message = str(exc)
    if not message.strip() or "\n" in message:
        raise Finding(f"{type(exc).__name__} without a clear one-line message: "
                      f"{message!r}") from exc


# --------------------------------------------------------------------------- manifest


def check_manifest(data: bytes) -> str:
    """Parse arbitrary bytes; a manifest that parses must survive serialize → parse unchanged."""
    try:
        parsed = parse_manifest(data, source="fuzz")
    except ManifestError as exc:
        check_error(exc)
        return "rejected"
    m = parsed.manifest
    try:
        again = parse_manifest(m.to_unsigned_xml(), source="again").manifest
    except BundlerError as exc:
        # Accepted input whose values we cannot write back is fine only as a clear error.
        check_error(exc)
        return "parsed, not re-writable"
    mine = _comparable(m)
    theirs = _comparable(again)
    if mine != theirs:
        raise Finding(f"manifest changed in a serialize/parse round trip:\n{mine}\n{theirs}")
    return "parsed"


def _comparable(m: Manifest) -> Manifest:
    import dataclasses

    # version and algorithm spellings are normalised on write; signature is not re-written.
    return dataclasses.replace(m, version="", signature=None, digest_algorithm="",
                               cipher="", bundler=None)


# --------------------------------------------------------------------------- stream


def aes(plain: bytes, key: bytes = KEY, iv: bytes = IV) -> bytes:
    out: list[bytes] = []
    enc = AesCbcEncryptor(key, iv, out.append)
    enc.write(plain)
    enc.close()
    return b"".join(out)


def gzip_bytes(data: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


def chunked(data: bytes, size: int) -> list[bytes]:
    size = max(1, size)
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def read_stream(parts: Iterable[bytes], limit: int, key: bytes = KEY,
                iv: bytes = IV) -> tuple[str, int]:
    """Run DecryptedStream + TarReader over ciphertext parts as unbundle does."""
    stream = DecryptedStream(parts, key, iv, limit)
    reader = TarReader(stream)
    produced = 0
    member = reader.next_member()
    if member is None:
        reader.drain()
        stream.finish()
        return "empty archive", 0
    for offset, data in reader.iter_data(1 << 16):
        if offset < 0 or offset + len(data) > member.size:
            raise Finding(f"data at {offset}+{len(data)} outside the member size {member.size}")
        produced += len(data)
        if produced > OUTPUT_CAP:
            raise Finding("tar reader produced more than the output cap")
    while reader.next_member() is not None:
        for _ in reader.iter_data(1 << 16):
            pass
    reader.drain()
    stream.finish()
    if stream.bytes_out > limit:
        raise Finding(f"stream produced {stream.bytes_out} bytes past its limit {limit}")
    return "archive read", produced


def check_stream(data: bytes) -> str:
    """First byte picks the layer the rest of the input lands in: ciphertext, gzip or tar."""
    if not data:
        return "empty"
    layer, body = data[0] % 3, data[1:]
    limit = 1 << 20
    if layer == 0:
        parts = chunked(body, 1 + data[0] * 7)
    elif layer == 1:
        parts = chunked(aes(body), 4096)
    else:
        parts = chunked(aes(gzip_bytes(body)), 4096)
    try:
        outcome, _ = read_stream(parts, limit)
    except BundlerError as exc:
        check_error(exc)
        return f"layer {layer}: rejected"
    return f"layer {layer}: {outcome}"


# --------------------------------------------------------------------------- whole unbundle


class MemoryPartSource:
    """A PartSource over bytes in memory (what an S3 or directory source hands the pipeline)."""

    def __init__(self, parts: dict[str, bytes], chunk: int = 4096) -> None:
        self.parts = parts
        self.chunk = chunk

    def describe(self) -> str:
        return "memory"

    def check_present(self, entries: Sequence[PartEntry]) -> None:
        for entry in entries:
            if entry.filename not in self.parts:
                raise PartMissingError(f"part {entry.filename} is missing")

    def iter_parts(
        self, entries: Sequence[PartEntry]
    ) -> Iterator[tuple[PartEntry, Iterable[bytes]]]:
        for entry in entries:
            yield entry, iter(chunked(self.parts[entry.filename], self.chunk))


@dataclass
class MemoryWriter:
    """An ImageWriter that keeps the image in memory (bounded) and records what happened."""

    cap: int = OUTPUT_CAP
    size: int = 0
    pieces: dict[int, bytes] = field(default_factory=dict)
    written: int = 0
    committed: bool = False
    aborted: bool = False

    def open(self, size: int, mode: int) -> None:
        self.size = size

    def write_at(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise Finding(f"write at {offset}+{len(data)} outside the image size {self.size}")
        self.written += len(data)
        if self.written > self.cap:
            raise Finding("more image data written than the cap")
        self.pieces[offset] = bytes(data)

    def image(self) -> bytes:
        out = bytearray(self.size)
        for offset, data in self.pieces.items():
            out[offset:offset + len(data)] = data
        return bytes(out)

    def commit(self) -> Path | None:
        self.committed = True
        return None

    def abort(self) -> None:
        self.aborted = True


@lru_cache(maxsize=1)
def fuzz_key() -> rsa.RSAPrivateKey:
    # 1024 bits like the EC2 certificate: signing per input stays cheap.
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def signed_bundle(tar: bytes, size: int, *, part_size: int = 4096,
                  key: rsa.RSAPrivateKey | None = None,
                  gzip_data: bytes | None = None) -> tuple[bytes, dict[str, bytes]]:
    """A correctly signed manifest and parts around the given tar stream (or gzip data)."""
    key = key or fuzz_key()
    payload = gzip_data if gzip_data is not None else gzip_bytes(tar)
    ciphertext = aes(payload)
    cut = chunked(ciphertext, part_size)
    names = part_names("fuzz", len(cut))
    public = key.public_key()
    manifest = Manifest(
        name="fuzz", user="123456789012", digest=hashlib.sha1(tar).hexdigest(), size=size,
        bundled_size=len(ciphertext),
        ec2_encrypted_key=keylib.wrap(public, KEY), user_encrypted_key=keylib.wrap(public, KEY),
        ec2_encrypted_iv=keylib.wrap(public, IV), user_encrypted_iv=keylib.wrap(public, IV),
        parts=[PartEntry(i, n, hashlib.sha1(p).hexdigest())
               for i, (n, p) in enumerate(zip(names, cut, strict=True))],
    )
    return keylib.sign_manifest(manifest, key), dict(zip(names, cut, strict=True))


def reference_image(tar: bytes) -> tuple[str, bytes] | None:
    """What Python's tarfile extracts from the stream, if it sees exactly one regular file."""
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
            members = tf.getmembers()
            if len(members) != 1 or not members[0].isfile():
                return None
            fh = tf.extractfile(members[0])
            return (members[0].name, fh.read()) if fh else None
    except (tarfile.TarError, OSError, ValueError, EOFError, UnicodeError, OverflowError):
        return None


def run_unbundle(tar: bytes, size: int, *,
                 gzip_data: bytes | None = None) -> tuple[str, MemoryWriter]:
    manifest, parts = signed_bundle(tar, size, gzip_data=gzip_data)
    parsed = parse_manifest(manifest, source="fuzz.manifest.xml")
    writer = MemoryWriter()
    result = unbundle(parsed, MemoryPartSource(parts), None, fuzz_key(), writer=writer)
    if result.digest != hashlib.sha1(tar).hexdigest():
        raise Finding("unbundle accepted a stream whose digest is not the manifest's")
    return "unbundled", writer


def check_unbundle(data: bytes) -> str:
    """The whole unbundle over a correctly signed bundle whose tar stream is ``data``.

    The first 3 bytes give the manifest's image size (so it can match the member's), the rest
    is the tar stream. Success must mean a sane image: tarfile must agree on its bytes.
    """
    if len(data) < 3:
        return "short"
    size, tar = int.from_bytes(data[:3], "big"), data[3:]
    try:
        outcome, writer = run_unbundle(tar, size)
    except BundlerError as exc:
        check_error(exc)
        return "rejected"
    if not writer.committed:
        raise Finding("unbundle returned without committing the image")
    reference = reference_image(tar)
    if reference is not None and reference[1] != writer.image():
        raise Finding("unbundled image differs from what tarfile extracts from the same stream")
    return outcome


TARGETS = {"manifest": check_manifest, "stream": check_stream, "unbundle": check_unbundle}
