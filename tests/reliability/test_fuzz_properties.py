"""Property-based tests for every parser and framer: round trips hold, hostile bytes end in a
clear BundlerError, and a signed manifest cannot be changed without the signature noticing.

Deterministic (derandomize) and modest example counts: the fast CI subset. ``scripts/fuzz.py``
runs the same harness coverage-guided for as long as you like.
"""

from __future__ import annotations

import dataclasses
import io
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bundler import keys as keylib
from bundler.errors import ArchiveError, BundlerError, ManifestError, UsageError
from bundler.manifest import (
    Manifest,
    PartEntry,
    bucket_and_prefix,
    parse_block_device_mapping,
    parse_manifest,
    parse_product_codes,
    part_names,
    signed_data,
    unsafe_name_reason,
    validate_name,
)
from bundler.parts import provisional_name
from bundler.tarformat import BLOCK
from bundler.tarreader import TarReader
from bundler.tarwriter import MemberInfo, archive_size, data_padding, end_of_archive, member_header
from tests.support import harness
from tests.support.properties import FAST, SLOWER, no_hang

# --------------------------------------------------------------------------- strategies

NAME_CHARS = string.ascii_letters + string.digits + "._+-"
bundle_names = st.text(NAME_CHARS, min_size=1, max_size=40).filter(lambda n: n not in (".", ".."))
hex_digits = st.text("0123456789abcdef", min_size=2, max_size=64).filter(lambda h: len(h) % 2 == 0)
sha1s = st.text("0123456789abcdef", min_size=40, max_size=40)
sizes = st.integers(0, 2**63 - 1)
# Manifest values as a user or EC2 gives them: printable, no surrounding whitespace (parsing
# strips).
values = (st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
          .map(str.strip).filter(bool))
tokens = st.text(string.ascii_letters + string.digits + "-_/.:", min_size=1, max_size=20)


@st.composite
def manifests(draw) -> Manifest:
    name = draw(bundle_names)
    count = draw(st.integers(1, 12))
    names = part_names(name, count)
    return Manifest(
        name=name,
        user=draw(st.text(string.digits, min_size=12, max_size=12)),
        digest=draw(sha1s),
        size=draw(sizes),
        bundled_size=draw(sizes),
        ec2_encrypted_key=draw(hex_digits),
        user_encrypted_key=draw(hex_digits),
        ec2_encrypted_iv=draw(hex_digits),
        user_encrypted_iv=draw(hex_digits),
        parts=[PartEntry(i, n, draw(sha1s)) for i, n in enumerate(names)],
        arch=draw(st.sampled_from(["x86_64", "i386", "arm64", None])),
        kernel_id=draw(st.none() | values),
        ramdisk_id=draw(st.none() | values),
        block_device_mapping=draw(st.dictionaries(values, values, max_size=4)),
        product_codes=draw(st.lists(values, max_size=3)),
        ancestry=draw(st.lists(values, max_size=3)),
    )


def comparable(m: Manifest) -> Manifest:
    return dataclasses.replace(m, signature=None, bundler=None, version="")


# --------------------------------------------------------------------------- manifest


@FAST
@given(manifests())
def test_manifest_serialize_parse_round_trip(manifest):
    xml = manifest.to_signed_xml("ab" * 64)
    parsed = parse_manifest(xml).manifest
    assert comparable(parsed) == comparable(manifest)
    assert parsed.signature == "ab" * 64
    # Our bytes are what we read: serializing the parsed manifest gives the same document.
    assert parsed.to_unsigned_xml() == manifest.to_unsigned_xml()


@FAST
@given(manifests(), st.text(min_size=1, max_size=8),
       st.sampled_from(["kernel_id", "ramdisk_id", "product_codes"]))
def test_manifest_values_that_xml_cannot_carry_fail_clearly(manifest, text, field_name):
    value = [text] if field_name == "product_codes" else text
    manifest = dataclasses.replace(manifest, **{field_name: value})
    try:
        xml = manifest.to_unsigned_xml()
    except UsageError as exc:
        assert "cannot carry" in str(exc)
        return
    parsed = parse_manifest(xml).manifest  # whatever we write must parse, to the same value
    want = text.strip() or None
    got = getattr(parsed, field_name)
    assert got == ([want] if want else []) if field_name == "product_codes" else got == want


@FAST
@given(st.binary(max_size=2048))
@example(b"<manifest>")
@example(b"\x01\x00\x10" + b"\x00" * 40)
@example(b"<?xml version='1.0'?><manifest><version>2007-10-10</version></manifest>")
def test_manifest_parser_takes_any_bytes(data):
    with no_hang():
        harness.check_manifest(data)


