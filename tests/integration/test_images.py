"""Virtual-disk and compressed images made at test time with qemu-img (and xz, zstd, gzip,
bzip2) from a real ext4 image with holes and data: our readers must give exactly the bytes
``qemu-img convert -O raw`` gives, store only allocated data, and bundle-image of them must
unbundle with the classic pipeline (openssl | gunzip | tar) to that raw image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.cli import main
from bundler.errors import ImageError
from bundler.images import open_source
from bundler.images.inspect import inspect_image
from tests.support.classic import classic_extract

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img") or not shutil.which("mke2fs"),
                                reason="needs qemu-img (qemu-utils) and mke2fs")

MIB = 1 << 20
SIZE = 24 * MIB

# name → (qemu-img output format, options); the file name's suffix is what users would have.
DISKS = {
    "plain.qcow2": ("qcow2", []),
    "compressed.qcow2": ("qcow2", ["-c"]),
    "v2-compressed.qcow2": ("qcow2", ["-c", "-o", "compat=0.10"]),
    "zstd.qcow2": ("qcow2", ["-c", "-o", "compression_type=zstd"]),
    "small-clusters.qcow2": ("qcow2", ["-o", "cluster_size=4096"]),
    "stream.vmdk": ("vmdk", ["-o", "subformat=streamOptimized"]),
    "sparse.vmdk": ("vmdk", ["-o", "subformat=monolithicSparse"]),
    "flat.vmdk": ("vmdk", ["-o", "subformat=monolithicFlat"]),
    "dynamic.vhd": ("vpc", ["-o", "subformat=dynamic"]),
    "fixed.vhd": ("vpc", ["-o", "subformat=fixed"]),
    "hyperv.vhd": ("vpc", ["-o", "subformat=dynamic,force_size=on"]),
    "dynamic.vhdx": ("vhdx", ["-o", "block_size=1M"]),
    "default.vhdx": ("vhdx", []),
}
STREAMS = {"disk.raw.gz": ["gzip", "-c"], "disk.raw.xz": ["xz", "-c", "-T1"],
           "disk.raw.zst": ["zstd", "-q", "-c"], "disk.raw.bz2": ["bzip2", "-c"],
           # What xz -T writes: blocks in the index, the zero ones holes found from it.
           "blocks/disk.raw.xz": ["xz", "-c", "-T2", "--block-size=1MiB"]}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A 24 MiB ext4 image with files, a hole-y sparse file and untouched space, in every format."""
    d = tmp_path_factory.mktemp("images")
    tree = d / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "random.bin").write_bytes(os.urandom(2 * MIB + 123))
    (tree / "etc" / "text").write_text("line\n" * 50_000)
    with open(tree / "sparse.bin", "wb") as fh:
        fh.truncate(4 * MIB)
        fh.seek(3 * MIB)
        fh.write(os.urandom(70_000))
    raw = d / "disk.raw"
    with open(raw, "wb") as fh:
        fh.truncate(SIZE)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(raw)], check=True)
    out = {"disk.raw": raw}
    for name, (fmt, opts) in DISKS.items():
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, str(raw),
                        str(d / name)], check=True)
        out[name] = d / name
    for name, cmd in STREAMS.items():
        if shutil.which(cmd[0]):
            (d / name).parent.mkdir(exist_ok=True)
            with open(d / name, "wb") as fh:
                subprocess.run([*cmd, str(raw)], stdout=fh, check=True)
            out[name] = d / name
    return out


def qemu_raw(path: Path, tmp_path: Path) -> bytes:
    fmt = {".qcow2": "qcow2", ".vmdk": "vmdk", ".vhd": "vpc", ".vhdx": "vhdx"}[path.suffix]
    out = tmp_path / "qemu.raw"
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(out)], check=True)
    return out.read_bytes()


def reassemble(source) -> bytes:
    """The image exactly as the tar member describes it: its regions' data, zeros elsewhere."""
    regions = source.regions() or [(0, source.size)]
    data = b"".join(source.chunks())
    assert len(data) == sum(n for _, n in regions)
    image = bytearray(source.size)
    pos = 0
    for offset, length in regions:
        image[offset:offset + length] = data[pos:pos + length]
        pos += length
    return bytes(image)


