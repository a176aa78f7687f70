"""Image sources: where the bytes of the image come from, and which ranges hold data.

A source tells the pipeline the image's size and data regions before any data is read, so
the tar header (with its sparse map) can be written first. Holes are found with
SEEK_DATA/SEEK_HOLE, so zeros in holes are never read, hashed or compressed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, ClassVar, Protocol

from .errors import ImageError

log = logging.getLogger("bundler.source")

READ_SIZE = 1 << 20
MAX_IMAGE_SIZE = 10 * 1024**3  # EC2's instance-store image limit


class ImageSource(Protocol):
    name: str
    size: int
    mode: int
    mtime: int
    # Whether chunks() may be iterated again (a file: yes; a pipe: no). Re-runs read the image
    # once to compare it with an existing bundle, and only then bundle it.
    rereadable: ClassVar[bool]

    def regions(self) -> list[tuple[int, int]] | None:
        """Data regions as (offset, length), or None to store the image as a plain member."""

    def chunks(self) -> Iterator[bytes]:
        """The bytes of the data regions (or of the whole image), in order."""

    def close(self) -> None: ...


def find_data_regions(fd: int, size: int) -> list[tuple[int, int]]:
    """Data extents of an open file via SEEK_DATA/SEEK_HOLE; [(0, size)] where unsupported."""
    if size == 0:
        return []
    if not hasattr(os, "SEEK_DATA"):
        return [(0, size)]
    regions: list[tuple[int, int]] = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after offset: the rest is a hole
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            regions.append((start, end - start))
            offset = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ESPIPE):
            return [(0, size)]
        raise
    except ValueError:  # a filesystem layer (e.g. pyfakefs) that does not know SEEK_DATA
        return [(0, size)]
    return regions


ZERO_GRANULE = 64 * 1024
_ZEROS = bytes(ZERO_GRANULE)


def drop_zero_runs(read_at: Callable[[int, int], bytes], regions: list[tuple[int, int]],
                   granule: int = ZERO_GRANULE) -> list[tuple[int, int]]:
    """Split data regions around granule-aligned runs of zeros.

    Filesystems allocate blocks that hold only zeros (journals, preallocated or dd'd images);
    storing them as holes means they are neither hashed, compressed nor encrypted, and the
    extracted image is byte-for-byte the same (GNU tar's --hole-detection=raw does the same).
    """
    refined: list[tuple[int, int]] = []
    for offset, length in regions:
        end = offset + length
        pos = offset
        run_start = -1
        while pos < end:
            stop = min(end, (pos // granule + 1) * granule)
            if read_at(pos, stop - pos) == _ZEROS[: stop - pos]:
                if run_start >= 0:
                    refined.append((run_start, pos - run_start))
                    run_start = -1
            elif run_start < 0:
                run_start = pos
            pos = stop
        if run_start >= 0:
            refined.append((run_start, end - run_start))
    return refined


SCAN_PIECE = 4 << 20  # bytes the zero scan reads at a time: whole granules, aligned
SCAN_THREADS = 2


def _zero_verdicts(fd: int, pieces: list[tuple[int, int]],
                   granule: int) -> list[list[tuple[int, bool]]]:
    """For each piece [start, end): (offset, holds only zeros) of its granules, which lie at
    multiples of ``granule`` as in ``drop_zero_runs``. Each piece is one positioned read into
    a buffer reused for all of them, compared in place (``startswith`` of zeros at an offset
    is a memcmp, no copy). A short read (the file shrank) makes the unread granules data, as
    ``drop_zero_runs`` does."""
    buffer = bytearray(max((end - start for start, end in pieces), default=0))
    results = []
    with memoryview(buffer) as view:
        for start, end in pieces:
            size = end - start
            got = 0
            while got < size:
                n = os.preadv(fd, [view[got:size]], start + got)
                if n <= 0:
                    break
                got += n
            verdicts = []
            pos = start
            while pos < end:
                stop = min(end, (pos // granule + 1) * granule)
                lo, hi = pos - start, stop - start
                verdicts.append((pos, hi <= got and buffer.startswith(_ZEROS[:hi - lo], lo, hi)))
                pos = stop
            results.append(verdicts)
    return results


def scan_zero_runs(fd: int, regions: list[tuple[int, int]], path: Path,
                   granule: int = ZERO_GRANULE) -> list[tuple[int, int]] | None:
    """``drop_zero_runs`` for a real file descriptor, read on SCAN_THREADS threads in
    SCAN_PIECE pieces (the kernel's copy out of the page cache is most of the scan, and it
    runs beside the other thread's); None where positioned reads are unavailable (a fake
    filesystem), so the caller falls back to ``drop_zero_runs``. Same result, granule for
    granule."""
    # A fake filesystem (pyfakefs) puts an object of its own in place of this module's ``os``
    # and passes what it does not fake (preadv) through to the real one: its descriptors are
    # not the kernel's, so they must never reach a real call.
    if (not isinstance(os, types.ModuleType) or not hasattr(os, "preadv")
            or SCAN_PIECE % granule):
        return None
    pieces: list[tuple[int, int]] = []
    for offset, length in regions:
        pos, end = offset, offset + length
        while pos < end:
            stop = min(end, (pos // SCAN_PIECE + 1) * SCAN_PIECE)
            pieces.append((pos, stop))
            pos = stop
    from .concurrency import run_parallel

    # Contiguous shares of about equal size, one per thread (each reuses one buffer).
    total = sum(end - start for start, end in pieces)
    shares: list[list[tuple[int, int]]] = [[]]
    done = 0
    for piece in pieces:
        if done >= total * len(shares) / SCAN_THREADS and len(shares) < SCAN_THREADS:
            shares.append([])
        shares[-1].append(piece)
        done += piece[1] - piece[0]

    def scan(share: list[tuple[int, int]]) -> Callable[[], list[list[tuple[int, bool]]]]:
        return lambda: _zero_verdicts(fd, share, granule)

    try:
        verdicts = [v for share in run_parallel([scan(share) for share in shares if share],
                                                SCAN_THREADS, name="ami-bundler-scan")
                    for v in share]
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror}") from exc
    by_piece = iter(zip(pieces, verdicts, strict=True))
    refined: list[tuple[int, int]] = []
    for offset, length in regions:
        end = offset + length
        run_start = -1
        pos = offset
        while pos < end:
            (_, pos), granules = next(by_piece)
            for at, zero in granules:
                if zero:
                    if run_start >= 0:
                        refined.append((run_start, at - run_start))
                        run_start = -1
                elif run_start < 0:
                    run_start = at
        if run_start >= 0:
            refined.append((run_start, end - run_start))
    return refined


@dataclass
class FileImageSource:
    """A regular file (or block device), read sparsely."""

    path: Path
    name: str
    size: int
    mode: int
    mtime: int
    _fd: int = field(repr=False, default=-1)
    _regions: list[tuple[int, int]] = field(repr=False, default_factory=list)
    sparse: bool = True
    _stamp: FileStamp | None = field(repr=False, default=None)
    rereadable: ClassVar[bool] = True

    def regions(self) -> list[tuple[int, int]] | None:
        # A dense file, or one too small to hold a whole hole, is a plain member, as GNU tar
        # writes it.
        if self._regions == [(0, self.size)] or self.size < 512:
            if self._regions != [(0, self.size)]:
                self._regions = [(0, self.size)]
            return None
        return self._regions

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (lseek+read rather than pread: fake
        filesystems in users' tests support only the former)."""
        try:
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, length)
        except OSError as exc:
            raise ImageError(f"cannot read {self.path} at offset {offset}: {exc.strerror}") from exc

    def peek_at(self, offset: int, length: int) -> bytes:
        """Bytes for the zero scan. Plain reads of one granule: the buffers come from (and go
        back to) the allocator's heap, so the scan neither faults in fresh pages nor maps the
        image (which made a mapping's page faults the scan's main cost)."""
        return self.read_at(offset, length)

    def chunks(self) -> Iterator[bytes]:
        for offset, length in self._regions:
            end = offset + length
            while offset < end:
                data = self.read_at(offset, min(READ_SIZE, end - offset))
                if not data:
                    raise _shrank(self.path, offset)
                offset += len(data)
                yield data
        self.check_unchanged()

    def filler(self) -> Callable[[memoryview], int] | None:
        """What ``chunks`` yields, read straight into the caller's buffers instead: a function
        that fills as much of a buffer as the current data region allows and returns the
        count (0 at the end, after the same checks as ``chunks``). One positioned read per
        call, the kernel's copy with the GIL released, no bytes object per chunk. None where
        positioned reads into buffers are unavailable (a fake filesystem: see
        ``scan_zero_runs``); use ``chunks`` then."""
        if not isinstance(os, types.ModuleType) or not hasattr(os, "preadv"):
            return None
        regions = iter(self._regions)
        pos = end = 0

        def fill(view: memoryview) -> int:
            nonlocal pos, end
            while pos == end:
                region = next(regions, None)
                if region is None:
                    self.check_unchanged()
                    return 0
                pos, end = region[0], region[0] + region[1]
            want = min(len(view), end - pos)
            try:
                got = os.preadv(self._fd, [view[:want]], pos)
            except OSError as exc:
                raise ImageError(f"cannot read {self.path} at offset {pos}: "
                                 f"{exc.strerror}") from exc
            if got <= 0:
                raise _shrank(self.path, pos)
            pos += got
            return got

        return fill

    def check_unchanged(self) -> None:
        if self._stamp is not None and self._fd >= 0:
            self._stamp.check(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _shrank(path: Path, offset: int) -> ImageError:
    return ImageError(f"{path} shrank while it was being read (short read at offset {offset}): "
                      "nothing was kept; bundle an image nothing writes to (a copy or a snapshot)")


@dataclass(frozen=True)
class FileStamp:
    """What an image file looked like when it was opened: the one owner of "did it change while
    it was read". Size, mtime and ctime (a rewrite in place keeping size and mtime still moves
    ctime), and device and inode (a reopened path may name a replaced file); a block device's
    size is its end offset. Reads change none of them."""

    path: Path
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int

    @classmethod
    def of(cls, fd: int, path: Path) -> FileStamp:
        st = os.fstat(fd)
        size = st.st_size
        if stat.S_ISBLK(st.st_mode):  # the end offset, with the file position left where it was
            here = os.lseek(fd, 0, os.SEEK_CUR)
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, here, os.SEEK_SET)
        return cls(path, size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)

    def check(self, fd: int) -> None:
        """ImageError if the open file ``fd`` is not the file, as it was, that this stamp saw:
        what was read may then mix old and new bytes (GNU tar's "file changed as we read it")."""
        try:
            now = FileStamp.of(fd, self.path)
        except OSError as exc:
            raise ImageError(f"cannot stat {self.path}: {exc.strerror}") from exc
        if now == self:
            return
        if (now.dev, now.ino) != (self.dev, self.ino):
            what = "was replaced by another file"
        elif now.size != self.size:
            what = "grew or shrank"
        else:
            what = "was modified"
        raise ImageError(f"{self.path} {what} while it was being read: nothing was kept; bundle an "
                         "image nothing writes to (a copy or a snapshot)")


def _advise_sequential(fd: int) -> None:
    """The image is read front to back (twice: the zero scan, then the data): ask the kernel
    for its larger read-ahead, so a cold cache is read in big sequential requests."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError, ValueError):
        pass  # not on this platform or filesystem (a fake one in tests): only slower


def open_image(path: Path | str, *, name: str | None = None, sparse: bool = True,
               allow_large: bool = False, zero_runs_as_holes: bool = True) -> FileImageSource:
    """Open an image file for bundling; ImageError if it is missing, empty, unreadable or too
    big."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise ImageError(f"image {path} is a directory: use bundle-vol for a root filesystem "
                         "tree") from None
    except PermissionError:
        raise ImageError(f"image {path} is not readable (permission denied)") from None
    except OSError as exc:
        raise ImageError(f"cannot open image {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"image {path} is a directory: use bundle-vol for a root filesystem "
                             "tree")
        if stat.S_ISBLK(st.st_mode):
            size = os.lseek(fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            size = st.st_size
        else:
            raise ImageError(f"image {path} is not a regular file or block device: use -i - with "
                             "--image-size for a stream")
        check_size(size, path, allow_large)
        _advise_sequential(fd)
        regions = find_data_regions(fd, size) if sparse else [(0, size)]
        source = FileImageSource(path=path, name=name or path.name, size=size,
                                 mode=(stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode)
                                       else 0o644),
                                 mtime=int(st.st_mtime), _fd=fd, _regions=regions, sparse=sparse,
                                 _stamp=FileStamp.of(fd, path))
        if sparse and zero_runs_as_holes:
            scanned = scan_zero_runs(fd, regions, path)
            source._regions = (drop_zero_runs(source.peek_at, regions) if scanned is None
                               else scanned)
        regions = source._regions
    except BaseException:
        if "source" in locals():
            source.close()
        else:
            os.close(fd)
        raise
    log.info("image %s: %d bytes, %d bytes in %d data regions", path, size,
             sum(n for _, n in regions), len(regions))
    return source


