"""bundle-vol over a hostile tree (root, real files, real mke2fs/debugfs).

The tree is input from someone else: its symlinks must never take a read or a write to the
host, its code must never run, things swapped in while the run is going must fail the run (a
test hook swaps them at exactly the staging step), mounts below it are not its content, and
what it holds must neither crash nor exhaust the run. Each test names the issue it pins.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.errors import VolumeError
from bundler.volume import VolumeConfig, bundle_volume, select_volume
from bundler.volume import staging as stagelib

REPO = Path(__file__).resolve().parents[2]
HOST_GRUB = Path("/usr/lib/grub/i386-pc")
is_root = os.geteuid() == 0
pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root, reason="needs root (mounts, chattr, chown)"),
              pytest.mark.skipif(shutil.which("mke2fs") is None, reason="needs e2fsprogs")]
SECRET = b"root:$6$host-secret-hash:19000:0:99999:7:::\n"


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                          check=True).stdout.decode("utf-8", "surrogateescape")


def cat(image: Path, path: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f'cat "{path}"', str(image)], capture_output=True,
                          check=True).stdout


def cli(*args: str, check: bool = True, namespace: str | None = None,
        **kw) -> subprocess.CompletedProcess:
    """The CLI as a user runs it; ``namespace``: shell commands run first in a private mount
    namespace (unshare -m), so test mounts never reach the host."""
    argv = [sys.executable, "-m", "bundler", "bundle-vol", "--no-inherit", "--batch", *args]
    if namespace is not None:
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-ec",
                f"{namespace}\nexec {quoted}"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=300, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"bundle-vol failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for d in ("etc", "usr/bin", "var/lib", "home/u", "zzz", "boot"):
        (root / d).mkdir(parents=True)
    (root / "etc/hostname").write_text("hostile\n")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "zzz/shadow").write_bytes(b"the tree's own harmless file\n")
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + b"\0" * 200)
    return root


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """Stands in for the host's /etc: must never be read into an image or written."""
    v = tmp_path / "host-etc"
    v.mkdir()
    (v / "shadow").write_bytes(SECRET)
    (v / "fstab").write_text("# the build host's own fstab\n")
    return v


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def hook():
    """Install a STAGE_HOOK for one test: called with each rel before its source is opened."""
    def install(fn):
        stagelib.STAGE_HOOK = fn
    yield install
    stagelib.STAGE_HOOK = None


def clone(tree: Path, out: Path, **kw):
    return bundle_volume(VolumeConfig(volume=tree, destination=out, clone_only=True, **kw))


def image_bytes_contain(image: Path, needle: bytes) -> bool:
    with open(image, "rb") as fh:
        while chunk := fh.read(1 << 24):
            if needle in chunk:
                return True
    return False


# ------------------------------------------------------------------ writes to the host

