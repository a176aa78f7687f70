"""bundle-vol keeps the volume's own /etc/fstab but makes its root entry mount the image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bundler.cli import main

pytestmark = pytest.mark.skipif(
    shutil.which("mke2fs") is None and not Path("/sbin/mke2fs").exists(),
    reason="e2fsprogs not installed")

UUID = "6a1f2b3c-4d5e-4f60-8172-8394a5b6c7d8"
XFS_FSTAB = ("# /etc/fstab of an Amazon Linux 2 root\n"
             "UUID=11111111-2222-4333-8444-555555555555  /  xfs  defaults,noatime,inode64  1 1\n"
             "/dev/nvme1n1  /data  xfs  defaults,nofail  0 2\n")


def cat(image: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                          text=True, check=True).stdout


def clone(tree: Path, dest: Path, capsys, *extra: str) -> tuple[dict, Path]:
    rc = main(["bundle-vol", "-v", str(tree), "-d", str(dest), "-p", "img", "--clone-only",
               "--no-inherit", "--no-check", "--batch", "--uuid", UUID, "--json", *extra])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out), dest / "img"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("al2\n")
    (root / "etc/fstab").write_text(XFS_FSTAB)
    return root


def test_xfs_root_entry_rewritten_and_reported(tree, tmp_path, capsys):
    dest = tmp_path / "out"
    dest.mkdir()
    data, image = clone(tree, dest, capsys)
    fstab = cat(image, "/etc/fstab").splitlines()
    assert fstab[0] == "# /etc/fstab of an Amazon Linux 2 root"
    assert fstab[1].split() == [f"UUID={UUID}", "/", "ext4", "defaults,noatime", "1", "1"]
    assert fstab[2] == "/dev/nvme1n1  /data  xfs  defaults,nofail  0 2"
    assert cat(image, "/etc/fstab.old") == XFS_FSTAB
    blkid = subprocess.run(["blkid", "-o", "export", str(image)], capture_output=True,
                           text=True).stdout
    assert f"UUID={UUID}" in blkid and "TYPE=ext4" in blkid
    change = data["fstab_root_changed"]
    assert change["old"] == XFS_FSTAB.splitlines()[1]
    assert change["new"] == fstab[1]
    assert change["dropped_options"] == ["inode64"]
    assert any("ext4, not xfs" in r for r in change["reasons"])
    assert any("UUID=" in r for r in change["reasons"])
    assert data["filesystem"] == "ext4"
    # a plain directory is mounted from no device of its own
    assert data["source_device"] is None
    assert tree.joinpath("etc/fstab").read_text() == XFS_FSTAB  # the source is untouched


def test_human_output_names_the_change(tree, tmp_path, capsys):
    dest = tmp_path / "out"
    dest.mkdir()
    assert main(["bundle-vol", "-v", str(tree), "-d", str(dest), "-p", "img", "--clone-only",
                 "--no-inherit", "--no-check", "--batch", "--uuid", UUID]) == 0
    out = capsys.readouterr().out
    assert "/etc/fstab root entry rewritten" in out
    assert f"now: UUID={UUID}" in out and "dropped options ext4 does not accept: inode64" in out


def test_matching_fstab_untouched_and_symlinked_fstab_warned(tree, tmp_path, capsys):
    good = f"UUID={UUID} / ext4 defaults 0 1\n"
    (tree / "etc/fstab").write_text(good)
    dest = tmp_path / "out"
    dest.mkdir()
    data, image = clone(tree, dest, capsys)
    assert data["fstab_root_changed"] is None
    assert cat(image, "/etc/fstab") == good
    assert "fstab.old" not in subprocess.run(["debugfs", "-R", "ls /etc", str(image)],
                                             capture_output=True, text=True).stdout
    # a symlink in the volume is never followed (it could name the build host's own file)
    host = tmp_path / "host-fstab"
    host.write_text(XFS_FSTAB)
    os.unlink(tree / "etc/fstab")
    os.symlink(host, tree / "etc/fstab")
    dest2 = tmp_path / "out2"
    dest2.mkdir()
    data, _ = clone(tree, dest2, capsys)
    assert data["fstab_root_changed"] is None
    assert any("/etc/fstab is a symlink" in w for w in data["warnings"])
    assert host.read_text() == XFS_FSTAB


def test_symlinked_etc_is_not_followed(tree, tmp_path, capsys):
    victim = tmp_path / "host-etc"
    victim.mkdir()
    (victim / "fstab").write_text(XFS_FSTAB)
    (tree / "etc/fstab").unlink()
    (tree / "etc/hostname").unlink()
    (tree / "etc").rmdir()
    os.symlink(victim, tree / "etc")
    dest = tmp_path / "out"
    dest.mkdir()
    data, _ = clone(tree, dest, capsys)
    assert data["fstab_root_changed"] is None
    assert any("/etc in the volume is a symlink" in w and "not checked" in w
               for w in data["warnings"])
    assert sorted(p.name for p in victim.iterdir()) == ["fstab"]
    assert (victim / "fstab").read_text() == XFS_FSTAB
