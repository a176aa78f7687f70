"""Progress reporting as events: the library reports, the CLI decides how to show it."""

from __future__ import annotations

from typing import Protocol


class ProgressListener(Protocol):
    """Receives progress of one named stage ("bundle", "upload", "download", "unbundle", …)."""

    def start(self, stage: str, total: int | None) -> None: ...

    def advance(self, stage: str, amount: int) -> None: ...

    def finish(self, stage: str) -> None: ...


class NullProgress:
    """The default listener: reports go nowhere."""

    def start(self, stage: str, total: int | None) -> None:
        pass

    def advance(self, stage: str, amount: int) -> None:
        pass

    def finish(self, stage: str) -> None:
        pass


NULL_PROGRESS = NullProgress()
