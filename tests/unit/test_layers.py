"""The import-linter layers name every top-level module of ``bundler``: a module left out of
them is bound by no layer (it could import the CLI, and anything could import it)."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]


def _layered() -> set[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}


def _top_level_modules() -> set[str]:
    package = REPO / "bundler"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    return modules | {p.parent.name for p in package.glob("*/__init__.py")}


def test_every_top_level_module_is_in_a_layer() -> None:
    missing = sorted(_top_level_modules() - _layered())
    assert not missing, f"add {missing} to a layer in pyproject.toml's [tool.importlinter]"


def test_every_layered_name_is_a_module() -> None:
    stale = sorted(_layered() - _top_level_modules())
    assert not stale, f"the layers name {stale}, which bundler no longer has"
