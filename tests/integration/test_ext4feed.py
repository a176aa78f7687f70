"""The ext4 feed (bundler.volume.ext4feed) against real mke2fs/debugfs/e2fsck: an image fed from
the source without a staging copy holds what the staging + ``mke2fs -d`` path gives, entry by
entry, and trees debugfs cannot take fall back to that path."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from bundler.volume import VolumeConfig, bundle_volume, ext4feed

pytestmark = pytest.mark.skipif(
    shutil.which("debugfs") is None and not Path("/sbin/debugfs").exists(),
    reason="e2fsprogs not installed")
is_root = os.geteuid() == 0
LABEL = b"OPENSSH " + b"PRIVATE KEY"  # assembled so that no repository file looks like a key
PRIVATE = b"-----BEGIN " + LABEL + b"-----\nb3BlbnNzaC1rZXktdjE=\n-----END " + LABEL + b"-----\n"
ODD = ['we"ird name', "<2>", "-dash", "  spaced  ", "tab\tname", "back\\slash", "#hash"]


def run_debugfs(image: Path, commands: list[str]) -> bytes:
    script = "\n".join(commands).encode("utf-8", "surrogateescape") + b"\n"
    return subprocess.run(["debugfs", "-f", "-", str(image)], input=script, capture_output=True,
                          check=True).stdout


def listing(image: Path) -> dict[str, str]:
    """path -> octal mode of every entry of the image (debugfs ``ls -p``)."""
    found: dict[str, str] = {}
    todo = ["/"]
    while todo:
        d = todo.pop()
        out = run_debugfs(image, [f"ls -p {ext4feed.quote(d)}"]).decode("utf-8", "surrogateescape")
        for line in out.splitlines():
            if not line.startswith("/"):
                continue
            fields = line.split("/")
            mode, name = fields[2], "/".join(fields[5:-2])
            if name in (".", "..") or (d == "/" and name == "lost+found"):
                continue
            path = d.rstrip("/") + "/" + name
            found[path] = mode
            if mode.startswith("04"):
                todo.append(path)
    return found


def describe(image: Path, path: str) -> dict[str, object]:
    q = ext4feed.quote(path)
    out = run_debugfs(image, [f"stat {q}", f"ea_list {q}"]).decode("utf-8", "surrogateescape")
    info: dict[str, object] = {}
    for key in ("Type", "Mode", "User", "Group", "Links", "Size"):
        m = re.search(rf"{key}:\s+(\S+)", out)
        info[key] = m.group(1) if m else None
    m = re.search(r"mtime: (0x[0-9a-f]+):([0-9a-f]+)", out)
    info["mtime"] = m.groups() if m else None
    m = re.search(r"Flags: (0x[0-9a-f]+)", out)
    info["flags"] = m.group(1) if m else None
    info["xattrs"] = out.split("Extended attributes:", 1)[1].split("Inode checksum")[0].strip() \
        if "Extended attributes:" in out else ""
    if info["Type"] == "regular":
        info["data"] = run_debugfs(image, [f"cat {q}"])
    elif info["Type"] == "symlink":
        m = re.search(r"Fast link dest: (.*)", out)
        info["target"] = m.group(1) if m else None     # a slow link: its size is compared
    return info


def mtime_fields(tree: Path, path: str) -> tuple[str, str]:
    """(low word, extra word) of the source's mtime as debugfs shows them."""
    ns = os.lstat(str(tree) + path).st_mtime_ns
    return f"{(ns // 10**9) & 0xFFFFFFFF:#x}", f"{ext4feed.time_extra(ns):08x}"


