"""docs/migrating.md lists every classic flag; each one it lists must be accepted by the
command it is listed under (and by its ec2-* alias), so the table cannot drift from the code."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from bundler.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"
HEADING = re.compile(r"^## (ec2-[a-z-]+) → `ami-bundler ([a-z-]+)`$")


def options(command: str, prog: str = "ami-bundler") -> set[str]:
    parser = build_parser(prog, command)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = commands.choices[command]
    return {o for a in sub._actions for o in a.option_strings}


def classic_flags() -> dict[str, tuple[str, list[str]]]:
    """{command: (alias, [flags from the first column])}, plus "*" for the every-command table."""
    tables: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            m = HEADING.match(line)
            if m:
                current = (m.group(2), m.group(1))
            else:
                current = ("*", "") if line == "## Every command" else None
            if current:
                tables[current[0]] = (current[1], [])
        elif current and line.startswith("| `"):
            first = line.split("|")[1]
            for flag in re.findall(r"`(-[^`]+)`", first):
                if flag == "--[no-]inherit":
                    tables[current[0]][1].extend(["--inherit", "--no-inherit"])
                else:
                    tables[current[0]][1].append(flag)
    return tables


def test_every_classic_command_is_in_the_doc():
    tables = classic_flags()
    assert {alias for alias, _ in tables.values() if alias} == {
        "ec2-bundle-image", "ec2-bundle-vol", "ec2-unbundle", "ec2-upload-bundle",
        "ec2-download-bundle", "ec2-delete-bundle", "ec2-migrate-manifest", "ec2-migrate-bundle"}
    assert all(len(flags) >= 3 for flags in (f for _, f in tables.values()))


def test_every_listed_classic_flag_is_accepted():
    tables = classic_flags()
    common = tables.pop("*")[1]
    for command, (alias, flags) in tables.items():
        known = options(command, alias)
        missing = [f for f in [*flags, *common] if f not in known]
        assert not missing, f"{alias}: {missing}"
