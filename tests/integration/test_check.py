"""check on real images: ext4 made with mke2fs -d (plain and inside an MBR partition), and
the bundle of that image (unpacked privately by check itself)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import pytest

from bundler.volume import partition
from tests.support import roots
from tests.support.ext4images import MKE2FS, mkfs
from tests.support.roots import dirty_tree

pytestmark = pytest.mark.skipif(not (os.path.exists(MKE2FS) and shutil.which("debugfs")),
                                reason="needs e2fsprogs (mke2fs, debugfs)")
ALL_PLANTED = {rule for _, rule in roots.PLANTED.values()}


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bundler", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def findings(proc: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    data = json.loads(proc.stdout)
    return {f["id"]: f for f in data["findings"]}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("check")
    clean = roots.write_clean_root(d / "clean", pv=True)
    roots.write_initramfs(clean, ["drivers/block/xen-blkfront.ko.xz"])
    return {"clean": mkfs(clean, d / "clean.img"),
            "dirty": mkfs(dirty_tree(d / "dirty"), d / "dirty.img"), "dir": d}


def test_clean_image_is_clean(images):
    proc = cli("check", images["clean"], "--public", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["findings"] == [] and data["ok"]
    assert data["filesystem"] == {"type": "ext4", "uuid": roots.UUID, "label": roots.LABEL}


def test_every_planted_problem_in_the_image(images):
    before = images["dirty"].read_bytes()
    proc = cli("check", images["dirty"], "--json")
    assert proc.returncode == 1, proc.stderr
    found = findings(proc)
    assert ALL_PLANTED <= set(found), ALL_PLANTED - set(found)
    assert found["boot.fstab-root"]["severity"] == "error"
    assert found["share.ssh-host-key"]["path"] == "/etc/ssh/ssh_host_ed25519_key"
    assert images["dirty"].read_bytes() == before          # read, never written


def test_public_makes_sharing_rules_errors_and_the_table(images):
    proc = cli("check", images["dirty"], "--public")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(line.startswith("error: share.root-password: /etc/shadow: ") for line in lines)
    assert "NOT READY" in lines[-1]


def test_partitioned_image(images, tmp_path):
    disk = tmp_path / "disk.img"
    layout = partition.layout_for("mbr", 26)
    with open(disk, "wb") as fh:
        fh.truncate(layout.disk_bytes)
    mkfs(images["dir"] / "clean", disk, size_mib=25, offset=layout.fs_offset)
    partition.write_table(disk, layout, disk_id=uuidlib.UUID(roots.UUID))
    proc = cli("check", disk, "--json", "--only", "boot")
    data = json.loads(proc.stdout)
    assert data["disk"]["partition_table"] == "mbr"
    assert data["filesystem"]["uuid"] == roots.UUID
    # menu.lst in the first partition is what PV-GRUB boots: no MBR code needed.
    assert data["findings"] == [], data["findings"]


def test_not_a_filesystem(tmp_path):
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    proc = cli("check", junk)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("ami-bundler: error: ")
    assert "no ext2/3/4 filesystem" in proc.stderr and "Traceback" not in proc.stderr


def test_bundle_of_the_image(images, tmp_path):
    from bundler import keys as keylib

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    keylib.keygen(key, cert)
    for name in ("clean", "dirty"):
        out = tmp_path / name
        out.mkdir()
        proc = cli("bundle-image", "-i", images[name], "-d", out, "-c", cert, "-k", key,
                   "--ec2cert", cert, "-u", "123456789012", "-r", "x86_64", "-q")
        assert proc.returncode == 0, proc.stderr
        work = tmp_path / f"work-{name}"
        work.mkdir()
        proc = cli("check", "-m", out / f"{name}.img.manifest.xml", "-k", key, "--json",
                   "--work-dir", work)
        if name == "clean":
            assert proc.returncode == 0 and findings(proc) == {}, proc.stdout + proc.stderr
        else:
            assert proc.returncode == 1
            assert ALL_PLANTED <= set(findings(proc))
        assert list(work.iterdir()) == []        # the private copy is gone
    proc = cli("check", "-m", tmp_path / "clean/clean.img.manifest.xml", "-k", cert)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ bundle-vol

@pytest.fixture
def signing(tmp_path) -> list[str]:
    from bundler import keys as keylib

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    keylib.keygen(key, cert)
    return ["-k", str(key), "-c", str(cert), "--ec2cert", str(cert), "-u", "123456789012",
            "-r", "x86_64", "--no-inherit", "--batch"]


def test_bundle_vol_checks_what_it_builds(tmp_path, signing):
    tree = roots.write_clean_root(tmp_path / "root", pv=True)
    out = tmp_path / "out"
    out.mkdir()
    base = ["bundle-vol", "-v", tree, "-d", out, "-P", "none", "-s", "32", "--uuid", roots.UUID,
            "--label", roots.LABEL, *signing]
    proc = cli(*base, "-p", "good")
    assert proc.returncode == 0, proc.stderr
    assert "bundle-vol: boot." not in proc.stderr
    assert (out / "good.manifest.xml").is_file()

    for f in (tree / "boot").glob("vmlinuz-*"):
        f.unlink()
    proc = cli(*base, "-p", "bad")
    assert proc.returncode == 1
    assert "warning: bundle-vol: boot.kernel: /boot: no kernel" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ami-bundler: error: bundle-vol: ") and "--no-check" in last
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("bad")) == []

    proc = cli(*base, "-p", "cloned", "--clone-only")        # the image is the output: warn only
    assert proc.returncode == 0 and "boot.kernel" in proc.stderr
    proc = cli(*base, "-p", "forced", "--no-check")
    assert proc.returncode == 0 and (out / "forced.manifest.xml").is_file()


HOST_GRUB = Path("/usr/lib/grub/i386-pc")


@pytest.mark.skipif(not (HOST_GRUB / "boot.img").is_file() or not (
    shutil.which("grub-mkimage") or shutil.which("grub2-mkimage")), reason="needs grub-pc-bin")
@pytest.mark.parametrize("scheme", ["mbr", "gpt"])
def test_bundle_vol_grub_images_pass_the_boot_rules(tmp_path, scheme):
    """GRUB 2 installed by bundle-vol is what check looks for: boot code, core.img, grub.cfg."""
    tree = roots.write_clean_root(tmp_path / "root")
    shutil.copytree(HOST_GRUB, tree / "usr/lib/grub/i386-pc")
    out = tmp_path / "out"
    out.mkdir()
    proc = cli("bundle-vol", "-v", tree, "-d", out, "-P", scheme, "-s", "48", "--uuid",
               roots.UUID, "--generate-fstab", "--clone-only", "-p", "disk", "--batch",
               "--no-inherit", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["check"]["findings"] == []
    proc = cli("check", out / "disk", "--json", "--only", "boot")
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["findings"] == [], data["findings"]
    assert data["disk"]["boot_code"] == "grub2" and data["disk"]["partition_table"] == scheme


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_an_image_of_another_filesystem_is_one_clear_error(tmp_path, fstype):
    """check reads ext2/3/4 without mounting (an image from elsewhere is never mounted): XFS
    and btrfs images, which bundle-vol makes too, get one line naming the filesystem."""
    mkfs = shutil.which(f"mkfs.{fstype}")
    if mkfs is None:
        pytest.skip(f"mkfs.{fstype} not installed")
    image = tmp_path / f"{fstype}.img"
    with open(image, "wb") as fh:
        fh.truncate(320 * 2**20)
    subprocess.run([mkfs, "-q", "-f", str(image)], check=True, capture_output=True)
    proc = cli("check", image)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"ami-bundler: error: {image}: the filesystem is {fstype}; check reads ext2/3/4 "
        "(check the root directory instead)"]
