"""ProgressListener that draws tqdm bars (only used on a TTY)."""

from __future__ import annotations

from typing import Any, TextIO

from tqdm import tqdm


class TqdmProgress:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bars: dict[str, tqdm[Any]] = {}

    def start(self, stage: str, total: int | None) -> None:
        self.bars[stage] = tqdm(total=total, desc=stage, unit="B", unit_scale=True,
                                unit_divisor=1024, file=self.stream, leave=True, dynamic_ncols=True)

    def advance(self, stage: str, amount: int) -> None:
        bar = self.bars.get(stage)
        if bar is not None:
            bar.update(amount)

    def finish(self, stage: str) -> None:
        bar = self.bars.pop(stage, None)
        if bar is not None:
            bar.close()
