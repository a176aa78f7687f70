"""How a failed run ends: one ``PROG: error: …`` line (and at most a ``hint:`` line) on
stderr, the same as ``{"error": {...}}`` on stdout under --json, and the exit code of the
error's category (docs/json.md, the README's exit-code table).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from typing import NoReturn, TextIO

from .. import interrupts
from ..errors import EXIT_INPUT, BundlerError, Interrupted, UsageError

log = logging.getLogger("bundler.cli")


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    hint: str | None
    exit_code: int
    result: dict[str, object] | None = None

    def envelope(self) -> dict[str, object]:
        error = {"code": self.code, "message": self.message, "hint": self.hint,
                 "exit_code": self.exit_code}
        return {**(self.result or {}), "ok": False, "error": error}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _left(kept: list[interrupts.Published], registers: bool) -> str:
    """What an interrupted run leaves: each bundle it published (whole, and kept: an AMI may
    already use it) and, for a run that was to register AMIs, the ones it did not."""
    said = []
    for p in kept:
        if p.image_id:
            said.append(f"{p.url} is published and registered as {p.image_id}")
        else:
            said.append(f"{p.url} is published (a complete bundle, kept)"
                        + (", AMI not registered" if registers else ""))
    return "; ".join(said)


def failure_of(exc: BaseException, finish: str | None = None) -> Failure:
    """``finish``: how the command that ran is finished after an interrupt, when it was to
    register AMIs from what it published (the command's ``finish_hint``); the hint is
    given only when some bundle it published has no AMI yet."""
    if isinstance(exc, Interrupted):
        kept = interrupts.kept()
        if kept:
            unregistered = any(p.image_id is None for p in kept)
            return Failure("interrupted", f"{exc}: stopped; {_left(kept, finish is not None)}",
                           finish if unregistered else None, exc.exit_code,
                           {"published": [{"manifest": p.url, "image_location": p.image_location,
                                           "image_id": p.image_id} for p in kept]})
        return Failure("interrupted", f"{exc}: stopped; nothing partial was kept",
                       None, exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return failure_of(Interrupted(), finish)
    if isinstance(exc, OSError):
        # A system call on a path the user gave failed where no check expected it (a name too
        # long, a device, an I/O error): still one line naming the file, exit code "input".
        from ..writeerrors import why_write_failed

        where = exc.filename if exc.filename is not None else ""
        shown = str(where) if len(str(where)) <= 120 else str(where)[:120] + "…"
        reason = why_write_failed(exc) if exc.errno else (exc.strerror or str(exc))
        return Failure("os", _one_line(f"{shown}: {reason}" if shown else reason), None, EXIT_INPUT)
    if isinstance(exc, BundlerError):
        hint = getattr(exc, "hint", None)
        return Failure(exc.code, _one_line(str(exc)) or type(exc).__name__,
                       _one_line(hint) if hint else None, exc.exit_code,
                       getattr(exc, "result", None))
    raise TypeError(f"not a user-facing failure: {exc!r}")


def report(exc: BaseException, *, prog: str, json_mode: bool, debug: bool,
           stdout: TextIO | None = None, stderr: TextIO | None = None,
           finish: str | None = None) -> int:
    """Print the failure (traceback only with --debug) and return its exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    failure = failure_of(exc, finish)
    if debug:
        log.debug("traceback", exc_info=exc)
    try:
        print(f"{prog}: error: {failure.message}", file=stderr)
        if failure.hint:
            print(f"hint: {failure.hint}", file=stderr)
        if json_mode:
            json.dump(failure.envelope(), stdout, indent=2, sort_keys=True)
            stdout.write("\n")
            stdout.flush()
    except BrokenPipeError:
        pass  # the reader went away; the exit code still tells
    return failure.exit_code


def wants_json(argv: list[str]) -> bool:
    """--json as given, before parsing: a usage error must be reported the same way."""
    return "--json" in argv[: argv.index("--") if "--" in argv else len(argv)]


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors, so they end like every other failure (one line,
    a hint, JSON with --json) instead of argparse's usage block and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"see '{self.prog} --help'")
