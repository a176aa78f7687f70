"""The sensitive-file filter: what must never end up in a public machine image.

Classic ec2-bundle-vol dropped files by name only (``*.pem``, ``*.gpg``, ...), which threw away
the CA certificates under /etc/ssl/certs and the apt keyrings (breaking TLS and apt in the new
instance) while missing private keys with other names (``ssh_host_*_key``, ``*.key``). Here names
that are secret by nature (shell histories, ``authorized_keys``, ``id_rsa``) are dropped by name,
and everything else that could hold key material is judged by its content: a PEM/OpenSSH/PuTTY
private-key block or an OpenPGP secret-key packet. Certificates and public keyrings stay.
"""

from __future__ import annotations

import os
import re
import stat
from fnmatch import fnmatchcase, translate

# How much of a file the content check reads; keys sit at the top of the files that hold them.
SCAN_PREFIX = 64 * 1024
# Files larger than this are not key files (a CA bundle with every root is ~220 KiB).
SCAN_MAX_SIZE = 4 * 1024 * 1024

# Secret by name alone (matched against the base name).
_NAME_RULES: tuple[tuple[str, str], ...] = (
    ("*id_rsa*", "ssh private key name (id_rsa)"),
    ("*id_dsa*", "ssh private key name (id_dsa)"),
    ("*id_ecdsa*", "ssh private key name (id_ecdsa)"),
    ("*id_ed25519*", "ssh private key name (id_ed25519)"),
    ("*.jks", "Java keystore"),
    ("*.keystore", "Java keystore"),
    ("*.p12", "PKCS#12 key store"),
    ("*.pfx", "PKCS#12 key store"),
    ("*.priv", "private key file (*.priv)"),
    ("secring.gpg", "GnuPG secret keyring"),
    (".bash_history", "shell history"),
    (".zsh_history", "shell history"),
    (".sh_history", "shell history"),
    (".history", "shell history"),
    (".ash_history", "shell history"),
    (".python_history", "interpreter history"),
    (".node_repl_history", "interpreter history"),
    (".mysql_history", "database client history"),
    (".psql_history", "database client history"),
    (".sqlite_history", "database client history"),
    (".rediscli_history", "database client history"),
    (".lesshst", "pager history"),
    (".viminfo", "editor history"),
    (".netrc", "credentials file"),
    (".git-credentials", "credentials file"),
    (".pgpass", "credentials file"),
    ("*.swp", "editor swap file"),
    ("*.swo", "editor swap file"),
    ("*.swn", "editor swap file"),
    ("*~", "editor backup file"),
    (".#*", "editor lock file"),
    ("#*#", "editor autosave file"),
)

# Secret by the last two path components (directory/name).
_PARENT_RULES: tuple[tuple[str, str, str], ...] = (
    (".ssh", "authorized_keys", "ssh authorized_keys"),
    (".ssh", "authorized_keys2", "ssh authorized_keys"),
    (".aws", "credentials", "AWS credentials"),
    (".docker", "config.json", "registry credentials"),
    ("private-keys-v1.d", "*", "GnuPG private key"),
)

# Public-key material that keeps its classic-unfriendly name: never dropped by name.
_PUBLIC_SUFFIXES = (".pub",)

# Extensions whose content is never a key file: skipping them keeps the scan cheap, and source
# files that embed *test* keys (Python, Ruby, ...) must not be torn out of the packages they
# belong to.
_SKIP_EXTENSIONS = frozenset(
    ".so .a .o .ko .gz .xz .bz2 .zst .lz4 .zip .deb .rpm .jar .png .jpg .jpeg .gif .svg .ico .ttf "
    ".otf .woff .woff2 .mo .pyc .py .rb .pl .pm .js .ts .go .c .h .cc .cpp .hpp .rs .java .php "
    ".tcl .lua .html .htm .css .md .rst .txt .json .xml .yaml .yml .ps .pdf .db .sqlite .mp3 "
    ".wav".split()
)

