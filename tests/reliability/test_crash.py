"""Crash consistency: kill bundle-image, bundle-vol and unbundle anywhere; the destination never
holds a complete-looking wrong bundle or image, leftovers are cleaned by the next run, and a
re-run completes.

Two kinds of crash: at *every* step between two filesystem operations (a forked CLI whose
N-th link/unlink/fsync/open/… is an ``os._exit``), and SIGKILL of the real CLI process after
a random delay (seeded).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from tests.support import crashkit
from tests.support.crashkit import (
    clean_dir,
    crash_at_step,
    inspect_bundle_dir,
    inspect_image_dir,
    run_cli,
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, user_key_pair, ec2_key_pair) -> crashkit.Workspace:
    """3 MiB with a hole, cut into 1 MiB parts in the forked runs: 3 parts, every commit step."""
    return crashkit.make_workspace(tmp_path_factory.mktemp("crash"), user_key_pair.key_path,
                                   user_key_pair.cert_path, ec2_key_pair.cert_path,
                                   size=3 << 20, part_size=1 << 20)


@pytest.fixture(scope="module")
def big_ws(tmp_path_factory, user_key_pair, ec2_key_pair) -> crashkit.Workspace:
    """11 MiB, real 10 MiB parts: for the real CLI killed at random."""
    return crashkit.make_workspace(tmp_path_factory.mktemp("crash-big"), user_key_pair.key_path,
                                   user_key_pair.cert_path, ec2_key_pair.cert_path)


def walk_crash_points(ws, argv, dest: Path, check, reset, limit: int = 300) -> int:
    """Crash before step 1, 2, … until a run completes; after each crash inspect, re-run,
    inspect again. Returns the number of crash points visited."""
    for step in range(1, limit):
        reset()
        crashed, code = crash_at_step(argv, step, ws.part_size)
        if not crashed:
            assert code == 0, f"uncrashed run failed with {code}"
            return step - 1
        check(f"after a crash before step {step}", rerun=False)
        code = run_cli(argv, ws.part_size)
        check(f"after the re-run following a crash before step {step} (exit {code})", rerun=True,
              code=code)
    raise AssertionError(f"the run still had filesystem steps after {limit}")


def test_bundle_image_crash_at_every_step(ws, tmp_path):
    dest = tmp_path / "dest"

    def check(when, *, rerun, code=0):
        seen = inspect_bundle_dir(dest, ws)
        assert seen.ok, f"{when}: {seen.wrong}"
        if rerun:
            # The re-run completes (or finds the bundle the crashed run had finished) and
            # leaves nothing else behind: stale staging and half-linked parts were rolled back.
            assert seen.complete == ["img.manifest.xml"], f"{when}: {seen}"
            assert seen.temporary == [] and seen.incomplete == [], f"{when}: {seen}"

    steps = walk_crash_points(ws, ws.bundle_args(dest), dest, check, lambda: clean_dir(dest))
    assert steps >= 10  # lock, staging, parts, fsyncs, links, manifest, cleanup


def test_bundle_image_force_crash_at_every_step(ws, tmp_path, user_key_pair, ec2_key_pair):
    """--force over an older, bigger bundle of another image: at no step is there a manifest
    beside parts it does not describe, and the old bundle's extra part goes too."""
    dest = tmp_path / "dest"
    old = tmp_path / "old"
    old.mkdir()
    old_image = old / "old.img"
    old_image.write_bytes(random.Random(7).randbytes(5 << 20))  # 6 parts; the new bundle has 3
    old_ws = crashkit.Workspace(old, old_image, ws.key, ws.cert, ws.ec2cert, "")
    template = tmp_path / "template"
    template.mkdir()
    assert run_cli(old_ws.bundle_args(template), ws.part_size) == 0
    from bundler.manifest import parse_manifest

    old_digest = parse_manifest((template / "img.manifest.xml").read_bytes()).manifest.digest
    assert len([n for n in os.listdir(template) if ".part." in n]) > 4

    def reset():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(template, dest)

    def check(when, *, rerun, code=0):
        seen = inspect_bundle_dir(dest, ws)
        wrong = [w for w in seen.wrong if old_digest not in w]  # the untouched old bundle is fine
        assert not wrong, f"{when}: {seen.wrong}"
        if rerun:
            assert code == 0 and seen.complete == ["img.manifest.xml"], f"{when}: {seen}"
            assert seen.temporary == [] and seen.incomplete == [], f"{when}: {seen}"

    assert walk_crash_points(ws, ws.bundle_args(dest, "img", "--force"), dest, check, reset) >= 10


