"""Manifest serialization (byte-exact classic style), hardened parsing and naming helpers."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundler import manifest as mf
from bundler.errors import ManifestError, UsageError
from bundler.manifest import (
    DEFAULT_BUNDLER,
    MAX_MANIFEST_BYTES,
    MAX_PARTS,
    EncryptedManifestError,
    Manifest,
    ParsedManifest,
    PartEntry,
    bucket_and_prefix,
    insert_signature,
    parse_block_device_mapping,
    parse_manifest,
    parse_product_codes,
    part_names,
    rexml_signed_data,
    signed_data,
    validate_name,
)

DIGEST = "4f3c2d1e0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d"
PART_DIGESTS = ["0b1c" + "0" * 36, "8d2e" + "1" * 36, "f301" + "2" * 36]
EC2_KEY, USER_KEY, EC2_IV, USER_IV = "5d1e" * 64, "9a07" * 128, "03bc" * 64, "7e44" * 128
GOLDEN = ("tiny", "two-part", "sparse")


def make_manifest(**overrides: object) -> Manifest:
    values: dict[str, object] = dict(
        name="image",
        user="123456789012",
        digest=DIGEST,
        size=10737418240,
        bundled_size=26214416,
        ec2_encrypted_key=EC2_KEY,
        user_encrypted_key=USER_KEY,
        ec2_encrypted_iv=EC2_IV,
        user_encrypted_iv=USER_IV,
        parts=[PartEntry(i, f"image.part.{i}", d) for i, d in enumerate(PART_DIGESTS)],
    )
    values.update(overrides)
    return Manifest(**values)  # type: ignore[arg-type]


def full_manifest() -> Manifest:
    return make_manifest(
        block_device_mapping={
            "swap": "sda3",
            "root": "/dev/sda1",
            "ephemeral0": "sdb",
            "ami": "sda1",
        },
        kernel_id="aki-1a2b3c4d",
        ramdisk_id="ari-5e6f7a8b",
        product_codes=["7x9k2m4q8w1e3r5t6y0u"],
        ancestry=["ami-0a0b0c0d", "ami-1e1f1a1b"],
    )


def image_xml(parts: str | None = None, **fields: str) -> str:
    """A 2007-10-10 <image> element with optional field overrides (None-valued = omitted)."""
    values = {
        "name": "<name>image</name>",
        "user": "<user>123456789012</user>",
        "type": "<type>machine</type>",
        "digest": f"<digest algorithm='SHA1'>{DIGEST}</digest>",
        "size": "<size>100</size>",
        "bundled_size": "<bundled_size>112</bundled_size>",
        "ec2_encrypted_key": "<ec2_encrypted_key "
                             f"algorithm='AES-128-CBC'>{EC2_KEY}</ec2_encrypted_key>",
        "user_encrypted_key": "<user_encrypted_key "
                              f"algorithm='AES-128-CBC'>{USER_KEY}</user_encrypted_key>",
        "ec2_encrypted_iv": f"<ec2_encrypted_iv>{EC2_IV}</ec2_encrypted_iv>",
        "user_encrypted_iv": f"<user_encrypted_iv>{USER_IV}</user_encrypted_iv>",
    }
    values.update(fields)
    if parts is None:
        parts = (
            "<parts count='1'><part index='0'><filename>image.part.0</filename>"
            f"<digest algorithm='SHA1'>{PART_DIGESTS[0]}</digest></part></parts>"
        )
    return "<image>" + "".join(v for v in values.values() if v) + parts + "</image>"


def doc(image: str | None = None, *, version: str = "2007-10-10", head: str = "") -> bytes:
    image = image_xml() if image is None else image
    return (
        f"<?xml version='1.0'?><manifest><version>{version}</version>{head}"
        "<machine_configuration><architecture>x86_64</architecture></machine_configuration>"
        f"{image}<signature>abcd</signature></manifest>"
    ).encode()


def parts_xml(entries: list[tuple[str, str]], count: str | None = None) -> str:
    count_attr = "" if count is None else f" count='{count}'"
    body = "".join(
        f"<part index='{index}'><filename>{name}</filename>"
        f"<digest algorithm='SHA1'>{PART_DIGESTS[0]}</digest></part>"
        for index, name in entries
    )
    return f"<parts{count_attr}>{body}</parts>"


# --------------------------------------------------------------------------- serialization


def test_minimal_manifest_serializes_exactly_like_rexml() -> None:
    m = make_manifest(
        parts=[PartEntry(0, "image.part.0", PART_DIGESTS[0])], size=21, bundled_size=144
    )
    expected = (
        "<?xml version='1.0'?><manifest><version>2007-10-10</version>"
        "<bundler><name>ami-bundler</name><version>0.1</version><release>0</release></bundler>"
        "<machine_configuration><architecture>x86_64</architecture></machine_configuration>"
        "<image><name>image</name><user>123456789012</user><type>machine</type>"
        f"<digest algorithm='SHA1'>{DIGEST}</digest><size>21</size><bundled_size>144</bundled_size>"
        f"<ec2_encrypted_key algorithm='AES-128-CBC'>{EC2_KEY}</ec2_encrypted_key>"
        f"<user_encrypted_key algorithm='AES-128-CBC'>{USER_KEY}</user_encrypted_key>"
        f"<ec2_encrypted_iv>{EC2_IV}</ec2_encrypted_iv>"
        f"<user_encrypted_iv>{USER_IV}</user_encrypted_iv>"
        "<parts count='1'><part index='0'><filename>image.part.0</filename>"
        f"<digest algorithm='SHA1'>{PART_DIGESTS[0]}</digest></part></parts></image></manifest>"
    ).encode()
    out = m.to_unsigned_xml()
    assert out == expected
    assert out.startswith(
        b"<?xml version='1.0'?><manifest><version>2007-10-10</version><bundler><name>ami-bundler"
    )
    assert (
        b"<machine_configuration><architecture>x86_64</architecture></machine_configuration>" in out
    )
    assert b"\n" not in out and b"\r" not in out
    assert out.endswith(b"</image></manifest>")
    assert b"<ancestry>" not in out and b"<signature>" not in out


def test_full_manifest_element_order_matches_spec_3_2() -> None:
    out = full_manifest().to_unsigned_xml().decode()
    assert "\n" not in out
    assert (
        "<machine_configuration><architecture>x86_64</architecture><block_device_mapping>"
        "<mapping><virtual>ami</virtual><device>sda1</device></mapping>"
        "<mapping><virtual>ephemeral0</virtual><device>sdb</device></mapping>"
        "<mapping><virtual>root</virtual><device>/dev/sda1</device></mapping>"
        "<mapping><virtual>swap</virtual><device>sda3</device></mapping></block_device_mapping>"
        "<kernel_id>aki-1a2b3c4d</kernel_id><ramdisk_id>ari-5e6f7a8b</ramdisk_id>"
        "<product_codes><product_code>7x9k2m4q8w1e3r5t6y0u</product_code></product_codes>"
        "</machine_configuration><image><name>image</name><user>123456789012</user>"
        "<type>machine</type><ancestry><ancestor_ami_id>ami-0a0b0c0d</ancestor_ami_id>"
        "<ancestor_ami_id>ami-1e1f1a1b</ancestor_ami_id></ancestry>"
        f"<digest algorithm='SHA1'>{DIGEST}</digest><size>10737418240</size>"
        "<bundled_size>26214416</bundled_size>"
    ) in out
    top = [
        out.index(f"<{tag}>") for tag in ("version", "bundler", "machine_configuration", "image")
    ]
    assert top == sorted(top)
    image_children = [
        "name", "user", "type", "ancestry", "digest", "size", "bundled_size",
        "ec2_encrypted_key", "user_encrypted_key", "ec2_encrypted_iv", "user_encrypted_iv", "parts",
    ]  # fmt: skip
    image_part = out[out.index("<image>") :]
    positions = [image_part.index(f"<{tag}") for tag in image_children]
    assert positions == sorted(positions)
    assert "<parts count='3'><part index='0'><filename>image.part.0</filename>" in out
    assert out.endswith(
        f"<part index='2'><filename>image.part.2</filename><digest algorithm='SHA1'>"
        f"{PART_DIGESTS[2]}</digest></part></parts></image></manifest>"
    )


def test_optional_parts_omitted() -> None:
    out = make_manifest(arch=None, bundler=None).to_unsigned_xml()
    assert b"machine_configuration" not in out
    assert b"<bundler>" not in out
    assert out.startswith(b"<?xml version='1.0'?><manifest><version>2007-10-10</version><image>")
    # Empty strings would create <kernel_id></kernel_id>; the spec says to avoid that.
    assert b"kernel_id" not in make_manifest(kernel_id="").to_unsigned_xml()


def test_kernel_image_writes_kernel_name_after_type() -> None:
    out = make_manifest(image_type="kernel", kernel_name="vmlinuz").to_unsigned_xml()
    assert b"<type>kernel</type><kernel_name>vmlinuz</kernel_name><digest" in out


def test_rexml_escaping() -> None:
    m = make_manifest(kernel_id="a&b<c>d\"e'f", product_codes=["&amp;"])
    out = m.to_unsigned_xml()
    assert b"<kernel_id>a&amp;b&lt;c&gt;d&quot;e&apos;f</kernel_id>" in out
    assert b"<product_code>&amp;amp;</product_code>" in out
    assert parse_manifest(out).manifest == m


def test_parts_written_in_index_order() -> None:
    m = make_manifest(
        parts=[PartEntry(1, "b", PART_DIGESTS[1]), PartEntry(0, "a", PART_DIGESTS[0])]
    )
    out = m.to_unsigned_xml()
    assert out.index(b"<part index='0'>") < out.index(b"<part index='1'>")


def test_to_signed_xml_inserts_signature_last() -> None:
    m = make_manifest()
    signed = m.to_signed_xml("00ff")
    assert signed == m.to_unsigned_xml()[: -len(b"</manifest>")] + (
        b"<signature>00ff</signature></manifest>"
    )
    assert parse_manifest(signed).manifest.signature == "00ff"


def test_insert_signature_rejects_bad_input() -> None:
    unsigned = make_manifest().to_unsigned_xml()
    with pytest.raises(ManifestError, match="</manifest>"):
        insert_signature(unsigned + b"\n", "00")
    with pytest.raises(ManifestError, match="already"):
        insert_signature(insert_signature(unsigned, "00"), "11")
    with pytest.raises(ManifestError, match="hex"):
        insert_signature(unsigned, "</signature><evil/>")


# --------------------------------------------------------------------------- round trips

_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S")),
    min_size=1,
    max_size=12,
)
_safe_name = _text.filter(lambda s: mf.unsafe_name_reason(s) is None)
_hex = st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=600)
_digest = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    names = draw(st.lists(_safe_name, min_size=1, max_size=5, unique=True))
    image_type = draw(st.sampled_from(["machine", "kernel", "ramdisk"]))
    return Manifest(
        name=draw(_safe_name),
        user=draw(st.sampled_from(["123456789012", "000000000001"])),
        digest=draw(_digest),
        size=draw(st.integers(0, 2**63 - 1)),
        bundled_size=draw(st.integers(0, 2**63 - 1)),
        ec2_encrypted_key=draw(_hex),
        user_encrypted_key=draw(_hex),
        ec2_encrypted_iv=draw(_hex),
        user_encrypted_iv=draw(_hex),
        parts=[PartEntry(i, n, draw(_digest)) for i, n in enumerate(names)],
        arch=draw(st.one_of(st.none(), st.sampled_from(["i386", "x86_64"]), _text)),
        image_type=image_type,
        kernel_name=draw(_text) if image_type == "kernel" else None,
        kernel_id=draw(st.one_of(st.none(), _text)),
        ramdisk_id=draw(st.one_of(st.none(), _text)),
        block_device_mapping=draw(st.dictionaries(_text, _text, max_size=5)),
        product_codes=draw(st.lists(_text, max_size=3)),
        ancestry=draw(st.lists(_text, max_size=3)),
        bundler=draw(st.one_of(st.none(), st.tuples(_text, _text, _text))),
        signature=draw(st.one_of(st.none(), st.text("0123456789abcdef", min_size=2, max_size=64))),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_round_trip_parse_render(m: Manifest) -> None:
    data = m.to_unsigned_xml() if m.signature is None else m.to_signed_xml(m.signature)
    parsed = parse_manifest(data)
    assert parsed.manifest == m
    assert parsed.raw == data
    # Rendering what we parsed is a fixed point: same bytes again.
    again = parsed.manifest
    assert (
        again.to_unsigned_xml() if again.signature is None else again.to_signed_xml(again.signature)
    ) == data


@pytest.mark.parametrize(
    "m", [make_manifest(), full_manifest(), make_manifest(arch=None, bundler=None)]
)
def test_round_trip_examples(m: Manifest) -> None:
    assert parse_manifest(m.to_unsigned_xml()).manifest == m


# --------------------------------------------------------------------------- part names

PART_TABLE = [
    (1, ".part.0", ".part.0"),
    (9, ".part.0", ".part.8"),
    (10, ".part.00", ".part.09"),
    (99, ".part.00", ".part.98"),
    (100, ".part.000", ".part.099"),
    (101, ".part.000", ".part.100"),
    (1000, ".part.0000", ".part.0999"),
    (1025, ".part.0000", ".part.1024"),
]


@pytest.mark.parametrize(("count", "first", "last"), PART_TABLE)
def test_part_names_match_classic_table(count: int, first: str, last: str) -> None:
    names = part_names("img", count)
    assert len(names) == count
    assert names[0] == "img" + first
    assert names[-1] == "img" + last
    assert len({len(n) for n in names}) == 1  # never mixed widths


def test_part_names_rejects_zero() -> None:
    with pytest.raises(UsageError):
        part_names("img", 0)


# --------------------------------------------------------------------------- signed data


def test_signed_data_minimal() -> None:
    xml = make_manifest().to_signed_xml("ab")
    data = signed_data(xml)
    assert data.startswith(
        b"<machine_configuration><architecture>x86_64</architecture></machine_configuration>"
        b"<image><name>image</name>"
    )
    assert data.endswith(b"</parts></image>")
    assert b"<signature>" not in data and b"<bundler>" not in data


def test_signed_data_without_machine_configuration() -> None:
    xml = make_manifest(arch=None).to_unsigned_xml()
    data = signed_data(xml)
    assert data.startswith(b"<image>") and data.endswith(b"</image>")


def test_signed_data_self_closing_machine_configuration_is_not_signed() -> None:
    xml = b"<manifest><machine_configuration/><image><name>x</name></image></manifest>"
    assert signed_data(xml) == b"<image><name>x</name></image>"


def test_signed_data_is_textual_first_occurrence() -> None:
    xml = b"<m><image a='b'>x</image><image>y</image></m>"
    # "<image a='b'>" is not the literal start tag, but the first "</image>" comes before
    # the first "<image>", so Ruby's slice is empty: nothing to sign.
    with pytest.raises(ManifestError, match="<image>"):
        signed_data(xml)
    with pytest.raises(ManifestError, match="<image>"):
        signed_data(b"<manifest><machine_configuration></machine_configuration></manifest>")


# --------------------------------------------------------------------------- other formats

EUCA = f"""<?xml version='1.0' encoding='ASCII'?>
<manifest>
  <version>2007-10-10</version>
  <bundler>
    <name>euca2ools</name>
    <version>3.4.1</version>
    <release>0</release>
  </bundler>
  <machine_configuration>
    <architecture>x86_64</architecture>
    <block_device_mapping>
      <mapping>
        <virtual>root</virtual>
        <device>/dev/sda1</device>
      </mapping>
    </block_device_mapping>
  </machine_configuration>
  <image>
    <name>euca.img</name>
    <user>123456789012</user>
    <type>machine</type>
    <digest algorithm="SHA1">{DIGEST.upper()}</digest>
    <size>1048576</size>
    <bundled_size>2048</bundled_size>
    <ec2_encrypted_key algorithm="AES-128-CBC">{EC2_KEY}</ec2_encrypted_key>
    <user_encrypted_key algorithm="AES-128-CBC">{USER_KEY}</user_encrypted_key>
    <ec2_encrypted_iv>{EC2_IV}</ec2_encrypted_iv>
    <user_encrypted_iv>{USER_IV}</user_encrypted_iv>
    <parts count="2">
      <part index="1">
        <filename>euca.img.part.01</filename>
        <digest algorithm="SHA1">{PART_DIGESTS[1]}</digest>
      </part>
      <part index="0">
        <filename> euca.img.part.00 </filename>
        <digest algorithm="SHA1">{PART_DIGESTS[0]}</digest>
      </part>
    </parts>
  </image>
  <signature>UNSIGNED</signature>
