"""Two runs writing the same destination: one fails at once with a clear message, or both
succeed with consistent results; never an interleaved bundle or image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.destlock import DestinationLock
from bundler.dirsink import DirectorySink
from bundler.errors import OutputError
from bundler.imagewriter import FileImageWriter
from bundler.parts import Part
from bundler.stale import remove_stale
from bundler.tempnames import temp_name
from tests.support import crashkit
from tests.support.crashkit import REPO, inspect_bundle_dir, inspect_image_dir


@pytest.fixture(scope="module")
def ws(tmp_path_factory, user_key_pair, ec2_key_pair) -> crashkit.Workspace:
    return crashkit.make_workspace(tmp_path_factory.mktemp("conc"), user_key_pair.key_path,
                                   user_key_pair.cert_path, ec2_key_pair.cert_path)


def cli(argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bundler", *argv], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_second_sink_for_the_same_bundle_fails_at_once(tmp_path):
    first = DirectorySink(tmp_path)
    first.begin("b", 1)
    second = DirectorySink(tmp_path)
    with pytest.raises(OutputError,
                       match=f"another ami-bundler run is writing bundle b in {tmp_path}"):
        second.begin("b", 1)
    other_name = DirectorySink(tmp_path)
    other_name.begin("c", 1)  # another bundle in the same directory is no conflict
    other_name.abort()
    first.put_part(Part.of(0, b"x"))
    first.commit(["b.part.0"], "b.manifest.xml", b"<m/>")
    assert sorted(os.listdir(tmp_path)) == ["b.manifest.xml", "b.part.0"]  # lock and staging gone


def test_bundle_image_fails_fast_while_another_run_holds_the_bundle(ws, tmp_path):
    lock = DestinationLock(tmp_path, "bundle-img", "bundle img")
    lock.acquire()
    try:
        proc = cli(ws.bundle_args(tmp_path))
        _, err = proc.communicate(timeout=60)
    finally:
        lock.release()
    assert proc.returncode == 1
    assert f"another ami-bundler run is writing bundle img in {tmp_path}" in err
    assert os.listdir(tmp_path) == []


def test_unbundle_fails_fast_while_another_run_writes_the_image(ws, tmp_path):
    lock = DestinationLock(tmp_path, "image-img", "image img")
    lock.acquire()
    try:
        proc = cli(ws.unbundle_args(ws.root / "reference" / "img.manifest.xml", tmp_path))
        _, err = proc.communicate(timeout=60)
    finally:
        lock.release()
    assert proc.returncode == 1
    assert f"another ami-bundler run is writing image img in {tmp_path}" in err
    assert os.listdir(tmp_path) == []


OK_LOSER_MESSAGES = ("another ami-bundler run is writing", "already holds", "already exists",
                     "appeared while")


@pytest.mark.parametrize("round_", range(2))
def test_racing_bundle_image_runs(ws, tmp_path, round_):
    procs = [cli(ws.bundle_args(tmp_path)) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    winners = [r for r in results if r[0] == 0]
    assert winners, results
    for code, err in results:
        assert code == 0 or any(m in err for m in OK_LOSER_MESSAGES), err
    seen = inspect_bundle_dir(tmp_path, ws)
    assert seen.ok and seen.complete == ["img.manifest.xml"], seen
    assert not seen.temporary and not seen.incomplete, seen


def test_racing_unbundles_to_the_same_image(ws, tmp_path):
    manifest = ws.root / "reference" / "img.manifest.xml"
    procs = [cli(ws.unbundle_args(manifest, tmp_path)) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        assert code == 0 or any(m in err for m in OK_LOSER_MESSAGES), err
    seen = inspect_image_dir(tmp_path, ws)
    assert seen.ok and seen.complete == ["img"] and not seen.temporary, seen


def test_racing_forced_unbundles_both_succeed_with_the_same_image(ws, tmp_path):
    manifest = ws.root / "reference" / "img.manifest.xml"
    procs = [cli(ws.unbundle_args(manifest, tmp_path, "--force")) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0 or "another ami-bundler run is writing image img" in err, err
    seen = inspect_image_dir(tmp_path, ws)
    assert seen.ok and seen.complete == ["img"] and not seen.temporary, seen


def test_different_bundles_into_one_directory_run_side_by_side(ws, tmp_path):
    procs = [cli(ws.bundle_args(tmp_path, name)) for name in ("one", "two")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    names = sorted(os.listdir(tmp_path))
    manifests = [n for n in names if n.endswith(".manifest.xml")]
    assert manifests == ["one.manifest.xml", "two.manifest.xml"]
    assert not [n for n in names if n.startswith(".")]


HOLDER = """
import sys, time
from pathlib import Path
from bundler.destlock import DestinationLock
lock = DestinationLock(Path(sys.argv[1]), "bundle-x", "bundle x")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_lock_of_a_killed_holder_is_free_and_its_file_is_cleaned(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    lock = DestinationLock(tmp_path, "bundle-x", "bundle x")
    with pytest.raises(OutputError, match="another ami-bundler run is writing bundle x"):
        lock.acquire()
    holder.kill()
    holder.wait(timeout=30)
    assert [n for n in os.listdir(tmp_path)] == [lock.path.name]  # left by the killed holder
    assert remove_stale(tmp_path) == [lock.path.name]  # nobody holds it: the next run removes it
    lock.acquire()
    lock.release()
    assert os.listdir(tmp_path) == []


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_entries_of_dead_processes_go_live_ones_stay(tmp_path):
    live = temp_name("staging", "b")  # ours: this process is alive
    dead = live.replace(f"-{os.getpid()}-", f"-{dead_pid()}-")
    dead_image = temp_name("unbundle", "img").replace(f"-{os.getpid()}-", f"-{dead_pid()}-")
    old_style = ".ami-bundler-staging-b-0123abcd"  # written before PIDs were in the names
    for name in (live, dead, old_style):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-0").write_bytes(b"x")
    (tmp_path / dead_image).write_bytes(b"half an image")
    (tmp_path / "keep.txt").write_bytes(b"user data")
    assert sorted(remove_stale(tmp_path)) == sorted([dead, dead_image])
    assert sorted(os.listdir(tmp_path)) == sorted([live, old_style, "keep.txt"])


def test_half_committed_bundle_is_rolled_back_but_a_finished_one_kept(tmp_path):
    pid = dead_pid()
    # A run that died after linking part 0 of 2, before the manifest:
    half = tmp_path / f".ami-bundler-staging-{pid}-half-0123abcd"
    half.mkdir()
    for i in range(2):
        (half / f"part-{i}").write_bytes(b"p%d" % i)
    (half / "manifest").write_bytes(b"<m/>")
    os.link(half / "part-0", tmp_path / "half.part.0")
    # A run that died after linking everything, before removing its staging directory:
    done = tmp_path / f".ami-bundler-staging-{pid}-done-0123abcd"
    done.mkdir()
    (done / "part-0").write_bytes(b"d0")
    (done / "manifest").write_bytes(b"<m/>")
    os.link(done / "part-0", tmp_path / "done.part.0")
    os.link(done / "manifest", tmp_path / "done.manifest.xml")
    # A user's own file that happens to be called like a part is never touched:
    (tmp_path / "half.part.1").write_bytes(b"not ours")
    remove_stale(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["done.manifest.xml", "done.part.0", "half.part.1"]


def test_image_writer_uses_a_pid_named_temp_and_removes_stale_ones(tmp_path):
    stale = tmp_path / f".ami-bundler-unbundle-{dead_pid()}-img-0123abcd"
    stale.write_bytes(b"x" * 100)
    writer = FileImageWriter(tmp_path, "img")
    writer.open(10, 0o644)
    assert not stale.exists()
    assert writer.temp is not None and f"-{os.getpid()}-img-" in writer.temp.name
    writer.write_at(0, b"0123456789")
    assert writer.commit() == Path(tmp_path / "img")
    assert sorted(os.listdir(tmp_path)) == ["img"]


def test_dead_pid_entry_whose_name_lock_is_held_is_left_alone(tmp_path):
    """On a directory shared by hosts, a PID from elsewhere looks dead here; the run that
    owns the entry still holds its name lock, and that is respected."""
    staging = tmp_path / f".ami-bundler-staging-{dead_pid()}-b-0123abcd"
    staging.mkdir()
    (staging / "part-0").write_bytes(b"x")
    other_host = DestinationLock(tmp_path, "bundle-b", "bundle b")
    other_host.acquire()
    try:
        assert remove_stale(tmp_path) == []
        assert staging.exists()
    finally:
        other_host.release()
    assert remove_stale(tmp_path) == [staging.name]