_PEM_PRIVATE = re.compile(
    rb"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |ANY |SSH2 ENCRYPTED |)PRIVATE KEY-----"
    rb"|-----BEGIN PGP PRIVATE KEY BLOCK-----"
    rb"|---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----"
    rb"|PuTTY-User-Key-File-\d+:"
)
_OPENPGP_SECRET_TAGS = (5, 7)  # Secret-Key and Secret-Subkey packets


# All name rules as one regular expression (one match per file instead of 32 fnmatch calls: at
# 400 000 files that was seconds); group rN is rule N.
_NAME_RE = re.compile("|".join(f"(?P<r{i}>{translate(p)})" for i, (p, _) in enumerate(_NAME_RULES)))


def secret_by_name(rel: str) -> str | None:
    """The reason a volume-relative path is secret by its name alone, else None."""
    parts = rel.rsplit("/", 2)
    name = parts[-1]
    if name.endswith(_PUBLIC_SUFFIXES):
        return None
    m = _NAME_RE.match(name)
    if m is not None:
        return _NAME_RULES[int(m.lastgroup[1:])][1]
    if len(parts) >= 2:
        parent = parts[-2]
        for dir_pattern, name_pattern, reason in _PARENT_RULES:
            if parent == dir_pattern and fnmatchcase(name, name_pattern):
                return reason
    return None


def private_key_in(data: bytes, name: str = "") -> str | None:
    """What kind of private key ``data`` (a file's first bytes) holds, or None. Pure."""
    # Every armored form names "PRIVATE KEY" or PuTTY's header: two substring searches (C
    # speed) spare nearly every file the regular expression, which was most of the scan's time.
    match = (_PEM_PRIVATE.search(data)
             if b"PRIVATE KEY" in data or b"PuTTY-User-Key-File-" in data else None)
    if match:
        text = match.group(0)
        if text.startswith(b"PuTTY"):
            return "private key (PuTTY)"
        if b"PGP" in text:
            return "private key (OpenPGP, armored)"
        return "private key (PEM/OpenSSH)"
    if name.endswith((".gpg", ".pgp", ".key")) and data:
        tag = _openpgp_tag(data[0])
        if tag in _OPENPGP_SECRET_TAGS:
            return "private key (OpenPGP secret key packet)"
    return None


def _openpgp_tag(first: int) -> int | None:
    """The packet tag of a binary OpenPGP packet header byte (RFC 4880 §4.2), if it is one."""
    if not first & 0x80:
        return None
    if first & 0x40:
        return first & 0x3F
    return (first >> 2) & 0x0F


def worth_scanning(rel: str, st: os.stat_result) -> bool:
    """Whether a kept regular file is a plausible key file (by size and extension)."""
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or st.st_size > SCAN_MAX_SIZE:
        return False
    name = rel.rpartition("/")[2]
    dot = name.rfind(".")
    # os.path.splitext's rule (leading dots start no extension), without its cost
    return dot <= 0 or not name[:dot].strip(".") or name[dot:].lower() not in _SKIP_EXTENSIONS


class UnreadableError(Exception):
    """A file the filter must judge but cannot read."""


def scan_file(dir_fd: int, name: str, rel: str, expect=None) -> str | None:
    """Read the bounded prefix of ``name`` in directory ``dir_fd`` (never through a symlink,
    never blocking on a FIFO swapped in) and classify it; raises UnreadableError, or
    ``safefs.TreeChanged`` when it is no longer the file ``expect`` describes."""
    from . import safefs

    try:
        fd = safefs.open_file(dir_fd, name, rel, expect)
    except OSError as exc:
        raise UnreadableError(exc.strerror or str(exc)) from exc
    try:
        data = os.read(fd, SCAN_PREFIX)  # a fresh fd reads from 0
    except OSError as exc:
        raise UnreadableError(exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)
    return private_key_in(data, rel.rsplit("/", 1)[-1].lower())