@pytest.fixture(scope="module")
def valid_manifest(user_key_pair) -> bytes:
    m = Manifest(
        name="img", user="123456789012", digest="1" * 40, size=5 << 20, bundled_size=3 << 20,
        ec2_encrypted_key="ab" * 128, user_encrypted_key="cd" * 128, ec2_encrypted_iv="ef" * 128,
        user_encrypted_iv="01" * 128,
        parts=[PartEntry(i, n, f"{i}" * 40) for i, n in enumerate(part_names("img", 3))],
        kernel_id="aki-12345678", block_device_mapping={"ami": "sda1", "root": "/dev/sda1"},
        product_codes=["abc123"], ancestry=["ami-1"],
    )
    return keylib.sign_manifest(m, user_key_pair.private_key)


mutations = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4)


def mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


@FAST
@given(mutations)
def test_mutated_manifest_parses_or_fails_clearly(valid_manifest, edits):
    with no_hang():
        harness.check_manifest(mutate(valid_manifest, edits))


@FAST
@given(mutations, st.booleans())
def test_signature_covers_everything_the_manifest_says(valid_manifest, user_key_pair, edits,
                                                       splice):
    """Any edit either breaks parsing/verification or leaves the signed meaning unchanged."""
    original = parse_manifest(valid_manifest).manifest
    data = mutate(valid_manifest, edits)
    if splice:  # hide a second <image> in a comment before the real one
        data = data.replace(b"<manifest>", b"<manifest><!--<image></image>-->", 1)
    try:
        parsed = parse_manifest(data)
        keylib.verify_manifest(parsed, user_key_pair.public_key)
    except ManifestError as exc:
        harness.check_error(exc)
        return
    assert comparable(parsed.manifest) == comparable(original)


@FAST
@given(manifests())
def test_signed_region_is_machine_configuration_then_image(manifest):
    xml = manifest.to_unsigned_xml()
    region = signed_data(xml)
    image = xml[xml.index(b"<image>"):xml.index(b"</image>") + 8]
    if b"<machine_configuration>" in xml:
        mc = xml[xml.index(b"<machine_configuration>"):xml.index(b"</machine_configuration>") + 24]
    else:
        mc = b""
    assert region == mc + image


# --------------------------------------------------------------------------- tar


@st.composite
def members(draw) -> tuple[MemberInfo, list[tuple[int, int]] | None]:
    size = draw(st.integers(0, 1 << 40))
    name = draw(st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
                        min_size=1, max_size=150).filter(lambda n: n not in (".", "..")))
    info = MemberInfo(name=name, size=size, mode=draw(st.integers(0, 0o7777)),
                      mtime=draw(st.integers(0, 2**33)))
    if not draw(st.booleans()):
        return info, None
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=60)))
    regions = [(a, b - a) for a, b in zip(cuts[0::2], cuts[1::2], strict=False)]
    return info, regions


@FAST
@given(members())
def test_tar_header_framing_round_trip(member):
    info, regions = member
    header = member_header(info, regions)
    stored = info.size if regions is None else sum(n for _, n in regions)
    assert len(header) % BLOCK == 0
    assert archive_size(info, regions) == len(header) + stored + len(data_padding(stored)) + len(
        end_of_archive(len(header) + stored + len(data_padding(stored))))

    class Headers(io.RawIOBase):  # the header, then "data" that is never read here
        def __init__(self) -> None:
            self.buf = io.BytesIO(header)

        def read(self, n=-1):
            return self.buf.read(n)

    got = TarReader(Headers()).next_member()
    assert got is not None
    assert got.name == info.name and got.size == info.size and got.mode == info.mode
    assert got.mtime == info.mtime
    want = [(0, info.size)] if regions is None else [(o, n) for o, n in regions if n]
    if regions is None and info.size == 0:
        want = []
    assert got.regions == want
    assert got.stored_size == stored


@FAST
@given(st.binary(max_size=4096))
def test_tar_reader_takes_any_bytes(data):
    with no_hang():
        try:
            reader = TarReader(io.BytesIO(data))
            while (m := reader.next_member()) is not None:
                for _ in reader.iter_data(4096):
                    pass
                assert m.stored_size <= len(data)
            reader.drain()
        except ArchiveError as exc:
            harness.check_error(exc)