def check_size(size: int, what: object, allow_large: bool) -> None:
    if size <= 0:
        raise ImageError(f"image {what} is empty (0 bytes): nothing to bundle")
    if size > MAX_IMAGE_SIZE and not allow_large:
        raise ImageError(
            f"image {what} is {size} bytes, over EC2's 10 GiB instance-store limit "
            "(pass --no-size-checks to bundle it anyway)"
        )


@dataclass
class StreamImageSource:
    """An image read from a pipe (``-i -``): its size must be declared, it is stored densely."""

    stream: BinaryIO
    size: int
    name: str
    mode: int = 0o644
    mtime: int = 0
    allow_large: bool = False
    rereadable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_size(self.size, "on standard input", self.allow_large)

    def regions(self) -> list[tuple[int, int]] | None:
        return None

    def chunks(self) -> Iterator[bytes]:
        remaining = self.size
        while remaining:
            data = self.stream.read(min(READ_SIZE, remaining))
            if not data:
                raise ImageError(f"standard input ended after {self.size - remaining} bytes; "
                                 f"--image-size said {self.size}")
            remaining -= len(data)
            yield data
        if self.stream.read(1):
            raise ImageError(f"standard input has more than the {self.size} bytes --image-size "
                             "declared")

    def close(self) -> None:
        pass