@pytest.mark.parametrize("name", sorted(DISKS))
def test_reader_gives_qemu_imgs_bytes_and_stores_only_data(images, tmp_path, name):
    expected = qemu_raw(images[name], tmp_path)
    source = open_source(images[name])
    try:
        assert source.size == len(expected)
        assert reassemble(source) == expected
        regions = source.regions()
        # The 24 MiB disk holds ~3 MiB of data: holes are never read, hashed or stored.
        assert regions is not None and sum(n for _, n in regions) < 6 * MIB
    finally:
        source.close()


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_compressed_stream_gives_the_raw_image(images, name):
    if name not in images:
        pytest.skip(f"{STREAMS[name][0]} not installed")
    source = open_source(images[name])
    try:
        assert source.name == "disk.raw"
        assert reassemble(source) == images["disk.raw"].read_bytes()
        # A one-block xz: one pass, dense; a multi-block xz's zero blocks are holes; otherwise
        # the extra pass also found the holes (zstd's recorded size is checked against it).
        dense = name == "disk.raw.xz"
        assert (source.regions() is None) == dense
    finally:
        source.close()


def test_image_size_skips_the_extra_pass_and_is_checked(images, tmp_path, user_key_pair,
                                                        ec2_key_pair):
    source = open_source(images["disk.raw.gz"], image_size=SIZE)
    assert source.regions() is None and reassemble(source) == images["disk.raw"].read_bytes()
    source = open_source(images["disk.raw.gz"], image_size=SIZE - 512, name="short")
    with pytest.raises(ImageError, match="more than the 25165312 bytes --image-size said"):
        reassemble(source)


@pytest.mark.parametrize("name", ["compressed.qcow2", "stream.vmdk", "dynamic.vhd", "dynamic.vhdx",
                                  "disk.raw.xz", "blocks/disk.raw.xz", "disk.raw.gz",
                                  "disk.raw.zst"])
def test_bundle_unbundles_with_the_classic_pipeline(images, tmp_path, user_key_pair, ec2_key_pair,
                                                    name):
    if name not in images:
        pytest.skip("compressor not installed")
    dest = tmp_path / "bundle"
    dest.mkdir()
    code = main(["bundle-image", "-i", str(images[name]), "-c", str(user_key_pair.cert_path),
                 "-k", str(user_key_pair.key_path), "-u", "123456789012", "--ec2cert",
                 str(ec2_key_pair.cert_path), "-d", str(dest), "-r", "x86_64", "-q"])
    assert code == 0
    stem = Path(name).name.rsplit(".", 1)[0]
    manifest = dest / f"{stem}.manifest.xml"
    classic_extract(dest, manifest, user_key_pair.key_path, tmp_path / "out")
    extracted = (tmp_path / "out" / stem).read_bytes()
    if stem == "disk.raw":
        assert extracted == images["disk.raw"].read_bytes()
    else:
        assert extracted == qemu_raw(images[name], tmp_path)


def test_forced_format_and_unsupported_containers(images, tmp_path):
    # --image-format raw bundles the container's own bytes, as asked.
    source = open_source(images["compressed.qcow2"], fmt="raw", name="x")
    assert source.size == images["compressed.qcow2"].stat().st_size
    source.close()
    vdi = tmp_path / "disk.vdi"
    subprocess.run(["qemu-img", "convert", "-O", "vdi", str(images["disk.raw"]), str(vdi)],
                   check=True)
    with pytest.raises(ImageError, match="VirtualBox VDI image, which is not supported"):
        open_source(vdi)
    with pytest.raises(ImageError, match="qcow2 image: header at offset 0: no qcow2 magic"):
        open_source(images["disk.raw"], fmt="qcow2")


def test_backing_file_refused_unless_allowed_and_only_beside_the_image(images, tmp_path):
    base = tmp_path / "base.qcow2"
    shutil.copy(images["compressed.qcow2"], base)
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    str(top)],
                   check=True)
    # Guest writes over the backing data: the overlay holds only these clusters.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", "-c", "write -z 2M 64k",
                    str(top)], check=True, capture_output=True)
    with pytest.raises(ImageError, match="has a backing file 'base.qcow2'.*--allow-backing-file"):
        open_source(top)
    source = open_source(top, allow_backing=True)
    try:
        assert reassemble(source) == qemu_raw(top, tmp_path)
    finally:
        source.close()
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    outside = elsewhere / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2",
                    str(outside)], check=True)
    with pytest.raises(ImageError, match="outside the image's directory"):
        open_source(outside, allow_backing=True)


def test_four_gib_qcow2_with_one_mib_of_data_stores_one_mib(tmp_path, user_key_pair, ec2_key_pair):
    raw = tmp_path / "big.raw"
    with open(raw, "wb") as fh:
        fh.truncate(4 << 30)
        fh.seek(3 << 30)
        fh.write(os.urandom(MIB))
    image = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)], check=True)
    raw.unlink()
    source = open_source(image)
    assert source.size == 4 << 30 and source.regions() == [(3 << 30, MIB)]
    source.close()
    dest = tmp_path / "b"
    dest.mkdir()
    assert main(["bundle-image", "-i", str(image), "-c", str(user_key_pair.cert_path), "-k",
                 str(user_key_pair.key_path), "-u", "123456789012",
                 "--ec2cert", str(ec2_key_pair.cert_path),
                 "-d", str(dest), "-r", "x86_64", "-q"]) == 0
    parts = sorted(dest.glob("big.part.*"))
    assert len(parts) == 1 and sum(p.stat().st_size for p in parts) < 2 * MIB


