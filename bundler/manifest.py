"""The bundle manifest: classic (REXML-style) serialization, hardened parsing, naming helpers.

Pure logic only: bytes and dataclasses in and out, no file I/O (spec §3, §4, §1.6, §6.1).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import defusedxml
import defusedxml.ElementTree as DET

from bundler.errors import ManifestError, UsageError
from bundler.s3names import bucket_and_prefix  # noqa: F401 - re-exported; the rules live in s3names

log = logging.getLogger("bundler.manifest")

DEFAULT_BUNDLER: tuple[str, str, str] = ("ami-bundler", "0.1", "0")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_PARTS = 100_000

WRITE_VERSION = "2007-10-10"
XML_DECLARATION = "<?xml version='1.0'?>"

# Version text as found in /manifest/version → canonical form (spec §3.5). Classic
# migrate-manifest rejects everything else (including "20071010"), so do we.
_VERSIONS = {
    "3": "3",
    "2007-08-29": "20070829",
    "20070829": "20070829",
    "2007-10-10": "20071010",
}
_IMAGE_TYPES = ("machine", "kernel", "ramdisk")
_MAX_INT = 2**63 - 1  # fits S3/tar/int64 consumers; anything larger is corrupt or hostile
_MAX_ENCRYPTED_HEX = 4096  # a 16384-bit RSA block; real ones are 256 or 512 hex chars
_MAX_DEPTH = 32  # real manifests are 5 deep; bounds recursion in the REXML re-serializer
_MAX_NAME_BYTES = 255  # NAME_MAX on every filesystem we extract to
_MAX_BUNDLE_NAME = 128

_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_INT_RE = re.compile(r"[0-9]{1,19}")
_BUNDLE_NAME_RE = re.compile(r"[A-Za-z0-9._+-]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# What a manifest value may not hold: control characters (XML 1.0 forbids most of them and
# normalises the rest away, so the value read back would differ), lone surrogates (not
# encodable) and the non-characters U+FFFE/U+FFFF.
_UNWRITABLE_RE = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_XML_DECL_RE = re.compile(rb"\s*(<\?xml[^>]*\?>)")


class EncryptedManifestError(ManifestError):
    """The manifest uses the legacy whole-file encryption (spec §2.4); decrypt it first."""


def part_mismatch(entry: PartEntry, actual: str, entries: Sequence[PartEntry],
                  where: str = "") -> str:
    """Why a part's SHA-1 is not the manifest's, in words: another part's data (parts renamed
    or given out of order) or just different bytes (corrupt or from another bundle)."""
    what = f"part {where or entry.filename} (index {entry.index})"
    for other in entries:
        if other.index != entry.index and other.digest.lower() == actual:
            return (f"{what} holds the data of {other.filename} (index {other.index}): the parts "
                    "were renamed or given out of order; give each part its own name")
    return f"{what} is corrupt: SHA-1 {actual}, manifest says {entry.digest}"


@dataclass(frozen=True)
class PartEntry:
    index: int
    filename: str
    digest: str  # lowercase hex SHA-1 when we write it; as given (validated hex) when read


@dataclass
class Manifest:
    name: str
    user: str  # 12-digit account id
    digest: str  # SHA-1 hex of the tar stream
    size: int  # image bytes
    bundled_size: int  # total part bytes
    ec2_encrypted_key: str
    user_encrypted_key: str
    ec2_encrypted_iv: str
    user_encrypted_iv: str
    parts: list[PartEntry]
    arch: str | None = "x86_64"
    image_type: str = "machine"
    kernel_name: str | None = None
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    block_device_mapping: dict[str, str] = field(default_factory=dict)
    product_codes: list[str] = field(default_factory=list)
    ancestry: list[str] = field(default_factory=list)
    bundler: tuple[str, str, str] | None = DEFAULT_BUNDLER
    version: str = WRITE_VERSION  # as read; we always write 2007-10-10
    digest_algorithm: str = "SHA1"
    cipher: str = "AES-128-CBC"
    signature: str | None = None

    def to_unsigned_xml(self) -> bytes:
        """The classic REXML one-line document (spec §3.1/§3.2) without ``<signature>``."""
        out: list[str] = [XML_DECLARATION, "<manifest>", _el("version", WRITE_VERSION)]
        if self.bundler is not None and any(self.bundler):
            inner = "".join(
                _el(tag, value)
                for tag, value in zip(("name", "version", "release"), self.bundler, strict=True)
                if value
            )
            out.append(f"<bundler>{inner}</bundler>")
        out.append(self._machine_configuration_xml())
        out.append(self._image_xml())
        out.append("</manifest>")
        return "".join(out).encode("utf-8")

    def to_signed_xml(self, signature_hex: str) -> bytes:
        return insert_signature(self.to_unsigned_xml(), signature_hex)

    def _machine_configuration_xml(self) -> str:
        inner: list[str] = []
        if self.arch:
            inner.append(_el("architecture", self.arch))
        if self.block_device_mapping:
            maps = "".join(
                f"<mapping>{_el('virtual', virtual)}{_el('device', device)}</mapping>"
                for virtual, device in sorted(self.block_device_mapping.items())
            )
            inner.append(f"<block_device_mapping>{maps}</block_device_mapping>")
        # Empty strings would become <kernel_id></kernel_id>, which the spec says to avoid.
        if self.kernel_id:
            inner.append(_el("kernel_id", self.kernel_id))
        if self.ramdisk_id:
            inner.append(_el("ramdisk_id", self.ramdisk_id))
        if self.product_codes:
            codes = "".join(_el("product_code", code) for code in self.product_codes)
            inner.append(f"<product_codes>{codes}</product_codes>")
        if not inner:
            return ""
        return "<machine_configuration>" + "".join(inner) + "</machine_configuration>"

    def _image_xml(self) -> str:
        out = [
            "<image>",
            _el("name", self.name),
            _el("user", self.user),
            _el("type", self.image_type),
        ]
        if self.kernel_name:
            out.append(_el("kernel_name", self.kernel_name))
        if self.ancestry:
            ancestors = "".join(_el("ancestor_ami_id", ami) for ami in self.ancestry)
            out.append(f"<ancestry>{ancestors}</ancestry>")
        out += [
            _el("digest", self.digest, algorithm=self.digest_algorithm),
            _el("size", str(self.size)),
            _el("bundled_size", str(self.bundled_size)),
            _el("ec2_encrypted_key", self.ec2_encrypted_key, algorithm=self.cipher),
            _el("user_encrypted_key", self.user_encrypted_key, algorithm=self.cipher),
            _el("ec2_encrypted_iv", self.ec2_encrypted_iv),
            _el("user_encrypted_iv", self.user_encrypted_iv),
            f"<parts count='{len(self.parts)}'>",
        ]
        for part in sorted(self.parts, key=lambda p: p.index):
            out.append(
                f"<part index='{part.index}'>{_el('filename', part.filename)}"
                f"{_el('digest', part.digest, algorithm=self.digest_algorithm)}</part>"
            )
        out.append("</parts></image>")
        return "".join(out)


@dataclass
class ParsedManifest:
    manifest: Manifest
    raw: bytes  # the exact bytes parsed (for signature verification over raw bytes)
    source: str = "manifest"  # file/object name used in error messages


# --------------------------------------------------------------------------- serialization


def _escape(text: str) -> str:
    # REXML Text::normalize; '&' must go first so later entities are not double-escaped.
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )


def _checked(tag: str, text: str) -> str:
    if not isinstance(text, str):
        raise UsageError(f"manifest field {tag} must be text, not {type(text).__name__}")
    bad = _UNWRITABLE_RE.search(text)
    if bad:
        raise UsageError(
            f"manifest field {tag} value {_show(text)} contains the character "
            f"U+{ord(bad.group()):04X}, which a manifest cannot carry"
        )
    return text


def _el(tag: str, text: str, **attrs: str) -> str:
    attr = "".join(f" {k}='{_escape(_checked(f'{tag}/@{k}', v))}'" for k, v in attrs.items())
    return f"<{tag}{attr}>{_escape(_checked(tag, text))}</{tag}>"


def _get_xml(xml: bytes, tag: bytes) -> bytes | None:
    """Classic ``XMLUtil.get_xml``: first ``<tag>`` through first ``</tag>``, textually."""
    start = xml.find(b"<" + tag + b">")
    end = xml.find(b"</" + tag + b">")
    if start < 0 or end < 0:
        return None
    end += len(tag) + 3
    # Ruby's str[a..b] with b before a is "", so a stray early end tag signs nothing.
    return xml[start:end] if end > start else b""


def signed_data(xml: bytes) -> bytes:
    """The bytes the classic tools sign (spec §4.1): machine_configuration (or b"") + image."""
    image = _get_xml(xml, b"image")
    if not image:
        raise ManifestError(
            "manifest has no literal '<image>'…'</image>' region to sign or verify "
            "(missing element, or attributes/whitespace in the <image> start tag)"
        )
    return (_get_xml(xml, b"machine_configuration") or b"") + image


def insert_signature(unsigned_xml: bytes, signature_hex: str) -> bytes:
    """Append ``<signature>`` as the last child of ``manifest`` without touching other bytes."""
    closing = b"</manifest>"
    if not unsigned_xml.endswith(closing):
        raise ManifestError("cannot insert signature: document does not end with '</manifest>'")
    if b"<signature>" in unsigned_xml:
        raise ManifestError("cannot insert signature: document already has a <signature> element")
    if signature_hex != "UNSIGNED" and not _HEX_RE.fullmatch(signature_hex):
        raise ManifestError("cannot insert signature: signature must be hex")
    body = unsigned_xml[: -len(closing)]
    return body + b"<signature>" + signature_hex.encode("ascii") + b"</signature>" + closing


def _rexml_serialize(elem: ET.Element, out: list[str]) -> None:
    out.append("<" + elem.tag)
    for key, value in elem.attrib.items():
        out.append(f" {key}='{_escape(value)}'")
    if len(elem) == 0 and not elem.text:
        out.append("/>")
        return
    out.append(">")
    if elem.text:
        out.append(_escape(elem.text))
    for child in elem:
        _rexml_serialize(child, out)
        if child.tail:
            out.append(_escape(child.tail))
    out.append(f"</{elem.tag}>")


def rexml_signed_data(manifest: ParsedManifest) -> bytes:
    """The signed region as classic verification computes it (spec §4.2).

    Classic tools re-serialize the parsed REXML tree (single quotes, whitespace text kept,
    ``<x/>`` for empty elements) and apply the textual rule to that, so this mirrors the
    tree of ``raw`` rather than re-rendering our own style: that is what makes pretty-printed
    or v3 manifests verify the way they do in ec2-migrate-manifest.
    """
    try:
        root = _parse_tree(manifest.raw, manifest.source)
    except ManifestError:
        # raw is not ours to trust (e.g. a hand-built ParsedManifest); fall back to our style.
        return signed_data(manifest.manifest.to_unsigned_xml())
    out = [XML_DECLARATION]
    _rexml_serialize(root, out)
    return signed_data("".join(out).encode("utf-8"))


def signed_region_matches(parsed: ParsedManifest, data: bytes) -> bool:
    """True when the signed bytes describe exactly the manifest we parsed.

    The textual rule can be fooled: an extra ``<image>`` hidden in a comment, CDATA or an
    unknown element earlier in the file is what gets signed while the parser reads the
    real one. Re-parsing the signed region and comparing closes that gap.
    """
    decl = _XML_DECL_RE.match(parsed.raw)
    version = parsed.manifest.version
    if version not in _VERSIONS:
        return False
    synthetic = (
        (decl.group(1) if decl else b"")
        + b"<manifest><version>"
        + version.encode("ascii")
        + b"</version>"
        + data
        + b"</manifest>"
    )
    try:
        other = parse_manifest(synthetic, source=parsed.source).manifest
    except ManifestError:
        return False
    return _signed_view(other) == _signed_view(parsed.manifest)


def _signed_view(manifest: Manifest) -> Manifest:
    return dataclasses.replace(manifest, bundler=None, signature=None)


# --------------------------------------------------------------------------- parsing


def is_xml(data: bytes) -> bool:
    """Starts like an XML document (after blanks and a UTF-8 byte order mark)."""
    stripped = data.lstrip()
    if stripped.startswith(b"\xef\xbb\xbf"):
        stripped = stripped[3:].lstrip()
    return stripped.startswith(b"<")


def is_encrypted(data: bytes) -> bool:
    """A legacy whole-file encrypted manifest (spec §2.4): not XML, and starting as one does
    (scheme byte 1 or 2, a plausible RSA block length). Anything else that is not XML is left
    to the XML parser, which says it is not a manifest."""
    if is_xml(data):
        return False
    if len(data) < 3 or data[0] not in (1, 2):
        return False
    rsa_len, offset = (data[1], 2) if data[0] == 1 else (int.from_bytes(data[1:3], "big"), 3)
    return 0 < rsa_len <= 2048  # a short or misframed one is reported by the decrypter


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _parse_tree(data: bytes, source: str) -> ET.Element:
    try:
        root = DET.fromstring(
            data.lstrip(), forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException as exc:
        raise ManifestError(f"{source}: hostile XML: {_one_line(exc)}; refusing to parse") from exc
    except ET.ParseError as exc:
        head = data.lstrip()
        if not head.startswith((b"<", b"\xef\xbb\xbf")):
            raise ManifestError(
                f"{source} is not a manifest: neither XML (it does not start with '<') nor a "
                "legacy encrypted manifest",
                hint="a manifest is the NAME.manifest.xml file of a bundle"
            ) from None
        raise ManifestError(
            f"{source}: not well-formed XML ({_one_line(exc)}); the manifest is truncated or "
            "corrupt"
        ) from exc
    # Iterative so that absurd nesting cannot blow the stack before we reject it.
    stack = [(root, 1)]
    while stack:
        elem, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise ManifestError(f"{source}: XML nested deeper than {_MAX_DEPTH} levels")
        if not isinstance(elem.tag, str) or elem.tag.startswith("{"):
            raise ManifestError(f"{source}: unexpected XML namespace on element {elem.tag!r}")
        stack.extend((child, depth + 1) for child in elem)
    return root


class _Reader:
    """Field extraction with error messages that name the source and the xpath."""

    def __init__(self, root: ET.Element, source: str) -> None:
        self.root = root
        self.source = source

    def fail(self, message: str) -> ManifestError:
        return ManifestError(f"{self.source}: invalid AMI manifest: {message}")

    def opt(self, path: str, elem: ET.Element | None = None) -> str | None:
        node = (self.root if elem is None else elem).find(path)
        if node is None:
            return None
        if len(node):
            raise self.fail(f"{path} must contain text, not elements")
        text = (node.text or "").strip()
        return text or None

    def req(self, path: str, elem: ET.Element | None = None, *, label: str | None = None) -> str:
        value = self.opt(path, elem)
        if value is None:
            raise self.fail(f"{label or path} element not present or empty")
        return value

    def integer(self, text: str, label: str) -> int:
        if not _INT_RE.fullmatch(text) or int(text) > _MAX_INT:
            raise self.fail(f"{label} must be a non-negative decimal integer, got {_show(text)}")
        return int(text)

    def hexval(self, text: str, label: str, *, length: int | None = None) -> str:
        if not _HEX_RE.fullmatch(text):
            raise self.fail(f"{label} is not hexadecimal: {_show(text)}")
        if length is not None and len(text) != length:
            raise self.fail(f"{label} must be {length} hex digits, got {len(text)}")
        if len(text) > _MAX_ENCRYPTED_HEX:
            raise self.fail(f"{label} is implausibly long ({len(text)} hex digits)")
        return text

    def texts(self, path: str) -> list[str]:
        values = []
        for node in self.root.findall(path):
            text = (node.text or "").strip()
            if text:  # classic skips empty ancestors; an empty product code is equally useless
                values.append(text)
        return values


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` cannot be used as a single file name in a directory, or None if it can."""
    if not name:
        return "empty"
    if name in (".", ".."):
        return "is a directory reference"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if _CONTROL_RE.search(name):
        return "contains a control character"
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        return f"is longer than {_MAX_NAME_BYTES} bytes"
    return None


