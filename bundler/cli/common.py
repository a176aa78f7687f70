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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from ..errors import OutputError, UsageError
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
    g.add_argument("--batch", action="store_true",
                   help="never prompt (classic): a step that would ask is refused instead; -y "
                        "still answers yes")
    from .. import __version__

    g.add_argument("--version", action="version",
                   version=f"%(prog)s: ami-bundler {__version__} (bundle manifest version "
                           "2007-10-10)",
                   help="show the version and exit (classic)")
    g.add_argument("--manual", action=_Manual, nargs=0,
                   help="show the manual for this command and exit (classic)")


class _Manual(argparse.Action):
    """Classic ``--manual``: the command's whole manual (here: its description and every flag,
    and where the differences from the classic tool are written down), then exit 0."""

    def __call__(  # type: ignore[no-untyped-def]
        self, parser, namespace, values, option_string=None
    ):
        text = parser.format_help()
        text += ("\nami-bundler keeps the classic flags of the ec2-ami-tools; how each classic "
                 "command and flag maps\nand what behaves differently (and why) is in "
                 "docs/migrating.md; --json output in docs/json.md.\n")
        parser._print_message(text, sys.stdout)
        parser.exit(0)


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


def count(minimum: int = 1, maximum: int | None = None,
          what: str = "number") -> Callable[[str], int]:
    """An argparse type: a whole number in [minimum, maximum], so a nonsensical value is a
    usage error naming the flag instead of a confusing failure later."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole {what}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = (f"between {minimum} and {maximum}" if maximum is not None
                     else f"at least {minimum}")
            raise argparse.ArgumentTypeError(f"{text!r}: the {what} must be {bound}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0 or value > 7 * 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be more than 0 and at most a "
                                         "week")
    return value


def ensure_directory(path: Path, flag: str, *, mode: int = 0o755) -> bool:
    """Create the output directory ``path`` (and its parents) when missing, the last one with
    ``mode`` (exactly: the umask does not widen or narrow it). True if it was created, so a
    failed run can take it away again (``remove_if_empty``)."""
    path = Path(path)
    if path.is_dir():
        return False
    if path.exists() or path.is_symlink():
        raise OutputError(f"{flag} {path} exists and is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=mode)
        os.chmod(path, mode)
    except FileExistsError:
        return False  # made by someone else meanwhile
    except OSError as exc:
        raise OutputError(f"cannot create {flag} {path}: {exc.strerror}") from None
    return True


def remove_if_empty(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
