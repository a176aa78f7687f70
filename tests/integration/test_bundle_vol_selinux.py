"""SELinux labels reach the image; a tree with an active policy and no labels gets
/.autorelabel, and the run says so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bundler.cli import main
from bundler.volume import selinux

pytestmark = pytest.mark.skipif(shutil.which("mke2fs") is None and not Path("/sbin/mke2fs")
                                .exists(), reason="e2fsprogs not installed")
LABEL = b"system_u:object_r:etc_t:s0"


def debugfs(image: Path, request: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                          text=True)


def policy_tree(root: Path, mode: str = "enforcing") -> Path:
    (root / "etc/selinux/targeted/policy").mkdir(parents=True)
    (root / "etc/selinux/config").write_text(
        f"# This file controls the state of SELinux\nSELINUX={mode}\nSELINUXTYPE=targeted\n")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "usr/bin").mkdir(parents=True)
    return root


def clone(tree: Path, dest: Path, capsys, *extra: str) -> tuple[dict, Path]:
    dest.mkdir()
    rc = main(["bundle-vol", "-v", str(tree), "-d", str(dest), "-p", "img", "--clone-only",
               "--no-inherit", "--no-check", "--batch", *extra])
    out = capsys.readouterr().out
    assert rc == 0, out
    return (json.loads(out) if "--json" in extra else {"text": out}), dest / "img"


def test_parse_config():
    assert selinux.parse_config("SELINUX=Enforcing\n# x\nSELINUXTYPE = 'mls'\n") == \
        ("enforcing", "mls")
    assert selinux.parse_config("") == (None, None)


def test_unlabelled_tree_with_policy_gets_autorelabel(tmp_path, capsys):
    tree = policy_tree(tmp_path / "tree")
    data, image = clone(tree, tmp_path / "out", capsys, "--json")
    state = data["selinux"]
    assert state["mode"] == "enforcing" and state["policy"] == "targeted"
    assert state["labels"] == "missing" and state["autorelabel"] is True
    assert "/etc" in state["unlabelled"]
    assert "Type: regular" in debugfs(image, "stat /.autorelabel").stdout
    assert not (tree / ".autorelabel").exists()    # the source is untouched


def test_human_output_says_autorelabel(tmp_path, capsys):
    tree = policy_tree(tmp_path / "tree")
    out, _ = clone(tree, tmp_path / "out", capsys)
    assert "/.autorelabel written" in out["text"] and "relabels" in out["text"]


@pytest.mark.parametrize("mode", ["disabled", None])
def test_no_active_policy_no_autorelabel(tmp_path, capsys, mode):
    tree = tmp_path / "tree"
    if mode:
        policy_tree(tree, mode)
    else:
        (tree / "etc").mkdir(parents=True)
    data, image = clone(tree, tmp_path / "out", capsys, "--json")
    assert data["selinux"]["autorelabel"] is False
    assert "File not found" in debugfs(image, "stat /.autorelabel").stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="security.* xattrs need root")
def test_labelled_tree_keeps_labels_in_ext4(tmp_path, capsys):
    tree = policy_tree(tmp_path / "tree")
    for rel in ("", "etc", "etc/selinux/config", "etc/passwd", "usr", "usr/bin"):
        os.setxattr(tree / rel if rel else tree, "security.selinux", LABEL)
    data, image = clone(tree, tmp_path / "out", capsys, "--json")
    assert data["selinux"]["labels"] == "present" and data["selinux"]["autorelabel"] is False
    for path in ("/etc/passwd", "/usr/bin", "/etc/selinux/config"):
        got = debugfs(image, f"ea_get {path} security.selinux").stdout
        assert LABEL.decode() in got, path