def _single_child(reader: _Reader, tag: str) -> None:
    if len(reader.root.findall(tag)) > 1:
        # Two <image> elements would let the signed one differ from the one we act on.
        raise reader.fail(f"more than one {tag} element")


def parse_manifest(data: bytes, *, source: str = "manifest") -> ParsedManifest:
    """Parse any manifest version we support; every failure is a ManifestError."""
    try:
        return _parse_manifest(data, source)
    except ManifestError:
        raise
    except Exception as exc:  # contract: arbitrary bytes only ever yield ManifestError
        raise ManifestError(
            f"{source}: cannot parse manifest: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc


def _parse_manifest(data: bytes, source: str) -> ParsedManifest:
    raw = bytes(data)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{source}: manifest is {len(raw)} bytes, larger than the {MAX_MANIFEST_BYTES}-byte "
            "limit"
        )
    if not raw.strip():
        raise ManifestError(f"{source}: manifest is empty")
    if is_encrypted(raw):
        raise EncryptedManifestError(
            f"{source}: manifest is encrypted (legacy AMI manifest encryption, first byte "
            f"0x{raw.lstrip()[0]:02x}); decrypt it with the user private key first "
            "(keys.decrypt_legacy_manifest)"
        )
    root = _parse_tree(raw, source)
    reader = _Reader(root, source)
    if root.tag != "manifest":
        raise reader.fail(f"root element is <{root.tag}>, expected <manifest>")
    for tag in ("version", "bundler", "machine_configuration", "image", "signature"):
        _single_child(reader, tag)

    version = reader.req("version")
    canonical = _VERSIONS.get(version)
    if canonical is None:
        raise reader.fail(
            f"unsupported manifest version {_show(version)} (supported: 3, 2007-08-29, 2007-10-10)"
        )
    image = root.find("image")
    if image is None:
        raise reader.fail("image element not present or empty")

    arch = reader.opt("machine_configuration/architecture")
    if arch is None and canonical == "3":
        arch = "i386"
    image_type = reader.opt("image/type")
    if image_type is None:
        if canonical == "20071010":
            raise reader.fail("image/type element not present or empty")
        image_type = "machine"
    if image_type not in _IMAGE_TYPES:
        raise reader.fail(f"image/type {_show(image_type)} is not one of {', '.join(_IMAGE_TYPES)}")
    kernel_name = reader.opt("image/kernel_name")
    if image_type == "kernel" and kernel_name is None:
        raise reader.fail(
            "image/kernel_name element not present or empty (required for kernel images)"
        )

    name = reader.req("image/name")
    reason = unsafe_name_reason(name)
    if reason:
        raise reader.fail(f"unsafe image name {_show(name)}: {reason}")

    digest_node = root.find("image/digest")
    digest_algorithm = (digest_node.get("algorithm") if digest_node is not None else None) or "SHA1"
    if digest_algorithm.strip().upper() != "SHA1":
        raise reader.fail(f"image/digest/@algorithm {_show(digest_algorithm)} is not SHA1")
    key_node = root.find("image/ec2_encrypted_key")
    cipher = (key_node.get("algorithm") if key_node is not None else None) or "AES-128-CBC"
    if cipher.strip().upper() != "AES-128-CBC":
        raise reader.fail(f"image/ec2_encrypted_key/@algorithm {_show(cipher)} is not AES-128-CBC")

    user = reader.req("image/user")
    if not re.fullmatch(r"[0-9]{12}", user):
        log.warning("%s: image/user %s is not a 12-digit account id", source, _show(user))

    manifest = Manifest(
        name=name,
        user=user,
        digest=reader.hexval(reader.req("image/digest"), "image/digest", length=40),
        size=reader.integer(reader.req("image/size"), "image/size"),
        bundled_size=reader.integer(reader.req("image/bundled_size"), "image/bundled_size"),
        ec2_encrypted_key=_encrypted(reader, "image/ec2_encrypted_key"),
        user_encrypted_key=_encrypted(reader, "image/user_encrypted_key"),
        ec2_encrypted_iv=_encrypted(reader, "image/ec2_encrypted_iv"),
        user_encrypted_iv=_encrypted(reader, "image/user_encrypted_iv"),
        parts=_parse_parts(reader),
        arch=arch,
        image_type=image_type,
        kernel_name=kernel_name,
        kernel_id=reader.opt("machine_configuration/kernel_id"),
        ramdisk_id=reader.opt("machine_configuration/ramdisk_id"),
        block_device_mapping=_parse_bdm(reader),
        product_codes=reader.texts("machine_configuration/product_codes/product_code"),
        ancestry=reader.texts("image/ancestry/ancestor_ami_id"),
        bundler=_parse_bundler(reader),
        version=version,
        digest_algorithm=digest_algorithm,
        cipher=cipher,
        signature=reader.opt("signature"),
    )
    return ParsedManifest(manifest=manifest, raw=raw, source=source)