def make_tree(root: Path) -> None:
    var = root / "var/lib/odd"
    var.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("feed\n")
    for i, name in enumerate(ODD):
        (var / name).write_bytes(f"content {i}\n".encode())
    (var / b"non-utf8-\xff".decode("utf-8", "surrogateescape")).write_bytes(b"bytes name\n")
    (var / "empty").write_bytes(b"")
    data = var / "linked"
    data.write_bytes(os.urandom(10000))
    os.link(data, var / "linked2")
    (var / "sub").mkdir()
    os.link(data, var / "sub/linked3")
    os.chmod(var / "-dash", 0o4751)
    with open(var / "sparse", "wb") as fh:
        fh.write(b"head")
        fh.seek(8 * 1024 * 1024)
        fh.write(b"tail")
    os.mkfifo(var / "fifo")
    os.symlink('target with "quotes" and spaces', var / "link")
    os.symlink("../" * 40 + "x" * 100, var / "longlink")
    os.setxattr(var / "linked", "user.binary", bytes(range(256)))
    os.setxattr(var / "sub", "user.text", b'say "hi" \\ there')
    os.setxattr(var / "empty", "user.long", b"L" * 2500)      # over a command line: -f
    os.utime(var / "linked", ns=(1_600_000_000_000_000_001, 1_700_000_000_123_456_789))
    os.utime(var / "empty", ns=(0, -1_000_000_000))            # before 1970
    os.utime(var / "sparse", ns=(0, 4_200_000_000_500_000_000))   # after 2038
    (root / "var/lib/id_key").write_bytes(PRIVATE)
    (root / "toplevel").write_text("a root-level file is staged\n")
    if is_root:
        os.chown(var / "<2>", 1234, 5678)
        os.chown(var / "link", 42, 43, follow_symlinks=False)
        os.mknod(var / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(var / "disk", stat.S_IFBLK | 0o640, os.makedev(259, 70000 % 65536))


def clone(tree: Path, out: Path, prefix: str, population: str, **kw):
    seen: list[list[str]] = []
    result = bundle_volume(
        VolumeConfig(volume=tree, destination=out, prefix=prefix, clone_only=True,
                     population=population, **kw),
        on_selection=lambda sel: seen.append([x.reason for x in sel.excluded]))
    return result, seen


def test_feed_matches_staging_entry_by_entry(tmp_path):
    tree = tmp_path / "tree"
    make_tree(tree)
    out = tmp_path / "out"
    out.mkdir()
    fed, fed_seen = clone(tree, out, "fed", "auto")
    staged, _ = clone(tree, out, "staged", "staging")
    assert fed.stage.fed > 10 and staged.stage.fed == 0
    # The secret scan ran in the feed; the caller heard of the exclusion once it was known.
    assert fed.summary()["excluded_reasons"] == {"secret: private key": 1}
    assert "secret: private key (PEM/OpenSSH)" in fed_seen[0]
    a, b = listing(out / "fed"), listing(out / "staged")
    assert a == b and "/var/lib/id_key" not in a and "/var/lib/odd/<2>" in a
    for path in a:
        got, want = describe(out / "fed", path), describe(out / "staged", path)
        if want["Type"] == "directory":
            got.pop("Size"), want.pop("Size")       # directory blocks differ with the order
        # The staging path cannot set nanoseconds on names with a quote: the source decides.
        assert got.pop("mtime") == mtime_fields(tree, path), path
        want.pop("mtime")
        assert got == want, path
    linked = describe(out / "fed", "/var/lib/odd/linked")
    assert linked["Links"] == "3" and linked["mtime"][1] == f"{123_456_789 << 2:08x}"
    assert describe(out / "fed", "/var/lib/odd/-dash")["Mode"] == "04751"
    assert "user.binary (256)" in linked["xattrs"]


def test_names_debugfs_cannot_take_fall_back_to_staging(tmp_path):
    tree = tmp_path / "tree"
    (tree / "var").mkdir(parents=True)
    (tree / "var/line\nbreak").write_text("kept\n")
    out = tmp_path / "out"
    out.mkdir()
    result, _ = clone(tree, out, "img", "auto")
    assert result.stage.fed == 0 and result.stage.copied == 1
    assert b"/line\nbreak/" in run_debugfs(out / "img", ["ls -p /var"])


def test_quoting_is_what_debugfs_parses(tmp_path):
    assert ext4feed.quote('a"b') == '"a""b"'
    assert ext4feed.here("<2>") == '"./<2>"'
    assert ext4feed.escape_value(b'a "\\\x00') == "a\\x20\\x22\\x5c\\x00"


def inode_groups(image: Path) -> set[frozenset[str]]:
    """The image's regular files grouped by inode (hard links), each group of its paths."""
    by_ino: dict[str, set[str]] = {}
    todo = ["/"]
    while todo:
        d = todo.pop()
        out = run_debugfs(image, [f"ls -p {ext4feed.quote(d)}"]).decode("utf-8", "surrogateescape")
        for line in out.splitlines():
            fields = line.split("/")
            if not line.startswith("/") or fields[5] in (".", ".."):
                continue
            path = d.rstrip("/") + "/" + fields[5]
            if fields[2].startswith("04") and fields[5] != "lost+found":
                todo.append(path)
            elif fields[2].startswith("10"):
                by_ino.setdefault(fields[1], set()).add(path)
    return {frozenset(paths) for paths in by_ino.values()}


def test_hard_links_between_staged_and_fed_files_stay_one_inode(tmp_path):
    tree = tmp_path / "tree"
    for d in ("etc/ssl", "boot", "usr/bin", "usr/lib", "var/lib/x", "srv"):
        (tree / d).mkdir(parents=True)
    pairs = {"etc/ssl/cert.pem": ["usr/lib/cert.pem"],        # staged ↔ fed
             "boot/vmlinuz-6": ["usr/lib/vmlinuz", "var/lib/x/vmlinuz"],
             "toplevel": ["srv/toplevel"],                    # a root-level file is staged
             "etc/fstab": ["var/lib/x/fstab"],                # bundle-vol rewrites this one
             "usr/bin/a": ["usr/bin/b"]}                      # fed ↔ fed, as before
    for first, others in pairs.items():
        (tree / first).write_bytes(os.urandom(3000))
        for other in others:
            os.link(tree / first, tree / other)
    os.utime(tree / "usr/lib/cert.pem", ns=(1, 1_650_000_000_987_654_321))
    out = tmp_path / "out"
    out.mkdir()
    fed, _ = clone(tree, out, "fed", "auto", generate_fstab=True)
    staged, _ = clone(tree, out, "staged", "staging", generate_fstab=True)
    assert fed.stage.fed > 0 and staged.stage.fed == 0
    groups = inode_groups(out / "fed")
    assert groups == inode_groups(out / "staged")
    assert {"/etc/ssl/cert.pem", "/usr/lib/cert.pem"} in groups
    assert {"/boot/vmlinuz-6", "/usr/lib/vmlinuz", "/var/lib/x/vmlinuz"} in groups
    assert {"/toplevel", "/srv/toplevel"} in groups
    # The rewritten fstab is a new file; the original stays linked as fstab.old.
    assert {"/etc/fstab.old", "/var/lib/x/fstab"} in groups
    for path in listing(out / "staged"):
        got, want = describe(out / "fed", path), describe(out / "staged", path)
        if want["Type"] == "directory":
            got.pop("Size"), want.pop("Size")
        got.pop("mtime"), want.pop("mtime")
        assert got == want, path
    assert describe(out / "fed", "/usr/lib/cert.pem")["mtime"] == mtime_fields(
        tree, "/usr/lib/cert.pem")


def test_a_file_grown_since_the_selection_is_scanned_whole(tmp_path):
    """The feed reads what the selection saw plus a byte for the scan; a key appended after
    the selection (past the recorded size) is still found."""
    from bundler.volume import staging as stagelib

    tree = tmp_path / "tree"
    (tree / "var/lib").mkdir(parents=True)
    grown = tree / "var/lib/notes"
    grown.write_bytes(b"nothing here\n")

    def grow(rel: str) -> None:
        if rel == "var/lib/notes":
            with open(grown, "ab") as fh:
                fh.write(b"x" * 5000 + PRIVATE)

    out = tmp_path / "out"
    out.mkdir()
    stagelib.STAGE_HOOK = grow
    try:
        fed, seen = clone(tree, out, "fed", "auto")
    finally:
        stagelib.STAGE_HOOK = None
    assert fed.summary()["excluded_reasons"] == {"secret: private key": 1}
    assert "/var/lib/notes" not in listing(out / "fed")
