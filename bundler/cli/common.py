"""Shared CLI plumbing: output, progress, the global flags and small flag checks.

Commands live in sibling modules, each with ``register(subparsers)``; a handler takes the
parsed args and a ``Printer`` and returns an exit code. Handlers raise BundlerError for user
errors; ``bundler.cli.main`` turns those into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from ..errors import UsageError
from ..progress import NULL_PROGRESS, ProgressListener


class Printer:
    """The only place that writes to the terminal: results as JSON or lines, notes on stderr."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def result(self, data: Mapping[str, Any], human: list[str] | str | None = None) -> None:
        """The command's outcome: JSON with --json, else the human lines."""
        if self.json_mode:
            json.dump(data, self.stdout, indent=2, sort_keys=True, default=str)
            self.stdout.write("\n")
        elif human is not None:
            lines = [human] if isinstance(human, str) else human
            for line in lines:
                print(line, file=self.stdout)
        self.stdout.flush()

    def note(self, message: str) -> None:
        """Informational text for people (suppressed by --quiet and --json)."""
        if not self.quiet and not self.json_mode:
            print(message, file=self.stderr)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.stderr)

    def progress(self) -> ProgressListener:
        if self.quiet or self.json_mode or not self.stderr.isatty():
            return NULL_PROGRESS
        from .tqdm_progress import TqdmProgress

        return TqdmProgress(self.stderr)


def add_global_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or notes")
    g.add_argument("--verbose", action="store_true", help="informational logging")
    g.add_argument("--json", action="store_true", help="print a machine-readable result")
    g.add_argument("--batch", action="store_true", help="never prompt (classic flag; prompts are never needed)")
    g.add_argument("--manual", action="store_true", help=argparse.SUPPRESS)


def require(args: argparse.Namespace, *names: str) -> None:
    missing = [n for n in names if getattr(args, n, None) in (None, "")]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise UsageError(f"missing required option(s): {flags}")


def account_id(value: str) -> str:
    """Classic accepts hyphens; unlike classic (unanchored regex) we require exactly 12 digits."""
    digits = value.replace("-", "").strip()
    if len(digits) != 12 or not digits.isdigit():
        raise UsageError(f"account id must be 12 digits (hyphens allowed), got {value!r}")
    return digits


def detect_arch() -> str:
    machine = os.uname().machine
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    if len(machine) == 4 and machine.startswith("i") and machine.endswith("86"):
        return "i386"
    raise UsageError(f"cannot map this machine's architecture {machine!r}: pass -r/--arch")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
