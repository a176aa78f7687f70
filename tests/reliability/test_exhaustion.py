"""Resource exhaustion: a full disk, few file descriptors, absurd manifests, oversized parts
and gzip bombs inside correctly signed bundles all end in one clear error, bounded memory,
and nothing half-written under a final name."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import tracemalloc
import uuid
import zlib
from pathlib import Path

import pytest

from bundler import keys as keylib
from bundler.dirsource import DirectorySource
from bundler.errors import ArchiveError, BundlerError, IntegrityError, ManifestError
from bundler.manifest import parse_manifest
from bundler.pipeline import STREAM_SLACK, unbundle
from bundler.tarwriter import MemberInfo, data_padding, end_of_archive, member_header
from tests.support import crashkit, harness
from tests.support.crashkit import REPO, inspect_bundle_dir, inspect_image_dir


@pytest.fixture(scope="module")
def ws(tmp_path_factory, user_key_pair, ec2_key_pair) -> crashkit.Workspace:
    return crashkit.make_workspace(tmp_path_factory.mktemp("exhaust"), user_key_pair.key_path,
                                   user_key_pair.cert_path, ec2_key_pair.cert_path)


def cli(argv, *, nofile: int | None = None) -> subprocess.CompletedProcess:
    def limits() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run([sys.executable, "-m", "bundler", *argv], cwd=REPO, capture_output=True,
                          text=True, preexec_fn=limits, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ami-bundler: error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a chosen size (root only): the real ENOSPC, not a simulated one."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounts: list[Path] = []

    def make(size: int) -> Path:
        point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                               str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.parametrize("room", [1 << 20, 10 << 20])
def test_disk_full_while_bundling(ws, small_disk, room):
    """1 MiB: full during the first part; 10 MiB: the first part fits, the second does not."""
    dest = small_disk(room)
    err = one_line_error(cli(ws.bundle_args(dest)))
    assert "no space left on the device" in err
    assert os.listdir(dest) == []  # staging, lock and all parts gone


def test_disk_full_when_the_manifest_is_written(ws, small_disk):
    """Room for every part but not the manifest: no bundle, nothing left, the space is back."""
    ref = ws.root / "reference"
    parts = sum((ref / n).stat().st_size for n in os.listdir(ref) if ".part." in n)
    dest = small_disk(-(-parts // 4096) * 4096)
    err = one_line_error(cli(ws.bundle_args(dest)))
    assert "no space left" in err
    assert os.listdir(dest) == []


def test_disk_full_while_unbundling(ws, small_disk):
    out = small_disk(4 << 20)
    err = one_line_error(cli(ws.unbundle_args(ws.root / "reference" / "img.manifest.xml", out)))
    assert "no space left on the device" in err
    assert os.listdir(out) == []


# --------------------------------------------------------------------------- few file descriptors


@pytest.mark.parametrize("nofile", [20, 7, 6])
def test_few_file_descriptors(ws, tmp_path, nofile):
    """20 works; at 6 or 7 a run either completes or fails with one clear error and no debris
    (whether 6 suffices depends on when the background part sync closes its descriptor)."""
    dest, out = tmp_path / "dest", tmp_path / "out"
    dest.mkdir()
    out.mkdir()
    proc = cli(ws.bundle_args(dest), nofile=nofile)
    if proc.returncode:
        assert "Too many open files" in one_line_error(proc)
        assert os.listdir(dest) == []
        return
    seen = inspect_bundle_dir(dest, ws)
    assert seen.complete == ["img.manifest.xml"], seen
    assert not seen.temporary and not seen.incomplete, seen
    proc = cli(ws.unbundle_args(dest / "img.manifest.xml", out), nofile=nofile)
    assert proc.returncode == 0, proc.stderr
    seen = inspect_image_dir(out, ws)
    assert seen.complete == ["img"] and not seen.temporary


@pytest.mark.parametrize("nofile", [5])
def test_too_few_file_descriptors_fail_cleanly(ws, tmp_path, nofile):
    proc = cli(ws.bundle_args(tmp_path), nofile=nofile)
    assert "Too many open files" in one_line_error(proc)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- absurd manifests


def test_manifest_claiming_a_billion_parts(valid_parts):
    manifest, _ = valid_parts
    xml = manifest.replace(b"<parts count='1'>", b"<parts count='1000000000'>")
    with pytest.raises(ManifestError, match="count is 1000000000 but there are 1 part"):
        parse_manifest(xml)


def test_manifest_with_too_many_part_elements():
    part = b"<part index='%d'><filename>p.%d</filename><digest>%s</digest></part>"
    parts = b"".join(part % (i, i, b"0" * 40) for i in range(100_001))
    xml = (b"<?xml version='1.0'?><manifest><version>2007-10-10</version><image><name>x</name>"
           b"<user>123456789012</user><type>machine</type><digest algorithm='SHA1'>" + b"0" * 40
           + b"</digest><size>1</size><bundled_size>1</bundled_size>"
           + b"".join(b"<%s>ab</%s>" % (t, t) for t in (b"ec2_encrypted_key", b"user_encrypted_key",
                                                       b"ec2_encrypted_iv", b"user_encrypted_iv"))
           + b"<parts>" + parts + b"</parts></image></manifest>")
    with pytest.raises(ManifestError, match="more than the limit"):
        parse_manifest(xml)


def test_manifest_over_the_size_limit():
    with pytest.raises(ManifestError, match="larger than"):
        parse_manifest(b"<manifest>" + b" " * (16 * 1024 * 1024) + b"</manifest>")


def test_absurd_sizes_in_a_signed_manifest(tmp_path):
    """The signer's claims are checked against the data: an absurd image size or bundled
    size ends in a clear error before anything is named."""
    tar = small_tar(b"x" * 5000)
    for size in (2**63 - 1, 10**15):
        with pytest.raises(ArchiveError, match="manifest says"):
            unbundle_memory(tar, size, tmp_path)
    manifest, parts = harness.signed_bundle(tar, 5000)
    edited = parse_manifest(manifest).manifest
    edited.bundled_size = 10**18
    resigned = keylib.sign_manifest(edited, harness.fuzz_key())
    with pytest.raises(IntegrityError, match="bundled_size"):
        unbundle(parse_manifest(resigned), harness.MemoryPartSource(parts), tmp_path,
                 harness.fuzz_key())
    assert os.listdir(tmp_path) == []


@pytest.fixture
def valid_parts():
    return harness.signed_bundle(small_tar(b"y" * 3000), 3000)


# --------------------------------------------------------------------------- oversized parts


def test_part_larger_than_10_mib_is_fine_when_signed(tmp_path):
    """Other tools may cut other sizes; a signed 11 MiB part is read in bounded memory."""
    data = os.urandom(11 << 20)
    tar = small_tar(data)
    manifest, parts = harness.signed_bundle(tar, len(data), part_size=12 << 20)
    assert len(parts) == 1 and len(next(iter(parts.values()))) > 10 << 20
    result = unbundle(parse_manifest(manifest), harness.MemoryPartSource(parts, chunk=1 << 20),
                      tmp_path, harness.fuzz_key())
    assert hashlib.sha1((tmp_path / "img").read_bytes()).digest() == hashlib.sha1(data).digest()
    assert result.size == len(data)


def test_part_file_of_absurd_size_is_refused_before_reading(tmp_path):
    manifest, parts = harness.signed_bundle(small_tar(b"z" * 100), 100)
    src = tmp_path / "src"
    src.mkdir()
    for name, data in parts.items():
        with open(src / name, "wb") as fh:
            fh.write(data)
            fh.truncate(65 << 20)  # sparse: costs no disk, only the claim
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError, match="larger than"):
        unbundle(parse_manifest(manifest), DirectorySource(src), out, harness.fuzz_key())
    assert os.listdir(out) == []


# --------------------------------------------------------------------------- gzip bombs


def small_tar(data: bytes, *, claimed: int | None = None) -> bytes:
    info = MemberInfo("img", claimed if claimed is not None else len(data))
    head = member_header(info)
    body = head + data + data_padding(len(data))
    return body + end_of_archive(len(body))


def bomb_gzip(prefix: bytes, zeros: int) -> bytes:
    """gzip of ``prefix`` followed by ``zeros`` zero bytes, made without holding the zeros."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [comp.compress(prefix)]
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        out.append(comp.compress(block))
    out.append(comp.flush())
    return b"".join(out)


