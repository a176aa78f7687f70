"""unbundle(): the bundling pipe backwards, trusting nothing::

    PartSource → per-part SHA-1 check → AES-128-CBC → gunzip → SHA-1 → tar reader → ImageWriter

Nothing reaches the decryptor before its part's digest matched the (signature-verified)
manifest, and the image gets its final name only after every check passed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from . import keys as keylib
from .concurrency import BackgroundStage, Prefetch
from .decryptedstream import DecryptedStream
from .errors import ArchiveError, IntegrityError
from .heap import prefer_heap_for_block_buffers
from .imagewriter import FileImageWriter, ImageWriter, NullImageWriter
from .manifest import Manifest, ParsedManifest, PartEntry, part_mismatch
from .parts import MAX_PART_BYTES, PartSource
from .progress import NULL_PROGRESS, ProgressListener
from .tarreader import TarReader

# Slack allowed beyond the image size in the decompressed stream (headers, sparse maps,
# padding); anything more is a gzip bomb or a lie, and reading stops there.
STREAM_SLACK = 16 * 1024 * 1024


@dataclass
class UnbundleResult:
    path: Path | None
    name: str
    size: int
    digest: str
    parts: int
    bundled_size: int
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        return {"image": str(self.path) if self.path else None, "name": self.name,
                "size": self.size,
                "digest": self.digest, "parts": self.parts, "bundled_size": self.bundled_size,
                "seconds": round(self.seconds, 3)}


def verified_parts(source: PartSource, entries: Sequence[PartEntry], bundled_size: int,
                   progress: ProgressListener = NULL_PROGRESS) -> Iterator[bytes]:
    """Each part's bytes, in the chunks the source gave, yielded only after the whole part's
    SHA-1 matched the manifest (the chunks are held, never copied into one buffer)."""
    total = 0
    for entry, chunks in source.iter_parts(entries):
        hasher = hashlib.sha1()
        held: list[bytes] = []
        size = 0
        for chunk in chunks:
            held.append(chunk)
            hasher.update(chunk)
            size += len(chunk)
            if size > MAX_PART_BYTES:
                raise IntegrityError(f"part {entry.filename} is larger than {MAX_PART_BYTES} "
                                     "bytes: not a bundle part")
            total += len(chunk)
            if total > bundled_size:
                raise IntegrityError(
                    f"part {entry.filename} goes past the manifest's bundled_size of "
                    f"{bundled_size} bytes"
                )
        actual = hasher.hexdigest()
        if actual != entry.digest.lower():
            raise IntegrityError(part_mismatch(entry, actual, entries))
        progress.advance("unbundle", size)
        while held:
            yield held.pop(0)
    if total != bundled_size:
        raise IntegrityError(f"parts hold {total} bytes but the manifest's bundled_size is "
                             f"{bundled_size}")


def check_member(member: Any, manifest: Manifest) -> str:
    """The one member a bundle may hold: a regular file with a plain name of the image's size."""
    from .tarreader import is_regular

    name = member.name
    if not is_regular(member):
        raise ArchiveError(f"archive member {name!r} is not a regular file (type "
                           f"{member.typeflag!r}); refusing it")
    if not name or "/" in name.strip("/") or name in (".", "..") or "\\" in name or "\0" in name:
        raise ArchiveError(f"archive member name {name!r} is not a plain file name; refusing to "
                           "extract it")
    name = name.strip("/")
    if member.size != manifest.size:
        raise ArchiveError(f"archive member {name} is {member.size} bytes but the manifest says "
                           f"{manifest.size}")
    return name


def unbundle(parsed: ParsedManifest, source: PartSource, destination: Path | None,
             private_key: rsa.RSAPrivateKey, *, verify_key: rsa.RSAPublicKey | None = None,
             overwrite: bool = False, progress: ProgressListener = NULL_PROGRESS,
             writer: ImageWriter | None = None, verify_name: str | None = None) -> UnbundleResult:
    """Verify and extract a bundle; the image appears in ``destination`` only when all checks pass.

    ``destination=None`` runs every check and discards the image (``verify --decrypt``).
    """
    started = time.monotonic()
    prefer_heap_for_block_buffers()
    manifest = parsed.manifest
    if verify_key is None:
        verify_key, verify_name = (private_key.public_key(),
                                   "the public half of the private key (-k; no -c given)")
    keylib.verify_manifest(parsed, verify_key, cert_name=verify_name or "the certificate (-c)")
    key, iv = keylib.unwrap_key_iv(private_key, manifest)
    entries = sorted(manifest.parts, key=lambda e: e.index)
    source.check_present(entries)

    progress.start("unbundle", manifest.bundled_size)  # before the part reader's thread reports
    parts: Prefetch[bytes] | None = None
    stream: DecryptedStream | None = None
    out: ImageWriter | None = writer
    writing: BackgroundStage[tuple[int, bytes]] | None = None
    try:
        parts = Prefetch(verified_parts(source, entries, manifest.bundled_size, progress))
        stream = DecryptedStream(parts, key, iv, manifest.size + STREAM_SLACK, threaded_hash=True)
        reader = TarReader(stream)
        member = reader.next_member()
        if member is None:
            raise ArchiveError("the archive holds no file")
        name = check_member(member, manifest)
        if out is None:
            out = (NullImageWriter() if destination is None
                   else FileImageWriter(Path(destination), name, overwrite=overwrite))
        out.open(member.size, member.mode)
        # Writing (zero checks, write calls) runs beside decryption and inflation.
        image = out
        writing = BackgroundStage(lambda item: image.write_at(*item), depth=8,
                                  name="ami-bundler-write")
        for offset, data in reader.iter_data():
            writing.write((offset, data))
        if reader.next_member() is not None:
            raise ArchiveError("the archive holds more than one file; a bundle holds exactly one "
                               "image")
        reader.drain()
        stream.finish()
        writing.close()
        digest = stream.sha1.hexdigest()
        if digest != manifest.digest.lower():
            raise IntegrityError(f"image digest mismatch: the tar stream hashes to {digest}, "
                                 f"manifest says {manifest.digest}")
        path = out.commit()
    except BaseException:
        if writing is not None:
            writing.abort()
        if stream is not None:
            stream.close()
        if parts is not None:
            parts.close()
        if out is not None:
            out.abort()
        raise
    finally:
        progress.finish("unbundle")
    return UnbundleResult(path, name, manifest.size, digest, len(entries), manifest.bundled_size,
                          time.monotonic() - started)
