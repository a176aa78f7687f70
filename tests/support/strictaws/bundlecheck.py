"""What EC2 checks of an instance-store bundle at RegisterImage, against the stand-in's S3.

EC2 reads the manifest at ImageLocation with its own identity, so it needs the
``aws-exec-read`` grant; it parses the manifest, decrypts ``ec2_encrypted_key`` and
``ec2_encrypted_iv`` with the private key of *that region's* EC2 certificate (``keyring``), and
every part the manifest names must be there, readable by EC2 (the same grant), their sizes
adding up to the manifest's ``bundled_size`` (whole AES blocks); the manifest must carry a
signature (the classic tools note that EC2 refuses a missing one with 400 and an empty one
with 500; nothing says EC2 verifies it against a certificate, and the stand-in cannot: it
does not know the user's). Anything else is ``InvalidManifest``.

Two depths (``REGISTER_CHECK``, set per endpoint: ``StrictEndpoint(register_check=)``,
``scripts/local_endpoint.py --register-check``):

* ``full`` (the default, what every test uses): also reads the parts — each must match its
  SHA-1 and together they must decrypt to a valid gzip'd tar stream — so a test learns that a
  bundle is whole, not merely well described.
* ``manifest``: only what EC2 checks at RegisterImage, which is the manifest. The AWS
  documentation of RegisterImage: "During registration, Amazon EC2 retrieves the specified
  image manifest from Amazon S3 and verifies that the image is owned by the user registering
  the image. The image manifest is retrieved once and stored within the Amazon EC2"
  (AWS SDK for .NET, AmazonEC2.RegisterImage remarks,
  https://docs.aws.amazon.com/sdkfornet1/latest/apidocs/html/M_Amazon_EC2_AmazonEC2_RegisterImage.htm);
  the parts are read when an instance launches. Benchmarks use it
  (``scripts/bench_end_to_end.py``): a full check decrypts and inflates the whole bundle on
  the benchmark's own cores, which real EC2 does not do at registration.

Independent of the product's reader: its own XML walk (defusedxml), ``cryptography`` for
RSA/AES, the standard library's zlib and tarfile. A bundle that passed is remembered by its
objects' ETags (and the depth), so registering it again is cheap.
"""

from __future__ import annotations

import hashlib
import tarfile
import threading
import zlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import ElementTree

from .keyring import keyring
from .s3rules import object_grants_ec2_read


@dataclass
class Checked:
    """What the check found, kept per ImageLocation in ``CHECKED`` (the README demo shows it)."""

    architecture: str | None
    parts: int
    key: str = ""  # which of the stand-in's EC2 keys decrypted ec2_encrypted_key
    members: int = 0
    tar_bytes: int = 0


FULL, MANIFEST = "full", "manifest"
REGISTER_CHECKS = (FULL, MANIFEST)
REGISTER_CHECK = FULL  # this server's depth (see the module docstring)

_passed: dict[tuple[str, ...], Checked] = {}
CHECKED: dict[str, Checked] = {}
_lock = threading.Lock()


def _invalid(message: str) -> Exception:
    from moto.ec2.exceptions import EC2ClientError

    return EC2ClientError("InvalidManifest", message)


def s3_backend(account: str, region: str) -> Any:
    from moto.s3.models import s3_backends
    from moto.utilities.utils import get_partition

    return s3_backends[account][get_partition(region)]


def read_object(account: str, region: str, bucket: str, key: str) -> Any:
    try:
        return s3_backend(account, region).get_object(bucket, key)
    except Exception:  # noqa: BLE001 - NoSuchBucket / NoSuchKey alike: EC2 cannot read it
        return None


def _readable(account: str, region: str, bucket: str, key: str, what: str) -> Any:
    obj = read_object(account, region, bucket, key)
    if obj is None:
        raise _invalid(f"{what} not found: {bucket}/{key}")
    if not object_grants_ec2_read(obj):
        raise _invalid(f"EC2 cannot read {what} {bucket}/{key}: it lacks the aws-exec-read grant")
    return obj


def _unwrap(key: Any, hex_text: str | None, what: str) -> bytes:
    # OpenSSL answers a PKCS#1 v1.5 padding failure with a pseudo-random plaintext ("implicit
    # rejection"), not an error: a wrong region's key shows only as a value that is not the
    # 32 hex digits of an AES-128 key/IV (sometimes an empty one), so every such shape is that.
    try:
        plain = key.decrypt(bytes.fromhex((hex_text or "").strip()), asym_padding.PKCS1v15())
        value = bytes.fromhex(plain.decode("ascii"))  # the classic format wraps the hex string
    except ValueError:
        value = b""
    if len(value) != 16:
        raise _invalid(f"Unable to decrypt {what} with this region's EC2 key: the bundle was made "
                       "for another region's EC2 certificate, or the value is not an AES-128 "
                       "key/IV")
    return value


