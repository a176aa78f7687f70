"""The README's first command runs the demo end to end: it must not rot as the product changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end(tmp_path):
    argv = [sys.executable, str(REPO / "scripts" / "demo.py"), "--workdir", str(tmp_path)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "demo finished" in proc.stdout
    assert "Traceback" not in proc.stderr
