"""Names of the temporary entries ami-bundler creates in a destination directory (pure).

Every one starts with ``TEMP_MARK``, carries the creating process's PID and ends in a random
token: ``.ami-bundler-<kind>-<pid>-<name>-<token>`` (lock files: ``.ami-bundler-lock-<what>``).
``bundler.stale`` reads them back to clean up after runs that died.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets

TEMP_MARK = ".ami-bundler-"
STAGING_KIND = "staging"
UNBUNDLE_KIND = "unbundle"
VOLUME_KIND = "vol"  # bundle-vol's image being built and its staging tree
LOCK_KIND = "lock"
# Room for the mark, kind, PID and token within NAME_MAX (255) whatever the name's length.
_TEMP_NAME_CHARS = 128  # the longest bundle name validate_name allows
TEMP_RE = re.compile(
    r"\.ami-bundler-(?P<kind>staging|unbundle|vol)-(?P<pid>[0-9]{1,10})-(?P<name>.+)-[0-9a-f]{8}\Z",
    re.DOTALL,
)


def short_name(name: str) -> str:
    """``name`` itself, or a recognisable prefix plus a hash when it is too long for a temp name."""
    if len(name.encode("utf-8", "surrogateescape")) <= _TEMP_NAME_CHARS:
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return name[:60] + "~" + digest


def temp_name(kind: str, name: str) -> str:
    """A hidden name for an in-progress entry owned by this process (see ``remove_stale``)."""
    return f"{TEMP_MARK}{kind}-{os.getpid()}-{short_name(name)}-{secrets.token_hex(4)}"


__all__ = [
    "LOCK_KIND",
    "STAGING_KIND",
    "TEMP_MARK",
    "TEMP_RE",
    "UNBUNDLE_KIND",
    "VOLUME_KIND",
    "short_name",
    "temp_name",
]
