"""DecryptedStream: verified ciphertext decrypted, inflated and hashed, read() as a tar stream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .concurrency import BackgroundStage
from .deflate import GzipDecoder
from .errors import ArchiveError, DecryptionError

FEED_SLICE = 256 * 1024  # decrypted input handed to the inflater at a time
OUTPUT_STEP = 1 << 20    # most decompressed bytes produced per step


class DecryptedStream:
    """A read()-able view of the decompressed tar stream of verified ciphertext parts.

    It hashes every byte it returns (the manifest digest covers the whole tar stream) and
    refuses to produce more than ``limit`` bytes, so a gzip bomb ends in an error, not a full disk.
    With ``threaded_hash`` the hashing runs in a thread of its own (call ``finish`` or
    ``close`` to stop it).
    """

    def __init__(self, ciphertext: Iterable[bytes], key: bytes, iv: bytes, limit: int, *,
                 threaded_hash: bool = False) -> None:
        self._chunks = iter(ciphertext)
        self._decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._held = b""  # the last decrypted block: it holds the PKCS#7 padding
        self._plain: list[memoryview] = []  # decrypted, not yet given to the inflater
        self._decoder = GzipDecoder()
        self._buffer = bytearray()
        self._input_done = False
        self._limit = limit
        self.sha1 = hashlib.sha1()
        self._hashing = (BackgroundStage(self.sha1.update, depth=32, name="ami-bundler-sha1")
                         if threaded_hash else None)
        self.bytes_out = 0
        self._started = False

    def _decrypt_next(self) -> bool:
        """Decrypt the next chunk into ``_plain``; False when the ciphertext is exhausted."""
        if self._input_done:
            return False
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._input_done = True
            self._strip_padding()
            return True
        # Hold back the last block (its padding is only known at the end) without copying
        # the rest: the held block goes ahead of the new plaintext as a piece of its own.
        plain = self._decryptor.update(chunk)
        if len(plain) >= 16:
            if self._held:
                self._plain.append(memoryview(self._held))
            self._held = plain[-16:]
            self._plain.append(memoryview(plain)[:-16])
        else:
            held = self._held + plain
            if len(held) > 16:
                self._plain.append(memoryview(held)[:-16])
                held = held[-16:]
            self._held = held
        return True

    def _strip_padding(self) -> None:
        try:
            tail = self._held + self._decryptor.finalize()
        except ValueError:
            raise DecryptionError("the ciphertext is not a whole number of AES blocks: a part is "
                                  "truncated") from None
        pad = tail[-1] if len(tail) == 16 else 0
        if not 1 <= pad <= 16 or tail[-pad:] != bytes([pad]) * pad:
            raise DecryptionError(
                "the decrypted bundle has invalid padding: wrong key, or the parts are not this "
                "manifest's"
            )
        self._held = b""
        if pad < 16:
            self._plain.append(memoryview(tail[:-pad]))

    def _pull(self) -> bool:
        """Move more decompressed data into the buffer; False once everything is consumed."""
        if self._decoder.pending():
            self._buffer += self._decoder.feed(b"", OUTPUT_STEP)
            return True
        while not self._plain:
            if not self._decrypt_next():
                return False
        view = self._plain[0]
        piece, rest = view[:FEED_SLICE], view[FEED_SLICE:]
        if rest:
            self._plain[0] = rest
        else:
            self._plain.pop(0)
        if piece:
            if not self._started:
                self._started = True
                if bytes(piece[:2]) != b"\x1f\x8b":
                    raise DecryptionError(
                        "the first part decrypts to data that is not gzip although every part's "
                        "SHA-1 matched: the manifest lists its parts out of order (e.g. sorted as "
                        "text, part.10 before part.2) or holds another bundle's AES key"
                    )
            # Small slices keep the inflater's unconsumed input (copied on every call) small.
            self._buffer += self._decoder.feed(piece, OUTPUT_STEP)
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        while len(self._buffer) < n and self._pull():
            pass
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self.bytes_out += len(out)
        if self.bytes_out > self._limit:
            raise ArchiveError(
                f"the archive decompresses to more than the {self._limit} bytes the manifest "
                "allows (gzip bomb?)"
            )
        if self._hashing is not None:
            self._hashing.write(out)
        else:
            self.sha1.update(out)
        return out

    def finish(self) -> None:
        """Everything must have been consumed, and the gzip trailer must check out."""
        while self._pull():
            if self._buffer:
                raise ArchiveError("data follows the end of the tar archive")
        self._decoder.finish()
        if self._hashing is not None:
            self._hashing.close()
            self._hashing = None

    def close(self) -> None:
        """Stop the hashing thread on an error path."""
        if self._hashing is not None:
            self._hashing.abort()
            self._hashing = None
