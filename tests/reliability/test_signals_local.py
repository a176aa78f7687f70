"""A signal (INT, TERM, HUP in turn) before every filesystem step of the local commands that
test_signals.py does not walk: keygen, migrate-manifest, inspect-image and check of a bundle.
Each signalled run exits 128+signal and leaves nothing behind but complete results: no
temporary file, no private work directory, no key without its certificate, no manifest that is
neither the original nor a whole migrated one, and every key file 0600.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bundler import api
from bundler import keys as keylib
from tests.support import crashkit
from tests.support.crashkit import clean_dir, walk_signals

MKE2FS = shutil.which("mke2fs") or "/sbin/mke2fs"


@pytest.fixture(scope="module")
def ws(tmp_path_factory, user_key_pair, ec2_key_pair) -> crashkit.Workspace:
    return crashkit.make_workspace(tmp_path_factory.mktemp("sig-local"), user_key_pair.key_path,
                                   user_key_pair.cert_path, ec2_key_pair.cert_path,
                                   size=2 << 20, part_size=1 << 20)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The forked runs' $TMPDIR (tempfile caches it: the child inherits the parent's)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_keygen_never_leaves_a_half_made_or_readable_key(tmp_path, private_tmp, monkeypatch,
                                                          user_key_pair):
    # The forked runs reuse one key instead of each making a new one: what is walked is the
    # writing of the files, and RSA generation would cost most of the test.
    made = keylib.load_private_key(user_key_pair.key_path)
    monkeypatch.setattr(keylib.rsa, "generate_private_key", lambda **kw: made)
    out = tmp_path / "keys"
    key, cert = out / "k.pem", out / "c.pem"

    def check(when: str) -> None:
        names = sorted(os.listdir(out))
        assert names in ([], ["c.pem", "k.pem"]), f"{when}: left {names}"
        if names:
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, when
            keylib.load_private_key(key)
            keylib.load_public_key(cert)

    visited = walk_signals(["keygen", "--key", str(key), "--cert", str(cert), "-q"],
                           lambda: clean_dir(out), check)
    assert visited >= 8
    assert os.listdir(private_tmp) == []


def test_migrate_manifest_keeps_the_original_or_a_whole_migration(ws, tmp_path, private_tmp):
    ref = ws.root / "reference"
    work = tmp_path / "m"
    manifest = work / "img.manifest.xml"
    original = (ref / "img.manifest.xml").read_bytes()

    def reset() -> None:
        clean_dir(work)
        manifest.write_bytes(original)

    def check(when: str) -> None:
        names = sorted(os.listdir(work))
        if manifest.read_bytes() == original:  # a stray backup would make the re-run refuse
            assert names == ["img.manifest.xml"], f"{when}: left {names}"
        else:
            assert names == ["img.manifest.xml", "img.manifest.xml.bak"], f"{when}: left {names}"
            assert (work / "img.manifest.xml.bak").read_bytes() == original, when
            keylib.verify_manifest(api.read_manifest(manifest), ws.cert)

    argv = ["migrate-manifest", "-m", str(manifest), "-c", str(ws.cert), "-k", str(ws.key),
            "--ec2cert", str(ws.ec2cert), "-q"]
    assert walk_signals(argv, reset, check) >= 8


def test_inspect_image_leaves_nothing(ws, private_tmp):
    before = sorted(os.listdir(ws.root))

    def check(when: str) -> None:
        assert sorted(os.listdir(ws.root)) == before, when
        assert os.listdir(private_tmp) == [], when

    assert walk_signals(["inspect-image", str(ws.image), "--json"], lambda: None, check) >= 1


@pytest.mark.skipif(not Path(MKE2FS).exists(), reason="e2fsprogs not installed")
def test_check_of_a_bundle_removes_its_private_image(ws, tmp_path, private_tmp):
    """check unpacks the bundle (decrypted) into a private directory: gone on every path."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("sig\n")
    image = tmp_path / "fs.img"
    subprocess.run([MKE2FS, "-q", "-F", "-t", "ext4", "-d", str(tree), str(image), "4M"],
                   check=True, capture_output=True)
    bundle = tmp_path / "bundle"
    clean_dir(bundle)
    argv = ["bundle-image", "-i", str(image), "-c", str(ws.cert), "-k", str(ws.key), "-u",
            "123456789012", "--ec2cert", str(ws.ec2cert), "-d", str(bundle), "-r", "x86_64",
            "-p", "fs", "-q"]
    assert crashkit.run_cli(argv, ws.part_size) == 0
    work = tmp_path / "work"
    work.mkdir()
    parts = sorted(os.listdir(bundle))

    def check(when: str) -> None:
        assert os.listdir(work) == [], f"{when}: left {os.listdir(work)}"
        assert os.listdir(private_tmp) == [], f"{when}: left {os.listdir(private_tmp)}"
        assert sorted(os.listdir(bundle)) == parts, when

    argv = ["check", "-m", str(bundle / "fs.manifest.xml"), "-k", str(ws.key), "--work-dir",
            str(work), "--json"]
    # A bare tree fails the boot rules: exit 1 when not signalled. Every other step: the
    # unbundling half is walked step by step in test_signals.py.
    visited = walk_signals(argv, lambda: None, check, part_size=ws.part_size, finished=1, stride=2)
    assert visited >= 5


def _qemu_running(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and marker.encode() in cmdline:
            found.append(int(pid))
    return found


@pytest.mark.skipif(not shutil.which("qemu-system-x86_64") or not shutil.which("sfdisk"),
                    reason="qemu-system-x86 or sfdisk not installed")
def test_boot_test_signalled_while_qemu_runs(ws, tmp_path):
    """SIGTERM while the guest boots: qemu is killed, the private image and overlay are gone."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(4 << 20)
    subprocess.run(["sfdisk", "-q", str(image)], input="2048,,83\n", text=True, check=True,
                   capture_output=True)  # partitioned, no boot loader: SeaBIOS waits
    bundle = tmp_path / "bundle"
    clean_dir(bundle)
    argv = ["bundle-image", "-i", str(image), "-c", str(ws.cert), "-k", str(ws.key), "-u",
            "123456789012", "--ec2cert", str(ws.ec2cert), "-d", str(bundle), "-r", "x86_64",
            "-p", "disk", "-q"]
    assert crashkit.run_cli(argv) == 0
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "bundler", "boot-test", "-m",
                             str(bundle / "disk.manifest.xml"), "-k", str(ws.key), "--work-dir",
                             str(work), "--timeout", "120", "--accel", "tcg", "--memory", "32"],
                            cwd=crashkit.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        started = crashkit.wait_for(lambda: bool(_qemu_running(str(work))), 60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert started, "qemu never started"
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert crashkit.wait_for(lambda: not _qemu_running(str(work)), 10), "qemu outlived the run"
    assert os.listdir(work) == [], os.listdir(work)
