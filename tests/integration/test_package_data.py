"""The EC2 certificates ship in the wheel and the sdist (built here from a copy of the tree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from bundler import ec2certs

REPO = Path(__file__).resolve().parents[2]
CERTS = sorted(ec2certs.SHIPPED_FINGERPRINTS)


def test_wheel_and_sdist_carry_the_certificates(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "bundler", src / "bundler", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    # The wheel as pip builds it (isolated build environment); the sdist by the same backend.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel",
                           "-q", "--no-deps", "--disable-pip-version-check",
                           "-w", str(out), "."], cwd=src, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run([sys.executable,
                           "-c", "import sys; from setuptools import build_meta as b; "
                           "print(b.build_sdist(sys.argv[1]))", str(out)], cwd=src,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    sdist = out / done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {f"bundler/certs/{c}" for c in CERTS} <= names
        shipped = (REPO / "bundler/certs/cert-ec2.pem").read_bytes()
        assert zf.read("bundler/certs/cert-ec2.pem") == shipped
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {f"bundler/certs/{c}" for c in CERTS} <= members
