"""The one rule for "does this object hold these bytes" (bundler.s3.etags)."""

from __future__ import annotations

import hashlib
import os

import pytest

from bundler.s3.etags import PIECE_MIN, holds, multipart_etag, piece_sizes, pieces_etag

MIB = 1024 * 1024


@pytest.mark.parametrize(("size", "want"), [
    (PIECE_MIN, None),  # the first piece would be the whole
    (PIECE_MIN + 1, (PIECE_MIN, 1)),
    (int(9.5 * MIB), (PIECE_MIN, int(4.5 * MIB))),
    (10 * MIB, (5 * MIB, 5 * MIB)),
    (10 * MIB + 1, (5 * MIB + 1, 5 * MIB)),
    (0, None),
])
def test_piece_sizes(size, want):
    assert piece_sizes(size) == want
    if want:
        assert sum(want) == size and want[0] >= PIECE_MIN


def test_the_multipart_etag_is_s3s():
    a, b = b"a" * 7, b"b" * 3
    want = hashlib.md5(hashlib.md5(a).digest() + hashlib.md5(b).digest()).hexdigest() + "-2"
    assert multipart_etag([hashlib.md5(a).digest(), hashlib.md5(b).digest()]) == want


def test_holds_in_either_form():
    data = os.urandom(PIECE_MIN + 4096)
    md5 = hashlib.md5(data).hexdigest()
    pieces = pieces_etag(data)
    assert pieces is not None and pieces.endswith("-2")
    size = len(data)
    # the same form: compared as they are, the bytes never read
    assert holds((size, md5), size, md5)
    assert holds((size, pieces), size, pieces)
    # the other form: only from the bytes
    assert not holds((size, pieces), size, md5)
    assert holds((size, pieces), size, md5, data=lambda: data)
    assert holds((size, md5), size, pieces, data=lambda: data)
    other = bytearray(data)
    other[-1] ^= 1
    assert not holds((size, pieces), size, md5, data=lambda: bytes(other))
    # wrong size, absent, or an ETag that says nothing about the bytes
    assert not holds((size + 1, md5), size, md5)
    assert not holds(None, size, md5)
    kms = "0f" * 8
    assert not holds((size, kms), size, kms)
    three = pieces[:-1] + "3"
    assert not holds((size, three), size, md5, data=lambda: data)


def test_a_recorded_md5_proves_an_md5_copy_of_a_two_piece_part():
    data = os.urandom(PIECE_MIN + 10)
    md5, pieces = hashlib.md5(data).hexdigest(), pieces_etag(data)
    assert pieces is not None
    assert holds((len(data), md5), len(data), pieces, md5=md5)
    assert not holds((len(data), md5), len(data), pieces, md5="0" * 32)
    assert not holds((len(data), pieces), len(data), md5, md5=md5)  # only MD5 listings
