"""boot-test's console watching, with stand-in qemu programs (the real boot is opt-in:
tests/integration/test_boot.py)."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from bundler.boottest import BootConfig, BootTestError, boot_image
from bundler.volume import partition

FAKE_QEMU = """#!{python}
import sys, time
args = sys.argv[1:]
serial = args[args.index("-serial") + 1].split(":", 1)[1]
with open(serial, "w") as fh:
    fh.write({console!r})
    fh.flush()
    time.sleep(60)
"""
FAKE_QEMU_IMG = """#!{python}
import os, sys
open(sys.argv[-1], "wb").write(b"QFI\\xfb")
if os.environ.get("MODE_LOG"):
    with open(os.environ["MODE_LOG"], "a") as fh:
        fh.write(oct(os.stat(sys.argv[-1]).st_mode & 0o777) + "\\n")
"""


def fake_tools(tmp_path: Path, monkeypatch, console: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("qemu-system-x86_64", FAKE_QEMU), ("qemu-img", FAKE_QEMU_IMG)):
        path = bindir / name
        path.write_text(text.format(python=sys.executable, console=console))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    layout = partition.layout_for("mbr", 4)
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(layout.disk_bytes)
    partition.write_table(image, layout)
    return image


def test_marker_found(tmp_path, monkeypatch, disk):
    fake_tools(tmp_path, monkeypatch, "GRUB loading.\nDebian GNU/Linux 12 box ttyS0\n\nbox login: ")
    log = tmp_path / "console.log"
    result = boot_image(disk, BootConfig(timeout=30, accel="tcg", console_log=log))
    assert result.booted and result.marker == "box login:"
    assert "box login: " in log.read_text()


def test_overlay_and_console_are_private_from_creation(tmp_path, monkeypatch, disk):
    fake_tools(tmp_path, monkeypatch, "box login: ")
    modes = tmp_path / "modes"
    monkeypatch.setenv("MODE_LOG", str(modes))
    seen: list[int] = []
    real = time.monotonic

    def watch() -> float:       # the console log, seen from the watching loop
        for p in (tmp_path / "work").glob("ami-bundler-boot-*/console.log"):
            seen.append(p.stat().st_mode & 0o777)
        return real()

    (tmp_path / "work").mkdir()
    monkeypatch.setattr("bundler.boottest.time.monotonic", watch)
    old = os.umask(0o022)
    try:
        result = boot_image(disk, BootConfig(timeout=30, accel="tcg",
                                             work_dir=tmp_path / "work"))
    finally:
        os.umask(old)
    assert result.booted
    assert modes.read_text() == "0o600\n"
    assert seen and set(seen) == {0o600}


def test_panic_stops_the_wait_and_is_shown(tmp_path, monkeypatch, disk):
    fake_tools(tmp_path, monkeypatch, "[ 1.0] VFS: Cannot open root device\n[ 1.1] Kernel "
               "panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n")
    started = time.monotonic()
    result = boot_image(disk, BootConfig(timeout=40, accel="tcg"))
    assert not result.booted and time.monotonic() - started < 20
    assert result.reason.startswith("kernel panic: Kernel panic - not syncing: VFS: Unable")
    assert any("Kernel panic" in line for line in result.tail)


def test_grub_rescue(tmp_path, monkeypatch, disk):
    fake_tools(tmp_path, monkeypatch, "error: unknown filesystem.\nEntering rescue mode...\n"
                                      "grub rescue> ")
    result = boot_image(disk, BootConfig(timeout=40, accel="tcg"))
    assert not result.booted and result.reason.startswith("GRUB rescue prompt")


def test_timeout(tmp_path, monkeypatch, disk):
    fake_tools(tmp_path, monkeypatch, "Loading Linux ...\n")
    result = boot_image(disk, BootConfig(timeout=1.5, accel="tcg", expect="BOOT-OK"))
    assert not result.booted and "no match for 'BOOT-OK' within 2 s" in result.reason


def test_missing_qemu_names_the_package(tmp_path, monkeypatch, disk):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BootTestError, match="install qemu-system-x86"):
        boot_image(disk, BootConfig(accel="tcg"))



def test_cli_boots_a_bundle_and_removes_its_copy(tmp_path, monkeypatch, disk):
    import json
    import subprocess

    from bundler import keys as keylib

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    keylib.keygen(key, cert)
    out = tmp_path / "bundle"
    out.mkdir()
    base = [sys.executable, "-m", "bundler"]
    subprocess.run(base + ["bundle-image", "-i", str(disk), "-d", str(out), "-c", str(cert),
                           "-k", str(key), "--ec2cert", str(cert), "-u", "123456789012", "-r",
                           "x86_64", "-q"], check=True, capture_output=True)
    fake_tools(tmp_path, monkeypatch, "GRUB\nhost login: ")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(base + ["boot-test", "-m", str(out / "disk.img.manifest.xml"), "-k",
                                  str(key), "--accel", "tcg", "--timeout", "30", "--work-dir",
                                  str(work), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["marker"] == "host login:"
    assert list(work.iterdir()) == []