def test_inspect_image_reports_partitions_and_filesystems(images, tmp_path, capsys):
    disk = tmp_path / "gpt.raw"
    with open(disk, "wb") as fh:
        fh.truncate(64 * MIB)
    subprocess.run(["sfdisk", "-q", str(disk)],
                   input=b"label: gpt\n,1M,21686148-6449-6E6F-744E-656564454649\n,\n", check=True)
    subprocess.run(["dd", f"if={images['disk.raw']}", f"of={disk}", "bs=1M", "seek=2", "count=20",
                    "conv=notrunc,sparse", "status=none"], check=True)
    qcow = tmp_path / "gpt.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(disk), str(qcow)], check=True)
    assert main(["inspect-image", "--json", str(qcow)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["format"] == "qcow2" and report["virtual_size"] == 64 * MIB
            and report["table"] == "gpt")
    assert [p["type"] for p in report["partitions"]] == ["BIOS boot", "Linux filesystem"]
    assert report["partitions"][1]["filesystem"]["type"] == "ext4"
    assert report["partitions"][1]["start"] == 2 * MIB
    assert 0 < report["allocated_bytes"] < 16 * MIB
    assert main(["inspect-image", str(images["stream.vmdk"])]) == 0
    text = capsys.readouterr().out
    assert "Format        vmdk (version 3, subformat streamOptimized" in text
    assert "whole disk: ext4" in text
    if "disk.raw.gz" in images:
        report = inspect_image(images["disk.raw.gz"])
        assert report.virtual_size == SIZE and report.layout.filesystem.type == "ext4"
    for name in ("disk.raw.zst", "disk.raw.gz", "disk.raw.xz"):
        if name in images:
            # inspect-image's bundled bytes are what bundle-image stores, format by format.
            source = open_source(images[name])
            stored = sum(n for _, n in source.regions() or [(0, source.size)])
            source.close()
            assert inspect_image(images[name]).bundled_bytes == stored, name
    if "blocks/disk.raw.xz" in images:
        # What bundle-image would store: the data blocks, as the source says.
        report = inspect_image(images["blocks/disk.raw.xz"])
        source = open_source(images["blocks/disk.raw.xz"])
        regions = source.regions()
        source.close()
        assert regions is not None and report.bundled_bytes == sum(n for _, n in regions)
        assert report.bundled_bytes < SIZE // 2 and report.details["blocks"] == SIZE // MIB
        assert 0 < report.details["data_blocks"] == report.bundled_bytes // MIB


def test_compressed_image_on_standard_input(images, tmp_path, user_key_pair, ec2_key_pair):
    if "disk.raw.zst" not in images:
        pytest.skip("zstd not installed")
    repo = Path(__file__).resolve().parents[2]
    dest = tmp_path / "b"
    dest.mkdir()
    args = [sys.executable, "-m", "bundler", "bundle-image", "-i", "-", "--image-format", "zst",
            "--image-size", str(SIZE), "-p", "piped", "-c", str(user_key_pair.cert_path),
            "-k", str(user_key_pair.key_path), "-u", "123456789012",
            "--ec2cert", str(ec2_key_pair.cert_path), "-d", str(dest), "-r", "x86_64", "-q"]
    with open(images["disk.raw.zst"], "rb") as stdin:
        done = subprocess.run(args, stdin=stdin, cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    classic_extract(dest, dest / "piped.manifest.xml", user_key_pair.key_path, tmp_path / "out")
    assert (tmp_path / "out" / "piped").read_bytes() == images["disk.raw"].read_bytes()
    # A corrupt stream is one line naming the format, and no manifest appears.
    broken = tmp_path / "broken.zst"
    broken.write_bytes(images["disk.raw.zst"].read_bytes()[:-4000] + b"\xff" * 4000)
    (tmp_path / "b2").mkdir()
    with open(broken, "rb") as stdin:
        done = subprocess.run([*args[:-5], "-d", str(tmp_path / "b2"), "-r", "x86_64",
                               "-q", "-p", "broken"],
                              stdin=stdin, cwd=repo, capture_output=True, text=True)
    assert done.returncode != 0
    assert "zst image: compressed stream" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.glob("b2/*.manifest.xml"))
