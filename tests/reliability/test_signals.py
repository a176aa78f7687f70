"""SIGTERM and SIGHUP roll back like Ctrl-C: at every point of bundle-image and unbundle (and
while upload-bundle is sending parts), each signal ends the run with exit 128+signal and leaves
no staging directory, temporary file or lock, and never a visible manifest or image that is
not complete.

Two ways to signal a run: a forked CLI that sends itself the signal before its N-th
filesystem call (N walked over the whole run: every point between two filesystem operations,
from whichever thread makes them), and the real CLI in a subprocess signalled from outside
once a chosen stage is visible on disk or on the wire.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.tempnames import TEMP_MARK
from tests.support import crashkit
from tests.support.crashkit import (
    REPO,
    clean_dir,
    inspect_bundle_dir,
    inspect_image_dir,
    wait_for,
    walk_signals,
)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, user_key_pair, ec2_key_pair) -> crashkit.Workspace:
    return crashkit.make_workspace(tmp_path_factory.mktemp("signals"), user_key_pair.key_path,
                                   user_key_pair.cert_path, ec2_key_pair.cert_path,
                                   size=3 << 20, part_size=1 << 20)


def test_bundle_image_signalled_at_every_step(ws, tmp_path):
    dest = tmp_path / "dest"

    def check(when):
        seen = inspect_bundle_dir(dest, ws)
        assert seen.ok, f"{when}: {seen.wrong}"
        assert seen.temporary == [], f"{when}: left {seen.temporary}"
        assert seen.incomplete == [], f"{when}: parts without a manifest {seen.incomplete}"

    # INT, TERM and HUP take turns over the steps: one handler serves all three.
    assert walk_signals(ws.bundle_args(dest), lambda: clean_dir(dest), check,
                        part_size=ws.part_size) >= 10


def test_unbundle_signalled_at_every_step(ws, tmp_path):
    out = tmp_path / "out"
    manifest = ws.root / "reference" / "img.manifest.xml"

    def check(when):
        seen = inspect_image_dir(out, ws)
        assert seen.ok, f"{when}: {seen.wrong}"
        assert seen.temporary == [], f"{when}: left {seen.temporary}"

    assert walk_signals(ws.unbundle_args(manifest, out), lambda: clean_dir(out), check,
                        part_size=ws.part_size) >= 5


# --------------------------------------------------------------------------- the real CLI


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bundler", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def temporaries(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(TEMP_MARK))


@pytest.fixture(scope="module")
def big_ws(tmp_path_factory, user_key_pair, ec2_key_pair) -> crashkit.Workspace:
    return crashkit.make_workspace(tmp_path_factory.mktemp("signals-big"), user_key_pair.key_path,
                                   user_key_pair.cert_path, ec2_key_pair.cert_path, size=48 << 20)


@pytest.mark.parametrize("signum", (signal.SIGTERM, signal.SIGHUP),
                         ids=lambda s: signal.Signals(s).name)
def test_real_bundle_image_signalled_while_staging(big_ws, tmp_path, signum):
    dest = tmp_path / "dest"
    dest.mkdir()
    proc = start(big_ws.bundle_args(dest))
    try:
        staged = wait_for(lambda: any(os.scandir(p) for p in dest.glob(f"{TEMP_MARK}staging-*")),
                          60)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert staged, "no staging directory appeared"
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed")  # a very fast machine
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines() == [
        f"ami-bundler: error: interrupted by {signal.Signals(signum).name}: stopped; nothing "
        "partial was kept"]
    assert os.listdir(dest) == [], os.listdir(dest)


def test_real_unbundle_signalled_mid_write_keeps_its_temporary_file_private(big_ws, tmp_path):
    ref = big_ws.root / "reference"
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(big_ws.image, 0o644)
    proc = start(big_ws.unbundle_args(ref / "img.manifest.xml", out))
    try:
        def writing() -> Path | None:
            temp = [out / n for n in temporaries(out) if "unbundle" in n]
            return temp[0] if temp and temp[0].stat().st_size > 0 else None
        assert wait_for(lambda: writing() is not None, 60), "no temporary image appeared"
        temp = writing()
        assert temp is not None and stat.S_IMODE(temp.stat().st_mode) == 0o600
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed")
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert os.listdir(out) == []


def test_real_unbundle_gives_the_image_its_archived_mode(big_ws, tmp_path):
    out = tmp_path / "out2"
    out.mkdir()
    proc = start(big_ws.unbundle_args(big_ws.root / "reference" / "img.manifest.xml", out))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    umask = os.umask(0o022)
    os.umask(umask)
    # the reference bundle was made from a 0644 (or umask-narrowed) image
    assert (stat.S_IMODE((out / "img").stat().st_mode)
            == stat.S_IMODE(big_ws.image.stat().st_mode) & ~umask)


# --------------------------------------------------------------------------- upload-bundle


@pytest.fixture(scope="module")
def world(moto_server: str, tmp_path_factory) -> Iterator:
    from tests.support.faultproxy import FaultProxy
    from tests.support.s3kit import make_world

    with FaultProxy(moto_server, seed=15) as proxy:
        yield make_world(moto_server, proxy, tmp_path_factory.mktemp("sigs3"))


# Each signal once, at an early and a later point in turn (one handler serves all three).
@pytest.mark.parametrize(("signum", "after_puts"),
                         [(signal.SIGINT, 1), (signal.SIGTERM, 4), (signal.SIGHUP, 1)],
                         ids=lambda v: (signal.Signals(v).name if isinstance(v, signal.Signals)
                                        else str(v)))
def test_upload_bundle_signalled_while_sending_parts(world, signum, after_puts):
    from tests.support.bundles import make_fake_bundle
    from tests.support.s3kit import inspect_bundles, list_keys

    bucket = world.new_bucket()
    bundle = make_fake_bundle(world.root / f"sig-{bucket}", "sig", [64 * 1024] * 8,
                              world.signing_key)
    world.proxy.clear()
    world.proxy.add_rule("delay", r"\.part\.", method="PUT", times=None, delay=0.15)
    proc = start(["upload-bundle", "-b", f"{bucket}/s", "-m", str(bundle.manifest_path),
                  "--jobs", "2", "--endpoint-url", world.proxy.url], world.env)
    try:
        sent = wait_for(lambda: len(world.proxy.requests("PUT", r"\.part\.")) >= after_puts, 60)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert sent, "no part was sent"
    world.proxy.wait_idle()
    assert proc.returncode == 128 + signum, err
    assert len(err.strip().splitlines()) == 1, err
    seen = inspect_bundles(world.s3, bucket, "s/",
                           known={"sig.manifest.xml": bundle.manifest_bytes})
    assert not seen.wrong and seen.complete == [], seen
    assert seen.locks == [], f"the upload lock was left behind: {seen.locks}"
    assert "s/sig.manifest.xml" not in list_keys(world.s3, bucket)


@pytest.mark.skipif(shutil.which("mke2fs") is None and not Path("/sbin/mke2fs").exists(),
                    reason="e2fsprogs not installed")
@pytest.mark.parametrize("signum", (signal.SIGHUP,), ids=lambda s: signal.Signals(s).name)
def test_real_bundle_vol_signalled_while_building(ws, tmp_path, signum):
    """bundle-vol's work (staging tree, image being built, mke2fs running) goes with the signal."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("sig\n")
    (root / "blob").write_bytes(os.urandom(24 << 20))
    dest = tmp_path / "dest"
    argv = ["bundle-vol", "-v", str(root), "-d", str(dest), "-p", "vol", "-c", str(ws.cert),
            "-k", str(ws.key),
            "-u", "123456789012", "--ec2cert", str(ws.ec2cert), "-r", "x86_64",
            "--no-inherit", "-q", "-s", "64", "--no-check"]
    proc = start(argv)
    try:
        busy = wait_for(lambda: dest.is_dir() and any(os.scandir(dest)), 60)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert busy, "bundle-vol wrote nothing"
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed")
    assert proc.returncode == 128 + signum, err
    assert not dest.exists() or os.listdir(dest) == [], os.listdir(dest)


