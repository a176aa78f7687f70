"""publish --report FILE: written whole and atomically, replacing an older report; a report
that cannot be written is one error, not a traceback."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from bundler.cli.publish import write_report
from bundler.errors import OutputError


def test_the_report_replaces_the_old_one_whole(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("old")
    write_report(report, {"plan": "web", "targets": [{"state": "done"}]})
    assert json.loads(report.read_text()) == {"plan": "web", "targets": [{"state": "done"}]}
    assert stat.S_IMODE(report.stat().st_mode) == 0o644 & ~_umask()
    assert sorted(os.listdir(tmp_path)) == ["report.json"]  # no temporary left


def test_a_report_that_cannot_be_written_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot write the report"):
        write_report(tmp_path / "missing" / "report.json", {})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