def test_symlinked_etc_with_generate_fstab_leaves_the_victim_untouched(tree, victim, out):
    shutil.rmtree(tree / "etc")
    os.symlink(victim, tree / "etc")
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    proc = cli("-v", str(tree), "-d", str(out), "--clone-only", "--generate-fstab", check=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "/etc in the volume is a symlink" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before
    assert not (out / "image").exists()


@pytest.mark.parametrize("kind", ["dangling", "file"])
def test_etc_not_a_directory_is_a_clear_error(tree, out, kind):
    shutil.rmtree(tree / "etc")
    if kind == "dangling":
        os.symlink("/nonexistent-dir", tree / "etc")
    else:
        (tree / "etc").write_text("not a directory")
    proc = cli("-v", str(tree), "-d", str(out), "--clone-only", "--generate-fstab", check=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "/etc in the volume is" in err and "Traceback" not in err


# ------------------------------------------------------------------ the tree's code

@pytest.mark.skipif(not (HOST_GRUB / "boot.img").is_file(), reason="needs grub-pc-bin")
def test_planted_loader_never_runs(tree, tmp_path, out):
    marker = tmp_path / "loader-ran"
    evil = f"#!/bin/sh\ntouch {marker}\nexit 1\n"
    for rel in ("lib64/ld-linux-x86-64.so.2", "usr/bin/grub-mkimage", "usr/bin/grub2-mkimage"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(evil)
        (tree / rel).chmod(0o755)
    shutil.copytree(HOST_GRUB, tree / "usr/lib/grub/i386-pc")
    (tree / "boot/vmlinuz-6.1.0-1-amd64").write_bytes(b"MZ" + b"\0" * 4000)
    cli("-v", str(tree), "-d", str(out), "--clone-only", "-P", "mbr", "--bootloader", "grub2",
        check=False)
    assert not marker.exists()


# ------------------------------------------------------------------ swaps at the staging step

def test_directory_swapped_for_symlink_fails_and_copies_nothing_from_the_host(
        tree, victim, out, hook):
    def swap(rel: str) -> None:
        if rel == "zzz/shadow":
            os.rename(tree / "zzz", tree / "zzz.orig")
            os.symlink(victim, tree / "zzz")
    hook(swap)
    with pytest.raises(VolumeError, match=r"/zzz changed while bundling"):
        clone(tree, out, keep_image=True)
    assert not (out / "image").exists()
    assert not any(image_bytes_contain(p, SECRET) for p in out.rglob("*") if p.is_file())


def test_file_swapped_for_another_file_fails(tree, victim, out, hook):
    def swap(rel: str) -> None:
        if rel == "etc/passwd":
            os.unlink(tree / "etc/passwd")
            os.link(victim / "shadow", tree / "etc/passwd")
    hook(swap)
    with pytest.raises(VolumeError, match=r"/etc/passwd changed while bundling"):
        clone(tree, out)


def test_file_swapped_for_fifo_fails_without_hanging(tree, out, hook):
    def swap(rel: str) -> None:
        if rel == "etc/passwd":
            os.unlink(tree / "etc/passwd")
            os.mkfifo(tree / "etc/passwd")
    hook(swap)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("staging blocked on a FIFO"))
    signal.alarm(60)
    try:
        with pytest.raises(VolumeError, match=r"/etc/passwd changed while bundling"):
            clone(tree, out)
    finally:
        signal.alarm(0)


def test_fifo_swapped_in_before_the_secret_scan_does_not_hang(tree, out, monkeypatch):
    from bundler.volume import secrets_filter

    real = secrets_filter.scan_file

    def swap_then_scan(dir_fd, name, rel, expect=None):
        if rel == "etc/hostname":
            os.unlink(tree / "etc/hostname")
            os.mkfifo(tree / "etc/hostname")
        return real(dir_fd, name, rel, expect)
    monkeypatch.setattr(secrets_filter, "scan_file", swap_then_scan)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("secret scan blocked on a FIFO"))
    signal.alarm(60)
    try:
        with pytest.raises(VolumeError, match=r"/etc/hostname changed while bundling"):
            select_volume(VolumeConfig(volume=tree, destination=out), mounts=[], swap_files=[])
    finally:
        signal.alarm(0)


# ------------------------------------------------------------------ mounts below the volume

def test_directory_and_file_bind_mounts_are_excluded(tree, victim, out):
    (tree / "etc/resolv.conf").write_text("nameserver 10.0.0.2\n")
    (tree / "srv").mkdir()
    mounts = (f"mount --bind '{victim}' '{tree}/srv'\n"
              f"mount --bind '{victim}/shadow' '{tree}/etc/resolv.conf'")
    proc = cli("-v", str(tree), "-d", str(out), "--clone-only", "--list-excluded", "--json",
               namespace=mounts)
    data = json.loads(proc.stdout)
    reasons = {x["path"]: x["reason"] for x in data["excluded_paths"]}
    assert "bind mount" in reasons["/srv/*"] and "bind mount" in reasons["/etc/resolv.conf"]
    image = out / "image"
    assert not image_bytes_contain(image, SECRET)
    assert "shadow" not in debugfs(image, "ls -l /srv")
    # --all keeps its meaning: every mount is crossed.
    out2 = out.parent / "out-all"
    out2.mkdir()
    cli("-v", str(tree), "-d", str(out2), "--clone-only", "--all", namespace=mounts)
    assert cat(out2 / "image", "/srv/shadow") == SECRET


def test_non_utf8_mount_point_and_names(tree, out):
    bad_dir = os.fsencode(tree) + b"/mnt-\xff\xfe"
    os.mkdir(bad_dir)
    (tree / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name\n")
    mount = f"mount -t tmpfs none \"$(printf '{tree}/mnt-\\377\\376')\"\n" \
            f"touch \"$(printf '{tree}/mnt-\\377\\376/on-tmpfs')\""
    proc = cli("-v", str(tree), "-d", str(out), "--clone-only", "--list-excluded",
               namespace=mount, env={**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    text = proc.stdout.decode()
    assert "excluded /mnt-\\xff\\xfe/*: mount point of tmpfs" in text
    proc = cli("-v", str(tree), "-d", str(out.parent), "-p", "json", "--clone-only", "--json",
               "--list-excluded", namespace=mount)
    data = json.loads(proc.stdout)
    assert any(x["path"] == "/mnt-\\xff\\xfe/*" for x in data["excluded_paths"])
    assert cat(out / "image", os.fsdecode(b"/caf\xe9.txt")) == b"latin-1 name\n"


# ------------------------------------------------------------------ confidentiality

def test_image_and_work_files_are_private(tree, out, hook):
    seen: dict[str, int] = {}

    def look(rel: str) -> None:
        if rel == "etc/hostname":
            work = next(out.glob(".ami-bundler-vol-*"))
            seen["work"] = stat.S_IMODE(os.stat(work).st_mode)
            seen["staging"] = stat.S_IMODE(os.stat(work / "staging").st_mode)
            seen["staged"] = stat.S_IMODE(os.stat(work / "staging/etc").st_mode)
    hook(look)
    os.chmod(out, 0o1777)   # like /tmp
    result = clone(tree, out, keep_image=True)
    assert seen == {"work": 0o700, "staging": 0o700, "staged": 0o700}
    assert stat.S_IMODE(os.stat(result.image_path).st_mode) == 0o600


def test_kept_image_on_another_filesystem(tree, tmp_path, out):
    if os.stat("/dev/shm").st_dev == os.stat(out).st_dev:
        pytest.skip("needs /dev/shm on another filesystem")
    work = Path(os.path.realpath("/dev/shm")) / f"i19-test-{os.getpid()}"
    work.mkdir()
    try:
        result = clone(tree, out, keep_image=True, image_dir=work)
        assert result.image_path == out / "image"
        assert stat.S_IMODE(os.stat(out / "image").st_mode) == 0o600
        assert cat(out / "image", "/etc/hostname") == b"hostile\n"
        assert list(work.iterdir()) == []
    finally:
        shutil.rmtree(work)


# ------------------------------------------------------------------ bounded and lossless

def test_sparse_2gib_os_release_stays_under_the_memory_cap(tree, out):
    with open(tree / "etc/os-release", "wb") as fh:
        fh.write(b'PRETTY_NAME="Hostile Linux"\n')
        fh.truncate(2 << 30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    proc = cli("-v", str(tree), "-d", str(out), "--clone-only", "--generate-menu-lst",
               check=False, preexec_fn=cap)
    # No kernel in the tree: the clear error comes after os-release was parsed.
    assert "Traceback" not in proc.stderr.decode() and "MemoryError" not in proc.stderr.decode()
    (tree / "boot/vmlinuz-6.1.0-1-amd64").write_bytes(b"MZ" + b"\0" * 4000)
    cli("-v", str(tree), "-d", str(out), "--clone-only", "--generate-menu-lst", preexec_fn=cap)
    assert b"Hostile Linux" in cat(out / "image", "/boot/grub/menu.lst")


def _deep_tree(root: Path, depth: int, name: str) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"at the bottom\n")
        os.close(leaf)
    finally:
        os.close(fd)


def test_entries_deeper_than_path_max_are_kept(tree, out):
    name = "d" * 200
    depth = 4096 // 200 + 4
    _deep_tree(tree / "var/lib", depth, name)
    result = clone(tree, out, keep_image=True)
    assert result.summary()["excluded"] == 0
    script = "".join(f"cd {name}\n" for _ in range(depth)) + "cat leaf\n"
    shown = subprocess.run(["debugfs", "-f", "-", str(out / "image")], input=(
        "cd /var/lib\n" + script).encode(), capture_output=True, check=True).stdout
    assert b"at the bottom" in shown


def test_oversize_xattrs_kept_with_ea_inode_or_dropped_and_reported(tmp_path, out):
    mount_dir = tmp_path / "tmpfs"
    mount_dir.mkdir()
    setup = (f"mount -t tmpfs none '{mount_dir}'\nmkdir -p '{mount_dir}/rootfs/etc'\n"
             f"echo hi > '{mount_dir}/rootfs/etc/big'\n"
             + "".join(f"setfattr -n user.x{i} -v 0s{'QUFB' * 800} '{mount_dir}/rootfs/etc/big'\n"
                       for i in range(3)))
    if shutil.which("setfattr") is None:
        pytest.skip("needs attr (setfattr)")
    tree = str(mount_dir / "rootfs")
    cli("-v", tree, "-d", str(out), "--clone-only", namespace=setup)
    got = debugfs(out / "image", "ea_list /etc/big")
    assert all(f"user.x{i} (2400)" in got for i in range(3))
    value = out / "value"
    debugfs(out / "image", f"ea_get -f {value} /etc/big user.x1")
    assert value.read_bytes() == b"AAA" * 800
    # A GRUB 2 image cannot read ea_inode: refused, naming the file, unless told to drop.
    proc = cli("-v", tree, "-d", str(out), "-p", "grub", "--clone-only", "-P", "mbr",
               namespace=setup, check=False)
    assert proc.returncode != 0 and "/etc/big" in proc.stderr.decode()
    assert "--drop-oversize-xattrs" in proc.stderr.decode()
    proc = cli("-v", tree, "-d", str(out), "-p", "dropped", "--clone-only", "--json",
               "--drop-oversize-xattrs", "--bootloader", "none", "-P", "mbr", namespace=setup)
    dropped = json.loads(proc.stdout)["staged"]["oversize_xattrs_dropped"]
    assert dropped == [{"path": "/etc/big", "xattrs": ["user.x0", "user.x1", "user.x2"]}]


def test_mtime_nanoseconds_inode_flags_and_source_ctime(tree, out):
    f = tree / "etc/hostname"
    os.utime(f, ns=(1_700_000_000_123_456_789, 1_700_000_000_987_654_321))
    (tree / "var/log").mkdir(parents=True)
    (tree / "var/log/audit.log").write_text("appended\n")
    ctimes = {p: os.lstat(p).st_ctime_ns for p in tree.rglob("*")}
    subprocess.run(["chattr", "+i", str(f)], check=True)
    subprocess.run(["chattr", "+a", str(tree / "var/log/audit.log")], check=True)
    ctimes = {p: os.lstat(p).st_ctime_ns for p in tree.rglob("*")}
    try:
        clone(tree, out, keep_image=True)
        assert {p: os.lstat(p).st_ctime_ns for p in tree.rglob("*")} == ctimes
    finally:
        subprocess.run(["chattr", "-i", str(f)], check=True)
        subprocess.run(["chattr", "-a", str(tree / "var/log/audit.log")], check=True)
    info = debugfs(out / "image", "stat /etc/hostname")
    extra = int(re.search(r"mtime: 0x[0-9a-f]+:([0-9a-f]+)", info).group(1), 16)
    assert extra >> 2 == 987_654_321
    assert int(re.search(r"Flags: (0x[0-9a-f]+)", info).group(1), 16) & 0x10   # immutable
    info = debugfs(out / "image", "stat /var/log/audit.log")
    assert int(re.search(r"Flags: (0x[0-9a-f]+)", info).group(1), 16) & 0x20   # append-only


def test_exclude_through_the_volume_path_as_given(tree, tmp_path, out):
    (tree / "home/u/secretdir").mkdir()
    (tree / "home/u/secretdir/plans").write_text("x")
    link = tmp_path / "link-to-rootfs"
    os.symlink(tree, link)
    sel = select_volume(VolumeConfig(volume=link, destination=out,
                                     excludes=[f"{link}/home/u/secretdir"]),
                        mounts=[], swap_files=[])
    kept = {e.rel for e in sel.entries}
    assert "home/u/secretdir" not in kept and "home/u/secretdir/plans" not in kept
    assert sel.unmatched_excludes == []


def test_size_estimate_below_512_mib_is_enough(tree, out):
    with open(tree / "var/lib/data.bin", "wb") as fh:
        for _ in range(200):
            fh.write(b"\1" * (1 << 20))
    sel = select_volume(VolumeConfig(volume=tree, destination=out), mounts=[], swap_files=[])
    from bundler.volume import plan_size

    _, minimum = plan_size(VolumeConfig(volume=tree, destination=out), sel)
    assert minimum < 512
    result = clone(tree, out, size_mib=minimum)
    assert result.disk_bytes == minimum << 20
