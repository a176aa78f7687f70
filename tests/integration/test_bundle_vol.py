"""bundle-vol end to end with real files and real tools: mke2fs, debugfs, e2fsck, sfdisk."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from bundler import api
from bundler.cli import main
from bundler.errors import UsageError, VolumeError
from bundler.volume import VolumeConfig, bundle_volume

pytestmark = pytest.mark.skipif(shutil.which("mke2fs") is None
                                and not Path("/sbin/mke2fs").exists(),
                                reason="e2fsprogs not installed")
is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="needs root (chown, mknod, security.* xattrs)")

LABEL = b"OPENSSH " + b"PRIVATE KEY"  # assembled so that no repository file looks like a key
PRIVATE = b"-----BEGIN " + LABEL + b"-----\nb3BlbnNzaC1rZXktdjE=\n-----END " + LABEL + b"-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"


def debugfs(image: Path, request: str, offset: int = 0) -> str:
    target = f"{image}?offset={offset}" if offset else str(image)
    return subprocess.run(["debugfs", "-R", request, target], capture_output=True, text=True,
                          check=True).stdout


def fsck_clean(image: Path, offset: int = 0) -> None:
    target = f"{image}?offset={offset}" if offset else str(image)
    proc = subprocess.run(["e2fsck", "-fn", target], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def stat_of(image: Path, path: str, offset: int = 0) -> dict[str, str]:
    out = debugfs(image, f"stat {path}", offset)
    fields: dict[str, str] = {}
    for token in ("Type", "Mode", "User", "Group", "Links", "Size"):
        marker = f"{token}:"
        if marker in out:
            fields[token] = out.split(marker, 1)[1].split()[0]
    return fields


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for d in ("etc/ssl/certs", "etc/apt/trusted.gpg.d", "usr/bin", "home/u/.ssh", "proc/1", "dev",
              "var/lib", "srv"):
        (root / d).mkdir(parents=True)
    (root / "etc/hostname").write_text("vol-test\n")
    (root / "etc/fstab").write_text("# original fstab\n")
    (root / "etc/ssl/certs/ca.pem").write_bytes(CERT)
    (root / "etc/apt/trusted.gpg.d/archive.gpg").write_bytes(b"\x99\x01\x0d\x04" + bytes(64))
    tool = root / "usr/bin/tool"
    tool.write_bytes(b"\x7fELF" + os.urandom(20000))
    os.chmod(tool, 0o4751)
    os.link(tool, root / "usr/bin/tool-alias")
    os.symlink("tool", root / "usr/bin/tool-link")
    os.mkfifo(root / "srv/fifo")
    (root / "home/u/.ssh/id_rsa").write_bytes(PRIVATE)
    (root / "home/u/.ssh/id_rsa.pub").write_text("ssh-rsa AAAA u@h\n")
    (root / "home/u/.bash_history").write_text("secret\n")
    (root / "home/u/notes").write_text("keep me\n")
    (root / "proc/1/status").write_text("x\n")
    with open(root / "var/lib/sparse.img", "wb") as fh:
        fh.write(b"start")
        fh.seek(100 * 1024 * 1024 - 3)
        fh.write(b"end")
    os.setxattr(root / "home/u/notes", "user.note", b"hello")
    if is_root:
        os.chown(root / "home/u/notes", 1234, 5678)
        os.chown(root / "home/u", 1234, 5678, follow_symlinks=False)
        os.mknod(root / "srv/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.setxattr(root / "usr/bin/tool", "security.capability",
                    bytes.fromhex("0100000200100000000000000000000000000000"))
    return root


KEPT = ["etc/hostname", "etc/ssl/certs/ca.pem", "etc/apt/trusted.gpg.d/archive.gpg", "usr/bin/tool",
        "usr/bin/tool-alias", "usr/bin/tool-link", "srv/fifo", "home/u/.ssh/id_rsa.pub",
        "home/u/notes", "var/lib/sparse.img"]
FILTERED = ["home/u/.ssh/id_rsa", "home/u/.bash_history", "proc/1"]


def bundle_args(keys, ec2, dest: Path, *extra: str) -> list[str]:
    return ["bundle-vol", "-k", str(keys.key_path), "-c", str(keys.cert_path),
            "-u", "1234-5678-9012",
            "--ec2cert", str(ec2.cert_path), "-r", "x86_64", "-d", str(dest), "--batch",
            # The sample trees have no kernel: the boot check has its own tests (test_check.py).
            "--no-inherit", "-q", "--no-check", *extra]


def test_bundle_vol_roundtrip(rootfs, tmp_path, user_key_pair, ec2_key_pair, capsys):
    dest = tmp_path / "out"
    dest.mkdir()
    rc = main(bundle_args(user_key_pair, ec2_key_pair, dest, "-v", str(rootfs), "-p", "vol",
                          "--generate-fstab", "--list-excluded",
                          "-e", f"{rootfs}/srv/*.none,etc/none"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "excluded /home/u/.ssh/id_rsa: secret" in out
    assert sorted(p.name for p in dest.iterdir()) == ["vol.manifest.xml", "vol.part.0"]

    restored = tmp_path / "restored"
    restored.mkdir()
    result = api.unbundle(dest / "vol.manifest.xml", user_key_pair.key_path, destination=restored)
    image = result.path
    fsck_clean(image)
    # the 100 MiB sparse file stayed sparse through image, bundle and unbundle
    assert os.stat(image).st_blocks * 512 < 64 * 1024 * 1024

    dump = tmp_path / "dump"
    dump.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {dump}", str(image)], capture_output=True,
                   check=True)
    for rel in KEPT:
        assert stat_of(image, "/" + rel), rel     # present (rdump skips FIFOs)
        src, got = rootfs / rel, dump / rel
        if src.is_file() and not src.is_symlink():
            assert got.read_bytes() == src.read_bytes(), rel
    for rel in FILTERED:
        assert not stat_of(image, "/" + rel), rel
        assert not os.path.lexists(dump / rel), rel
    assert (dump / "proc").is_dir() and not any((dump / "proc").iterdir())

    tool = stat_of(image, "/usr/bin/tool")
    assert tool["Mode"] == "04751" and tool["Links"] == "2"
    assert debugfs(image, "stat /usr/bin/tool-alias").split("Inode:")[1].split()[0] == \
        debugfs(image, "stat /usr/bin/tool").split("Inode:")[1].split()[0]
    assert "tool" in debugfs(image, "stat /usr/bin/tool-link")  # fast symlink target
    assert stat_of(image, "/srv/fifo")["Type"] == "FIFO"
    assert 'user.note (5) = "hello"' in debugfs(image, "ea_list /home/u/notes")
    sparse = debugfs(image, "stat /var/lib/sparse.img")
    assert "Size: 104857600" in sparse
    # generated fstab installed, old one kept
    assert "LABEL=cloudimg-rootfs" in debugfs(image, "cat /etc/fstab")
    assert debugfs(image, "cat /etc/fstab.old") == "# original fstab\n"
    assert "null" in debugfs(image, "ls /dev")
    if is_root:
        notes = stat_of(image, "/home/u/notes")
        assert (notes["User"], notes["Group"]) == ("1234", "5678")
        assert stat_of(image, "/srv/null")["Type"] == "character"
        assert "security.capability" in debugfs(image, "ea_list /usr/bin/tool")
    # the source was not touched
    assert (rootfs / "etc/fstab").read_text() == "# original fstab\n"
    assert not any(p.name.startswith(".vol.") for p in dest.iterdir())


@pytest.mark.skipif(shutil.which("sfdisk") is None,
                    reason="sfdisk not installed (apt-get install fdisk)")
@pytest.mark.parametrize("scheme", ["mbr", "gpt"])
def test_partitioned_clone(rootfs, tmp_path, scheme):
    dest = tmp_path / "out"
    dest.mkdir()
    result = bundle_volume(VolumeConfig(volume=rootfs, destination=dest, prefix="disk",
                                        partition=scheme, clone_only=True, size_mib=300,
                                        label="myroot"))
    image = dest / "disk"
    assert result.image_path == image and image.stat().st_size == 300 * 1024 * 1024
    dump = subprocess.run(["sfdisk", "--dump", str(image)], capture_output=True, text=True,
                          check=True).stdout
    first = next(ln for ln in dump.splitlines() if ln.startswith(f"{image}1 "))
    assert "start=        2048" in first
    assert subprocess.run(["sfdisk", "--verify", str(image)], capture_output=True).returncode == 0
    # check the partition on its own, as a copy cut out with dd
    part = tmp_path / "part.img"
    sectors = int(first.split("size=")[1].split(",")[0])
    subprocess.run(["dd", f"if={image}", f"of={part}", "bs=512", "skip=2048", f"count={sectors}",
                    "conv=sparse", "status=none"], check=True)
    fsck_clean(part)
    assert "myroot" in subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(part)],
                                      capture_output=True, text=True).stdout
    assert debugfs(part, "cat /etc/hostname") == "vol-test\n"


def test_destination_inside_volume(rootfs, tmp_path):
    dest = rootfs / "var/tmp/out"
    dest.mkdir(parents=True)
    (dest / "stale.part.0").write_text("old bundle\n")
    result = bundle_volume(VolumeConfig(volume=rootfs, destination=dest, prefix="img",
                                        clone_only=True))
    assert any(x.rel == "var/tmp/out" and x.reason == "destination directory"
               for x in result.selection.excluded)
    listing = debugfs(dest / "img", "ls /var/tmp")
    assert "out" not in listing.split()
    fsck_clean(dest / "img")


def test_size_too_small_and_estimate_is_enough(rootfs, tmp_path):
    (rootfs / "var/lib/blob").write_bytes(os.urandom(24 * 1024 * 1024))
    with pytest.raises(VolumeError, match=r"needs at least (\d+) MiB") as info:
        bundle_volume(VolumeConfig(volume=rootfs, destination=tmp_path, clone_only=True,
                                   size_mib=16))
    assert list(tmp_path.iterdir()) == [rootfs]  # no temporary image or staging left behind
    minimum = int(info.value.args[0].split("at least ")[1].split()[0])
    assert 24 < minimum < 64
    result = bundle_volume(VolumeConfig(volume=rootfs, destination=tmp_path, clone_only=True,
                                        size_mib=minimum))
    fsck_clean(result.image_path)


def test_mke2fs_full_is_translated(rootfs, tmp_path, monkeypatch):
    # Make the estimate lie so that mke2fs itself runs out of space.
    from bundler.volume import imagefs

    (rootfs / "var/lib/blob").write_bytes(os.urandom(12 * 1024 * 1024))
    monkeypatch.setattr(imagefs, "min_fs_mib", lambda selection, fs_type="ext4": 1)
    with pytest.raises(VolumeError, match=r"filled up; the image needs at least \d+ MiB"):
        bundle_volume(VolumeConfig(volume=rootfs, destination=tmp_path, clone_only=True,
                                   size_mib=6))


def test_cli_bad_input(rootfs, tmp_path, capsys, user_key_pair, ec2_key_pair):
    assert main(["bundle-vol", "-v", str(tmp_path / "missing"), "-d", str(tmp_path),
                 "--clone-only", "--no-inherit"]) != 0
    assert "does not exist" in capsys.readouterr().err
    assert main(["bundle-vol", "-v", str(rootfs), "-d", str(tmp_path), "--clone-only",
                 "--fstab", str(rootfs / "etc/fstab"), "--generate-fstab"]) == UsageError.exit_code
    assert "mutually exclusive" in capsys.readouterr().err
    assert main(["bundle-vol", "-v", str(rootfs), "-d", str(tmp_path), "--clone-only",
                 "-s", "4"]) != 0
    assert "needs at least" in capsys.readouterr().err
    if is_root:
        return
    assert main(["bundle-vol", "-v", "/", "-d", str(tmp_path), "--clone-only"]) != 0
    assert "needs root" in capsys.readouterr().err


def test_packer_command_line(rootfs, tmp_path, user_key_pair, ec2_key_pair, monkeypatch):
    """Packer's default bundle_vol_command, with the -e glob expanded and unexpanded."""
    private = rootfs / "tmp"
    private.mkdir()
    for name in ("x509-cert.pem", "x509-key.pem"):
        (private / name).write_bytes(CERT)
    dest = tmp_path / "dest"
    dest.mkdir()
    monkeypatch.setenv("AMI_BUNDLER_IMDS_ENDPOINT", "http://127.0.0.1:9")  # not on EC2
    expanded = sorted(str(p) for p in private.iterdir())
    argv = ["bundle-vol", "-k", str(user_key_pair.key_path), "-u", "123456789012",
            "-c", str(user_key_pair.cert_path), "--ec2cert", str(ec2_key_pair.cert_path),
            "-r", "x86_64", "-v", str(rootfs), "-e", *expanded, "-d", str(dest), "-p", "packer",
            "--batch", "--no-filter", "--keep-image", "-q", "--no-check"]
    assert main(argv) == 0
    listing = debugfs(dest / "packer", "ls /tmp").split()
    assert "x509-cert.pem" not in listing and "x509-key.pem" not in listing
    # --no-filter: the private key is kept
    assert "id_rsa" in debugfs(dest / "packer", "ls /home/u/.ssh").split()
    dest2 = tmp_path / "dest2"
    dest2.mkdir()
    argv2 = [a if a not in expanded else None for a in argv]
    argv2 = [a for a in argv2 if a is not None]
    argv2.insert(argv2.index("-e") + 1, f"{private}/*")
    argv2[argv2.index(str(dest))] = str(dest2)
    assert main(argv2) == 0
    assert "x509-key.pem" not in debugfs(dest2 / "packer", "ls /tmp").split()


def test_existing_bundle_refused_up_front_and_stale_work_files_removed(rootfs, tmp_path,
                                                                       user_key_pair,
                                                                       ec2_key_pair, capsys):
    dest = tmp_path / "dest"
    dest.mkdir()
    # what a bundle-vol killed by a crash leaves behind: its PID no longer runs
    stale_image = dest / ".ami-bundler-vol-999999999-image.img-0badcafe"
    stale_image.write_bytes(b"half an image")
    stale_tree = dest / ".ami-bundler-vol-999999999-image.staging-0badcafe"
    (stale_tree / "etc").mkdir(parents=True)
    assert main(bundle_args(user_key_pair, ec2_key_pair, dest, "-v", str(rootfs), "-q")) == 0
    assert not stale_image.exists() and not stale_tree.exists()
    before = sorted(os.listdir(dest))
    capsys.readouterr()
    assert main(bundle_args(user_key_pair, ec2_key_pair, dest, "-v", str(rootfs))) != 0
    err = capsys.readouterr().err
    assert "already holds image.manifest.xml" in err or "already holds image.part" in err
    assert sorted(os.listdir(dest)) == before
