"""Command line: ``ami-bundler <command>`` and the classic ``ec2-*`` names.

This package is the only place that prints and exits. Each command module registers its
subcommands; BundlerError becomes ``<prog>: error: <message>`` and its exit code, with the
traceback only under --debug.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__, interrupts
from ..errors import BundlerError, Interrupted
from .common import Printer, add_global_options
from .failure import ArgumentParser, report, wants_json
from .signals import interrupts_roll_back

log = logging.getLogger("bundler.cli")

# The command table: which module defines each command. A run imports only the one it needs
# (the S3, EC2 and volume modules cost start-up time that bundle-image and unbundle should not
# pay). A new command goes in a new module with ``register(subparsers)``, listed here;
# tests/unit/test_cli_structure.py checks the table against what each module registers.
COMMAND_MODULE = {
    "keygen": "core", "bundle-image": "core", "unbundle": "core", "verify": "core",
    "inspect": "core",
    "upload-bundle": "aws", "download-bundle": "aws", "delete-bundle": "aws", "register": "aws",
    "deregister": "aws", "install": "install", "bundle-vol": "vol",
    "migrate-manifest": "regions", "copy-bundle": "regions",
    "check": "check", "boot-test": "check", "inspect-image": "images",
    "publish": "publish", "prune": "prune",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMAND_MODULE.values()))


def build_parser(prog: str = "ami-bundler", command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or only for ``command`` when it is known."""
    parser = ArgumentParser(
        prog=prog,
        description="Build, verify, upload and register EC2 instance-store AMI bundles.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib

    wanted = [COMMAND_MODULE[command]] if command in COMMAND_MODULE else list(COMMAND_MODULES)
    for name in wanted:
        importlib.import_module(f".{name}", __name__).register(sub)
    for action in sub.choices.values():
        add_global_options(action)
    if prog != "ami-bundler" and command in sub.choices:
        # An ec2-* alias: its usage, help and errors name the alias, as the classic tool's do.
        sub.choices[command].prog = prog
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
        if arg in ("-h", "--help", "--version"):
            return None
    return None


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING
    if getattr(args, "verbose", False):
        level = logging.INFO
    if getattr(args, "debug", False):
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"
                                           if level == logging.DEBUG else "%(levelname)s: "
                                                                          "%(message)s"))
    root = logging.getLogger("bundler")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if level == logging.DEBUG:
        # botocore's debug log prints request headers (credentials); keep it at INFO.
        logging.getLogger("botocore").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None, *, prog: str = "ami-bundler") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    json_mode, debug = wants_json(argv), "--debug" in argv
    args: argparse.Namespace | None = None
    with interrupts_roll_back():
        try:
            parser = build_parser(prog, _command_of(argv))
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:  # --help and --version: argparse printed them
                return int(exc.code or 0) if not isinstance(exc.code, str) else 2
            json_mode, debug = getattr(args, "json", False), getattr(args, "debug", False)
            _configure_logging(args)
            printer = Printer(json_mode=json_mode, quiet=getattr(args, "quiet", False))
            code = int(args.func(args, printer) or 0)
            signum = interrupts.signalled()
            if code == 0 and signum is not None:
                # The signal's Interrupted was lost: Python ignores an exception raised in a
                # finalizer (__del__, a weakref callback), and the handler may have run in
                # one. The run went on to the end; it still ends as interrupted, saying what
                # it left (the result it printed stays the only JSON on stdout).
                return report(Interrupted(signum), prog=prog, json_mode=False, debug=debug,
                              finish=_finish_of(args))
            return code
        except BrokenPipeError:
            return 141
        except (BundlerError, KeyboardInterrupt, OSError) as exc:
            return report(exc, prog=prog, json_mode=json_mode, debug=debug,
                          finish=_finish_of(args))


def _finish_of(args: argparse.Namespace | None) -> str | None:
    """How the command is finished after an interrupt kept what it published, for a command
    that registers AMIs from it (its parser's ``finish_hint``); None for one that does not."""
    hint = getattr(args, "finish_hint", None)
    return hint(args) if hint is not None else None


def _classic(command: str, prog: str) -> int:
    return main([command, *sys.argv[1:]], prog=prog)


def _exit(code: int) -> None:
    """Exit without the interpreter's teardown (~35 ms of module and GC clean-up).

    Every file the commands write is closed and synced before they return, worker pools are
    shut down, and output is flushed here, so there is nothing left for the teardown to do.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or 141  # the reader went away: the result was not delivered (128 + SIGPIPE)
    except ValueError:  # a stream already closed
        pass
    logging.shutdown()
    os._exit(code)


def run() -> None:
    _exit(main())


def ec2_bundle_image() -> None:
    _exit(_classic("bundle-image", "ec2-bundle-image"))


def ec2_bundle_vol() -> None:
    _exit(_classic("bundle-vol", "ec2-bundle-vol"))


def ec2_unbundle() -> None:
    _exit(_classic("unbundle", "ec2-unbundle"))


def ec2_upload_bundle() -> None:
    _exit(_classic("upload-bundle", "ec2-upload-bundle"))


def ec2_download_bundle() -> None:
    _exit(_classic("download-bundle", "ec2-download-bundle"))


def ec2_delete_bundle() -> None:
    _exit(_classic("delete-bundle", "ec2-delete-bundle"))


def ec2_migrate_manifest() -> None:
    _exit(_classic("migrate-manifest", "ec2-migrate-manifest"))


def ec2_migrate_bundle() -> None:
    _exit(_classic("copy-bundle", "ec2-migrate-bundle"))
