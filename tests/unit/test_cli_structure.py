"""The CLI's shape: the command table says where each command lives, and command modules
depend only on the shared CLI modules, never on each other."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import bundler.cli as cli

CLI_DIR = Path(cli.__file__).parent


def registered_by(module_name: str) -> set[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(f"bundler.cli.{module_name}").register(sub)
    return set(sub.choices)


def test_command_table_matches_what_each_module_registers():
    table: dict[str, set[str]] = {}
    for command, module in cli.COMMAND_MODULE.items():
        table.setdefault(module, set()).add(command)
    assert {m: registered_by(m) for m in cli.COMMAND_MODULES} == table


def test_every_module_with_register_is_in_the_table():
    with_register = {p.stem for p in CLI_DIR.glob("*.py")
                     if any(isinstance(n, ast.FunctionDef) and n.name == "register"
                            for n in ast.parse(p.read_text()).body)}
    assert with_register == set(cli.COMMAND_MODULES)


def test_a_run_builds_only_its_commands_parser():
    parser = cli.build_parser(command="install")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"install"}


def cli_imports(path: Path) -> set[str]:
    """The bundler.cli modules ``path`` imports (relative or absolute, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("bundler.cli."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bundler.cli."):
                    found.add(alias.name.split(".")[2])
    return found


def test_commands_never_import_commands():
    commands = set(cli.COMMAND_MODULES)
    offenders = {p.stem: cli_imports(p) & commands for p in CLI_DIR.glob("*.py")
                 if p.stem in commands and cli_imports(p) & commands}
    assert offenders == {}


def test_shared_cli_modules_import_no_command_module():
    commands = set(cli.COMMAND_MODULES)
    shared = [p for p in CLI_DIR.glob("*.py") if p.stem not in commands and p.stem != "__init__"]
    assert shared, "the shared CLI modules were not found"
    assert {p.stem: cli_imports(p) & commands for p in shared if cli_imports(p) & commands} == {}


@pytest.mark.parametrize("command", ["bundle-image", "unbundle", "verify"])
def test_local_commands_do_not_load_botocore_to_parse_their_flags(command):
    # unbundle declares the AWS flags (for --from-s3): declaring them must stay cheap.
    code = (f"import sys, bundler.cli as c; c.build_parser(command={command!r}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
