"""DirectorySource: a bundle's parts read from a local directory."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .errors import IntegrityError, PartMissingError
from .manifest import PartEntry
from .parts import MAX_PART_BYTES

READ_CHUNK = 1 << 20


class DirectorySource:
    """Reads parts named by the manifest from a local directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        return str(self.directory)

    def path_of(self, entry: PartEntry) -> Path:
        return self.directory / entry.filename

    def check_present(self, entries: Sequence[PartEntry]) -> None:
        """Every part is a regular file and none is absurdly large, before any byte is read."""
        for entry in entries:
            try:
                st = os.stat(self.path_of(entry))
            except OSError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise PartMissingError(f"part {entry.filename} (index {entry.index}) is missing "
                                       f"from {self.directory}")
            if st.st_size > MAX_PART_BYTES:
                raise IntegrityError(
                    f"part {entry.filename} is {st.st_size} bytes, larger than {MAX_PART_BYTES}: "
                    "not a bundle part"
                )

    def iter_parts(self,
                   entries: Sequence[PartEntry]) -> Iterator[tuple[PartEntry, Iterable[bytes]]]:
        for entry in entries:
            yield entry, self._chunks(entry)

    def _chunks(self, entry: PartEntry) -> Iterator[bytes]:
        path = self.path_of(entry)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise PartMissingError(f"part {entry.filename} (index {entry.index}) is missing from "
                                   f"{self.directory}") from None
        except OSError as exc:
            raise IntegrityError(f"cannot read part {entry.filename}: {exc.strerror}") from exc
        with fh:
            while chunk := fh.read(READ_CHUNK):
                yield chunk
