"""An image that changes while it is bundled fails the run, naming the file, and leaves nothing:
for virtual disks (the image, its backing file, a VMDK's extent) and compressed images (between
the size pass and the data pass, or during the data pass), as for raw files
(tests/unit/test_changed_input.py). And every image source says whether it can be read twice."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bundler.dirsink import DirectorySink
from bundler.errors import ImageError
from bundler.images import open_source
from bundler.images.compressed import CompressedImageSource
from bundler.images.disk import DiskImageSource
from bundler.imagetar import tar_digest
from bundler.localmanifest import read_manifest
from bundler.pipeline import BundleKeys, BundleOptions, bundle
from bundler.rerun import ImageFingerprint
from bundler.source import FileImageSource, ImageSource, StreamImageSource

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")

MIB = 1 << 20


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("changed")
    raw = d / "disk.raw"
    with open(raw, "wb") as fh:
        fh.truncate(6 * MIB)
        fh.seek(MIB)
        fh.write(os.urandom(MIB))
        fh.seek(4 * MIB)
        fh.write(b"text\n" * 100_000)
    out = {"disk.raw": raw}
    for name, opts in {"plain.qcow2": ["-O", "qcow2"], "compressed.qcow2": ["-c", "-O", "qcow2"],
                       "flat.vmdk": ["-O", "vmdk", "-o", "subformat=monolithicFlat"]}.items():
        subprocess.run(["qemu-img", "convert", "-f", "raw", *opts, str(raw), str(d / name)],
                       check=True)
        out[name] = d / name
    out["flat-flat.vmdk"] = d / "flat-flat.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "plain.qcow2", "-F", "qcow2",
                    str(d / "top.qcow2")], check=True)
    out["top.qcow2"] = d / "top.qcow2"
    for name, cmd in {"disk.raw.gz": ["gzip", "-c"], "disk.raw.xz": ["xz", "-c", "-T1"]}.items():
        with open(d / name, "wb") as fh:
            subprocess.run([*cmd, str(raw)], stdout=fh, check=True)
        out[name] = d / name
    return out


@pytest.fixture
def keys(user_key_pair, ec2_key_pair):
    return BundleKeys(user_key_pair.private_key, user_key_pair.public_key, ec2_key_pair.public_key)


def copy_of(images: dict[str, Path], tmp_path: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        shutil.copy(images[name], tmp_path / name)
        out.append(tmp_path / name)
    return out


def touch_in_place(path: Path, how: str) -> None:
    """Change ``path`` the way a running VM or a writer would, keeping its mtime (only ctime,
    size or identity then tell)."""
    st = os.stat(path)
    if how == "rewrite":  # the same byte written back: the contents even stay the same
        with open(path, "r+b") as fh:
            fh.seek(st.st_size // 2)
            byte = fh.read(1)
            fh.seek(st.st_size // 2)
            fh.write(byte)
    elif how == "grow":
        with open(path, "ab") as fh:
            fh.write(bytes(512))
    else:  # replace: another file renamed over the path
        other = path.with_name(path.name + ".new")
        shutil.copy(path, other)
        os.replace(other, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def bundle_to(source: ImageSource, tmp_path: Path, keys: BundleKeys) -> Path:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    bundle(source, DirectorySink(out), keys, BundleOptions(name="disk", user="123456789012"))
    return out


CASES = [
    ("plain.qcow2", "plain.qcow2", "rewrite"),
    ("compressed.qcow2", "compressed.qcow2", "grow"),
    ("top.qcow2", "plain.qcow2", "rewrite"),  # the backing file changed
    ("flat.vmdk", "flat-flat.vmdk", "rewrite"),  # the extent changed, not the descriptor
    ("disk.raw.xz", "disk.raw.xz", "rewrite"),  # size recorded: one pass
    ("disk.raw.gz", "disk.raw.gz", "rewrite"),  # size learnt in a first pass
    ("disk.raw.gz", "disk.raw.gz", "replace"),
]


@pytest.mark.parametrize(("name", "victim", "how"), CASES)
def test_an_image_changed_while_bundled_fails_naming_the_file(images, tmp_path, keys, name,
                                                              victim, how):
    files = {"top.qcow2": ["plain.qcow2", "top.qcow2"], "flat.vmdk": ["flat.vmdk",
                                                                       "flat-flat.vmdk"]}
    copy_of(images, tmp_path, *files.get(name, [name]))
    source = open_source(tmp_path / name, allow_backing=True)
    touch_in_place(tmp_path / victim, how)
    what = {"rewrite": "was modified", "grow": "grew or shrank",
            "replace": "was replaced by another file"}[how]
    with pytest.raises(ImageError, match=f"{tmp_path / victim} {what} while it was being read"):
        bundle_to(source, tmp_path, keys)
    source.close()
    assert os.listdir(tmp_path / "out") == []


def test_compressed_image_changed_between_its_two_passes(images, tmp_path, keys, monkeypatch):
    """gzip records no size: the first pass learns it; a change after it fails the second."""
    from bundler.images import compressed

    (path,) = copy_of(images, tmp_path, "disk.raw.gz")
    scan = compressed.scan

    def scan_then_change(*args, **kwargs):
        found = scan(*args, **kwargs)
        touch_in_place(path, "grow")
        return found

    monkeypatch.setattr(compressed, "scan", scan_then_change)
    source = open_source(path)
    with pytest.raises(ImageError, match=f"{path} grew or shrank while it was being read"):
        bundle_to(source, tmp_path, keys)
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("name", ["compressed.qcow2", "disk.raw.gz", "flat.vmdk"])
def test_unchanged_images_bundle_after_a_rerun_reads_them(images, tmp_path, keys, name):
    """The check does not fire on the reads themselves: a re-run's compare pass, then the
    bundle, of the same source, give the digest the compare computed."""
    copy_of(images, tmp_path, *(["flat.vmdk", "flat-flat.vmdk"] if name == "flat.vmdk" else [name]))
    source = open_source(tmp_path / name)
    assert source.rereadable
    digest = tar_digest(source, "disk")  # what a re-run compares with the bundle at the target
    out = bundle_to(source, tmp_path, keys)  # bundle() closes the source
    assert read_manifest(out / "disk.manifest.xml").manifest.digest == digest


def test_every_image_source_declares_whether_it_is_rereadable():
    assert "rereadable" in ImageSource.__annotations__
    expected = {FileImageSource: True, DiskImageSource: True, CompressedImageSource: True,
                StreamImageSource: False}
    for cls, value in expected.items():
        assert cls.__dict__["rereadable"] is value, cls
    stream = StreamImageSource(io.BytesIO(b"x" * 1024), 1024, "s")
    fingerprint = ImageFingerprint(stream, "s")
    # A pipe is never compared (that would consume it): not the same image, nothing read.
    manifest = type("M", (), {"size": 1024, "digest": "0" * 40})
    assert not fingerprint.matches(type("P", (), {"manifest": manifest, "source": "x"})())
    assert stream.stream.tell() == 0


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"),
                    reason="needs root and losetup")
def test_a_compressed_image_on_a_block_device_reads_from_its_start(images, tmp_path):
    """The stamp of a device measures its size by seeking to its end; the stream read after
    the check must still start at offset 0 (an .xz written onto a device or partition)."""
    path = tmp_path / "dev.img"
    data = images["disk.raw.gz"].read_bytes()
    path.write_bytes(data + bytes(-len(data) % 512))  # a device holds whole sectors
    dev = subprocess.run(["losetup", "--find", "--show", "--read-only", str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        source = open_source(dev, fmt="gz", name="disk")
        try:
            got = b"".join(source.chunks())
        finally:
            source.close()
        regions = source.regions() or [(0, source.size)]
        assert source.size == images["disk.raw"].stat().st_size
        raw = images["disk.raw"].read_bytes()
        assert got == b"".join(raw[o:o + n] for o, n in regions)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=True)
