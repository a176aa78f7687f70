"""tarwriter and tarreader against the real GNU tar binary: extraction, listing and byte-identical
archives."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bundler.tarreader import TarReader, is_regular
from bundler.tarwriter import (
    MemberInfo,
    archive_size,
    data_padding,
    end_of_archive,
    member_header,
    stored_size,
)

TAR = shutil.which("tar")
MTIME = 1530225467
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def gnu_tar_version() -> tuple[int, ...] | None:
    if TAR is None:
        return None
    out = subprocess.run([TAR, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"GNU tar\)? ([0-9.]+)", out)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


VERSION = gnu_tar_version()
pytestmark = pytest.mark.skipif(VERSION is None, reason="needs the GNU tar binary")

# name -> (apparent size, data extents written as (offset, length))
LAYOUTS: dict[str, tuple[int, list[tuple[int, int]]]] = {
    "hole-start": (1 * MiB, [(512 * KiB, 512 * KiB)]),
    "hole-middle": (1 * MiB, [(0, 64 * KiB), (960 * KiB, 64 * KiB)]),
    "hole-end": (1 * MiB, [(0, 8 * KiB)]),
    "all-hole": (1 * MiB, []),
    "no-hole": (200 * KiB + 123, [(0, 200 * KiB + 123)]),
    "unaligned": (300 * KiB + 7, [(5000, 3), (70000, 9000), (300 * KiB, 7)]),
    "regions-6": (1 * MiB, [(i * 128 * KiB, 4 * KiB) for i in range(6)]),
    "regions-30": (2 * MiB, [(i * 64 * KiB, 8 * KiB) for i in range(30)]),
    "regions-60": (4 * MiB, [(i * 64 * KiB + 4 * KiB, 4 * KiB) for i in range(60)]),
    "over-8gib": (10 * GiB + 4096, [(4096, 4096), (9 * GiB, 64 * KiB), (10 * GiB, 4096)]),
}


def make_sparse(path: Path, size: int, extents: list[tuple[int, int]]) -> None:
    """truncate + write at offsets, like `truncate -s` and `dd conv=notrunc`."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in extents:
            f.seek(offset)
            f.write(bytes((offset + i) % 251 + 1 for i in range(length)))
    os.chmod(path, 0o640)
    os.utime(path, (MTIME, MTIME))


def data_regions(path: Path) -> list[tuple[int, int]]:
    """SEEK_DATA/SEEK_HOLE extents, the way GNU tar 1.34 scans them."""
    regions = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            regions.append((start, end - start))
            offset = end
    finally:
        os.close(fd)
    return regions


def gnu_is_sparse(st: os.stat_result) -> bool:
    """GNU tar's ST_IS_SPARSE: fewer 512-byte blocks allocated than the size needs
    (files under one block never count, because of inline data)."""
    size = st.st_size
    return st.st_blocks < size // 512 + (1 if size % 512 and size // 512 else 0)


def our_archive(path: Path, regions: list[tuple[int, int]] | None) -> bytes:
    st = path.stat()
    info = MemberInfo(path.name, st.st_size, st.st_mode & 0o7777, int(st.st_mtime))
    parts = [member_header(info, regions)]
    with open(path, "rb") as f:
        for offset, length in [(0, st.st_size)] if regions is None else regions:
            f.seek(offset)
            parts.append(f.read(length))
    parts.append(data_padding(stored_size(info, regions)))
    body = b"".join(parts)
    archive = body + end_of_archive(len(body))
    assert len(archive) == archive_size(info, regions)
    return archive


def files_equal(a: Path, b: Path) -> bool:
    """Byte-for-byte comparison that only reads data extents (holes read as zeros anyway),
    so 10 GiB sparse files compare in milliseconds."""
    if a.stat().st_size != b.stat().st_size:
        return False
    spans = sorted(set(data_regions(a)) | set(data_regions(b)))
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for offset, length in spans:
            fa.seek(offset)
            fb.seek(offset)
            done = 0
            while done < length:
                n = min(1 << 20, length - done)
                if fa.read(n) != fb.read(n):
                    return False
                done += n
    return True