@pytest.mark.skipif(shutil.which("mke2fs") is None and not Path("/sbin/mke2fs").exists(),
                    reason="e2fsprogs not installed")
def test_bundle_vol_signalled_just_after_making_its_work_directory(tmp_path):
    """A signal the moment bundle-vol's private work directory exists (the instant between
    creating it and guarding it) leaves nothing; the directory is 0700 from creation."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("sig\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    modes = tmp_path / "modes"

    def body() -> int:
        real = os.mkdir

        def mkdir(path, mode=0o777, *args, **kwargs):
            real(path, mode, *args, **kwargs)
            name = os.fspath(path)
            if isinstance(name, str) and os.path.basename(name).startswith(TEMP_MARK) \
                    and ".work-" in name:
                with open(modes, "a") as fh:
                    fh.write(f"{stat.S_IMODE(os.lstat(name).st_mode):o}\n")
                os.kill(os.getpid(), signal.SIGTERM)
        os.mkdir = mkdir
        return crashkit._main(["bundle-vol", "-v", str(root), "-d", str(dest), "-p", "vol",
                               "--clone-only", "--no-inherit", "-q", "-s", "16"])

    code = crashkit._run_in_child(body, None)
    assert modes.read_text() == "700\n"
    assert code == 128 + signal.SIGTERM
    assert os.listdir(dest) == []