</manifest>
""".encode()


def test_parse_euca2ools_pretty_printed_double_quoted() -> None:
    parsed = parse_manifest(EUCA, source="euca.manifest.xml")
    m = parsed.manifest
    assert m.bundler == ("euca2ools", "3.4.1", "0")
    assert m.name == "euca.img"
    assert m.digest == DIGEST.upper()  # kept as given, validated as hex
    assert m.block_device_mapping == {"root": "/dev/sda1"}
    # Part order comes from index attributes, never document order; values are trimmed.
    assert [p.filename for p in m.parts] == ["euca.img.part.00", "euca.img.part.01"]
    assert m.signature == "UNSIGNED"
    assert parsed.raw == EUCA
    # REXML keeps whitespace text nodes but single-quotes attributes.
    rexml = rexml_signed_data(parsed)
    assert rexml.startswith(b"<machine_configuration>\n    <architecture>")
    assert b"<digest algorithm='SHA1'>" in rexml and b'"' not in rexml
    assert signed_data(EUCA).count(b'algorithm="SHA1"') == 3


V3 = ('<?xml version="1.0"?>\n'
      "<manifest><version>3</version><bundler><name>ec2-ami-tools</name><version>1.3</version>"
      "<release>20041</release></bundler>\n"
      "<image><name>old</name><user>123456789012</user>"
      f'<digest algorithm="SHA1">{DIGEST}</digest><size>10</size><bundled_size>32</bundled_size>\n'
      f'<ec2_encrypted_key algorithm="AES-128-CBC">{EC2_KEY}</ec2_encrypted_key>'
      f'<user_encrypted_key algorithm="AES-128-CBC">{USER_KEY}</user_encrypted_key>\n'
      f"<ec2_encrypted_iv>{EC2_IV}</ec2_encrypted_iv>"
      f"<user_encrypted_iv>{USER_IV}</user_encrypted_iv>\n"
      '<parts count="1"><part index="0"><filename>old.part.0</filename>'
      f'<digest algorithm="SHA1">{PART_DIGESTS[0]}</digest></part></parts></image>\n'
      "<signature>abcd</signature></manifest>").encode()


def test_parse_v3_defaults_arch_i386_type_machine() -> None:
    m = parse_manifest(V3).manifest
    assert m.version == "3"
    assert m.arch == "i386"
    assert m.image_type == "machine"
    assert m.bundler == ("ec2-ami-tools", "1.3", "20041")
    assert signed_data(V3).startswith(b"<image><name>old</name>")


@pytest.mark.parametrize("version", ["2007-08-29", "20070829"])
def test_parse_2007_08_29(version: str) -> None:
    image = image_xml(type=None)  # type: ignore[arg-type]
    data = (
        f"<?xml version='1.0'?><manifest><version>{version}</version><machine_configuration/>"
        f"{image}</manifest>"
    ).encode()
    m = parse_manifest(data).manifest
    assert m.version == version
    assert m.image_type == "machine"
    assert m.arch is None
    assert m.signature is None
    assert signed_data(data).startswith(b"<image>")


def test_type_required_for_2007_10_10() -> None:
    with pytest.raises(ManifestError, match="image/type"):
        parse_manifest(doc(image_xml(type=None)))  # type: ignore[arg-type]


def test_unsupported_version() -> None:
    with pytest.raises(ManifestError, match="unsupported manifest version '20071010'"):
        parse_manifest(doc(version="20071010"))


def test_legacy_encrypted_manifest_detected() -> None:
    with pytest.raises(EncryptedManifestError, match="encrypted.*decrypt_legacy_manifest"):
        parse_manifest(b"\x02\x01\x00" + bytes(300), source="old.manifest.xml")


# --------------------------------------------------------------------------- hostile input

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE manifest [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<manifest><version>&lol9;</version></manifest>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE manifest [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<manifest><version>2007-10-10</version><image><name>&xxe;</name></image></manifest>"""

