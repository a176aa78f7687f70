"""bundle-vol of loop-mounted XFS and btrfs volumes: the image has the source's type, label
and UUID, every file as it was (modes, owners, hard links, xattrs with SELinux labels and
ACLs, sparse files), a clean fsck and an fstab root entry that names it. Real tools, real
loop devices (root)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import struct
import subprocess
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler import api
from bundler.cli import main
from bundler.volume import loopdev

SRC_UUID = "0b6f2c1e-8a43-4d7e-9f10-2b3c4d5e6f70"
SELINUX = b"system_u:object_r:bin_t:s0"
FS_IOC_GETFLAGS = 0x80086601
IMMUTABLE = 0x10


def _why_not(tools: tuple[str, ...]) -> str | None:
    missing = [t for t in tools if shutil.which(t) is None
               and shutil.which(t, path="/usr/sbin:/sbin") is None]
    if missing:
        if os.environ.get("CI") == "true":   # bootstrap installs them: a CI gap is a failure
            pytest.fail(f"{', '.join(missing)} missing on CI (scripts/bootstrap.sh)")
        return f"{', '.join(missing)} not installed"
    return loopdev.unavailable_reason()


def needs(*tools: str) -> pytest.MarkDecorator:
    reason = _why_not(tools) if os.geteuid() == 0 else "needs root (loop devices, mounts)"
    return pytest.mark.skipif(reason is not None, reason=reason or "")


XFS_TOOLS = ("mkfs.xfs", "xfs_repair", "losetup", "setfattr", "setfacl")
BTRFS_TOOLS = ("mkfs.btrfs", "btrfs", "losetup", "setfattr", "setfacl")
pytestmark = pytest.mark.root


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def loop_mounted(image: Path, where: Path, fstype: str, *, ro: bool) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    opts = ["ro"] if ro else []
    if fstype == "xfs":
        opts.append("nouuid")   # the source with the same UUID is mounted too
    dev = sh("losetup", "--find", "--show", *(["--read-only"] if ro else []), str(image)).strip()
    try:
        sh("mount", "-t", fstype, *(["-o", ",".join(opts)] if opts else []), dev, str(where))
        try:
            yield where
        finally:
            sh("umount", str(where))
    finally:
        sh("losetup", "--detach", dev)


def write_tree(root: Path) -> None:
    """A small root with what a filesystem change could lose."""
    for d in ("etc", "usr/bin", "usr/lib", "var/lib", "home/u", "srv"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("fs-test\n")
    (root / "etc/fstab").write_text(
        f"UUID={SRC_UUID}  /  xfs  defaults,inode64,noatime  0 0\n"
        "/dev/nvme1n1p1  /data  xfs  defaults,nofail  0 2\n")
    tool = root / "usr/bin/tool"
    tool.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    os.chown(tool, 0, 50)
    os.chmod(tool, 0o4751)
    os.link(tool, root / "usr/bin/tool-alias")
    os.link(tool, root / "usr/lib/tool-again")
    os.symlink("tool", root / "usr/bin/tool-link")
    os.setxattr(tool, "security.selinux", SELINUX)
    os.setxattr(tool, "security.capability",
                bytes.fromhex("0000000200200000000000000000000000000000"))
    notes = root / "home/u/notes"
    notes.write_text("keep me\n")
    os.setxattr(notes, "user.note", b"hello")
    os.chown(notes, 1234, 5678)
    os.chown(root / "home/u", 1234, 5678)
    os.chmod(root / "home/u", 0o750)
    subprocess.run(["setfacl", "-m", "u:4321:r", str(notes)], check=True)
    # the label set by setfattr, as the issue asks, on a directory too
    subprocess.run(["setfattr", "-n", "security.selinux", "-v", "system_u:object_r:etc_t:s0",
                    str(root / "etc")], check=True)
    os.setxattr(root, "security.selinux", b"system_u:object_r:root_t:s0")
    with open(root / "var/lib/sparse.img", "wb") as fh:
        fh.write(b"start")
        fh.seek(64 * 1024 * 1024 - 3)
        fh.write(b"end")
    os.mkfifo(root / "srv/fifo")
    os.mknod(root / "srv/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.utime(root / "etc/hostname", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    frozen = root / "srv/frozen"
    frozen.write_text("immutable\n")
    fd = os.open(frozen, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0x40086602, struct.pack("<i", IMMUTABLE))
    finally:
        os.close(fd)


def inode_flags(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        return struct.unpack_from("<i", buf)[0]
    finally:
        os.close(fd)


SKIP = {"lost+found", "etc/fstab", "etc/fstab.old"}


def snapshot(root: Path, *, ns: bool = True) -> tuple[dict[str, tuple], list[list[str]]]:
    """Every entry's metadata and content, and the hard-link groups."""
    entries: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel in SKIP:
                continue
            st = os.lstat(p)
            xattrs = {n: os.getxattr(p, n, follow_symlinks=False)
                      for n in sorted(os.listxattr(p, follow_symlinks=False))}
            content: object = None
            mtime: object = st.st_mtime_ns if ns else st.st_mtime_ns // 10**9
            if stat.S_ISREG(st.st_mode):
                content = p.read_bytes()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            if stat.S_ISDIR(st.st_mode):
                mtime = None   # the tool writes /etc/fstab: directory times may move
            flags = inode_flags(p) & IMMUTABLE if stat.S_ISREG(st.st_mode) else 0
            entries[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                            st.st_gid, st.st_nlink if not stat.S_ISDIR(st.st_mode) else None,
                            st.st_size if not stat.S_ISDIR(st.st_mode) else None,
                            st.st_rdev, mtime, content, xattrs, flags)
    links = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
    st = os.lstat(root)   # the root directory itself: owner, mode, label
    entries["/"] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    {n: os.getxattr(root, n) for n in sorted(os.listxattr(root))})
    return entries, links


