"""The streaming pipeline, both ways.

Bundling, left to right, in one pass and bounded memory::

    ImageSource → tar framing → SHA-1 → parallel gzip → AES-128-CBC → PartCutter → PartSink
                                                                                   ↓
                                        Manifest (signed) ───────────────────────→ commit (last)

Unbundling is the same pipe backwards::

    PartSource → per-part SHA-1 check → AES-128-CBC → gunzip → SHA-1 → tar reader → ImageWriter

Nothing reaches the decryptor before its part's digest matched the (signature-verified)
manifest, and the image gets its final name only after every check passed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import queue
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import ec2certs
from . import keys as keylib
from .concurrency import BackgroundStage, Prefetch
from .deflate import GzipDecoder, ParallelGzipWriter, compression_settings
from .ec2certs import EC2Certificate
from .errors import ArchiveError, DecryptionError, IntegrityError, KeyFileError
from .imagetar import member_info
from .imagewriter import FileImageWriter, ImageWriter, NullImageWriter
from .manifest import Manifest, ParsedManifest, PartEntry, part_mismatch, part_names, validate_name
from .parts import MAX_PART_BYTES, PART_SIZE, Part, PartSink, PartSource
from .progress import NULL_PROGRESS, ProgressListener
from .source import ImageSource
from .stagetimes import NULL_TIMES, StageTimes
from .tarstream import (
    TarReader,
    archive_size,
    data_padding,
    end_of_archive,
    member_header,
)

log = logging.getLogger("bundler.pipeline")

# Slack allowed beyond the image size in the decompressed stream (headers, sparse maps,
# padding); anything more is a gzip bomb or a lie, and reading stops there.
STREAM_SLACK = 16 * 1024 * 1024


@dataclass
class BundleOptions:
    """What goes into the manifest besides the data (classic bundle-image flags)."""

    name: str
    user: str
    arch: str | None = "x86_64"
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    block_device_mapping: dict[str, str] = field(default_factory=dict)
    product_codes: list[str] = field(default_factory=list)
    ancestry: list[str] = field(default_factory=list)
    compression: str | int = "default"
    workers: int | None = None


@dataclass
class BundleKeys:
    """The three keys bundling needs: sign with the user's key, wrap to user and EC2 certs."""

    signing_key: rsa.RSAPrivateKey
    user_public_key: rsa.RSAPublicKey
    ec2_public_key: rsa.RSAPublicKey
    ec2_certificate: EC2Certificate | None = None  # reported in results; None for a bare key

    @classmethod
    def load(cls, cert: Path, private_key: Path, ec2cert: Path | EC2Certificate) -> BundleKeys:
        signing_key = keylib.load_private_key(Path(private_key))
        user_public = keylib.load_public_key(Path(cert))
        if signing_key.public_key().public_numbers() != user_public.public_numbers():
            # Classic tools do not notice; the bundle could then never be unbundled by its owner.
            raise KeyFileError(f"certificate {cert} does not belong to private key {private_key}")
        chosen = (ec2cert if isinstance(ec2cert, EC2Certificate)
                  else ec2certs.describe(Path(ec2cert)))
        log.info("EC2 certificate %s (subject %s, sha256 %s)", chosen.path, chosen.subject or "-",
                 chosen.sha256)
        return cls(signing_key, user_public, keylib.load_public_key(chosen.path), chosen)


@dataclass
class BundleResult:
    manifest: Manifest
    manifest_name: str
    manifest_bytes: bytes
    part_names: list[str]
    part_sizes: list[int]
    size: int
    bundled_size: int
    digest: str
    tar_size: int
    seconds: float
    ec2_certificate: EC2Certificate | None = None

    def summary(self) -> dict[str, object]:
        cert = {"ec2_certificate": self.ec2_certificate.as_json()} if self.ec2_certificate else {}
        return {
            "name": self.manifest.name,
            "manifest": self.manifest_name,
            "parts": [{"name": n, "size": s, "sha1": p.digest}
                      for n, s, p in zip(self.part_names, self.part_sizes, self.manifest.parts,
                                         strict=True)],
            "size": self.size,
            "bundled_size": self.bundled_size,
            "digest": self.digest,
            "tar_size": self.tar_size,
            "seconds": round(self.seconds, 3),
            **cert,
        }


AES_BLOCK = 16


