"""The image as the bundle's tar stream: one member, its header, data regions, padding, end.

``bundle()`` compresses and encrypts this stream, and the manifest's ``<digest>`` is its SHA-1;
``tar_digest`` recomputes that digest without compressing or encrypting (holes are never
read), which is how a re-run proves the image is the one an existing bundle holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from .progress import NULL_PROGRESS, ProgressListener
from .source import ImageSource
from .tarwriter import MemberInfo, archive_size, data_padding, end_of_archive, member_header


def member_info(source: ImageSource, name: str) -> MemberInfo:
    return MemberInfo(name=name, size=source.size, mode=source.mode & 0o7777, mtime=source.mtime)


def tar_stream(source: ImageSource, name: str) -> Iterator[tuple[bytes, bool]]:
    """The tar stream of ``source`` as member ``name``: (bytes, whether they are image data)."""
    header = member_header(member_info(source, name), source.regions())
    yield header, False
    stored = 0
    for chunk in source.chunks():
        stored += len(chunk)
        yield chunk, True
    padding = data_padding(stored)
    yield padding, False
    yield end_of_archive(len(header) + stored + len(padding)), False


def tar_size(source: ImageSource, name: str) -> int:
    return archive_size(member_info(source, name), source.regions())


def tar_digest(source: ImageSource, name: str, progress: ProgressListener = NULL_PROGRESS) -> str:
    """The SHA-1 the manifest of a bundle of ``source`` as ``name`` carries (the source must be
    readable again afterwards to be bundled: see ``ImageSource.rereadable``)."""
    sha1 = hashlib.sha1()
    progress.start("compare", None)
    try:
        for data, is_image in tar_stream(source, name):
            sha1.update(data)
            if is_image:
                progress.advance("compare", len(data))
    finally:
        progress.finish("compare")
    return sha1.hexdigest()


__all__ = ["member_info", "tar_digest", "tar_size", "tar_stream"]
