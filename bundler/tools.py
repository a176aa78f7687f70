"""The one way this project runs external programs (mke2fs, debugfs, sfdisk, blkid, ...).

Commands are argv lists (never a shell), logged at debug, and a failure becomes a one-line
VolumeError carrying the tool's own complaint, so callers never see CalledProcessError.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

from .errors import VolumeError

log = logging.getLogger("bundler.tools")

# Which Debian/RPM package provides a tool, for "install package Y" hints.
TOOL_PACKAGES: dict[str, str] = {
    "mke2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "tune2fs": "e2fsprogs",
    "sfdisk": "fdisk (util-linux on RPM systems)",
    "blkid": "util-linux",
    "findmnt": "util-linux",
    "tar": "tar",
    "gzip": "gzip",
    "openssl": "openssl",
    "grub-mkimage": "grub-common",
}

DEFAULT_TIMEOUT = 3600.0


class ToolError(VolumeError):
    """An external tool exited non-zero; keeps its exit status and stderr for translation."""

    def __init__(self, message: str, *, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr


def which(tool: str) -> str:
    """Absolute path of ``tool``; also looks in the sbin directories a non-login PATH lacks."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/local/sbin:/usr/sbin:/sbin")
    if not found:
        package = TOOL_PACKAGES.get(tool, tool)
        raise VolumeError(f"tool {tool} not found: install package {package}")
    return found


def summarize(stderr: str, limit: int = 300) -> str:
    """The most telling line(s) of a tool's stderr, squeezed onto one line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # Tools print their version banner first (e2fsprogs does); skip those.
    lines = [ln for ln in lines if not ln.startswith(("mke2fs 1.", "e2fsck 1.", "debugfs 1."))]
    text = "; ".join(lines[-3:]) if lines else "no error output"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run(
    cmd: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd`` (argv list), capturing output; raise ToolError on a non-zero exit if
    ``check``."""
    argv = [str(c) for c in cmd]
    argv[0] = which(argv[0]) if "/" not in argv[0] else argv[0]
    log.debug("running: %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{cmd[0]} did not finish within {timeout:.0f} s", cmd=argv,
                        returncode=-1, stderr="") from exc
    except OSError as exc:
        raise ToolError(f"cannot run {cmd[0]}: {exc.strerror}", cmd=argv, returncode=-1,
                        stderr=str(exc)) from exc
    if check and proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace")
        raise ToolError(
            f"{cmd[0]} failed (exit {proc.returncode}): {summarize(stderr)}",
            cmd=argv, returncode=proc.returncode, stderr=stderr,
        )
    return proc
