"""AES-128-CBC encryption of the bundle's compressed stream, as ``openssl enc`` does it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

AES_BLOCK = 16


class CiphertextBuffer(Protocol):
    """Where the encryptor writes in place (``bundler.partcutter.PartCutter``)."""

    @property
    def room(self) -> int:
        """Bytes that fit now: a whole number of AES blocks, never 0."""

    def space(self) -> memoryview:
        """The unfilled rest of the buffer: ``room`` plus a block of slack."""

    def advance(self, count: int) -> None:
        """``count`` bytes were written into ``space()``."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in."""


class AesCbcEncryptor:
    """AES-128-CBC with PKCS#7, exactly what ``openssl enc -aes-128-cbc -K … -iv …`` writes.

    With a ``cutter`` the ciphertext is written straight into its part buffer (``update_into``,
    fed exactly what fills a part: no intermediate copy); otherwise it goes to ``out``.
    """

    def __init__(self, key: bytes, iv: bytes, out: Callable[[bytes], None] | None = None, *,
                 cutter: CiphertextBuffer | None = None) -> None:
        if (out is None) == (cutter is None):
            raise ValueError("give the encryptor either out or cutter")
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self._out = out
        self._cutter = cutter
        self._held = 0  # input the cipher holds back until a block is complete
        self.bytes_out = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        cutter = self._cutter
        if cutter is None:
            encrypted = self._cipher.update(data)
            self._held = (self._held + len(data)) % AES_BLOCK
            if encrypted:
                self.bytes_out += len(encrypted)
                self._out(encrypted)  # type: ignore[misc]
            return
        view = memoryview(data)
        while view:
            # The cipher emits whole blocks of held + input: this much input fills the part.
            take = min(len(view), cutter.room - self._held)
            written = self._cipher.update_into(view[:take], cutter.space())
            self._held = self._held + take - written
            self.bytes_out += written
            view = view[take:]
            cutter.advance(written)

    def close(self) -> None:
        pad = AES_BLOCK - self._held  # PKCS#7: always 1..16 bytes of the pad length
        final = self._cipher.update(bytes([pad]) * pad) + self._cipher.finalize()
        self.bytes_out += len(final)
        if self._cutter is not None:
            self._cutter.write(final)
        else:
            self._out(final)  # type: ignore[misc]