class _Plain:
    """The decrypted, decompressed stream of the parts, read as a file by tarfile."""

    size = 0

    def __init__(self, chunks: Any, key: bytes, iv: bytes) -> None:
        self._chunks = chunks
        self._decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._unpadder = padding.PKCS7(128).unpadder()
        self._gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._buf = bytearray()
        self._done = False

    def _feed(self) -> None:
        chunk = next(self._chunks, None)
        try:
            if chunk is None:
                data = self._unpadder.update(self._decryptor.finalize()) + self._unpadder.finalize()
                self._done = True
            else:
                data = self._unpadder.update(self._decryptor.update(chunk))
            self._buf += self._gunzip.decompress(data)
            if self._done:
                self._buf += self._gunzip.flush()
                if not self._gunzip.eof:
                    raise _invalid("the image is not a complete gzip stream")
        except ValueError:
            raise _invalid("the parts do not decrypt to a gzip stream (bad padding or bad "
                           "data)") from None
        except zlib.error:
            raise _invalid("the decrypted parts are not a valid gzip stream") from None

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buf) < n):
            self._feed()
        n = len(self._buf) if n < 0 else min(n, len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.size += len(out)
        return out


def check_bundle(account: str, region: str, image_location: str, *,
                 mode: str | None = None) -> Checked:
    """Check the bundle at ``image_location`` as EC2 does; ``mode``: ``full`` or ``manifest``
    (None: this server's ``REGISTER_CHECK``)."""
    mode = REGISTER_CHECK if mode is None else mode
    if mode not in REGISTER_CHECKS:
        raise ValueError(f"register check must be one of {', '.join(REGISTER_CHECKS)}: {mode!r}")
    bucket, _, key = image_location.partition("/")
    if not bucket or not key.endswith(".manifest.xml"):
        raise _invalid(f"Invalid manifest location {image_location}")
    manifest = _readable(account, region, bucket, key, "the manifest")
    try:
        root = ElementTree.fromstring(manifest.value)
    except Exception:  # noqa: BLE001 - any parse failure is what EC2 reports as InvalidManifest
        raise _invalid(f"Unable to parse manifest {image_location}") from None
    prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    parts = []
    for part in root.findall("image/parts/part"):
        name, digest = part.findtext("filename"), part.findtext("digest")
        if not name or "/" in name or not digest:
            raise _invalid(f"manifest {image_location} names a part without a plain file name or "
                           "digest")
        parts.append((prefix + name, digest.strip().lower()))
    if not parts:
        raise _invalid(f"manifest {image_location} names no parts")
    signature = (root.findtext("signature") or "").strip()
    if not signature:
        raise _invalid(f"manifest {image_location} is not signed (no signature)")
    objects = [_readable(account, region, bucket, k, "part") for k, _ in parts]
    _check_sizes(image_location, root, objects)
    arch = root.findtext("machine_configuration/architecture")
    memo = (mode, account, region, image_location, manifest.etag, *(o.etag for o in objects))
    with _lock:
        if memo in _passed:
            return _passed[memo]
    ring = keyring()
    ec2_key = ring.private_key(region)
    if ec2_key is None:
        raise _invalid(f"the stand-in has no EC2 key for {region}")
    aes_key = _unwrap(ec2_key, root.findtext("image/ec2_encrypted_key"), "ec2_encrypted_key")
    aes_iv = _unwrap(ec2_key, root.findtext("image/ec2_encrypted_iv"), "ec2_encrypted_iv")
    if mode == MANIFEST:
        return _passes(memo, image_location, Checked(arch, len(parts), ring.cert_path(region).name))

    def chunks() -> Any:
        for (name, digest), obj in zip(parts, objects, strict=True):
            data = obj.value
            if hashlib.sha1(data).hexdigest() != digest:
                raise _invalid(f"part {name} does not match its digest in the manifest")
            yield data

    plain = _Plain(chunks(), aes_key, aes_iv)
    try:
        with tarfile.open(fileobj=plain,  # type: ignore[arg-type]
                          mode="r|", bufsize=1 << 20) as tar:
            members = 0
            # Moving to the next member reads (decrypts, inflates) every stored byte of this
            # one; reading it through extractfile would only add the zeros of its holes (2 GiB
            # of them for a sparse disk image), which EC2 never materialises either.
            for _member in tar:
                members += 1
    except tarfile.TarError:
        raise _invalid("the decrypted image is not a valid tar stream") from None
    if not members:
        raise _invalid("the decrypted image is an empty tar stream")
    return _passes(memo, image_location,
                   Checked(arch, len(parts), ring.cert_path(region).name, members, plain.size))


def _passes(memo: tuple[str, ...], image_location: str, found: Checked) -> Checked:
    with _lock:
        _passed[memo] = found
        CHECKED[image_location] = found
    return found


def _check_sizes(image_location: str, root: Any, objects: list[Any]) -> None:
    """The parts hold exactly ``bundled_size`` bytes, whole AES blocks (their sizes are in the
    bucket's listing: nothing is read)."""
    text = (root.findtext("image/bundled_size") or "").strip()
    if not text.isdigit():
        raise _invalid(f"manifest {image_location} has no valid bundled_size")
    total = sum(o.size for o in objects)
    if total != int(text) or total % 16:
        raise _invalid(f"the parts of {image_location} hold {total} bytes, the manifest's "
                       f"bundled_size is {text}")
