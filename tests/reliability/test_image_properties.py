"""Property tests for the image readers: seeds made by qemu-img and the compressors, damaged
by hypothesis (bytes overwritten, truncated), must end in a verified read or one clear
BundlerError line (tests/support/image_harness.py states the contract)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.image_harness import IMAGE_TARGETS, check_image, seeds
from tests.support.properties import SLOWER, no_hang

damage = st.tuples(
    st.integers(0, 4),  # which seed
    st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=8)), max_size=6),
    st.one_of(st.none(), st.floats(0, 1)),  # truncate at this fraction
    st.booleans(),  # bias writes towards the metadata at the start
)


@pytest.mark.parametrize("target", IMAGE_TARGETS)
def test_seeds_read_cleanly(target):
    found = seeds(target)
    if not found:
        pytest.skip("qemu-img / compressors not installed")
    for data in found:
        assert check_image(data, target) == "read"


@pytest.mark.parametrize("target", IMAGE_TARGETS)
@SLOWER
@given(damage)
def test_damaged_images_end_in_a_clear_error_or_a_verified_read(target, case):
    found = seeds(target)
    if not found:
        pytest.skip("qemu-img / compressors not installed")
    which, writes, cut, head = case
    data = bytearray(found[which % len(found)])
    span = min(len(data), 1 << 18) if head else len(data)
    for where, blob in writes:
        pos = int(where * max(0, span - len(blob)))
        data[pos:pos + len(blob)] = blob
    if cut is not None:
        del data[int(cut * len(data)):]
    with no_hang(20):
        check_image(bytes(data), target)
