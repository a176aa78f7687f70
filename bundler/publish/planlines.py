"""Where a key of a TOML plan is written: the line numbers ``tomllib`` does not give (pure).

Plan errors name the line (``PLAN.toml:12: unknown key 'regoin'``), so this scans the source
once, keeping for every table header and every ``key =`` line the path it defines:
``("source", "image")``, ``("accounts", 1, "role_arn")`` for the second ``[[accounts]]``.
It is a scanner, not a parser: multi-line strings are skipped, keys inside inline tables and
multi-line arrays are not indexed, and a path it cannot place falls back to the nearest
enclosing table, then to line 1. The plan has already parsed when this runs, so the text is
valid TOML.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Path = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART = re.compile(_KEY)


def _split(dotted: str) -> list[str]:
    out = []
    for m in _PART.finditer(dotted):
        text = m.group(0)
        out.append(text[1:-1] if text[0] in "\"'" else text)
    return out


class PlanLines:
    """Path → line number (1-based) of a plan's source."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self._at: dict[Path, int] = {}
        self._spans: dict[Path, tuple[int, int]] = {}  # a key's value: first line, last line
        counters: dict[tuple[str, ...], int] = {}
        table: Path = ()
        last: Path | None = None
        in_string: str | None = None
        for number, line in enumerate(self.lines, 1):
            if in_string is not None:
                if in_string in line:
                    in_string = None
                continue
            header = _HEADER.match(line)
            if header:
                names = _split(header.group(2))
                if header.group(1) == "[[":
                    index = counters.get(tuple(names), 0)
                    counters[tuple(names)] = index + 1
                    table = (*names, index)
                else:
                    table = tuple(names)
                self._at.setdefault(table, number)
                last = None
                continue
            assign = _ASSIGN.match(line)
            if assign:
                path = (*table, *_split(assign.group(1)))
                self._at.setdefault(path, number)
                last = path
                self._spans[path] = (number, number)
                rest = line[assign.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) == 1:
                        in_string = quote
            elif last is not None and line.strip() and not line.lstrip().startswith("#"):
                first, _ = self._spans[last]
                self._spans[last] = (first, number)  # a multi-line array goes on

    def line_of(self, path: Sequence[str | int], needle: str | None = None, nth: int = 1) -> int:
        """The line of ``path`` (or of its nearest enclosing table); with ``needle``, the line
        of the key's value that holds it (an item of a multi-line array), the ``nth`` such."""
        key = tuple(path)
        while key:
            if key in self._at:
                if needle is not None and key in self._spans:
                    first, last = self._spans[key]
                    found = [n for n in range(first, last + 1) if needle in self.lines[n - 1]]
                    if found:
                        return found[min(nth, len(found)) - 1]
                return self._at[key]
            key = key[:-1]
        return 1


__all__ = ["PlanLines"]