def assert_same_tree(got: Path, want: tuple[dict, list], *, ns: bool = True) -> None:
    entries, links = snapshot(got, ns=ns)
    want_entries = want[0] if ns else {k: _seconds(v) for k, v in want[0].items()}
    assert sorted(entries) == sorted(want_entries)
    for rel, meta in want_entries.items():
        assert entries[rel] == meta, rel
    assert links == want[1]


def _seconds(meta: tuple) -> tuple:
    if len(meta) < 8:
        return meta
    m = list(meta)
    m[7] = m[7] // 10**9 if isinstance(m[7], int) else m[7]
    return tuple(m)


def fstab_root(root: Path) -> list[str]:
    line = next(ln for ln in (root / "etc/fstab").read_text().splitlines()
                if ln.split()[1:2] == ["/"])
    return line.split()


def blkid(image: Path) -> dict[str, str]:
    # -p: probe the file itself, never the blkid cache (a path reused by another test)
    out = subprocess.run(["blkid", "-p", "-o", "export", str(image)], capture_output=True,
                         text=True).stdout
    return dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)


def clone(volume: Path, dest: Path, capsys, *extra: str) -> tuple[dict, Path]:
    rc = main(["bundle-vol", "-v", str(volume), "-d", str(dest), "-p", "img", "--clone-only",
               "--no-inherit", "--no-check", "--batch", "--json", *extra])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    return json.loads(out.out), dest / "img"


@contextlib.contextmanager
def source_volume(tmp: Path, fstype: str, mkfs: list[str]) -> Iterator[Path]:
    image = tmp / f"source.{fstype}"
    with open(image, "wb") as fh:
        fh.truncate(320 * 1024 * 1024)
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    with loop_mounted(image, tmp / "src", fstype, ro=False) as mnt:
        write_tree(mnt)
        try:
            yield mnt
        finally:
            fd = os.open(mnt / "srv/frozen", os.O_RDONLY)
            try:
                fcntl.ioctl(fd, 0x40086602, struct.pack("<i", 0))
            finally:
                os.close(fd)