DTD_ONLY = b"""<?xml version="1.0"?>
<!DOCTYPE manifest SYSTEM "http://example.invalid/manifest.dtd">
<manifest><version>2007-10-10</version></manifest>"""


@pytest.mark.parametrize(
    "data", [BILLION_LAUGHS, XXE, DTD_ONLY], ids=["billion-laughs", "xxe", "dtd"]
)
def test_hostile_xml_rejected(data: bytes) -> None:
    with pytest.raises(ManifestError, match="^evil.xml: hostile XML: .*refusing to parse$"):
        parse_manifest(data, source="evil.xml")


def test_oversized_manifest_rejected() -> None:
    with pytest.raises(ManifestError, match="larger than the 16777216-byte limit"):
        parse_manifest(b"<" + b" " * MAX_MANIFEST_BYTES)


def test_too_many_parts_rejected() -> None:
    parts = "<parts>" + "".join(f"<part index='{i}'/>" for i in range(MAX_PARTS + 1)) + "</parts>"
    with pytest.raises(ManifestError, match=f"100001 parts, more than the limit of {MAX_PARTS}"):
        parse_manifest(doc(image_xml(parts=parts)))


def test_deep_nesting_rejected() -> None:
    with pytest.raises(ManifestError, match="nested deeper"):
        parse_manifest(b"<manifest>" + b"<a>" * 1000 + b"</a>" * 1000 + b"</manifest>")


