"""A failed write explained in words a user can act on (one wording for every writer)."""

from __future__ import annotations

import errno


def why_write_failed(exc: OSError) -> str:
    """A write error in words a user can act on (full disk, ulimit -f, quota)."""
    if exc.errno == errno.ENOSPC:
        return "no space left on the device (free some space or choose another --destination)"
    if exc.errno == errno.EFBIG:
        return "file size limit exceeded (ulimit -f)"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc)
