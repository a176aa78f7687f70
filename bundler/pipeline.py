"""The streaming pipeline, both ways.

Bundling, left to right, in one pass and bounded memory::

    ImageSource → tar framing → SHA-1 → parallel gzip → AES-128-CBC → PartCutter → PartSink
                                                                                   ↓
                                        Manifest (signed) ───────────────────────→ commit (last)

Unbundling is the same pipe backwards::

    PartSource → per-part SHA-1 check → AES-128-CBC → gunzip → SHA-1 → tar reader → ImageWriter

Nothing reaches the decryptor before its part's digest matched the (signature-verified)
manifest, and the image gets its final name only after every check passed.

This module is the pipeline's documented façade: it re-exports the public names of the
modules that hold them (library code imports those directly)::

    bundlerun        BundleOptions, BundleKeys, BundleResult: what a bundle run takes and gives
    bundling         bundle(): the assembly, left to right
    partcutter       PartCutter: ciphertext → parts (hashed as they fill); the part-count bound
    aescbc           AesCbcEncryptor: AES-128-CBC + PKCS#7, written in place into the cutter
    heap             prefer_heap_for_block_buffers: block buffers from glibc's heap
    unbundling       unbundle(), UnbundleResult, verified_parts, check_member, STREAM_SLACK
    decryptedstream  DecryptedStream: verified ciphertext → decrypted, inflated, hashed tar stream
"""

from __future__ import annotations

from .aescbc import AES_BLOCK, AesCbcEncryptor
from .bundlerun import BundleKeys, BundleOptions, BundleResult
from .bundling import bundle
from .decryptedstream import FEED_SLICE, OUTPUT_STEP, DecryptedStream
from .heap import prefer_heap_for_block_buffers
from .partcutter import PartCutter, max_bundled_size, max_part_count
from .unbundling import STREAM_SLACK, UnbundleResult, check_member, unbundle, verified_parts

__all__ = [
    "AES_BLOCK",
    "FEED_SLICE",
    "OUTPUT_STEP",
    "STREAM_SLACK",
    "AesCbcEncryptor",
    "BundleKeys",
    "BundleOptions",
    "BundleResult",
    "DecryptedStream",
    "PartCutter",
    "UnbundleResult",
    "bundle",
    "check_member",
    "max_bundled_size",
    "max_part_count",
    "prefer_heap_for_block_buffers",
    "unbundle",
    "verified_parts",
]