@pytest.fixture(scope="module")
def xfs_volume(tmp_path_factory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("xfsvol")
    with source_volume(tmp, "xfs", ["mkfs.xfs", "-q", "-m", f"uuid={SRC_UUID}", "-L",
                                    "srcxfs"]) as mnt:
        yield mnt


@needs(*XFS_TOOLS)
def test_xfs_volume_bundles_to_xfs(xfs_volume, tmp_path, user_key_pair, ec2_key_pair, capsys):
    want = snapshot(xfs_volume)
    dest = tmp_path / "out"
    dest.mkdir()
    rc = main(["bundle-vol", "-v", str(xfs_volume), "-d", str(dest), "-p", "vol", "--json",
               "-k", str(user_key_pair.key_path), "-c", str(user_key_pair.cert_path),
               "-u", "1234-5678-9012", "--ec2cert", str(ec2_key_pair.cert_path),
               "-r", "x86_64", "--batch", "--no-inherit", "--no-check"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    data = json.loads(out.out)
    assert data["filesystem"] == "xfs" and data["uuid"] == SRC_UUID
    assert data["label"] == "srcxfs"
    assert data["source_device"]["disk"].startswith("/dev/loop")
    # the fstab root entry already names the image: nothing to rewrite
    assert data["fstab_root_changed"] is None

    restored = tmp_path / "restored"
    restored.mkdir()
    image = api.unbundle(dest / "vol.manifest.xml", user_key_pair.key_path,
                         destination=restored).path
    repair = subprocess.run(["xfs_repair", "-n", "-f", str(image)], capture_output=True,
                            text=True)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    tags = blkid(image)
    assert (tags["TYPE"], tags["UUID"], tags["LABEL"]) == ("xfs", SRC_UUID, "srcxfs")
    with loop_mounted(image, tmp_path / "got", "xfs", ro=True) as got:
        assert_same_tree(got, want)
        assert fstab_root(got)[:3] == [f"UUID={SRC_UUID}", "/", "xfs"]
        assert os.stat(got / "var/lib/sparse.img").st_blocks * 512 < 1024 * 1024
        assert os.lstat(got).st_mode & 0o7777 == os.lstat(xfs_volume).st_mode & 0o7777


@needs(*XFS_TOOLS)
def test_xfs_volume_as_ext4_rewrites_fstab(xfs_volume, tmp_path, capsys):
    want = snapshot(xfs_volume)
    dest = tmp_path / "out"
    dest.mkdir()
    data, image = clone(xfs_volume, dest, capsys, "--fs-type", "ext4")
    assert data["filesystem"] == "ext4" and data["filesystem_reason"] == "--fs-type"
    change = data["fstab_root_changed"]
    assert change["dropped_options"] == ["inode64"]
    assert change["new"].split() == [f"UUID={SRC_UUID}", "/", "ext4", "defaults,noatime",
                                     "0", "1"]
    subprocess.run(["e2fsck", "-fn", str(image)], check=True, capture_output=True)
    assert blkid(image)["TYPE"] == "ext4" and blkid(image)["UUID"] == SRC_UUID
    with loop_mounted(image, tmp_path / "got", "ext4", ro=True) as got:
        assert_same_tree(got, want)
        assert fstab_root(got)[2] == "ext4"


@needs(*XFS_TOOLS)
def test_xfs_label_limit_and_explicit_type_from_directory(tmp_path, capsys):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/fstab").write_text("LABEL=cloudimg-rootfs / ext4 defaults 0 1\n")
    dest = tmp_path / "out"
    dest.mkdir()
    rc = main(["bundle-vol", "-v", str(tree), "-d", str(dest), "-p", "img", "--clone-only",
               "--no-inherit", "--no-check", "--batch", "--fs-type", "xfs",
               "--label", "much-too-long"])
    assert rc != 0 and "longer than 12 bytes" in capsys.readouterr().err
    data, image = clone(tree, dest, capsys, "--fs-type", "xfs", "-P", "mbr",
                        "--bootloader", "none")
    assert data["filesystem"] == "xfs" and data["label"] == "rootfs"
    assert data["fstab_root_changed"]["new"].split() == ["LABEL=rootfs", "/", "xfs",
                                                         "defaults", "0", "0"]
    # the filesystem starts at 1 MiB, inside the MBR partition
    assert data["image_size"] >= 300 * 1024 * 1024
    table = json.loads(sh("sfdisk", "--json", str(image)))["partitiontable"]
    start = table["partitions"][0]["start"] * 512
    dev = sh("losetup", "--find", "--show", "--read-only", "--offset", str(start),
             str(image)).strip()
    try:
        assert sh("blkid", "-o", "value", "-s", "TYPE", dev).strip() == "xfs"
        subprocess.run(["xfs_repair", "-n", dev], check=True, capture_output=True)
    finally:
        sh("losetup", "--detach", dev)


@pytest.fixture
def btrfs_volume(tmp_path) -> Iterator[tuple[Path, str]]:
    # A fresh UUID: mkfs.btrfs refuses one any device or blkid cache entry on the host has.
    # bundle-vol clones it while the source is mounted, which is exactly that case.
    src_uuid = str(uuidlib.uuid4())
    with source_volume(tmp_path, "btrfs", ["mkfs.btrfs", "-q", "-U", src_uuid, "-L",
                                           "srcbtrfs"]) as volume:
        yield volume, src_uuid


def check_btrfs_result(data: dict, image: Path, src_uuid: str) -> None:
    assert data["filesystem"] == "btrfs" and data["uuid"] == src_uuid
    assert data["label"] == "srcbtrfs"
    assert data["fstab_root_changed"]["new"].split() == [f"UUID={src_uuid}", "/", "btrfs",
                                                         "defaults,noatime", "0", "0"]
    subprocess.run(["btrfs", "check", "--readonly", str(image)], check=True,
                   capture_output=True)
    tags = blkid(image)
    assert (tags["TYPE"], tags["UUID"], tags["LABEL"]) == ("btrfs", src_uuid, "srcbtrfs")


@needs(*BTRFS_TOOLS)
def test_btrfs_volume_bundles_to_btrfs(btrfs_volume, tmp_path, capsys):
    volume, src_uuid = btrfs_volume
    want = snapshot(volume)
    dest = tmp_path / "out"
    dest.mkdir()
    data, image = clone(volume, dest, capsys)
    check_btrfs_result(data, image, src_uuid)
    assert data["warnings"] == []
    sh("umount", str(volume))   # the kernel then sees one filesystem with this UUID
    try:
        with loop_mounted(image, tmp_path / "got", "btrfs", ro=True) as got:
            assert_same_tree(got, want)
            assert fstab_root(got)[2] == "btrfs"
            assert os.stat(got / "var/lib/sparse.img").st_blocks * 512 < 1024 * 1024
    finally:
        dev = sh("losetup", "-j", str(tmp_path / "source.btrfs")).split(":")[0]
        sh("mount", dev, str(volume))


@needs(*BTRFS_TOOLS)
def test_btrfs_without_loop_device_uses_rootdir_and_says_what_it_lost(
        btrfs_volume, tmp_path, capsys, monkeypatch):
    volume, src_uuid = btrfs_volume
    monkeypatch.setattr(loopdev, "unavailable_reason", lambda: "no loop device (test)")
    dest = tmp_path / "out"
    dest.mkdir()
    data, image = clone(volume, dest, capsys)
    check_btrfs_result(data, image, src_uuid)
    warnings = "\n".join(data["warnings"])
    assert "whole seconds" in warnings and "sparse file(s) written out" in warnings
    assert "device node(s)" in warnings and "/srv/frozen: inode flags" in warnings


def _ours(where: Path) -> list[str]:
    """Mounts and loop devices that still involve ``where``."""
    left = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(where) in ln]
    left += [ln for ln in sh("losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE")
             .splitlines() if str(where) in ln]
    return left


@needs(*XFS_TOOLS)
@pytest.mark.parametrize("when", ["fill", "check"])
def test_xfs_interrupted_leaves_nothing_mounted_or_attached(tmp_path, monkeypatch, when):
    from bundler.errors import Interrupted
    from bundler.volume import VolumeConfig, bundle_volume, loopfill, xfs

    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("x\n")
    dest = tmp_path / "out"
    dest.mkdir()

    def interrupted(*args, **kwargs):
        raise Interrupted(15)   # what SIGTERM raises in the main thread (cli/signals.py)

    monkeypatch.setattr(loopfill if when == "fill" else xfs,
                        "fill" if when == "fill" else "repair", interrupted)
    with pytest.raises(Interrupted):
        bundle_volume(VolumeConfig(volume=tree, destination=dest, clone_only=True,
                                   fs_type="xfs"))
    assert _ours(tmp_path) == []
    assert list(dest.iterdir()) == []


@needs(*XFS_TOOLS)
def test_mount_left_by_a_killed_run_is_released(tmp_path):
    from bundler.volume import VolumeConfig, bundle_volume

    dest = tmp_path / "out"
    dest.mkdir()
    dead = dest / ".ami-bundler-vol-999999999-img.work-0badc0de"   # a PID that cannot exist
    dead.mkdir()
    image = dead / "image"
    with open(image, "wb") as fh:
        fh.truncate(320 * 1024 * 1024)
    sh("mkfs.xfs", "-q", str(image))
    (dead / "mnt").mkdir()
    dev = sh("losetup", "--find", "--show", str(image)).strip()
    sh("mount", dev, str(dead / "mnt"))
    tree = tmp_path / "tree"
    tree.mkdir()
    bundle_volume(VolumeConfig(volume=tree, destination=dest, clone_only=True))
    assert _ours(dest) == []
    assert not dead.exists()


@needs(*XFS_TOOLS)
def test_boot_rules_read_the_xfs_image_through_a_read_only_mount(xfs_volume, tmp_path, capsys):
    dest = tmp_path / "out"
    dest.mkdir()
    rc = main(["bundle-vol", "-v", str(xfs_volume), "-d", str(dest), "-p", "img", "--clone-only",
               "--no-inherit", "--batch", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    data = json.loads(out.out)
    assert "not checked" not in out.err
    # the sample tree has no kernel: the boot rules saw the files of the XFS image
    ids = {f["id"] for f in data["check"]["findings"]}
    assert any(i.startswith("boot.") for i in ids), ids
    assert _ours(tmp_path) == [] and not list(dest.glob(".check-mnt-*"))


def test_kept_pv_grub_menu_follows_the_image(tmp_path, capsys):
    """-P none without --generate-menu-lst: the volume's own menu.lst (a symlink to grub.conf,
    as on Amazon Linux) is what PV-GRUB boots; its kernel line must name the image."""
    tree = tmp_path / "tree"
    (tree / "boot/grub").mkdir(parents=True)
    (tree / "boot/grub/grub.conf").write_text(
        "default=0\ntitle AL2\nroot (hd0)\n"
        f"kernel /boot/vmlinuz root=UUID={SRC_UUID} rootfstype=xfs console=hvc0\n")
    os.chmod(tree / "boot/grub/grub.conf", 0o600)
    os.symlink("grub.conf", tree / "boot/grub/menu.lst")
    dest = tmp_path / "out"
    dest.mkdir()
    new_uuid = str(uuidlib.uuid4())
    data, image = clone(tree, dest, capsys, "--uuid", new_uuid)
    [change] = data["boot_menu_changed"]
    assert change["path"] == "/boot/grub/grub.conf"
    assert change["new"] == (f"kernel /boot/vmlinuz root=UUID={new_uuid} rootfstype=ext4 "
                             "console=hvc0")
    cat = subprocess.run(["debugfs", "-R", "cat /boot/grub/grub.conf", str(image)],
                         capture_output=True, text=True, check=True).stdout
    assert change["new"] in cat
    ls = subprocess.run(["debugfs", "-R", "stat /boot/grub/menu.lst", str(image)],
                        capture_output=True, text=True, check=True).stdout
    assert "Type: symlink" in ls        # the link stays a link
    orig = subprocess.run(["debugfs", "-R", "cat /boot/grub/grub.conf.orig", str(image)],
                          capture_output=True, text=True, check=True).stdout
    assert "rootfstype=xfs" in orig


@needs(*XFS_TOOLS)
def test_xfs_size_floor_and_missing_tool(tmp_path, capsys, monkeypatch):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    dest = tmp_path / "out"
    dest.mkdir()
    base = ["bundle-vol", "-v", str(tree), "-d", str(dest), "-p", "img", "--clone-only",
            "--no-inherit", "--no-check", "--batch", "--fs-type", "xfs"]
    assert main(base + ["-s", "200"]) != 0
    assert "at least 300 MiB" in capsys.readouterr().err     # mkfs.xfs's own minimum
    from bundler.volume import fstype

    monkeypatch.setattr(fstype, "_which", lambda tool: None if tool == "mkfs.xfs" else tool)
    assert main(base) != 0
    err = capsys.readouterr().err
    assert "cannot make an XFS image (--fs-type): mkfs.xfs not found" in err
    assert "use --fs-type ext4" in err and list(dest.iterdir()) == []