class PartCutter:
    """Cuts the ciphertext into PART_SIZE parts and hands them on, in index order.

    The ciphertext lands in a reused part buffer (an anonymous map): the encryptor writes
    into it in place (``space``/``advance``), ``write`` copies into it. A full buffer goes to
    ``stage`` (a BackgroundStage consuming with :meth:`store`), so hashing the part and
    storing it run beside encryption; without a stage they run in the writer's thread. A sink
    done with a part's data when put_part returns (PartSink) writes straight from the buffer;
    any other gets bytes of its own, one allocation and copy per part. The stage's bounded
    queue bounds the buffers in use (its depth + 2).

    While a part fills, every ``SLICE`` bytes of it go to the stage as well: the part's SHA-1
    is computed as it fills, and a sink that can (``put_part_ahead``, PartSink) writes them
    ahead, so that after the last block only the last slice is left to hash and write.
    """

    SLICE = 4 << 20  # a multiple of the page size: slices written ahead stay aligned

    def __init__(self, sink: PartSink, estimate: Callable[[], int] | None = None, *,
                 timings: StageTimes = NULL_TIMES, capacity: int | None = None) -> None:
        self.sink = sink
        self.estimate = estimate
        self.timings = timings
        # (index, buffer, start, end, whole part): a slice of a part, or its end
        self.stage: BackgroundStage[tuple[int, mmap.mmap, int, int, bool]] | None = None
        self.digests: list[str] = []
        self.sizes: list[int] = []
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        # A bundle known to be smaller than a part gets buffers of its size (in whole AES
        # blocks, so that ``room`` is whole blocks too, as the encryptor needs): zeroing and
        # faulting in 10 MiB buffers was a tenth of a small bundle's run. ``capacity`` is only
        # a hint: a buffer grows to a whole part if more arrives.
        self._size = (PART_SIZE if capacity is None
                      else min(PART_SIZE, max(AES_BLOCK, -(-capacity // AES_BLOCK) * AES_BLOCK)))
        self._buffer = self._new_buffer()
        self._fill = 0
        self._sent = 0  # bytes of the current part handed on as slices
        self._count = 0
        self._ahead = getattr(sink, "put_part_ahead", None)
        self._hasher: Any = None  # the SHA-1 of the part being stored (the stage's thread)

    def _new_buffer(self) -> mmap.mmap:
        # AES_BLOCK bytes of slack: update_into wants room for a block more than it writes.
        # An anonymous map: page-aligned (a sink can write it with O_DIRECT, no copy), zeroed
        # by the kernel, and populated in one call rather than by a fault per page.
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(-1, self._size + AES_BLOCK, flags=flags)

    @property
    def room(self) -> int:
        """Bytes that fit before the current part (or a smaller buffer) is full: a whole
        number of AES blocks, never 0."""
        if self._fill == self._size:  # a buffer smaller than a part is full: more came
            self._grow()
        return self._size - self._fill

    def _grow(self) -> None:
        self._size = PART_SIZE
        grown = self._new_buffer()
        grown[:self._fill] = self._buffer[:self._fill]
        self._buffer = grown

    def space(self) -> memoryview:
        """The unfilled rest of the current part buffer (``room`` plus the slack)."""
        return memoryview(self._buffer)[self._fill:]

    def advance(self, count: int) -> None:
        """``count`` bytes were written into ``space()``."""
        self._fill += count
        if self._fill == PART_SIZE:
            self._emit()
        elif self._fill - self._sent >= self.SLICE:
            end = self._fill - self._fill % self.SLICE
            self._hand_on((self._count, self._buffer, self._sent, end, False))
            self._sent = end

    def _hand_on(self, item: tuple[int, mmap.mmap, int, int, bool]) -> None:
        if self.stage is None:
            self.store(item)
        else:
            self.stage.write(item)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.room)
            self._buffer[self._fill:self._fill + take] = view[:take]
            view = view[take:]
            self.advance(take)

    def _emit(self, *, last: bool = False) -> None:
        if not self._count:
            # Sinks that must name parts before the count is known (S3) get an estimate.
            self.sink.expect_parts(1 if last else self.estimate() if self.estimate else 0)
        item = (self._count, self._buffer, self._sent, self._fill, True)
        self._count += 1
        self._fill = self._sent = 0
        self._hand_on(item)
        if last:
            return  # no buffer for a part that will never come
        try:
            self._buffer = self._free.get_nowait()
        except queue.Empty:
            self._buffer = self._new_buffer()

    def store(self, item: tuple[int, mmap.mmap, int, int, bool]) -> None:
        """Hash a slice of a part (and write it ahead, where the sink can), or, at the end of
        the part, hash the rest, put the part into the sink and give the buffer back.

        A sink that is done with a part's data when put_part returns (PartSink) gets a view
        of the buffer itself; any other gets a copy it may keep."""
        index, buffer, start, size, whole = item
        if start == 0:
            self._hasher = hashlib.sha1()
        with self.timings.measure("part sha1", size - start), memoryview(buffer) as whole_view:
            self._hasher.update(whole_view[start:size])
        if not whole:
            if self._ahead is not None:
                with self.timings.measure("put_part ahead", size - start), \
                        memoryview(buffer) as ahead:
                    self._ahead(index, ahead[start:size], start)
            return
        borrowed = getattr(self.sink, "done_with_part_data", False)
        view = memoryview(buffer)[:size]
        if not borrowed:
            with self.timings.measure("part copy", size):
                data: bytes | memoryview = bytes(view)
            view.release()
            self._free.put(buffer)
        else:
            data = view
        part = Part(index, data, sha1=self._hasher.hexdigest())
        self.digests.append(part.sha1)
        self.sizes.append(size)
        with self.timings.measure("put_part", size):
            self.sink.put_part(part)
        if borrowed:
            try:
                view.release()
            except BufferError:  # something still holds the view: the buffer is not reused
                return
            self._free.put(buffer)

    def close(self) -> None:
        if self._fill or not self._count:
            self._emit(last=True)


class AesCbcEncryptor:
    """AES-128-CBC with PKCS#7, exactly what ``openssl enc -aes-128-cbc -K … -iv …`` writes.

    With a ``cutter`` the ciphertext is written straight into its part buffer (``update_into``,
    fed exactly what fills a part: no intermediate copy); otherwise it goes to ``out``.
    """

    def __init__(self, key: bytes, iv: bytes, out: Callable[[bytes], None] | None = None, *,
                 cutter: PartCutter | None = None) -> None:
        if (out is None) == (cutter is None):
            raise ValueError("give the encryptor either out or cutter")
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self._out = out
        self._cutter = cutter
        self._held = 0  # input the cipher holds back until a block is complete
        self.bytes_out = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        cutter = self._cutter
        if cutter is None:
            encrypted = self._cipher.update(data)
            self._held = (self._held + len(data)) % AES_BLOCK
            if encrypted:
                self.bytes_out += len(encrypted)
                self._out(encrypted)  # type: ignore[misc]
            return
        view = memoryview(data)
        while view:
            # The cipher emits whole blocks of held + input: this much input fills the part.
            take = min(len(view), cutter.room - self._held)
            written = self._cipher.update_into(view[:take], cutter.space())
            self._held = self._held + take - written
            self.bytes_out += written
            view = view[take:]
            cutter.advance(written)

    def close(self) -> None:
        pad = AES_BLOCK - self._held  # PKCS#7: always 1..16 bytes of the pad length
        final = self._cipher.update(bytes([pad]) * pad) + self._cipher.finalize()
        self.bytes_out += len(final)
        if self._cutter is not None:
            self._cutter.write(final)
        else:
            self._out(final)  # type: ignore[misc]


def prefer_heap_for_block_buffers() -> None:
    """Make glibc serve the pipeline's 1 MiB buffers from its (reused) heap.

    Above its mmap threshold (128 KiB at first) glibc gives every allocation a fresh mapping,
    faulted in page by page and unmapped again when freed: for one buffer per block that was
    80k page faults and 0.15 system CPU-s on the random image. The threshold rises to the size
    of a mapped block when it is freed (mallopt(3), "dynamic mmap threshold"), so one 16 MiB
    allocation, never touched (calloc of fresh zero pages) and freed at once, moves the blocks
    to the heap for the rest of the process. With another allocator this does nothing.
    """
    primer = bytes(16 << 20)
    del primer


def max_bundled_size(tar_size: int) -> int:
    """An upper bound of the ciphertext size: deflate never grows data by more than a
    stored-block header per 64 KiB plus a flush marker per block; gzip and PKCS#7 add < 64."""
    return tar_size + tar_size // 8192 + 4096


def _preflight_manifest(name: str, options: BundleOptions) -> None:
    """Render the manifest's option fields once up front, so a value the manifest cannot carry
    fails before the image is read, not after every part was written."""
    Manifest(
        name=name, user=options.user, digest="0" * 40, size=0, bundled_size=0,
        ec2_encrypted_key="00", user_encrypted_key="00", ec2_encrypted_iv="00",
        user_encrypted_iv="00",
        parts=[], arch=options.arch, kernel_id=options.kernel_id, ramdisk_id=options.ramdisk_id,
        block_device_mapping=dict(options.block_device_mapping),
        product_codes=list(options.product_codes), ancestry=list(options.ancestry),
    ).to_unsigned_xml()


def bundle(source: ImageSource, sink: PartSink, keys: BundleKeys, options: BundleOptions,
           progress: ProgressListener = NULL_PROGRESS,
           timings: StageTimes = NULL_TIMES) -> BundleResult:
    """Bundle ``source`` into ``sink`` in one pass; the manifest is committed last."""
    started = time.monotonic()
    prefer_heap_for_block_buffers()
    name = validate_name(options.name)
    regions = source.regions()
    # The member's metadata as imagetar has it: re-runs recompute this stream's digest there.
    info = member_info(source, name)
    tar_size = archive_size(info, regions)
    stored = source.size if regions is None else sum(length for _, length in regions)
    max_parts = math.ceil(max_bundled_size(tar_size) / PART_SIZE)
    settings = compression_settings(options.compression)
    key, iv = secrets.token_bytes(16), secrets.token_bytes(16)

    if options.block_device_mapping and not {"ami", "root"} <= options.block_device_mapping.keys():
        log.warning("block device mapping has no 'ami' or 'root' entry; EC2 may not find the root "
                    "device")
    consumed = 0  # tar stream bytes whose ciphertext has been made

    def estimate_parts() -> int:
        # When the first part is full, this much of the tar stream went into it: the ratio so
        # far, applied to the whole tar stream, predicts the part count.
        return max(1, math.ceil(tar_size / max(1, consumed)))

    # Left to right, each serial stage on a thread of its own so that they overlap each other
    # and the parallel deflate: read + dispatch (this thread) → tar SHA-1 (ami-bundler-sha1)
    # and deflate (pool) → AES into part buffers (ami-bundler-out) → part SHA-1 + store
    # (ami-bundler-parts). hashlib, zlib/isal and cryptography release the GIL on big buffers.
    cutter = PartCutter(sink, estimate_parts, timings=timings,
                        capacity=max_bundled_size(tar_size))
    encryptor = AesCbcEncryptor(key, iv, cutter=cutter)

    def encrypt_block(item: tuple[bytes, int] | None) -> None:
        nonlocal consumed
        if item is None:  # the end: the last part is cut here, without waiting for the writer
            with timings.measure("aes"):
                encryptor.close()
                cutter.close()
            return
        block, consumed = item
        with timings.measure("aes", len(block)):
            encryptor.write(block)

    tar_hash = hashlib.sha1()

    def hash_block(data: bytes | memoryview) -> None:
        with timings.measure("tar sha1", len(data)):
            tar_hash.update(data)

    started_stages: list[BackgroundStage[Any] | ParallelGzipWriter] = []

    def abort_all() -> None:
        for stage in started_stages:
            stage.abort()
        sink.abort()

    gzip: ParallelGzipWriter | None = None
    hashing: BackgroundStage[bytes | memoryview] | None = None
    written = 0

    def emit(data: bytes) -> None:
        nonlocal written
        assert hashing is not None and gzip is not None  # both started before the first read
        if not isinstance(data, bytes):
            # The digest thread reads it later: a source that reuses its buffer must not
            # change what gets hashed (the compressor copies what it is given at once).
            data = bytes(data)
        with timings.measure("dispatch", len(data)):
            hashing.write(data)
            gzip.write(data)
        written += len(data)

    # From begin() on, every way out (an interrupt included) goes through an abort below:
    # nothing runs between the two try blocks.
    try:
        _preflight_manifest(name, options)
        sink.begin(name, max_parts)
        cutter.stage = BackgroundStage(cutter.store, depth=2, name="ami-bundler-parts")
        started_stages.append(cutter.stage)
        output = BackgroundStage(encrypt_block)
        started_stages.insert(0, output)
        def compressed(chunk: bytes) -> None:
            assert gzip is not None
            output.write((chunk, gzip.bytes_in_emitted))

        gzip = ParallelGzipWriter(compressed, settings, workers=options.workers, timings=timings,
                                  expected_size=tar_size)
        started_stages.insert(0, gzip)
        hashing = BackgroundStage(hash_block, depth=16, name="ami-bundler-sha1")
        started_stages.insert(0, hashing)
    except BaseException:
        abort_all()
        source.close()
        raise
    try:
        progress.start("bundle", stored)
        with timings.phase("data"):
            emit(member_header(info, regions))
            filler = getattr(source, "filler", None)
            fill = filler() if filler is not None else None
            if fill is not None:
                # The image is read straight into the deflate block being filled: no bytes
                # object per chunk and no copy of it into the block (which held the GIL).
                # The end of the archive always follows, so asking for space after the last
                # read is right.
                space = gzip.space()
                while True:
                    with timings.measure("read"):
                        count = fill(space)
                    if not count:
                        break
                    with timings.measure("dispatch", count):
                        hashing.write(space[:count])
                        gzip.advance(count)
                        space = gzip.space()  # a full block goes to the pool (window permitting)
                    written += count
                    progress.advance("bundle", count)
            else:
                chunks = iter(source.chunks())
                while True:
                    with timings.measure("read"):
                        chunk = next(chunks, None)
                    if chunk is None:
                        break
                    emit(chunk)
                    progress.advance("bundle", len(chunk))
            emit(data_padding(stored))
            emit(end_of_archive(written))
            if written != tar_size:
                raise ArchiveError(f"internal error: tar stream is {written} bytes, expected "
                                   f"{tar_size}")
            # The end, ordered so that the serial stages finish side by side: the last
            # (partial) deflate block goes to the pool first, the encryptor's thread cuts the
            # last part as soon as it has encrypted the last block, and the tar digest's
            # backlog is waited for while the last part is hashed and written.
            gzip.close()
            output.write(None)
            output.close()
            hashing.close()
            cutter.stage.close()

        with timings.phase("manifest + commit"):
            names = part_names(name, len(cutter.digests))
            manifest = Manifest(
                name=name,
                user=options.user,
                digest=tar_hash.hexdigest(),
                size=source.size,
                bundled_size=encryptor.bytes_out,
                ec2_encrypted_key=keylib.wrap(keys.ec2_public_key, key),
                user_encrypted_key=keylib.wrap(keys.user_public_key, key),
                ec2_encrypted_iv=keylib.wrap(keys.ec2_public_key, iv),
                user_encrypted_iv=keylib.wrap(keys.user_public_key, iv),
                parts=[PartEntry(i, n, d)
                       for i, (n, d) in enumerate(zip(names, cutter.digests, strict=True))],
                arch=options.arch,
                kernel_id=options.kernel_id,
                ramdisk_id=options.ramdisk_id,
                block_device_mapping=dict(options.block_device_mapping),
                product_codes=list(options.product_codes),
                ancestry=list(options.ancestry),
            )
            manifest_bytes = keylib.sign_manifest(manifest, keys.signing_key)
            manifest_name = f"{name}.manifest.xml"
            sink.commit(names, manifest_name, manifest_bytes)
    except BaseException:
        abort_all()
        raise
    finally:
        progress.finish("bundle")
        source.close()
    seconds = time.monotonic() - started
    log.info("bundled %s: %d bytes → %d parts, %d bytes in %.2fs", name, source.size,
             len(names), encryptor.bytes_out, seconds)
    return BundleResult(manifest, manifest_name, manifest_bytes, names, cutter.sizes,
                        source.size, encryptor.bytes_out, manifest.digest, tar_size, seconds,
                        keys.ec2_certificate)


# --------------------------------------------------------------------------- unbundle


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


FEED_SLICE = 256 * 1024  # decrypted input handed to the inflater at a time
OUTPUT_STEP = 1 << 20    # most decompressed bytes produced per step


class DecryptedStream:
    """A read()-able view of the decompressed tar stream of verified ciphertext parts.

    It hashes every byte it returns (the manifest digest covers the whole tar stream) and
    refuses to produce more than ``limit`` bytes, so a gzip bomb ends in an error, not a full disk.
    With ``threaded_hash`` the hashing runs in a thread of its own (call ``finish`` or
    ``close`` to stop it).
    """

    def __init__(self, ciphertext: Iterable[bytes], key: bytes, iv: bytes, limit: int, *,
                 threaded_hash: bool = False) -> None:
        self._chunks = iter(ciphertext)
        self._decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._held = b""  # the last decrypted block: it holds the PKCS#7 padding
        self._plain: list[memoryview] = []  # decrypted, not yet given to the inflater
        self._decoder = GzipDecoder()
        self._buffer = bytearray()
        self._input_done = False
        self._limit = limit
        self.sha1 = hashlib.sha1()
        self._hashing = (BackgroundStage(self.sha1.update, depth=32, name="ami-bundler-sha1")
                         if threaded_hash else None)
        self.bytes_out = 0
        self._started = False

    def _decrypt_next(self) -> bool:
        """Decrypt the next chunk into ``_plain``; False when the ciphertext is exhausted."""
        if self._input_done:
            return False
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._input_done = True
            self._strip_padding()
            return True
        # Hold back the last block (its padding is only known at the end) without copying
        # the rest: the held block goes ahead of the new plaintext as a piece of its own.
        plain = self._decryptor.update(chunk)
        if len(plain) >= 16:
            if self._held:
                self._plain.append(memoryview(self._held))
            self._held = plain[-16:]
            self._plain.append(memoryview(plain)[:-16])
        else:
            held = self._held + plain
            if len(held) > 16:
                self._plain.append(memoryview(held)[:-16])
                held = held[-16:]
            self._held = held
        return True

    def _strip_padding(self) -> None:
        try:
            tail = self._held + self._decryptor.finalize()
        except ValueError:
            raise DecryptionError("the ciphertext is not a whole number of AES blocks: a part is "
                                  "truncated") from None
        pad = tail[-1] if len(tail) == 16 else 0
        if not 1 <= pad <= 16 or tail[-pad:] != bytes([pad]) * pad:
            raise DecryptionError(
                "the decrypted bundle has invalid padding: wrong key, or the parts are not this "
                "manifest's"
            )
        self._held = b""
        if pad < 16:
            self._plain.append(memoryview(tail[:-pad]))

    def _pull(self) -> bool:
        """Move more decompressed data into the buffer; False once everything is consumed."""
        if self._decoder.pending():
            self._buffer += self._decoder.feed(b"", OUTPUT_STEP)
            return True
        while not self._plain:
            if not self._decrypt_next():
                return False
        view = self._plain[0]
        piece, rest = view[:FEED_SLICE], view[FEED_SLICE:]
        if rest:
            self._plain[0] = rest
        else:
            self._plain.pop(0)
        if piece:
            if not self._started:
                self._started = True
                if bytes(piece[:2]) != b"\x1f\x8b":
                    raise DecryptionError(
                        "the first part decrypts to data that is not gzip although every part's "
                        "SHA-1 matched: the manifest lists its parts out of order (e.g. sorted as "
                        "text, part.10 before part.2) or holds another bundle's AES key"
                    )
            # Small slices keep the inflater's unconsumed input (copied on every call) small.
            self._buffer += self._decoder.feed(piece, OUTPUT_STEP)
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        while len(self._buffer) < n and self._pull():
            pass
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self.bytes_out += len(out)
        if self.bytes_out > self._limit:
            raise ArchiveError(
                f"the archive decompresses to more than the {self._limit} bytes the manifest "
                "allows (gzip bomb?)"
            )
        if self._hashing is not None:
            self._hashing.write(out)
        else:
            self.sha1.update(out)
        return out

    def finish(self) -> None:
        """Everything must have been consumed, and the gzip trailer must check out."""
        while self._pull():
            if self._buffer:
                raise ArchiveError("data follows the end of the tar archive")
        self._decoder.finish()
        if self._hashing is not None:
            self._hashing.close()
            self._hashing = None

    def close(self) -> None:
        """Stop the hashing thread on an error path."""
        if self._hashing is not None:
            self._hashing.abort()
            self._hashing = None


def check_member(member: Any, manifest: Manifest) -> str:
    """The one member a bundle may hold: a regular file with a plain name of the image's size."""
    from .tarstream import is_regular

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
