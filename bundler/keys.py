"""RSA key handling: loading, AES key wrapping, manifest signing/verification (EC2 certificates
and their lookup: ``ec2certs``).

Everything here is dictated by the classic format (spec §2, §4, §7.4): PKCS#1 v1.5 for both
encryption and signatures, SHA-1, and a wrapped *hex string* rather than raw key bytes.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bundler.errors import (
    DecryptionError,
    KeyFileError,
    ManifestError,
    OutputError,
    SignatureError,
    UsageError,
)
from bundler.interrupts import critical
from bundler.manifest import (
    Manifest,
    ParsedManifest,
    insert_signature,
    is_encrypted,
    is_xml,
    rexml_signed_data,
    signed_data,
    signed_region_matches,
)
from bundler.newfiles import discard, write_new_file

log = logging.getLogger("bundler.keys")

KEY_BITS = (2048, 3072, 4096)
AES_KEY_BYTES = 16
_MAX_KEY_FILE_BYTES = 1024 * 1024  # key/cert files are a few KB; refuse to slurp anything huge

# --------------------------------------------------------------------------- loading


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > _MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{what} {path} is {size} bytes; that is not a key or certificate")
        with open(path, "rb") as fh:  # bounded: a device (/dev/zero) has no size to check
            data = fh.read(_MAX_KEY_FILE_BYTES + 1)
        if len(data) > _MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{what} {path} holds more than {_MAX_KEY_FILE_BYTES} bytes; "
                               "that is not a key or certificate")
        return data
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} {path} does not exist; check the path") from exc
    except IsADirectoryError as exc:
        raise KeyFileError(f"{what} {path} is a directory, not a PEM file") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key, PEM (PKCS#1 or PKCS#8) or DER."""
    path = Path(path)
    data = _read_key_file(path, "private key")
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "private key %s is readable by group/others (mode %o); run: chmod 600 %s",
            path,
            stat.S_IMODE(mode),
            path,
        )
    loader = (
        serialization.load_pem_private_key
        if b"-----BEGIN" in data
        else serialization.load_der_private_key
    )
    try:
        # OpenSSL's RSA consistency check (primality tests of p and q: ~25 ms for a 2048-bit key,
        # a fifth of a small bundle's run) is skipped: what it guards against, a faulty private
        # key yielding a signature that leaks it, is caught where it matters, because ``sign``
        # verifies every signature it makes before it is used, and decryption with a broken key
        # only fails to recover the AES key.
        key = loader(data, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError as exc:
        raise KeyFileError(
            f"private key {path} is passphrase-protected; write an unencrypted copy "
            f"(openssl rsa -in {path} -out KEY.pem) and pass that"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if b"-----BEGIN CERTIFICATE" in data:
            raise KeyFileError(
                f"{path} is an X.509 certificate, not a private key; pass the private key "
                "(-k/--privatekey) here and the certificate as -c/--cert"
            ) from exc
        raise KeyFileError(
            f"{path} is not a readable RSA private key (expected unencrypted PEM, "
            "PKCS#1 or PKCS#8)"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"private key {path} is not an RSA key; the AMI format needs RSA")
    return key


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """The public key of an X.509 certificate (PEM/DER) or a PEM public key.

    Validity dates, issuer and key usage are deliberately ignored: the shipped EC2
    certificate expired in 2006 and must still work (spec §2.1, §7.4).
    """
    path = Path(path)
    data = _read_key_file(path, "certificate")
    key = None
    if b"-----BEGIN" in data:
        if b"PRIVATE KEY-----" in data and b"CERTIFICATE-----" not in data:
            raise KeyFileError(
                f"{path} is a private key, not a certificate; pass the X.509 certificate "
                "(-c/--cert or --ec2cert) here"
            )
        # cryptography.x509 is the largest import of a run (~20 ms): only what reads a
        # certificate pays for it, not `--help` or a command that never opens one.
        from cryptography import x509

        attempts: tuple[Callable[[], object], ...] = (
            lambda: x509.load_pem_x509_certificate(data).public_key(),
            lambda: serialization.load_pem_public_key(data),
        )
    else:
        from cryptography import x509

        attempts = (
            lambda: x509.load_der_x509_certificate(data).public_key(),
            lambda: serialization.load_der_public_key(data),
        )
    for attempt in attempts:
        try:
            key = attempt()
            break
        except (ValueError, UnsupportedAlgorithm):
            continue
    if key is None:
        raise KeyFileError(
            f"{path} is not an X.509 certificate or public key (expected PEM "
            "'BEGIN CERTIFICATE' or DER)"
        )
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFileError(f"certificate {path} does not hold an RSA key; the AMI format needs RSA")
    return key


# --------------------------------------------------------------------------- key wrapping


def _hex_to_bytes(text: str, modulus_bytes: int, what: str) -> bytes:
    text = "".join(text.split())
    if not text or any(ch not in "0123456789abcdefABCDEF" for ch in text):
        raise DecryptionError(f"{what} is not hexadecimal")
    if len(text) % 2:
        # Classic hex2bin left-pads odd-length strings (spec §2.2).
        text = "0" + text
    blob = bytes.fromhex(text)
    if len(blob) > modulus_bytes:
        blob = blob.lstrip(b"\0")
        if len(blob) > modulus_bytes:
            raise DecryptionError(
                f"{what} is {len(blob)} bytes, longer than the {modulus_bytes * 8}-bit key: "
                "wrong private key for this bundle?"
            )
    return blob.rjust(modulus_bytes, b"\0")


def wrap(public_key: rsa.RSAPublicKey, raw: bytes) -> str:
    """RSA-encrypt the 32-char lowercase hex of a 16-byte AES key/IV (spec §2.1)."""
    if len(raw) != AES_KEY_BYTES:
        raise ValueError(f"AES-128 key/IV must be {AES_KEY_BYTES} bytes, got {len(raw)}")
    return public_key.encrypt(raw.hex().encode("ascii"), asym_padding.PKCS1v15()).hex()


def _unwrap(private_key: rsa.RSAPrivateKey, hex_ciphertext: str, what: str) -> tuple[bytes, bool]:
    """Returns (value, strong): strong when the plaintext was hex as every writer produces.

    Modern OpenSSL answers a PKCS#1 v1.5 padding failure with a pseudo-random plaintext
    ("implicit rejection") instead of an error, so a wrong key is only detectable from the
    plaintext's shape; the raw 16-byte form is therefore only a weak match.
    """
    modulus_bytes = (private_key.key_size + 7) // 8
    ciphertext = _hex_to_bytes(hex_ciphertext, modulus_bytes, what)
    try:
        plain = private_key.decrypt(ciphertext, asym_padding.PKCS1v15())
    except ValueError as exc:
        raise DecryptionError(
            f"cannot RSA-decrypt {what}: wrong private key for this bundle?"
        ) from exc
    text = plain.strip(b" \t\r\n")
    if text and len(text) % 2 == 0 and all(ch in b"0123456789abcdefABCDEF" for ch in text):
        return bytes.fromhex(text.decode("ascii")), True
    if len(plain) == AES_KEY_BYTES:
        return plain, False
    raise DecryptionError(
        f"{what} does not decrypt to a hex AES key/IV: wrong private key for this bundle?"
    )


def unwrap(private_key: rsa.RSAPrivateKey, hex_ciphertext: str) -> bytes:
    """Inverse of ``wrap``, tolerant as spec §2.3 asks (odd hex, short blocks, raw keys)."""
    return _unwrap(private_key, hex_ciphertext, "wrapped key")[0]


def unwrap_key_iv(
    private_key: rsa.RSAPrivateKey, manifest: Manifest, *, key_name: str | None = None
) -> tuple[bytes, bytes]:
    """AES key and IV of a bundle: the user_* pair first, then the ec2_* pair (spec §2.3)."""
    pairs = (
        ("user", manifest.user_encrypted_key, manifest.user_encrypted_iv),
        ("ec2", manifest.ec2_encrypted_key, manifest.ec2_encrypted_iv),
    )
    weak: tuple[bytes, bytes] | None = None
    for label, key_hex, iv_hex in pairs:
        try:
            key, key_strong = _unwrap(private_key, key_hex, f"{label}_encrypted_key")
            iv, iv_strong = _unwrap(private_key, iv_hex, f"{label}_encrypted_iv")
        except DecryptionError:
            continue
        if len(key) != AES_KEY_BYTES or len(iv) != AES_KEY_BYTES:
            continue
        if key_strong and iv_strong:
            log.debug("AES key and IV recovered from the %s_encrypted_* pair", label)
            return key, iv
        weak = weak or (key, iv)
    if weak is not None:
        log.warning("AES key/IV decrypted to raw bytes instead of hex; using them as-is")
        return weak
    raise DecryptionError(
        f"cannot decrypt the AES key with {key_name or 'the given private key'} "
        f"({private_key.key_size}-bit): wrong private key for this bundle?"
    )


# --------------------------------------------------------------------------- signatures


def sign(private_key: rsa.RSAPrivateKey, data: bytes) -> str:
    """RSASSA-PKCS1-v1_5 with SHA-1, lowercase hex (spec §4.1), verified before it is returned.

    The verification (a public-key operation, ~0.1 ms) is what makes skipping the key's
    consistency check at load safe: a key with damaged private values makes a wrong
    signature, and a wrong signature must never leave this function (it can leak the key).
    It also catches a crypto provider that silently refuses or mangles SHA-1.
    """
    signature = private_key.sign(data, asym_padding.PKCS1v15(), hashes.SHA1()).hex()
    if not verify(private_key.public_key(), data, signature):
        raise SignatureError(
            "a freshly made signature does not verify: the private key is damaged "
            "(inconsistent RSA values), or OpenSSL's policy refuses SHA-1"
        )
    return signature


def verify(public_key: rsa.RSAPublicKey, data: bytes, signature_hex: str) -> bool:
    modulus_bytes = (public_key.key_size + 7) // 8
    try:
        signature = _hex_to_bytes(signature_hex, modulus_bytes, "signature")
    except DecryptionError:
        return False
    try:
        public_key.verify(signature, data, asym_padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        return False
    return True


def verify_manifest(
    parsed: ParsedManifest,
    public_key: rsa.RSAPublicKey | Path,
    *,
    cert_name: str | None = None,
) -> None:
    """Raw-bytes signed region first, then the REXML re-serialization (spec §4.3)."""
    if isinstance(public_key, (str, Path)):
        cert_name = cert_name or str(public_key)
        public_key = load_public_key(Path(public_key))
    cert_name = cert_name or "the given certificate"
    signature = parsed.manifest.signature
    if not signature or signature.strip().upper() == "UNSIGNED":
        state = "has no signature" if not signature else "is marked UNSIGNED"
        raise SignatureError(
            f"{parsed.source}: manifest {state}; re-bundle or re-sign it with the user private key"
        )
    mismatch = False
    candidates: tuple[Callable[[], bytes], ...] = (lambda: signed_data(parsed.raw),
                                                   lambda: rexml_signed_data(parsed))
    for candidate in candidates:
        try:
            data = candidate()
        except ManifestError:
            continue
        if not verify(public_key, data, signature):
            continue
        if signed_region_matches(parsed, data):
            return
        mismatch = True
    if mismatch:
        raise SignatureError(
            f"{parsed.source}: the signed <image>/<machine_configuration> region is not the one "
            "the manifest is read from (hidden or duplicated elements); refusing to trust it"
        )
    raise SignatureError(
        f"{parsed.source}: manifest signature does not verify against {cert_name}: "
        "the manifest was edited or signed by another key"
    )


def sign_manifest(manifest: Manifest, private_key: rsa.RSAPrivateKey) -> bytes:
    """Render, sign exactly those bytes, insert the signature; never re-serialize in between."""
    unsigned = manifest.to_unsigned_xml()
    data = signed_data(unsigned)
    signature = sign(private_key, data)  # verified there
    return insert_signature(unsigned, signature)


# --------------------------------------------------------------------------- keygen


def keygen(
    key_path: Path,
    cert_path: Path,
    *,
    bits: int = 2048,
    common_name: str = "ami-bundler",
    days: int = 3650,
) -> None:
    """A new RSA key (mode 0600) and a self-signed certificate for it."""
    key_path, cert_path = Path(key_path), Path(cert_path)
    if bits not in KEY_BITS:
        raise UsageError(
            f"key size {bits} is not supported; use one of {', '.join(map(str, KEY_BITS))}"
        )
    if days < 1:
        raise UsageError(f"certificate validity must be at least 1 day, got {days}")
    if not common_name:
        raise UsageError("certificate common name must not be empty")
    if key_path.resolve() == cert_path.resolve():
        raise UsageError(f"key and certificate must be different files, both are {key_path}")
    for path in (key_path, cert_path):
        if path.exists() or path.is_symlink():
            raise OutputError(
                f"{path} already exists; refusing to overwrite it (remove it or pick another path)"
            )
        if not path.parent.is_dir():
            raise OutputError(f"directory {path.parent} does not exist; create it first")

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    # One critical section: a signal waits until both files are written (or neither is), so
    # it never leaves a key without its certificate.
    with critical():
        try:
            write_new_file(key_path, key_pem, 0o600)
        except FileExistsError as exc:
            raise OutputError(f"{key_path} already exists; refusing to overwrite it") from exc
        except OSError as exc:
            raise OutputError(
                f"cannot write private key {key_path}: {exc.strerror or exc}"
            ) from exc
        try:
            write_new_file(cert_path, cert_pem, 0o644)
        except BaseException as exc:
            # Without its certificate the fresh key is useless; do not leave it behind.
            discard(key_path)
            if isinstance(exc, FileExistsError):
                raise OutputError(f"{cert_path} already exists; refusing to overwrite it") from exc
            if isinstance(exc, OSError):
                raise OutputError(
                    f"cannot write certificate {cert_path}: {exc.strerror or exc}"
                ) from exc
            raise
    log.info("wrote %d-bit RSA key %s and certificate %s", bits, key_path, cert_path)


# --------------------------------------------------------------------------- legacy manifests


def decrypt_legacy_manifest(data: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Decrypt a whole-manifest encryption scheme v1/v2 file (spec §2.4); read-only."""
    data = bytes(data)
    if is_xml(data):
        raise ManifestError("manifest is not encrypted (it starts with '<'); parse it directly")
    if len(data) < 3:
        raise ManifestError("encrypted manifest is truncated (shorter than its header)")
    scheme = data[0]
    if scheme == 1:
        rsa_len, offset = data[1], 2
    elif scheme == 2:
        rsa_len, offset = int.from_bytes(data[1:3], "big"), 3
    else:
        raise ManifestError(
            f"manifest is neither XML nor a known encrypted manifest (scheme byte 0x{scheme:02x}, "
            "expected 0x01 or 0x02); is this really a manifest?"
        )
    rsa_block = data[offset : offset + rsa_len]
    body = data[offset + rsa_len :]
    modulus_bytes = (private_key.key_size + 7) // 8
    if rsa_len == 0 or len(rsa_block) != rsa_len or rsa_len > modulus_bytes:
        raise ManifestError(
            f"encrypted manifest (scheme {scheme}) has a bad RSA block length {rsa_len} for a "
            f"{private_key.key_size}-bit key: truncated file or wrong private key"
        )
    if not body or len(body) % 16:
        raise ManifestError(
            f"encrypted manifest (scheme {scheme}) body is {len(body)} bytes, not a positive "
            "multiple of the AES block size: the file is truncated or corrupt"
        )
    try:
        secret = private_key.decrypt(rsa_block.rjust(modulus_bytes, b"\0"), asym_padding.PKCS1v15())
    except ValueError:
        secret = b""
    # Implicit rejection turns a wrong key into random bytes, so the length is the check.
    if len(secret) != 2 * AES_KEY_BYTES:
        raise ManifestError(
            f"cannot decrypt the encrypted manifest (scheme {scheme}) with this private key: "
            "wrong private key?"
        )
    decryptor = Cipher(algorithms.AES(secret[:16]), modes.CBC(secret[16:])).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise ManifestError(
            f"encrypted manifest (scheme {scheme}) has bad AES padding: wrong private key or "
            "corrupt file"
        ) from exc
    if is_encrypted(plain):
        raise ManifestError(
            f"decrypted manifest (scheme {scheme}) is not XML: wrong private key or corrupt file"
        )
    return plain