MANDATORY = [
    "name", "user", "digest", "size", "bundled_size",
    "ec2_encrypted_key", "user_encrypted_key", "ec2_encrypted_iv", "user_encrypted_iv",
]  # fmt: skip


@pytest.mark.parametrize("field_name", MANDATORY)
def test_missing_mandatory_field_names_xpath(field_name: str) -> None:
    with pytest.raises(ManifestError, match=f"image/{field_name} element not present or empty"):
        parse_manifest(doc(image_xml(**{field_name: None})))  # type: ignore[arg-type]


@pytest.mark.parametrize("field_name", MANDATORY)
def test_empty_mandatory_field_names_xpath(field_name: str) -> None:
    with pytest.raises(ManifestError, match=f"image/{field_name} element not present or empty"):
        parse_manifest(doc(image_xml(**{field_name: f"<{field_name}>  </{field_name}>"})))


def test_missing_image_and_version() -> None:
    with pytest.raises(ManifestError, match="image element not present"):
        parse_manifest(b"<?xml version='1.0'?><manifest><version>2007-10-10</version></manifest>")
    with pytest.raises(ManifestError, match="version element not present"):
        parse_manifest(doc().replace(b"<version>2007-10-10</version>", b""))
    with pytest.raises(ManifestError, match="root element is <foo>"):
        parse_manifest(b"<foo/>")


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        (
            {"digest": "<digest algorithm='SHA1'>xyz</digest>"},
            "image/digest is not hexadecimal: 'xyz'",
        ),
        (
            {"digest": "<digest algorithm='SHA1'>abcd</digest>"},
            "image/digest must be 40 hex digits",
        ),
        ({"digest": f"<digest algorithm='MD5'>{DIGEST}</digest>"}, "algorithm 'MD5' is not SHA1"),
        (
            {"size": "<size>-1</size>"},
            "image/size must be a non-negative decimal integer, got '-1'",
        ),
        (
            {"bundled_size": "<bundled_size>-5</bundled_size>"},
            "image/bundled_size must be a non-negative",
        ),
        ({"size": "<size>1e3</size>"}, "image/size must be a non-negative"),
        ({"size": "<size>99999999999999999999</size>"}, "image/size must be a non-negative"),
        (
            {"user_encrypted_iv": "<user_encrypted_iv>12 34</user_encrypted_iv>"},
            "user_encrypted_iv is not hexadecimal",
        ),
        (
            {"ec2_encrypted_key": "<ec2_encrypted_key algorithm='DES'>ab</ec2_encrypted_key>"},
            "is not AES-128-CBC",
        ),
        ({"type": "<type>disk</type>"}, "image/type 'disk' is not one of"),
        ({"type": "<type>kernel</type>"}, "image/kernel_name element not present"),
        ({"name": "<name>../etc</name>"}, "unsafe image name '../etc'"),
    ],
)
def test_invalid_field_values(replacement: dict[str, str], message: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(message)):
        parse_manifest(doc(image_xml(**replacement)))


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (parts_xml([("0", "a"), ("2", "b")]), "index 1 is missing"),
        (parts_xml([("1", "a")]), "index 0 is missing"),
        (parts_xml([("0", "a"), ("0", "b")]), "duplicate part index 0"),
        (
            parts_xml([("0", "a"), ("1", "b")], count="3"),
            "image/parts/@count is 3 but there are 2 part elements",
        ),
        (parts_xml([("0", "a")], count="x"), "image/parts/@count must be a non-negative"),
        (parts_xml([("-1", "a")]), "@index must be a non-negative decimal integer, got '-1'"),
        (parts_xml([("0", "../x")]), "unsafe part name '../x'"),
        (parts_xml([("0", "a/b")]), "unsafe part name 'a/b'"),
        (parts_xml([("0", "a\\b")]), "unsafe part name 'a\\\\b'"),
        (parts_xml([("0", "..")]), "unsafe part name '..'"),
        (parts_xml([("0", "a" * 256)]), "longer than 255 bytes"),
        (parts_xml([("0", "a"), ("1", "a")]), "part name 'a' is used twice"),
        ("<parts count='0'></parts>", "contains no part elements"),
        ("", "image/parts element not present"),
        ("<parts><part><filename>a</filename></part></parts>", "@index attribute not present"),
        (
            f"<parts><part index='0'><digest algorithm='SHA1'>{DIGEST}</digest></part></parts>",
            "image/parts/part[1]/filename element not present",
        ),
        (
            "<parts><part index='0'><filename>a</filename><digest>zz</digest></part></parts>",
            "image/parts/part[1]/digest is not hexadecimal",
        ),
    ],
)
def test_invalid_parts(parts: str, message: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(message)):
        parse_manifest(doc(image_xml(parts=parts)))


