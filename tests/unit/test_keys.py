"""Key loading, AES key wrapping, signatures, keygen, EC2 cert lookup, legacy manifests."""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import hashlib
import io
import logging
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from bundler import keys, newfiles
from bundler.errors import (
    DecryptionError,
    KeyFileError,
    ManifestError,
    OutputError,
    SignatureError,
    UsageError,
)
from bundler.keys import (
    decrypt_legacy_manifest,
    keygen,
    load_private_key,
    load_public_key,
    sign,
    sign_manifest,
    unwrap,
    unwrap_key_iv,
    verify,
    verify_manifest,
    wrap,
)
from bundler.manifest import (
    EncryptedManifestError,
    Manifest,
    PartEntry,
    parse_manifest,
    signed_data,
)
from tests.support.keypairs import KeyPair

GOLDEN = ("tiny", "two-part", "sparse")
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def cert_for(key: rsa.RSAPrivateKey, *, expired: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    start = datetime.datetime(2005, 8, 9, tzinfo=datetime.timezone.utc)
    end = (
        datetime.datetime(2006, 8, 9, tzinfo=datetime.timezone.utc)
        if expired
        else datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )


def bundle_manifest(user: KeyPair, ec2: KeyPair, key: bytes, iv: bytes) -> Manifest:
    return Manifest(
        name="image",
        user="123456789012",
        digest="ab" * 20,
        size=1,
        bundled_size=16,
        ec2_encrypted_key=wrap(ec2.public_key, key),
        user_encrypted_key=wrap(user.public_key, key),
        ec2_encrypted_iv=wrap(ec2.public_key, iv),
        user_encrypted_iv=wrap(user.public_key, iv),
        parts=[PartEntry(0, "image.part.0", "cd" * 20)],
    )


def pkcs1_encrypt_raw(public_key: rsa.RSAPublicKey, message: bytes, seed: int) -> bytes:
    """Textbook PKCS#1 v1.5 type-2 encryption with a chosen (deterministic) padding string."""
    numbers = public_key.public_numbers()
    k = (public_key.key_size + 7) // 8
    pad = hashlib.shake_256(seed.to_bytes(8, "big")).digest(k - 3 - len(message))
    pad = bytes(b if b else 1 for b in pad)  # the padding string must not contain zeros
    em = b"\x00\x02" + pad + b"\x00" + message
    return pow(int.from_bytes(em, "big"), numbers.e, numbers.n).to_bytes(k, "big")


# --------------------------------------------------------------------------- wrapping


def test_wrap_unwrap_round_trip(user_key_pair: KeyPair) -> None:
    raw = secrets.token_bytes(16)
    wrapped = wrap(user_key_pair.public_key, raw)
    assert len(wrapped) == 512
    assert wrapped == wrapped.lower()
    assert unwrap(user_key_pair.private_key, wrapped) == raw
    assert unwrap(user_key_pair.private_key, wrapped.upper()) == raw
    # The plaintext really is the lowercase hex string, as classic unbundle needs (spec §2.2).
    plain = user_key_pair.private_key.decrypt(bytes.fromhex(wrapped), asym_padding.PKCS1v15())
    assert plain == raw.hex().encode()


def test_wrap_rejects_wrong_length(user_key_pair: KeyPair) -> None:
    with pytest.raises(ValueError):
        wrap(user_key_pair.public_key, b"short")


@needs_openssl
def test_wrap_is_decryptable_by_openssl(user_key_pair: KeyPair, tmp_path: Path) -> None:
    raw = bytes(range(16))
    ciphertext = tmp_path / "wrapped.bin"
    ciphertext.write_bytes(bytes.fromhex(wrap(user_key_pair.public_key, raw)))
    result = subprocess.run(
        [
            OPENSSL,
            "pkeyutl",
            "-decrypt",
            "-inkey",
            str(user_key_pair.key_path),
            "-in",
            str(ciphertext),
        ],
        capture_output=True,
        check=True,
    )
    assert result.stdout == b"000102030405060708090a0b0c0d0e0f"


def test_unwrap_tolerates_odd_hex_and_short_ciphertext(user_key_pair: KeyPair) -> None:
    raw = bytes.fromhex("00112233445566778899aabbccddeeff")
    message = raw.hex().encode()
    found_odd = found_short = False
    for seed in range(20000):
        block = pkcs1_encrypt_raw(user_key_pair.public_key, message, seed)
        hex_text = block.hex()
        if block[0] == 0 and not found_short:
            # A writer that drops leading zero bytes; we pad back to the modulus length.
            assert unwrap(user_key_pair.private_key, block.lstrip(b"\0").hex()) == raw
            found_short = True
        if hex_text[0] == "0" and not found_odd:
            assert unwrap(user_key_pair.private_key, hex_text[1:]) == raw
            found_odd = True
        if found_odd and found_short:
            break
    assert found_odd and found_short


def test_unwrap_accepts_raw_16_byte_plaintext(user_key_pair: KeyPair) -> None:
    raw = b"\xff" * 8 + b"not-hex!"
    wrapped = user_key_pair.public_key.encrypt(raw, asym_padding.PKCS1v15()).hex()
    assert unwrap(user_key_pair.private_key, wrapped) == raw


def test_unwrap_rejects_non_hex_and_oversized(user_key_pair: KeyPair) -> None:
    with pytest.raises(DecryptionError, match="not hexadecimal"):
        unwrap(user_key_pair.private_key, "zz")
    with pytest.raises(DecryptionError, match="longer than"):
        unwrap(user_key_pair.private_key, "01" * 300)


def test_unwrap_with_wrong_key_fails(golden_dir: Path) -> None:
    m = parse_manifest((golden_dir / "tiny" / "tiny.manifest.xml").read_bytes()).manifest
    ec2_key = load_private_key(golden_dir / "keys" / "ec2-key.pem")
    with pytest.raises(DecryptionError, match="wrong private key"):
        unwrap(ec2_key, m.user_encrypted_key)


def test_unwrap_key_iv_prefers_user_then_ec2(user_key_pair: KeyPair, ec2_key_pair: KeyPair) -> None:
    key, iv = secrets.token_bytes(16), secrets.token_bytes(16)
    m = bundle_manifest(user_key_pair, ec2_key_pair, key, iv)
    assert unwrap_key_iv(user_key_pair.private_key, m) == (key, iv)
    assert unwrap_key_iv(ec2_key_pair.private_key, m) == (key, iv)
    # A broken user pair must not stop the EC2 holder.
    broken = dataclasses.replace(m, user_encrypted_key="zz", user_encrypted_iv="00")
    assert unwrap_key_iv(ec2_key_pair.private_key, broken) == (key, iv)


def test_unwrap_key_iv_wrong_key(user_key_pair: KeyPair, ec2_key_pair: KeyPair) -> None:
    m = bundle_manifest(
        user_key_pair, user_key_pair, secrets.token_bytes(16), secrets.token_bytes(16)
    )
    with pytest.raises(
        DecryptionError, match=r"cannot decrypt the AES key with bob\.pem .*wrong private key"
    ):
        unwrap_key_iv(ec2_key_pair.private_key, m, key_name="bob.pem")


# --------------------------------------------------------------------------- signatures


def test_sign_verify(user_key_pair: KeyPair, ec2_key_pair: KeyPair) -> None:
    sig = sign(user_key_pair.private_key, b"data")
    assert len(sig) == 512 and sig == sig.lower()
    assert verify(user_key_pair.public_key, b"data", sig)
    assert verify(user_key_pair.public_key, b"data", sig.upper())
    assert not verify(user_key_pair.public_key, b"datA", sig)
    assert not verify(ec2_key_pair.public_key, b"data", sig)
    assert not verify(user_key_pair.public_key, b"data", "UNSIGNED")
    assert not verify(user_key_pair.public_key, b"data", "")


@needs_openssl
def test_a_damaged_key_loads_but_never_yields_a_signature(user_key_pair: KeyPair,
                                                         tmp_path: Path) -> None:
    # Keys load without OpenSSL's consistency check (it was a fifth of a small bundle's run);
    # a key whose private values are wrong then makes a wrong signature (OpenSSL falls back
    # from a failing CRT result to d, so d is damaged too), which can leak the key: sign()
    # verifies each signature and refuses it, so nothing signed with it ever leaves.
    numbers = user_key_pair.private_key.private_numbers()
    damaged = rsa.RSAPrivateNumbers(
        numbers.p, numbers.q, numbers.d ^ 2, numbers.dmp1 ^ 2, numbers.dmq1, numbers.iqmp,
        numbers.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    pem = tmp_path / "damaged.pem"
    pem.write_bytes(damaged.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pem.chmod(0o600)
    loaded = load_private_key(pem)
    with pytest.raises(SignatureError, match="private key is damaged"):
        sign(loaded, b"manifest bytes")
    good = load_private_key(user_key_pair.key_path)
    assert verify(user_key_pair.private_key.public_key(), b"x", sign(good, b"x"))


def test_signature_interoperates_with_openssl(user_key_pair: KeyPair, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"<machine_configuration></machine_configuration><image>x</image>")
    sig = tmp_path / "sig.bin"
    sig.write_bytes(bytes.fromhex(sign(user_key_pair.private_key, data.read_bytes())))
    pub = tmp_path / "pub.pem"
    pub.write_bytes(
        user_key_pair.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = subprocess.run(
        [OPENSSL, "dgst", "-sha1", "-verify", str(pub), "-signature", str(sig), str(data)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Verified OK" in result.stdout
    # And the other direction: an openssl-made signature verifies with ours.
    theirs = subprocess.run(
        [OPENSSL, "dgst", "-sha1", "-sign", str(user_key_pair.key_path), str(data)],
        capture_output=True,
        check=True,
    ).stdout
    assert verify(user_key_pair.public_key, data.read_bytes(), theirs.hex())


def test_sign_manifest_then_verify(user_key_pair: KeyPair, ec2_key_pair: KeyPair) -> None:
    m = bundle_manifest(
        user_key_pair, ec2_key_pair, secrets.token_bytes(16), secrets.token_bytes(16)
    )
    data = sign_manifest(m, user_key_pair.private_key)
    unsigned = m.to_unsigned_xml()
    assert data.startswith(unsigned[: -len(b"</manifest>")])
    assert data.endswith(b"</signature></manifest>")
    parsed = parse_manifest(data, source="image.manifest.xml")
    assert verify(user_key_pair.public_key, signed_data(unsigned), parsed.manifest.signature or "")
    verify_manifest(parsed, user_key_pair.public_key)
    verify_manifest(parsed, user_key_pair.cert_path)
    with pytest.raises(SignatureError, match=f"does not verify against {ec2_key_pair.cert_path}"):
        verify_manifest(parsed, ec2_key_pair.cert_path)


def test_verify_manifest_unsigned_and_missing(
    user_key_pair: KeyPair, ec2_key_pair: KeyPair
) -> None:
    m = bundle_manifest(user_key_pair, ec2_key_pair, bytes(16), bytes(16))
    with pytest.raises(SignatureError, match="x.xml: manifest is marked UNSIGNED"):
        verify_manifest(
            parse_manifest(m.to_signed_xml("UNSIGNED"), source="x.xml"), user_key_pair.public_key
        )
    with pytest.raises(SignatureError, match="manifest has no signature"):
        verify_manifest(parse_manifest(m.to_unsigned_xml()), user_key_pair.public_key)


def test_verify_rejects_signed_region_hidden_in_comment(
    user_key_pair: KeyPair, ec2_key_pair: KeyPair
) -> None:
    good = bundle_manifest(user_key_pair, ec2_key_pair, bytes(16), bytes(16))
    signed = sign_manifest(good, user_key_pair.private_key)
    signature = parse_manifest(signed).manifest.signature or ""
    evil = dataclasses.replace(good, kernel_id="aki-evil", digest="ee" * 20).to_unsigned_xml()
    evil_region = signed_data(evil)
    # The textual rule finds the commented-out original first, so the signature "verifies".
    forged = (
        b"<?xml version='1.0'?><manifest><version>2007-10-10</version><!--"
        + signed_data(signed)
        + b"-->"
        + evil_region
        + f"<signature>{signature}</signature></manifest>".encode()
    )
    parsed = parse_manifest(forged, source="forged.xml")
    assert parsed.manifest.digest == "ee" * 20
    assert verify(user_key_pair.public_key, signed_data(forged), signature)
    with pytest.raises(SignatureError, match="forged.xml: the signed .* region is not the one"):
        verify_manifest(parsed, user_key_pair.public_key)


def test_verify_euca2ools_style_against_raw_bytes(
    user_key_pair: KeyPair, ec2_key_pair: KeyPair
) -> None:
    m = bundle_manifest(user_key_pair, ec2_key_pair, bytes(16), bytes(16))
    double = (
        m.to_unsigned_xml()
        .replace(b"'", b'"')
        .replace(b'<?xml version="1.0"?>', b"<?xml version='1.0' encoding='ASCII'?>\n")
    )
    data = (
        double[: -len(b"</manifest>")]
        + b"<signature>"
        + sign(user_key_pair.private_key, signed_data(double)).encode()
        + b"</signature></manifest>"
    )
    verify_manifest(parse_manifest(data), user_key_pair.public_key)


def test_verify_falls_back_to_rexml_serialization(golden_dir: Path) -> None:
    raw = (golden_dir / "tiny" / "tiny.manifest.xml").read_bytes()
    # Same document with double quotes: REXML re-serializes it with single quotes again,
    # so classic migrate-manifest would accept it; raw-byte verification alone would not.
    requoted = raw.replace(b"'", b'"')
    parsed = parse_manifest(requoted)
    cert = load_public_key(golden_dir / "keys" / "user-cert.pem")
    assert not verify(cert, signed_data(requoted), parsed.manifest.signature or "")
    verify_manifest(parsed, cert)


# --------------------------------------------------------------------------- golden vectors


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_signature_and_key_unwrap(golden_dir: Path, name: str) -> None:
    raw = (golden_dir / name / f"{name}.manifest.xml").read_bytes()
    parsed = parse_manifest(raw, source=f"{name}.manifest.xml")
    verify_manifest(parsed, golden_dir / "keys" / "user-cert.pem")
    user_key = load_private_key(golden_dir / "keys" / "user-key.pem")
    ec2_key = load_private_key(golden_dir / "keys" / "ec2-key.pem")
    m = parsed.manifest
    user_pair = (unwrap(user_key, m.user_encrypted_key), unwrap(user_key, m.user_encrypted_iv))
    ec2_pair = (unwrap(ec2_key, m.ec2_encrypted_key), unwrap(ec2_key, m.ec2_encrypted_iv))
    assert user_pair == ec2_pair
    assert all(len(v) == 16 for v in user_pair)
    assert unwrap_key_iv(user_key, m) == user_pair == unwrap_key_iv(ec2_key, m)
    # Both golden keys are 2048-bit, so all four wrapped values are 512 hex digits.
    assert {len(m.user_encrypted_key), len(m.ec2_encrypted_iv)} == {512}


def test_golden_tiny_decrypts_to_the_image(golden_dir: Path) -> None:
    """The unwrapped key/IV really decrypt the part, and the digest is over the tar stream."""
    raw = (golden_dir / "tiny" / "tiny.manifest.xml").read_bytes()
    m = parse_manifest(raw).manifest
    key, iv = unwrap_key_iv(load_private_key(golden_dir / "keys" / "user-key.pem"), m)
    ciphertext = (golden_dir / "tiny" / "tiny.part.0").read_bytes()
    assert hashlib.sha1(ciphertext).hexdigest() == m.parts[0].digest
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpadder = sym_padding.PKCS7(128).unpadder()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    tar_bytes = gzip.decompress(unpadder.update(padded) + unpadder.finalize())
    assert hashlib.sha1(tar_bytes).hexdigest() == m.digest
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.getmember("tiny")
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == b"hello instance store\n"


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_tampered_digest_fails(golden_dir: Path, name: str) -> None:
    raw = (golden_dir / name / f"{name}.manifest.xml").read_bytes()
    m = parse_manifest(raw).manifest
    start = raw.index(m.digest.encode())
    flipped = "0" if m.digest[0] != "0" else "1"
    tampered = raw[:start] + flipped.encode() + raw[start + 1 :]
    parsed = parse_manifest(tampered, source="tampered.xml")
    with pytest.raises(
        SignatureError,
        match="tampered.xml: manifest signature does not verify against .*user-cert.pem: the "
              "manifest was edited",
    ):
        verify_manifest(parsed, golden_dir / "keys" / "user-cert.pem")


def test_our_rendering_of_golden_verifies(golden_dir: Path) -> None:
    raw = (golden_dir / "two-part" / "two-part.manifest.xml").read_bytes()
    m = parse_manifest(raw).manifest
    user_key = load_private_key(golden_dir / "keys" / "user-key.pem")
    # PKCS#1 v1.5 signatures are deterministic, so re-signing reproduces the classic file.
    assert sign_manifest(dataclasses.replace(m, signature=None), user_key) == raw


# --------------------------------------------------------------------------- loading


def test_load_keys_from_files(user_key_pair: KeyPair, fs) -> None:  # noqa: ANN001 - pyfakefs
    key = user_key_pair.private_key
    fs.create_file("/k/pkcs1.pem", contents=pem(key))
    fs.create_file(
        "/k/pkcs8.pem",
        contents=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    for name in ("pkcs1.pem", "pkcs8.pem"):
        os.chmod(f"/k/{name}", 0o600)
    cert = cert_for(key, expired=True)
    fs.create_file("/k/cert.pem", contents=cert.public_bytes(serialization.Encoding.PEM))
    fs.create_file("/k/cert.der", contents=cert.public_bytes(serialization.Encoding.DER))
    fs.create_file(
        "/k/pub.pem",
        contents=key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    numbers = key.private_numbers()
    for name in ("pkcs1.pem", "pkcs8.pem"):
        assert load_private_key(Path("/k", name)).private_numbers() == numbers
    # An expired certificate (like the shipped cert-ec2.pem) is fine: validity is never checked.
    for name in ("cert.pem", "cert.der", "pub.pem"):
        assert (
            load_public_key(Path("/k", name)).public_numbers() == key.public_key().public_numbers()
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"garbage\n", "not a readable RSA private key"),
        (
            b"-----BEGIN " + b"PRIVATE KEY-----\nAAAA\n-----END " + b"PRIVATE KEY-----\n",
            "not a readable RSA private key",
        ),
        ("cert", "is an X.509 certificate, not a private key"),
        ("encrypted", "passphrase-protected"),
    ],
)
def test_load_private_key_errors(user_key_pair: KeyPair, fs,  # noqa: ANN001
                                 content: object, message: str) -> None:
    path = Path("/k/key.pem")
    fs.create_dir("/k")
    if content == "cert":
        content = cert_for(user_key_pair.private_key).public_bytes(serialization.Encoding.PEM)
    elif content == "encrypted":
        content = user_key_pair.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    if content is not None:
        fs.create_file(path, contents=content)
    with pytest.raises(KeyFileError, match=message) as info:
        load_private_key(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_private_key_directory_and_non_rsa(fs) -> None:  # noqa: ANN001
    from cryptography.hazmat.primitives.asymmetric import ec

    fs.create_dir("/k/dir")
    with pytest.raises(KeyFileError, match="is a directory"):
        load_private_key(Path("/k/dir"))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    fs.create_file(
        "/k/ec.pem",
        contents=ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    with pytest.raises(KeyFileError, match="not an RSA key"):
        load_private_key(Path("/k/ec.pem"))


def test_load_public_key_errors(user_key_pair: KeyPair, fs) -> None:  # noqa: ANN001
    fs.create_file(
        "/k/garbage.pem", contents=b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"
    )
    fs.create_file("/k/key.pem", contents=pem(user_key_pair.private_key))
    with pytest.raises(KeyFileError, match="/k/garbage.pem is not an X.509 certificate"):
        load_public_key(Path("/k/garbage.pem"))
    with pytest.raises(KeyFileError, match="is a private key, not a certificate"):
        load_public_key(Path("/k/key.pem"))
    with pytest.raises(KeyFileError, match="/k/missing.pem does not exist"):
        load_public_key(Path("/k/missing.pem"))


def test_private_key_permissions_warning(
    user_key_pair: KeyPair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(pem(user_key_pair.private_key))
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="bundler.keys"):
        load_private_key(path)
    assert not caplog.records
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="bundler.keys"):
        load_private_key(path)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "readable by group/others" in message and "chmod 600" in message
    assert "PRIVATE KEY" not in caplog.text


# --------------------------------------------------------------------------- keygen


def test_keygen_creates_private_key_and_matching_cert(tmp_path: Path) -> None:
    key_path, cert_path = tmp_path / "k.pem", tmp_path / "c.pem"
    keygen(key_path, cert_path, common_name="me", days=30)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = load_private_key(key_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert key.key_size == 2048
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "me"
    assert cert.issuer == cert.subject
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=30) <= validity <= datetime.timedelta(days=30, minutes=10)
    assert load_public_key(cert_path).public_numbers() == key.public_key().public_numbers()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem", "k.pem"]  # no temp files left


def test_keygen_mode_is_0600_despite_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        keygen(tmp_path / "k.pem", tmp_path / "c.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


def test_keygen_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(newfiles.os, "link", no_link)
    keygen(tmp_path / "k.pem", tmp_path / "c.pem")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem", "k.pem"]
    load_private_key(tmp_path / "k.pem")


@pytest.mark.parametrize("existing", ["k.pem", "c.pem"])
def test_keygen_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        keygen(tmp_path / "k.pem", tmp_path / "c.pem")
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_keygen_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="key size 1024"):
        keygen(tmp_path / "k.pem", tmp_path / "c.pem", bits=1024)
    with pytest.raises(UsageError, match="different files"):
        keygen(tmp_path / "k.pem", tmp_path / "k.pem")
    with pytest.raises(OutputError, match="does not exist"):
        keygen(tmp_path / "no" / "k.pem", tmp_path / "c.pem")


# --------------------------------------------------------------------------- legacy manifests


def legacy_encrypt(public_key: rsa.RSAPublicKey, plaintext: bytes, scheme: int) -> bytes:
    """crypto.rb encryptasym: RSA(raw key ‖ raw iv) header + AES-128-CBC/PKCS#7 body."""
    key, iv = secrets.token_bytes(16), secrets.token_bytes(16)
    block = public_key.encrypt(key + iv, asym_padding.PKCS1v15())
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()
    if scheme == 1:
        return bytes([1, len(block)]) + block + body
    return bytes([2]) + len(block).to_bytes(2, "big") + block + body


@pytest.fixture(scope="module")
def small_key() -> rsa.RSAPrivateKey:
    # Scheme 1 stores the RSA block length in one byte, so it only ever held ≤2040-bit keys.
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def test_decrypt_legacy_manifest_v1(
    small_key: rsa.RSAPrivateKey, user_key_pair: KeyPair, ec2_key_pair: KeyPair
) -> None:
    plain = bundle_manifest(user_key_pair, ec2_key_pair, bytes(16), bytes(16)).to_signed_xml("ab")
    data = legacy_encrypt(small_key.public_key(), plain, 1)
    with pytest.raises(EncryptedManifestError):
        parse_manifest(data)
    assert decrypt_legacy_manifest(data, small_key) == plain
    assert parse_manifest(decrypt_legacy_manifest(data, small_key)).manifest.signature == "ab"


def test_decrypt_legacy_manifest_v2(user_key_pair: KeyPair, ec2_key_pair: KeyPair) -> None:
    plain = bundle_manifest(user_key_pair, ec2_key_pair, bytes(16), bytes(16)).to_signed_xml("ab")
    data = legacy_encrypt(user_key_pair.public_key, plain, 2)
    assert data[1:3] == b"\x01\x00"
    assert decrypt_legacy_manifest(data, user_key_pair.private_key) == plain


def test_decrypt_legacy_manifest_errors(
    user_key_pair: KeyPair, ec2_key_pair: KeyPair, small_key: rsa.RSAPrivateKey
) -> None:
    plain = b"<?xml version='1.0'?><manifest/>"
    v2 = legacy_encrypt(user_key_pair.public_key, plain, 2)
    cases = [
        (b"<?xml version='1.0'?><manifest/>", "not encrypted"),
        (b"\x03" + bytes(300), "scheme byte 0x03"),
        (b"\x02\x01", "truncated"),
        (v2[:200], "bad RSA block length"),
        (v2[:-1], "not a positive multiple of the AES block size"),
        (v2[:259], "body is 0 bytes"),
        (b"\x01\x00" + bytes(32), "bad RSA block length 0"),
        (v2, "wrong private key"),  # decrypted with ec2_key below
    ]
    for data, message in cases[:-1]:
        with pytest.raises(ManifestError, match=message):
            decrypt_legacy_manifest(data, user_key_pair.private_key)
    with pytest.raises(ManifestError, match="wrong private key"):
        decrypt_legacy_manifest(v2, ec2_key_pair.private_key)
    with pytest.raises(ManifestError, match="bad RSA block length 256 for a 1024-bit key"):
        decrypt_legacy_manifest(v2, small_key)
    # Correct key but body corrupted: AES padding or the XML check catches it.
    corrupt = v2[:-16] + bytes(16)
    with pytest.raises(ManifestError, match="padding|not XML"):
        decrypt_legacy_manifest(corrupt, user_key_pair.private_key)


def test_keys_module_logger_name() -> None:
    assert keys.log.name == "bundler.keys"
