"""ext4 images of a directory tree, made with the real mke2fs -d (the check tests read them
through debugfs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support import roots

MKE2FS = shutil.which("mke2fs") or "/sbin/mke2fs"


def mkfs(tree: Path, image: Path, *, size_mib: int = 24, offset: int = 0) -> Path:
    """``tree`` as an ext4 filesystem in ``image`` (created sparse if missing), at byte
    ``offset`` (inside a partition), with the test roots' UUID and label."""
    if not image.exists():
        with open(image, "wb") as fh:
            fh.truncate(size_mib * 2**20 + offset)
    extra = ["-E", f"offset={offset}"] if offset else []
    subprocess.run([MKE2FS, "-q", "-F", "-t", "ext4", "-d", str(tree), "-U", roots.UUID,
                    "-L", roots.LABEL, *extra, str(image), f"{size_mib}M"], check=True,
                   capture_output=True)
    return image