def _encrypted(reader: _Reader, path: str) -> str:
    return reader.hexval(reader.req(path), path)


def _parse_bundler(reader: _Reader) -> tuple[str, str, str] | None:
    if reader.root.find("bundler") is None:
        return None
    return (
        reader.opt("bundler/name") or "",
        reader.opt("bundler/version") or "",
        reader.opt("bundler/release") or "",
    )


def _parse_bdm(reader: _Reader) -> dict[str, str]:
    mapping: dict[str, str] = {}
    path = "machine_configuration/block_device_mapping/mapping"
    for i, node in enumerate(reader.root.findall(path)):
        label = f"{path}[{i + 1}]"
        virtual = reader.req("virtual", node, label=f"{label}/virtual")
        device = reader.req("device", node, label=f"{label}/device")
        if virtual in mapping:
            # Classic readers build a hash, so the last one wins; keep that, but say so.
            log.warning("%s: duplicate block device mapping for %s", reader.source, _show(virtual))
        mapping[virtual] = device
    return mapping


def _parse_parts(reader: _Reader) -> list[PartEntry]:
    parts_node = reader.root.find("image/parts")
    if parts_node is None:
        raise reader.fail("image/parts element not present or empty")
    nodes = parts_node.findall("part")
    if not nodes:
        raise reader.fail("image/parts contains no part elements")
    if len(nodes) > MAX_PARTS:
        raise reader.fail(f"image/parts has {len(nodes)} parts, more than the limit of {MAX_PARTS}")
    count = parts_node.get("count")
    if count is not None and reader.integer(count.strip(), "image/parts/@count") != len(nodes):
        raise reader.fail(
            f"image/parts/@count is {count.strip()} but there are {len(nodes)} part elements"
        )
    by_index: dict[int, PartEntry] = {}
    filenames: set[str] = set()
    for i, node in enumerate(nodes):
        label = f"image/parts/part[{i + 1}]"
        index_text = node.get("index")
        if index_text is None:
            raise reader.fail(f"{label}/@index attribute not present")
        index = reader.integer(index_text.strip(), f"{label}/@index")
        if index in by_index:
            raise reader.fail(f"duplicate part index {index}")
        filename = reader.req("filename", node, label=f"{label}/filename")
        reason = unsafe_name_reason(filename)
        if reason:
            raise reader.fail(f"unsafe part name {_show(filename)}: {reason}")
        if filename in filenames:
            raise reader.fail(f"part name {_show(filename)} is used twice")
        filenames.add(filename)
        digest_node = node.find("digest")
        algorithm = (digest_node.get("algorithm") if digest_node is not None else None) or "SHA1"
        if algorithm.strip().upper() != "SHA1":
            raise reader.fail(f"{label}/digest/@algorithm {_show(algorithm)} is not SHA1")
        digest = reader.hexval(
            reader.req("digest", node, label=f"{label}/digest"), f"{label}/digest", length=40
        )
        by_index[index] = PartEntry(index=index, filename=filename, digest=digest)
    missing = sorted(set(range(len(nodes))) - by_index.keys())
    if missing:
        raise reader.fail(
            f"part indexes must be 0..{len(nodes) - 1}; index {missing[0]} is missing "
            f"(highest is {max(by_index)})"
        )
    return [by_index[i] for i in range(len(nodes))]


