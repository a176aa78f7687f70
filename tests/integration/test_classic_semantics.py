"""The ec2-* aliases behave as the classic tools do where users have muscle memory:
--version, --help and --manual print and exit 0 (whatever else is on the line), usage lines
and errors name the alias, and --batch means "never prompt", not "yes"."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import bundler.cli as cli
from bundler import __version__

ALIASES = {
    "ec2-bundle-image": "bundle-image", "ec2-bundle-vol": "bundle-vol", "ec2-unbundle": "unbundle",
    "ec2-upload-bundle": "upload-bundle", "ec2-download-bundle": "download-bundle",
    "ec2-delete-bundle": "delete-bundle", "ec2-migrate-manifest": "migrate-manifest",
    "ec2-migrate-bundle": "copy-bundle",
}
REPO = Path(__file__).resolve().parents[2]


def alias(capsys, name: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([ALIASES[name], *argv], prog=name)  # what the installed script runs
    out, err = capsys.readouterr()
    return code, out, err


def test_every_alias_has_an_entry_point():
    text = (REPO / "pyproject.toml").read_text()
    for name in ALIASES:
        function = name.replace("-", "_")
        assert re.search(rf'^{name} = "bundler.cli:{function}"$', text, re.M), name
        assert callable(getattr(cli, function))


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_version_help_and_manual(capsys, name):
    code, out, err = alias(capsys, name, "--version")
    version = f"{name}: ami-bundler {__version__} (bundle manifest version 2007-10-10)"
    assert code == 0 and out.strip() == version, err
    # classic: these win over missing or bad flags
    code, out, _ = alias(capsys, name, "-x", "--help")
    code2, out2, _ = alias(capsys, name, "--help")
    assert code2 == 0 and out2.startswith(f"usage: {name} ")
    assert f"{name} {ALIASES[name]}" not in out2
    code, out, err = alias(capsys, name, "--manual")
    assert code == 0 and out.startswith(f"usage: {name} ") and "docs/migrating.md" in out, err


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_usage_errors_name_the_alias(capsys, name):
    code, out, err = alias(capsys, name, "--no-such-flag")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"{name}: error: ") and lines[1] == f"hint: see '{name} --help'", err
    assert len(lines) == 2


def test_installed_script_runs_the_alias():
    script = Path(sys.executable).parent / "ec2-delete-bundle"
    if not script.exists():
        pytest.skip("package not installed into this interpreter's bin directory")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ec2-delete-bundle: ami-bundler "), proc.stderr