def run_tar(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([TAR, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc


@pytest.fixture
def src(tmp_path: Path) -> Path:
    directory = tmp_path / "src"
    directory.mkdir()
    probe = directory / "probe"
    make_sparse(probe, 1 * MiB, [])
    if probe.stat().st_blocks != 0 or data_regions(probe):
        pytest.skip("temporary file system does not keep holes / support SEEK_HOLE")
    probe.unlink()
    return directory


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_gnu_tar_extracts_our_sparse_archive(layout, src, tmp_path):
    size, extents = LAYOUTS[layout]
    image = src / layout
    make_sparse(image, size, extents)
    regions = data_regions(image)
    archive = tmp_path / "ours.tar"
    archive.write_bytes(our_archive(image, regions))

    listing = run_tar("--sparse", "-tvf", str(archive), cwd=tmp_path).stdout
    assert re.search(rf"\s{size}\s.*\s{re.escape(layout)}$", listing.strip()), listing

    out = tmp_path / "out"
    out.mkdir()
    run_tar("-xf", str(archive), cwd=out)
    extracted = out / layout
    assert files_equal(image, extracted)
    assert extracted.stat().st_mode & 0o7777 == 0o640
    assert int(extracted.stat().st_mtime) == MTIME
    stored = sum(n for _, n in regions)
    # recreated sparsely: allocation close to the stored data, not the apparent size
    assert extracted.stat().st_blocks * 512 <= stored + 64 * KiB

    # and our reader agrees with what GNU extracted
    reader = TarReader(io.BytesIO(archive.read_bytes()))
    member = reader.next_member()
    assert member is not None and is_regular(member)
    assert member.size == size and member.regions == [r for r in regions if r[1]]
    assert sum(len(d) for _, d in reader.iter_data()) == stored
    assert reader.next_member() is None
    reader.drain()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_identical_to_gnu_tar(layout, src, tmp_path):
    """Same file, same options as the classic pipeline -> the very same archive bytes."""
    size, extents = LAYOUTS[layout]
    image = src / layout
    make_sparse(image, size, extents)
    gnu = subprocess.run(
        [TAR, "-c", "-h", "-S", "--owner", "0", "--group", "0", "-C", str(src), layout],
        capture_output=True, check=True,
    ).stdout
    # GNU tar stores a file sparsely only when st_blocks says it has holes; mirror that choice.
    regions = data_regions(image) if gnu_is_sparse(image.stat()) else None
    ours = our_archive(image, regions)
    assert len(ours) == len(gnu)
    assert ours == gnu


def test_identical_long_name(src, tmp_path):
    name = "image-" + "x" * 140
    image = src / name
    make_sparse(image, 300 * KiB, [(0, 4096), (200 * KiB, 4096)])
    gnu = subprocess.run([TAR, "-c", "-h", "-S", "--owner", "0", "--group", "0", "-C", str(src),
                          name],
                         capture_output=True, check=True).stdout
    assert our_archive(image, data_regions(image)) == gnu


def test_identical_for_small_and_empty(src, tmp_path):
    for name, size, extents in (("empty", 0, []), ("tiny", 21, [(0, 21)]), ("tiny-hole", 100, [])):
        image = src / name
        make_sparse(image, size, extents)
        gnu = subprocess.run([TAR, "-c", "-h", "-S", "--owner", "0", "--group", "0", "-C", str(src),
                              name], capture_output=True, check=True).stdout
        regions = data_regions(image) if gnu_is_sparse(image.stat()) else None
        assert regions is None  # GNU never makes these sparse
        assert our_archive(image, regions) == gnu


@pytest.mark.parametrize("version", ["0.0", "0.1", "1.0"])
@pytest.mark.parametrize("layout", ["hole-middle", "regions-30", "all-hole", "over-8gib"])
def test_reader_on_gnu_pax_sparse(version, layout, src, tmp_path):
    size, extents = LAYOUTS[layout]
    image = src / layout
    make_sparse(image, size, extents)
    proc = subprocess.run(
        [TAR, "-c", "-S", "--format=pax", f"--sparse-version={version}", "-C", str(src), layout],
        capture_output=True, check=True,
    )
    reader = TarReader(io.BytesIO(proc.stdout))
    member = reader.next_member()
    assert member is not None and member.name == layout and is_regular(member)
    assert member.sparse_format == version
    assert member.size == size and member.mtime == MTIME and member.mode & 0o7777 == 0o640
    regions = [r for r in data_regions(image) if r[1]]
    assert member.regions == regions
    with open(image, "rb") as f:
        for offset, data in reader.iter_data(100_000):
            f.seek(offset)
            assert f.read(len(data)) == data
    assert reader.next_member() is None
    reader.drain()


def test_reader_on_gnu_plain_and_pax_formats(src, tmp_path):
    image = src / "plain.img"
    make_sparse(image, 70000, [(0, 70000)])
    for fmt in ("gnu", "oldgnu", "ustar", "pax", "posix", "v7"):
        archive = subprocess.run([TAR, "-c", f"--format={fmt}", "-C", str(src), "plain.img"],
                                 capture_output=True, check=True).stdout
        reader = TarReader(io.BytesIO(archive))
        member = reader.next_member()
        assert member is not None and member.name == "plain.img" and is_regular(member), fmt
        assert b"".join(d for _, d in reader.iter_data()) == image.read_bytes()
        assert reader.next_member() is None
        reader.drain()