# --------------------------------------------------------------------------- naming helpers


def part_names(name: str, count: int) -> list[str]:
    """Classic part names: the index is zero-padded to the digit count of ``count`` (spec §1.6)."""
    if count < 1:
        raise UsageError(f"a bundle has at least one part, got part count {count}")
    width = len(str(count))
    return [f"{name}.part.{index:0{width}d}" for index in range(count)]


def validate_name(name: str) -> str:
    if (
        not name
        or len(name) > _MAX_BUNDLE_NAME
        or name in (".", "..")
        or not _BUNDLE_NAME_RE.fullmatch(name)
    ):
        raise UsageError(
            f"invalid bundle name {_show(name)}: use 1-{_MAX_BUNDLE_NAME} characters from "
            "A-Z a-z 0-9 . _ + - (not '.' or '..'); pass another --prefix"
        )
    return name


def parse_block_device_mapping(values: Iterable[str]) -> dict[str, str]:
    """Classic ``-B virtual=device,…`` (repeatable); later entries override earlier ones."""
    mapping: dict[str, str] = {}
    for value in values:
        if not value or not value.strip():
            raise UsageError("empty --block-device-mapping value; expected virtual=device[,…]")
        items = value.split(",")
        # Ruby's String#split drops trailing empty fields, so "ami=sda1," was accepted.
        while items and items[-1] == "":
            items.pop()
        for item in items:
            virtual, sep, device = item.partition("=")
            virtual, device = virtual.strip(), device.strip()
            if (
                not sep
                or not virtual
                or not device
                or "=" in device
                or any(ch.isspace() for ch in virtual + device)
            ):
                raise UsageError(
                    f"bad --block-device-mapping item {_show(item)} in {_show(value)}: "
                    "expected virtual=device, e.g. ami=sda1,root=/dev/sda1"
                )
            mapping[virtual] = device
    return mapping


def parse_product_codes(value: str | None) -> list[str]:
    if value is None:
        return []
    return [code.strip() for code in value.split(",") if code.strip()]


