"""Manifest migration (``migrate-manifest``, spec §7.1): re-wrap the AES key and IV to another
region's EC2 certificate, optionally change kernel/ramdisk, re-sign — nothing else changes.

Unlike classic ec2-migrate-manifest (which parses ``--ec2cert`` and never uses it) the key really
is re-wrapped: it is decrypted from the ``user_*`` pair with the user's private key and
encrypted again to the target certificate. The ``user_*`` values, parts, digests, sizes, block
device mapping, product codes, ancestry and the bundler element are carried over unchanged.

Pure apart from ``read_mapping_file`` and ``write_manifest_with_backup`` (local files).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import keys as keylib
from .errors import KeyFileError, ManifestError, OutputError, UsageError
from .interrupts import critical
from .manifest import WRITE_VERSION, Manifest, ParsedManifest, parse_manifest
from .newfiles import discard, write_new_file

log = logging.getLogger("bundler.migrate")

# Sentinel: "leave the manifest's kernel/ramdisk as it is" (None would mean "remove it").
KEEP: Any = object()
REMOVE_WORDS = ("", "none")
_IMAGE_ID = re.compile(r"^[a-z]{3}-[0-9a-zA-Z]{1,64}$")
_MAX_MAPPING_BYTES = 1024 * 1024


class BackupExistsError(OutputError):
    """Classic migrate-manifest refuses to run when ``<manifest>.bak`` exists (exit 2)."""

    exit_code = 2


@dataclass
class Migration:
    manifest: Manifest
    xml: bytes
    changes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"name": self.manifest.name, "kernel_id": self.manifest.kernel_id,
                "ramdisk_id": self.manifest.ramdisk_id, "changes": list(self.changes)}


def _same_key(a: Any, b: Any) -> bool:
    return bool(a.public_numbers() == b.public_numbers())


def _new_id(old: str | None, explicit: Any, mapping: dict[str, str], what: str) -> str | None:
    if explicit is not KEEP:
        if explicit is None or str(explicit).strip().lower() in REMOVE_WORDS:
            return None
        value = str(explicit).strip()
        if not _IMAGE_ID.match(value):
            raise UsageError(f"--{what} {value!r} is not an image id like a{what[0]}i-0123abcd (or "
                             "'none' to remove it)")
        return value
    if old and old in mapping:
        return mapping[old]
    return old


def migrate(
    parsed: ParsedManifest,
    *,
    private_key: Any,
    ec2_public_key: Any,
    verify_key: Any = None,
    kernel_id: Any = KEEP,
    ramdisk_id: Any = KEEP,
    mapping: dict[str, str] | None = None,
    ec2_cert_name: str | None = None,
) -> Migration:
    """The migrated, re-signed manifest for ``ec2_public_key`` (spec §7.1 plus the re-wrap).

    ``verify_key`` (the user's certificate key) checks the signature first; by default the
    private key's own public key. ``kernel_id``/``ramdisk_id``: KEEP, a new id, or None to remove;
    ``mapping`` maps old → new ids for whatever was kept.
    """
    verify_key = verify_key if verify_key is not None else private_key.public_key()
    if not _same_key(verify_key, private_key.public_key()):
        # The new signature would not verify against the certificate the old one did.
        raise KeyFileError("the private key (-k) does not belong to the certificate (-c): "
                           "the migrated manifest could not be verified with that certificate")
    keylib.verify_manifest(parsed, verify_key)
    old = parsed.manifest
    key, iv = keylib.unwrap_key_iv(private_key, old)
    mapping = mapping or {}
    new_kernel = _new_id(old.kernel_id, kernel_id, mapping, "kernel")
    new_ramdisk = _new_id(old.ramdisk_id, ramdisk_id, mapping, "ramdisk")

    new = dataclasses.replace(
        old,
        ec2_encrypted_key=keylib.wrap(ec2_public_key, key),
        ec2_encrypted_iv=keylib.wrap(ec2_public_key, iv),
        kernel_id=new_kernel,
        ramdisk_id=new_ramdisk,
        version=WRITE_VERSION,  # classic migration always writes a 2007-10-10 manifest
        signature=None,
        # Lists/dicts copied so the result shares nothing mutable with the input.
        parts=list(old.parts),
        block_device_mapping=dict(old.block_device_mapping),
        product_codes=list(old.product_codes),
        ancestry=list(old.ancestry),
    )
    xml = keylib.sign_manifest(new, private_key)
    _check_round_trip(parsed, xml, private_key)

    changes = [f"AES key and IV re-wrapped to {ec2_cert_name or 'the EC2 certificate'}"]
    for what, before, after in (("kernel", old.kernel_id, new_kernel),
                                ("ramdisk", old.ramdisk_id, new_ramdisk)):
        if before != after:
            if after is None:
                log.warning("the manifest's %s %s is removed", what, before)
            changes.append(f"{what} {before or '(none)'} → {after or '(none)'}")
    if old.version != WRITE_VERSION:
        changes.append(f"manifest version {old.version} → {WRITE_VERSION}")
    return Migration(new, xml, changes)


def _check_round_trip(parsed: ParsedManifest, xml: bytes, private_key: Any) -> None:
    """What we wrote parses, verifies, and differs from the input only where it should."""
    again = parse_manifest(xml, source=f"migrated {parsed.source}")
    keylib.verify_manifest(again, private_key.public_key())
    old, new = parsed.manifest, again.manifest
    carried = ("name", "user", "digest", "size", "bundled_size", "user_encrypted_key",
               "user_encrypted_iv",
               "parts", "arch", "image_type", "kernel_name", "block_device_mapping",
               "product_codes", "ancestry", "bundler")
    changed = [f for f in carried if _norm(getattr(old, f)) != _norm(getattr(new, f))]
    if changed:
        raise ManifestError(f"internal error: migrating {parsed.source} changed "
                            f"{', '.join(changed)}")
    if keylib.unwrap_key_iv(private_key, old) != keylib.unwrap_key_iv(private_key, new):
        raise ManifestError(f"internal error: migrating {parsed.source} changed the AES key")


def _norm(value: Any) -> Any:
    # An empty <bundler/> and no bundler element serialize the same way.
    return None if isinstance(value, tuple) and not any(value) else value


def read_mapping_file(path: Path) -> dict[str, str]:
    """``--mapping-file``: CSV lines ``source_id,target_id``; blank lines and ``#`` comments
    skipped, a header line (``source_id,target_id``) allowed."""
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_MAPPING_BYTES:
            raise UsageError(f"--mapping-file {path} is larger than {_MAX_MAPPING_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--mapping-file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --mapping-file {path}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    mapping: dict[str, str] = {}
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if lineno == 1 and not _IMAGE_ID.match(cells[0]):
            continue  # header
        if len(cells) != 2 or not all(_IMAGE_ID.match(c) for c in cells):
            raise UsageError(f"--mapping-file {path} line {lineno}: expected source_id,target_id "
                             f"(e.g. aki-1234abcd,aki-5678ef01), got {','.join(cells)!r}")
        if cells[0] in mapping and mapping[cells[0]] != cells[1]:
            raise UsageError(f"--mapping-file {path} line {lineno}: {cells[0]} is mapped twice")
        mapping[cells[0]] = cells[1]
    return mapping


def backup_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.name + ".bak")


def write_manifest_with_backup(manifest_path: Path, original: bytes, new: bytes) -> Path:
    """Classic order: ``<manifest>.bak`` first (refused if it exists), then the manifest —
    both written to a temporary name and renamed, so neither is ever half-written. One
    critical section: a signal waits until both are written or the backup is gone again (a
    stray backup would make the next run refuse)."""
    manifest_path = Path(manifest_path)
    bak = backup_path(manifest_path)
    if bak.exists() or bak.is_symlink():
        raise BackupExistsError(f"backup {bak} already exists: a previous migration left it; move "
                                "it away (or restore it over the manifest) and re-run")
    try:
        mode = manifest_path.stat().st_mode & 0o777  # the backup and the new manifest keep it
    except OSError:
        mode = 0o644
    with critical():
        _write_new(bak, original, mode, exclusive=True)
        try:
            _write_new(manifest_path, new, mode, exclusive=False)
        except BaseException:
            discard(bak)  # the manifest is untouched, so the backup is not needed
            raise
    return bak


def _write_new(path: Path, data: bytes, mode: int, *, exclusive: bool) -> None:
    try:
        write_new_file(path, data, mode, replace=not exclusive)
    except FileExistsError:
        raise BackupExistsError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}",
                          hint="migrate a copy of the manifest in a writable directory") from None


__all__ = [
    "KEEP",
    "BackupExistsError",
    "Migration",
    "backup_path",
    "migrate",
    "read_mapping_file",
    "write_manifest_with_backup",
]
