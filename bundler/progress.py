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


class LabelledProgress:
    """Another listener's stages, named for one destination (``upload 123456789012/eu-west-1``):
    one bar per target on a TTY when a bundle fans out or is copied to several at once."""

    def __init__(self, listener: ProgressListener, label: str) -> None:
        self.listener = listener
        self.label = label

    def start(self, stage: str, total: int | None) -> None:
        self.listener.start(f"{stage} {self.label}", total)

    def advance(self, stage: str, amount: int) -> None:
        self.listener.advance(f"{stage} {self.label}", amount)

    def finish(self, stage: str) -> None:
        self.listener.finish(f"{stage} {self.label}")


def labelled(listener: ProgressListener, label: str) -> ProgressListener:
    return listener if listener is NULL_PROGRESS else LabelledProgress(listener, label)