@FAST
@given(members(), mutations)
def test_mutated_tar_headers(member, edits):
    info, regions = member
    header = mutate(member_header(info, regions), edits)
    with no_hang():
        try:
            reader = TarReader(io.BytesIO(header + bytes(4 * BLOCK)))
            got = reader.next_member()
            if got is not None:
                assert got.stored_size <= 1 << 41
                assert all(o + n <= got.size for o, n in got.regions)
        except ArchiveError as exc:
            harness.check_error(exc)


# --------------------------------------------------------------------------- streams and unbundle


@FAST
@given(st.binary(max_size=3000))
def test_stream_reader_takes_any_bytes(data):
    with no_hang():
        harness.check_stream(data)


def small_tar(data: bytes, regions=None, size=None) -> bytes:
    info = MemberInfo("img", size if size is not None else len(data))
    stored = len(data)
    head = member_header(info, regions)
    body = head + data + data_padding(stored)
    return body + end_of_archive(len(body))


@SLOWER
@given(st.binary(min_size=1, max_size=2000), mutations, st.booleans())
def test_unbundle_of_signed_but_hostile_streams(data, edits, sparse):
    """The attacker controls the tar stream inside a correctly signed bundle (a stolen key,
    a buggy writer): unbundle either refuses it clearly or extracts what tarfile extracts."""
    size = len(data) * 4 if sparse else len(data)
    regions = [(len(data), len(data))] if sparse else None
    tar = mutate(small_tar(data, regions, size), edits)
    with no_hang():
        harness.check_unbundle(size.to_bytes(3, "big") + tar)


def test_unbundle_accepts_the_genuine_stream():
    tar = small_tar(b"x" * 1000)
    outcome, writer = harness.run_unbundle(tar, 1000)
    assert outcome == "unbundled" and writer.image() == b"x" * 1000


# --------------------------------------------------------------------------- names and options


@FAST
@given(bundle_names, st.integers(1, 20000))
def test_part_names(name, count):
    names = part_names(validate_name(name), count)
    assert len(names) == count == len(set(names))
    assert sorted(names) == names  # zero padding keeps listing order == index order
    assert all(unsafe_name_reason(n) is None for n in names)
    assert names[-1] == provisional_name(name, count - 1, count)
    assert {len(n) for n in names} == {len(name) + 6 + len(str(count))}


@FAST
@given(st.text(max_size=200))
@example("a" * 129)
@example("..")
def test_validate_name_accepts_only_plain_names(name):
    try:
        assert validate_name(name) == name
    except UsageError as exc:
        harness.check_error(exc)
        return
    assert unsafe_name_reason(name) is None and len(name) <= 128


@FAST
@given(st.text(max_size=80))
@example("b//x")
@example("/my-bucket/a/b/")
def test_bucket_and_prefix(value):
    try:
        bucket, prefix = bucket_and_prefix(value)
    except UsageError as exc:
        harness.check_error(exc)
        return
    assert bucket and "/" not in bucket
    assert prefix == "" or prefix.endswith("/")
    # Nothing is lost or invented: BUCKET/PREFIX is the value without outer slashes.
    assert (bucket + "/" + prefix).rstrip("/") == value.strip("/")


@FAST
@given(st.lists(st.tuples(tokens.filter(lambda t: "=" not in t),
                          tokens.filter(lambda t: "=" not in t)),
                min_size=1, max_size=5))
def test_block_device_mapping_round_trip(pairs):
    text = ",".join(f"{v}={d}" for v, d in pairs)
    assert parse_block_device_mapping([text]) == dict(pairs)


@FAST
@given(st.lists(st.text(max_size=30), max_size=4))
def test_block_device_mapping_any_text(values_):
    try:
        mapping = parse_block_device_mapping(values_)
    except UsageError as exc:
        harness.check_error(exc)
        return
    for virtual, device in mapping.items():
        assert virtual and device and "=" not in device
        assert not any(c.isspace() for c in virtual + device)


@FAST
@given(st.lists(tokens.filter(lambda t: "," not in t), max_size=5))
def test_product_codes_round_trip(codes):
    assert parse_product_codes(",".join(codes)) == codes
    assert parse_product_codes(None) == []


@FAST
@given(st.text(max_size=60))
def test_product_codes_any_text(text):
    codes = parse_product_codes(text)
    assert all(c and c == c.strip() and "," not in c for c in codes)


def test_bundler_error_is_the_only_escape():
    """The contract the fuzz targets enforce, stated once: ManifestError/ArchiveError are
    BundlerErrors, so the CLI prints them as one line."""
    assert issubclass(ManifestError, BundlerError) and issubclass(ArchiveError, BundlerError)
    with pytest.raises(ManifestError):
        parse_manifest(b"\xff" * 10)
