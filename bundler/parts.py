"""Bundle parts: the part itself, its sizes and provisional names, and the PartSink/PartSource
interfaces the pipelines write to and read from.

A sink receives finished parts in index order while the pipeline is still running and makes
them visible under their final names only in ``commit``, manifest last; ``abort`` removes all
it created. Final names are not known up front (the classic width depends on the part count),
so a sink is told an upper bound on the count in ``begin``.

The directory versions live in ``bundler.dirsink`` and ``bundler.dirsource`` (also exported
as ``bundler.DirectorySink`` and ``bundler.DirectorySource``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from .manifest import PartEntry, part_names

PART_SIZE = 10 * 1024 * 1024
# Parts from other tools may differ in size, but a part this large is not a bundle part.
MAX_PART_BYTES = 64 * 1024 * 1024


class Part:
    """One finished part: its bytes, its SHA-1 (computed as it was cut) and, on demand, its MD5.

    MD5 is only needed for S3's Content-MD5, so it is computed lazily, in whichever
    (uploader) thread asks for it first.
    """

    __slots__ = ("index", "data", "sha1", "_md5")

    def __init__(self, index: int, data: bytes | memoryview, sha1: str | None = None) -> None:
        self.index = index
        self.data = data
        self.sha1 = sha1 if sha1 is not None else hashlib.sha1(data).hexdigest()
        self._md5: bytes | None = None

    @property
    def md5(self) -> bytes:
        if self._md5 is None:
            self._md5 = hashlib.md5(self.data).digest()
        return self._md5

    @property
    def size(self) -> int:
        return len(self.data)

    @classmethod
    def of(cls, index: int, data: bytes | memoryview) -> Part:
        return cls(index, data)

    def __repr__(self) -> str:
        return f"Part(index={self.index}, size={len(self.data)}, sha1={self.sha1})"


def provisional_width(max_parts: int) -> int:
    """Width of the index in part names when only an upper bound of the count is known."""
    return len(str(max(1, max_parts)))


def provisional_name(name: str, index: int, max_parts: int) -> str:
    return f"{name}.part.{index:0{provisional_width(max_parts)}d}"


class PartSink(Protocol):
    """Where the bundling pipeline puts parts and, last, the manifest.

    ``part.data`` is bytes the sink may keep, unless the sink's class says
    ``done_with_part_data = True``: it has finished with the data when ``put_part`` returns
    (it wrote it somewhere), so the pipeline hands it a view of the part buffer itself, no
    copy, and reuses the buffer for a later part (the view is released first: a sink that kept
    it after all fails on its next use instead of reading another part's bytes).

    A sink may also have ``put_part_ahead(index, data, offset)``: the pipeline then hands it
    each part's bytes as the part fills, in order from offset 0 (``data`` is a view it must not
    keep), so it can start writing them; ``put_part`` still follows with the whole part, and a
    sink that did not write some of it ahead writes it then.
    """

    def begin(self, name: str, max_parts: int) -> None:
        """Called once before any part; ``max_parts`` bounds the final count from above."""

    def expect_parts(self, count: int) -> None:
        """The pipeline's estimate of the final part count, given once, before the first part
        (0: unknown). Sinks that name parts before the count is known (S3) use it; others
        ignore it."""

    def put_part(self, part: Part) -> None:
        """Called in index order; may block to apply back-pressure."""

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        """Make parts visible as ``names[i]``, then the manifest last."""

    def abort(self) -> None:
        """Remove everything this sink created; never raises for cleanup failures."""


class PartSource(Protocol):
    """Where the unbundling pipeline reads parts from."""

    def describe(self) -> str:
        """A short human description (a directory, an S3 location) for messages."""

    def check_present(self, entries: Sequence[PartEntry]) -> None:
        """Raise PartMissingError naming the first part that is not there."""

    def iter_parts(self,
                   entries: Sequence[PartEntry]) -> Iterator[tuple[PartEntry, Iterable[bytes]]]:
        """Yield each part's bytes as chunks, in the given order (sources may prefetch)."""


__all__ = [
    "MAX_PART_BYTES",
    "PART_SIZE",
    "Part",
    "PartSink",
    "PartSource",
    "part_names",
    "provisional_name",
    "provisional_width",
]
