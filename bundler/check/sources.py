"""Open what ``check`` and ``boot-test`` read: a directory, an image file, or a bundle
(local parts or any PartSource, e.g. S3), as a ``Tree`` or as an image path.

A bundle is verified and unbundled by the core pipeline into a private temporary directory
(0700, the image 0600 from creation, sparse: zero runs are never written), read, and removed
on exit. That costs one full decrypt + inflate of the bundle and the image's allocated bytes
of temporary disk space; a directory or image is read in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import ImageError, UsageError
from ..imagewriter import FileImageWriter
from ..newfiles import private_directory
from ..parts import PartSource
from .debugfs import ImageTree
from .tree import DirTree, Tree, VolumeFacts


class _PrivateImageWriter(FileImageWriter):
    """A FileImageWriter for a throw-away copy: 0600 from creation, no fsync, no rename."""

    def open(self, size: int, mode: int) -> None:
        super().open(size, 0o600)

    def commit(self) -> Path:
        assert self.temp is not None
        self.wait_flushed()
        os.ftruncate(self.fd, self.size)
        os.close(self.fd)
        self.fd = -1
        path, self.temp = self.temp, None
        self._release()
        return path


@contextlib.contextmanager
def private_dir(work_dir: Path | None = None) -> Iterator[Path]:
    base = Path(work_dir) if work_dir is not None else None
    if base is not None and not base.is_dir():
        raise UsageError(f"work directory {base} does not exist")
    with private_directory("ami-bundler-check-", base) as path:  # mode 0700
        yield path


@contextlib.contextmanager
def unbundled_image(parsed, source: PartSource, private_key, *, verify_key=None,
                    work_dir: Path | None = None, progress=None) -> Iterator[Path]:
    """The bundle's image as a private temporary sparse file, verified; removed on exit."""
    from ..progress import NULL_PROGRESS
    from ..unbundling import unbundle

    with private_dir(work_dir) as tmp:
        writer = _PrivateImageWriter(tmp, "image")
        result = unbundle(parsed, source, tmp, private_key, verify_key=verify_key,
                          writer=writer, progress=progress or NULL_PROGRESS)
        yield Path(result.path)


def open_tree(source: Path, *, facts: VolumeFacts | None = None) -> Tree:
    """A directory or an image file as a Tree (close it, or use it as a context manager)."""
    source = Path(source)
    if not source.exists():
        raise ImageError(f"{source} does not exist")
    if source.is_dir():
        return DirTree(source, facts)
    if not (source.is_file() or source.is_block_device()):
        raise ImageError(f"{source} is neither a directory nor an image file")
    try:
        return ImageTree(source)
    except PermissionError:
        raise ImageError(f"cannot read {source}: permission denied") from None
    except IsADirectoryError:
        raise ImageError(f"{source} is a directory") from None


@contextlib.contextmanager
def bundle_tree(parsed, source: PartSource, private_key, *, verify_key=None,
                work_dir: Path | None = None, progress=None) -> Iterator[Tree]:
    with unbundled_image(parsed, source, private_key, verify_key=verify_key,
                         work_dir=work_dir, progress=progress) as image:
        tree = ImageTree(image)
        tree.facts.kind = "bundle"
        tree.facts.description = parsed.manifest.name
        tree.facts.manifest_arch = parsed.manifest.arch
        with tree:
            yield tree
