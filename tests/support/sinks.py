"""An in-memory ``PartSink`` that records every call the pipeline (or a sink that wraps sinks)
makes, and fails on request: one implementation of the whole protocol for the unit tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from bundler.parts import Part


def disk_full() -> Exception:
    return OSError("no space left on the device")


class MemorySink:
    """Keeps parts in memory. ``fail_put=N``: ``put_part`` raises ``put_error()`` from index N
    on; ``fail_commit``: ``commit`` raises ``OSError``."""

    def __init__(
        self,
        *,
        fail_put: int | None = None,
        put_error: Callable[[], Exception] = disk_full,
        fail_commit: bool = False,
    ) -> None:
        self.fail_put = fail_put
        self.put_error = put_error
        self.fail_commit = fail_commit
        self.name: str | None = None
        self.max_parts = 0
        self.parts: list[Part] = []
        self.threads: set[str] = set()  # threads put_part was called on
        self.expected: list[tuple[int, int]] = []  # (estimate, parts already put)
        self.committed: tuple[list[str], str, bytes] | None = None
        self.aborted = False

    # -- PartSink

    def begin(self, name: str, max_parts: int) -> None:
        self.name = name
        self.max_parts = max_parts

    def expect_parts(self, count: int) -> None:
        self.expected.append((count, len(self.parts)))

    def put_part(self, part: Part) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail_put is not None and part.index >= self.fail_put:
            raise self.put_error()
        self.parts.append(part)

    def commit(self, names: Sequence[str], manifest_name: str, manifest: bytes) -> None:
        if self.fail_commit:
            raise OSError("the manifest could not be written")
        self.committed = (list(names), manifest_name, manifest)

    def abort(self) -> None:
        self.aborted = True

    # -- what the tests read

    @property
    def indices(self) -> list[int]:
        return [p.index for p in self.parts]

    @property
    def data(self) -> dict[int, bytes]:
        """Part bytes by index (what a part source serves back)."""
        return {p.index: p.data for p in self.parts}

    @property
    def manifest(self) -> bytes | None:
        return self.committed[2] if self.committed else None

    @property
    def names(self) -> list[str] | None:
        return self.committed[0] if self.committed else None
