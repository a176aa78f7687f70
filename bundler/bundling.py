"""bundle(): an image source into a part sink, left to right in one pass, manifest last::

    ImageSource → tar framing → SHA-1 → parallel gzip → AES-128-CBC → PartCutter → PartSink
                                                                                   ↓
                                        Manifest (signed) ───────────────────────→ commit (last)
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from typing import Any

from . import keys as keylib
from .aescbc import AesCbcEncryptor
from .bundlerun import BundleKeys, BundleOptions, BundleResult
from .concurrency import BackgroundStage
from .deflate import ParallelGzipWriter, compression_settings
from .errors import ArchiveError
from .heap import prefer_heap_for_block_buffers
from .imagetar import member_info
from .manifest import Manifest, PartEntry, part_names, validate_name
from .partcutter import PartCutter, max_bundled_size, max_part_count
from .parts import PartSink
from .progress import NULL_PROGRESS, ProgressListener
from .source import ImageSource
from .stagetimes import NULL_TIMES, StageTimes
from .tarwriter import archive_size, data_padding, end_of_archive, member_header

log = logging.getLogger("bundler.pipeline")  # its name before the split: users filter by it


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
    max_parts = max_part_count(tar_size)
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