def test_unbundle_crash_at_every_step(ws, tmp_path):
    out = tmp_path / "out"
    manifest = ws.root / "reference" / "img.manifest.xml"

    def check(when, *, rerun, code=0):
        seen = inspect_image_dir(out, ws)
        assert seen.ok, f"{when}: {seen.wrong}"
        if rerun:
            assert seen.complete == ["img"] and seen.temporary == [], f"{when}: {seen}"

    argv = ws.unbundle_args(manifest, out)
    assert walk_crash_points(ws, argv, out, check, lambda: clean_dir(out)) >= 5


@pytest.mark.parametrize("seed", range(4))
def test_bundle_image_and_unbundle_survive_kill_9(big_ws, tmp_path, seed):
    """The real CLI in a subprocess, SIGKILLed after a random delay, then re-run."""
    ws = big_ws
    rng = random.Random(seed)
    dest, out = tmp_path / "dest", tmp_path / "out"
    dest.mkdir()
    out.mkdir()
    killed, code = crashkit.kill_at_random(ws.bundle_args(dest), rng.uniform(0.3, 1.8))
    seen = inspect_bundle_dir(dest, ws)
    assert seen.ok, seen.wrong
    rerun = run_cli(ws.bundle_args(dest))
    seen = inspect_bundle_dir(dest, ws)
    assert seen.complete == ["img.manifest.xml"], (killed, rerun, seen)
    assert not seen.temporary and not seen.incomplete, (killed, rerun, seen)

    killed, code = crashkit.kill_at_random(ws.unbundle_args(dest / "img.manifest.xml", out),
                                           rng.uniform(0.3, 1.8))
    assert inspect_image_dir(out, ws).ok
    if "img" not in os.listdir(out):
        assert run_cli(ws.unbundle_args(dest / "img.manifest.xml", out)) == 0
    seen = inspect_image_dir(out, ws)
    assert seen.complete == ["img"] and seen.temporary == [], seen


NO_MKE2FS = shutil.which("mke2fs") is None and not Path("/sbin/mke2fs").exists()
needs_mke2fs = pytest.mark.skipif(NO_MKE2FS, reason="e2fsprogs not installed")


@needs_mke2fs
def test_bundle_vol_survives_kill_9(ws, tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("crash\n")
    (root / "blob").write_bytes(random.Random(3).randbytes(12 << 20))
    dest = tmp_path / "dest"
    dest.mkdir()
    argv = ["bundle-vol", "-v", str(root), "-d", str(dest), "-p", "vol", "-c", str(ws.cert),
            "-k", str(ws.key),
            "-u", "123456789012", "--ec2cert", str(ws.ec2cert), "-r", "x86_64",
            "--no-inherit", "-q", "-s", "64", "--no-check"]
    # Every build has a fresh filesystem UUID, so bundles are checked for "verifies", not a digest.
    vol = crashkit.Workspace(ws.root, root, ws.key, ws.cert, ws.ec2cert, "")
    rng = random.Random(11)
    for _ in range(2):
        crashkit.kill_at_random(argv, rng.uniform(0.8, 2.5))
        seen = inspect_bundle_dir(dest, vol)
        assert seen.ok, seen.wrong
        for name in [n for n in os.listdir(dest) if n.startswith("vol.")]:
            os.unlink(dest / name)  # a finished bundle would make the re-run refuse
        assert run_cli(argv) == 0
        seen = inspect_bundle_dir(dest, vol)
        assert seen.ok and seen.complete == ["vol.manifest.xml"] and not seen.incomplete, seen
        assert seen.temporary == [], seen
        # the killed run's work files (image being built, staging tree) went with the re-run
        others = [n for n in os.listdir(dest) if not n.startswith("vol.")]
        assert others == [], others
        for name in [n for n in os.listdir(dest) if n.startswith("vol.")]:
            os.unlink(dest / name)