def test_part_name_with_leading_dash_is_allowed() -> None:
    m = parse_manifest(doc(image_xml(parts=parts_xml([("0", "-x.part.0")])))).manifest
    assert m.parts[0].filename == "-x.part.0"


def test_duplicate_image_element_rejected() -> None:
    data = doc(image_xml() + image_xml())
    with pytest.raises(ManifestError, match="more than one image element"):
        parse_manifest(data)


def test_bdm_mapping_without_device() -> None:
    data = doc().replace(
        b"</architecture>",
        b"</architecture><block_device_mapping><mapping><virtual>ami</virtual></mapping>"
        b"</block_device_mapping>",
    )
    with pytest.raises(ManifestError, match=re.escape("block_device_mapping/mapping[1]/device")):
        parse_manifest(data)


def test_truncated_golden_manifest(golden_dir: Path) -> None:
    raw = (golden_dir / "tiny" / "tiny.manifest.xml").read_bytes()
    for cut in (len(raw) // 2, len(raw) - 1, 30):
        with pytest.raises(ManifestError, match="not well-formed XML.*truncated or corrupt"):
            parse_manifest(raw[:cut], source="tiny.manifest.xml")


@pytest.mark.parametrize(
    "data", [b"", b"   \n", b"<", b"\xff\xfe<\x00m", b"<manifest>\x00</manifest>"]
)
def test_garbage_is_manifest_error(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_manifest_error(data: bytes) -> None:
    try:
        parse_manifest(b"<?xml version='1.0'?>" + data)
        parse_manifest(data)
    except ManifestError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_manifest_only_raises_manifest_error(data: st.DataObject) -> None:
    raw = bytearray(full_manifest().to_signed_xml("abcd"))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    try:
        parse_manifest(bytes(raw))
    except ManifestError as exc:
        assert "\n" not in str(exc)


# --------------------------------------------------------------------------- golden vectors


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_manifest_rerenders_byte_exact(golden_dir: Path, name: str) -> None:
    raw = (golden_dir / name / f"{name}.manifest.xml").read_bytes()
    parsed = parse_manifest(raw, source=f"{name}.manifest.xml")
    m = parsed.manifest
    assert m.bundler == ("ec2-ami-tools", "1.5", "3")
    assert m.version == "2007-10-10"
    assert m.user == "123456789012"
    assert m.name == name
    assert m.signature is not None
    assert m.to_signed_xml(m.signature) == raw
    assert rexml_signed_data(parsed) == signed_data(raw)
    assert [p.filename for p in m.parts] == part_names(name, len(m.parts))
    assert m.bundled_size % 16 == 0


def test_golden_tiny_fields(golden_dir: Path) -> None:
    m = parse_manifest((golden_dir / "tiny" / "tiny.manifest.xml").read_bytes()).manifest
    assert m.arch == "i386"
    assert m.kernel_id == "aki-12345678"
    assert m.ramdisk_id == "ari-87654321"
    assert m.block_device_mapping == {
        "ami": "sda1",
        "ephemeral0": "sdb",
        "root": "/dev/sda1",
        "swap": "sda3",
    }
    assert list(m.block_device_mapping) == sorted(m.block_device_mapping)
    assert m.product_codes == ["1234ABCD"]
    assert m.size == 21
    assert m.parts == [PartEntry(0, "tiny.part.0", "0f444a277892556ecf147bd01692ffad99bf1732")]


def test_golden_two_part_sizes(golden_dir: Path) -> None:
    m = parse_manifest((golden_dir / "two-part" / "two-part.manifest.xml").read_bytes()).manifest
    assert m.size == 10489857
    assert [p.filename for p in m.parts] == ["two-part.part.0", "two-part.part.1"]
    sizes = [(golden_dir / "two-part" / p.filename).stat().st_size for p in m.parts]
    assert sizes[0] == 10 * 1024 * 1024
    assert sum(sizes) == m.bundled_size


def test_rexml_signed_data_falls_back_to_our_style_without_raw() -> None:
    m = full_manifest()
    parsed = ParsedManifest(manifest=m, raw=b"not xml")
    assert rexml_signed_data(parsed) == signed_data(m.to_unsigned_xml())


def test_signed_view_ignores_bundler_and_signature() -> None:
    m = full_manifest()
    data = m.to_signed_xml("ab")
    parsed = parse_manifest(data)
    assert mf.signed_region_matches(parsed, signed_data(data))
    other = dataclasses.replace(m, kernel_id="aki-evil")
    assert not mf.signed_region_matches(parsed, signed_data(other.to_unsigned_xml()))


# --------------------------------------------------------------------------- CLI-value helpers


@pytest.mark.parametrize("name", ["image", "my-image_1.0+x", "a" * 128, "..x", "A.b"])
def test_validate_name_accepts(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "a" * 129, "é", "a\n", "x;rm"])
def test_validate_name_rejects(name: str) -> None:
    with pytest.raises(UsageError, match="invalid bundle name"):
        validate_name(name)


def test_parse_block_device_mapping() -> None:
    assert parse_block_device_mapping(
        ["ami=sda1, root = /dev/sda1", " ephemeral0=sdb,", "swap=sda3", "ami=xvda1"]
    ) == {"ami": "xvda1", "root": "/dev/sda1", "ephemeral0": "sdb", "swap": "sda3"}
    assert parse_block_device_mapping([]) == {}


@pytest.mark.parametrize("value", ["", "ami", "ami=", "=sda1", "a=b,,c=d", "a=b=c", "a b=c", " "])
def test_parse_block_device_mapping_rejects(value: str) -> None:
    with pytest.raises(UsageError, match="block-device-mapping"):
        parse_block_device_mapping([value])


def test_parse_product_codes() -> None:
    assert parse_product_codes(None) == []
    assert parse_product_codes("") == []
    assert parse_product_codes(" a, b ,,c,") == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("my-bucket", ("my-bucket", "")),
        ("/my-bucket/amis/web/", ("my-bucket", "amis/web/")),
        ("my-bucket/amis", ("my-bucket", "amis/")),
        ("//my-bucket//", ("my-bucket", "")),
        ("a.b-c9/x/y", ("a.b-c9", "x/y/")),
    ],
)
def test_bucket_and_prefix(value: str, expected: tuple[str, str]) -> None:
    assert bucket_and_prefix(value) == expected


@pytest.mark.parametrize("value",
                         ["", "/", "///", "ab/x", "bad bucket/x", "b*d", "My_Bucket",
                                   "Legacy_Bucket/x",
                                   "bad..dots", "192.168.5.4", "-dash", "dash-", "xn--abc",
                                   "sthree-x",
                                   "amzn-s3-demo-x", "b-s3alias", "b--ol-s3", "b.mrap", "b--x-s3",
                                   "a" * 64,
                                   "good-bucket/a//b", "good-bucket/a/../b", "good-bucket/./b",
                                   "good-bucket/a\x01b", "good-bucket/" + "k" * 1000])
def test_bucket_and_prefix_rejects(value: str) -> None:
    with pytest.raises(UsageError, match="bucket"):
        bucket_and_prefix(value)


def test_default_bundler_constant() -> None:
    assert DEFAULT_BUNDLER == ("ami-bundler", "0.1", "0")
    assert make_manifest().bundler == DEFAULT_BUNDLER