def unbundle_memory(tar: bytes, size: int, destination: Path, *, gzip_data: bytes | None = None):
    manifest, parts = harness.signed_bundle(tar, size, gzip_data=gzip_data, part_size=1 << 20)
    return unbundle(parse_manifest(manifest), harness.MemoryPartSource(parts, chunk=1 << 20),
                    destination, harness.fuzz_key())


def test_gzip_bomb_after_the_archive_stops_at_the_declared_size(tmp_path):
    """A valid 1 MiB image, then 256 MiB of zeros in the same gzip stream (1.3 MiB compressed):
    signed, digest of the tar stream correct. Reading stops at size + slack."""
    image = os.urandom(1 << 20)
    tar = small_tar(image)
    gz = bomb_gzip(tar, 256 << 20)
    assert len(gz) < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError, match="gzip bomb"):
            unbundle_memory(tar, len(image), tmp_path, gzip_data=gz)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak} bytes"
    assert os.listdir(tmp_path) == []


def test_gzip_bomb_inside_a_member_that_claims_little(tmp_path):
    """The tar header says 4 KiB, the stream goes on with 200 MiB of non-tar data."""
    tar = small_tar(b"a" * 4096)
    gz = bomb_gzip(tar[:-1024], 200 << 20)  # no proper end: zeros run on where the end would be
    with pytest.raises(BundlerError) as info:
        unbundle_memory(tar, 4096, tmp_path, gzip_data=gz)
    assert "gzip bomb" in str(info.value) or "digest" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_member_claiming_a_huge_size_is_refused_at_its_header(tmp_path):
    tar = small_tar(b"b" * 4096, claimed=50 << 30)[:4096]
    with pytest.raises(ArchiveError, match="manifest says 4096"):
        unbundle_memory(tar, 4096, tmp_path)
    assert os.listdir(tmp_path) == []


def test_stream_limit_is_the_declared_size_plus_slack():
    image = b"c" * 1000
    tar = small_tar(image)
    gz = bomb_gzip(tar, (STREAM_SLACK + (2 << 20)))
    stream_parts = harness.chunked(harness.aes(gz), 1 << 20)
    with pytest.raises(ArchiveError, match=f"more than the {1000 + STREAM_SLACK} bytes"):
        harness.read_stream(stream_parts, 1000 + STREAM_SLACK)
