"""A root filesystem directory as a plan's source: its fingerprint, and its image built once.

An image rebuilt from a tree is never byte-identical (a new UUID, new inode times, another
allocation), so for a directory the image digest cannot prove that an existing AMI holds "this
source". What can: a fingerprint of exactly what bundle-vol selects — every kept entry's name,
type, mode, owner, size, device number, mtime, link target, hard-link group, extended
attributes and file content (SHA-256) — and the options that shape the image built from it
(``VolumeOptions``). Two runs over an unchanged tree with the same plan give the same
fingerprint, any change that would reach the image gives another.

The fingerprint is the plan's digest tag (``DIGEST_TAG``) on every AMI of the generation and
the bundle's manifest digest (the tar-stream SHA-1 of the image actually built) is its
``BUNDLE_DIGEST_TAG``. ``TreeProof`` ties the two: a bundle in a bucket is this source's when
its manifest (signed by the user's key) carries a bundle digest an AMI of this tree's
generation records. A bundle no AMI records yet (a run stopped between upload and
registration) is not provably this tree's and is refused, never replaced (docs/publish.md).

The image is built once per run, only when some target needs it bundled: bundle-vol's
``clone_only`` into a private 0700 directory (the image itself 0600), removed on every path out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import VolumeError
from ..progress import NULL_PROGRESS, ProgressListener
from ..rerun import ImageFingerprint
from .plan import BUNDLE_DIGEST_TAG, DIGEST_TAG, GENERATION_TAG, VolumeOptions

if TYPE_CHECKING:
    from ..manifest import ParsedManifest
    from ..source import ImageSource
    from ..volume.bundle_vol import VolumeConfig
    from ..volume.selection import Selection

log = logging.getLogger("bundler.publish.tree")

FINGERPRINT_VERSION = "ami-bundler tree fingerprint 1"
READ_SIZE = 1 << 20


def volume_config(directory: Path, opts: VolumeOptions, *, work: Path,
                  clone_only: bool = False) -> VolumeConfig:
    from ..volume.bundle_vol import VolumeConfig

    return VolumeConfig(
        volume=directory, destination=work, image_dir=work, prefix="image",
        size_mib=opts.size_mib, partition=opts.partition,  # type: ignore[arg-type]
        excludes=list(opts.exclude), includes=list(opts.include),
        secret_filter=opts.secret_filter, generate_fstab=opts.generate_fstab,
        label=opts.label, uuid=opts.uuid, clone_only=clone_only,
        drop_oversize_xattrs=opts.drop_oversize_xattrs,
        bootloader=opts.bootloader,  # type: ignore[arg-type]
        kernel_cmdline=opts.kernel_cmdline, generate_menu_lst=opts.generate_menu_lst,
        fs_type=opts.fs_type)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the fingerprint


def _header(opts: VolumeOptions, bundle_name: str) -> bytes:
    shaping = {"bundle_name": bundle_name, **asdict(opts)}
    return (FINGERPRINT_VERSION + "\n" + json.dumps(shaping, sort_keys=True) + "\n").encode()


def _records(selection: Selection, volume: Path) -> Iterator[bytes]:
    """One line per kept entry, in byte order of the names (not the directory order)."""
    from ..volume import ext4feed, safefs

    entries = sorted(selection.entries, key=lambda e: os.fsencode(e.rel))
    first_of: dict[tuple[int, int], str] = {}
    root = safefs.open_root(volume)
    cursor = safefs.DirCursor(root)
    try:
        for e in entries:
            parent, name = safefs.split_rel(e.rel)
            fields: list[Any] = [os.fsencode(e.rel).hex(), e.kind, e.st_mode & 0o7777,
                                 e.st_uid, e.st_gid, e.st_mtime_ns]
            link = (e.st_dev, e.st_ino)
            if e.st_nlink > 1 and not stat.S_ISDIR(e.st_mode) and link in first_of:
                fields += ["link", os.fsencode(first_of[link]).hex()]
                yield json.dumps(fields).encode() + b"\n"
                continue
            if e.st_nlink > 1 and not stat.S_ISDIR(e.st_mode):
                first_of[link] = e.rel
            dir_fd = cursor.fd_for(parent) if e.rel else root
            if stat.S_ISREG(e.st_mode):
                fd = safefs.open_file(dir_fd, name, e.rel, e.identity)
                try:
                    fields += ["sha256", _file_digest(fd), e.st_size]
                    xattrs = ext4feed.read_xattrs(fd, e.rel)
                finally:
                    os.close(fd)
            elif stat.S_ISDIR(e.st_mode):
                fd = dir_fd if not e.rel else safefs.open_dir(dir_fd, name, e.rel, e.identity)
                try:
                    xattrs = ext4feed.read_xattrs(fd, e.rel)
                finally:
                    if fd != dir_fd:
                        os.close(fd)
            else:
                safefs.check_same(dir_fd, name, e.rel, e.identity)
                if stat.S_ISLNK(e.st_mode):
                    fields += ["target", os.fsencode(os.readlink(name, dir_fd=dir_fd)).hex()]
                elif stat.S_ISCHR(e.st_mode) or stat.S_ISBLK(e.st_mode):
                    fields += ["rdev", os.major(e.st_rdev), os.minor(e.st_rdev)]
                xattrs = ext4feed.read_xattrs(str(volume / e.rel), e.rel)
            fields += ["xattrs", sorted([n, hashlib.sha256(v).hexdigest()] for n, v in xattrs)]
            yield json.dumps(fields).encode() + b"\n"
    except OSError as exc:
        raise VolumeError(f"cannot read the source tree {volume}: {exc.strerror or exc}"
                          ) from None
    finally:
        cursor.close()
        os.close(root)


def _file_digest(fd: int) -> str:
    h = hashlib.sha256()
    while True:
        data = os.read(fd, READ_SIZE)
        if not data:
            return h.hexdigest()
        h.update(data)


def metadata_digest(selection: Selection) -> str:
    """What the selection looked like (names, kinds, modes, owners, sizes, mtimes), without
    reading any file: the check that the tree bundle-vol read is the one fingerprinted."""
    h = hashlib.sha256()
    for e in sorted(selection.entries, key=lambda e: os.fsencode(e.rel)):
        h.update(json.dumps([os.fsencode(e.rel).hex(), e.st_mode, e.st_uid, e.st_gid,
                             e.st_size, e.st_mtime_ns]).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TreeFingerprint:
    digest: str  # SHA-256 hex of the header and every record
    entries: int
    metadata: str  # metadata_digest of the selection it was taken from


def fingerprint_tree(directory: Path, opts: VolumeOptions, bundle_name: str) -> TreeFingerprint:
    """Select the tree as bundle-vol would (excludes, the secret filter, mounts) and hash it."""
    from ..volume.bundle_vol import check_preconditions, select_volume

    with tempfile.TemporaryDirectory(prefix="ami-bundler-fingerprint-") as work:
        config = volume_config(directory, opts, work=Path(work))
        check_preconditions(config)
        selection = select_volume(config)
    h = hashlib.sha256(_header(opts, bundle_name))
    for record in _records(selection, Path(os.path.realpath(directory))):
        h.update(record)
    log.info("tree %s: %d entries, fingerprint %s", directory, len(selection.entries),
             h.hexdigest())
    return TreeFingerprint(h.hexdigest(), len(selection.entries), metadata_digest(selection))


# --------------------------------------------------------------------------- the proof


class TreeProof(ImageFingerprint):
    """``rerun.ImageFingerprint``'s part for a directory source: ``digest()`` is the tree's
    fingerprint (the plan's digest tag); a bundle ``matches`` when its manifest's digest is a
    bundle digest the generation's AMIs of this tree record, or the one of the image this run
    built (``add``)."""

    def __init__(self, fingerprint: TreeFingerprint, known: Iterable[str] = ()) -> None:
        # No image to read: nothing of ImageFingerprint's state is used.
        self.fingerprint = fingerprint
        self.known = {d.lower() for d in known}
        self._lock = threading.Lock()

    def digest(self) -> str:
        return self.fingerprint.digest

    def add(self, bundle_digest: str) -> None:
        with self._lock:
            self.known.add(bundle_digest.lower())

    def matches(self, parsed: ParsedManifest) -> bool:
        with self._lock:
            return parsed.manifest.digest.lower() in self.known


class BuiltImage:
    """The image built from the tree for this run: ``source()`` opens it (each call a new
    ImageSource), ``bundle_digest`` is what its bundle's manifest will carry."""

    def __init__(self, path: Path, bundle_name: str, bundle_digest: str) -> None:
        self.path = path
        self.bundle_name = bundle_name
        self.bundle_digest = bundle_digest

    def source(self) -> ImageSource:
        from ..source import open_image

        return open_image(self.path, name=self.bundle_name)


@contextlib.contextmanager
def built_image(directory: Path, opts: VolumeOptions, bundle_name: str,
                fingerprint: TreeFingerprint, *, parent: Path | None = None,
                progress: ProgressListener = NULL_PROGRESS) -> Iterator[BuiltImage]:
    """bundle-vol the tree once into a private directory; refuses an image of a tree that
    changed since it was fingerprinted. The image is gone when the block is left."""
    from ..imagetar import tar_digest
    from ..newfiles import private_directory
    from ..source import open_image
    from ..volume.bundle_vol import bundle_volume

    changed: list[str] = []

    def on_selection(selection: Selection) -> None:
        if metadata_digest(selection) != fingerprint.metadata:
            changed.append("changed")

    with private_directory("ami-bundler-publish-", parent) as work:
        config = volume_config(directory, opts, work=work, clone_only=True)
        result = bundle_volume(config, progress=progress, on_selection=on_selection)
        if changed:
            raise VolumeError(f"the source tree {directory} changed while its image was built "
                              "(or bundle-vol left entries out): the image is not the tree "
                              "fingerprinted; re-run publish once the tree is stable")
        assert result.image_path is not None
        os.chmod(result.image_path, 0o600)
        image = open_image(result.image_path, name=bundle_name)
        try:
            digest = tar_digest(image, bundle_name, progress)
        finally:
            image.close()
        for warning in result.warnings:
            log.warning("%s", warning)
        yield BuiltImage(result.image_path, bundle_name, digest)


def known_bundle_digests(images: Sequence[dict[str, Any]], *, digest: str,
                         generation: str) -> set[str]:
    """The bundle digests the AMIs of ``generation`` made from the tree ``digest`` record."""
    out = set()
    for image in images:
        tags = {t["Key"]: t.get("Value", "") for t in image.get("Tags", []) or []}
        if (tags.get(DIGEST_TAG) == digest and tags.get(GENERATION_TAG) == generation
                and tags.get(BUNDLE_DIGEST_TAG)):
            out.add(tags[BUNDLE_DIGEST_TAG].lower())
    return out


__all__ = [
    "BuiltImage",
    "TreeFingerprint",
    "TreeProof",
    "VolumeOptions",
    "built_image",
    "fingerprint_tree",
    "known_bundle_digests",
    "metadata_digest",
    "volume_config",
]
