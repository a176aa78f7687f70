"""fstab generation (pure) and installation into a staging tree."""

from __future__ import annotations

import os

import pytest

from bundler.errors import UsageError
from bundler.volume.fstab import choose_fstab, generate_fstab, install_fstab


def rows(text: str) -> list[list[str]]:
    return [ln.split() for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_default_fstab_by_label():
    text = generate_fstab(label="cloudimg-rootfs", uuid="1234")
    assert text.startswith("# Default /etc/fstab\n# Supplied by:")
    assert rows(text) == [
        ["LABEL=cloudimg-rootfs", "/", "ext4", "defaults", "1", "1"],
        ["none", "/dev/pts", "devpts", "gid=5,mode=620", "0", "0"],
        ["none", "/proc", "proc", "defaults", "0", "0"],
        ["none", "/sys", "sysfs", "defaults", "0", "0"],
    ]


def test_fstab_by_uuid_when_no_label_and_legacy():
    assert rows(generate_fstab(label=None, uuid="abcd"))[0][0] == "UUID=abcd"
    legacy = generate_fstab(label=None, uuid="abcd", legacy=True)
    assert legacy.startswith("# Legacy /etc/fstab")
    assert [r[1] for r in rows(legacy)] == ["/", "/mnt", "swap", "/proc", "/sys"]


def test_choose_fstab(tmp_path):
    f = tmp_path / "my-fstab"
    f.write_text("custom\n")
    assert choose_fstab(fstab_file=f, generate=False, label="x", uuid=None) == b"custom\n"
    assert choose_fstab(fstab_file=None, generate=False, label="x", uuid=None) is None
    assert b"LABEL=x" in choose_fstab(fstab_file=None, generate=True, label="x", uuid=None)
    with pytest.raises(UsageError, match="mutually exclusive"):
        choose_fstab(fstab_file=f, generate=True, label="x", uuid=None)
    with pytest.raises(UsageError, match="cannot read"):
        choose_fstab(fstab_file=tmp_path / "missing", generate=False, label="x", uuid=None)


def test_install_keeps_old_and_never_writes_through_hard_link(tmp_path):
    source = tmp_path / "source-fstab"
    source.write_text("original\n")
    staging = tmp_path / "staging"
    (staging / "etc").mkdir(parents=True)
    os.link(source, staging / "etc/fstab")          # how staging links files
    install_fstab(staging, b"new\n")
    assert source.read_text() == "original\n"
    assert (staging / "etc/fstab").read_text() == "new\n"
    assert (staging / "etc/fstab.old").read_text() == "original\n"
    assert (staging / "etc/fstab").stat().st_ino != source.stat().st_ino
    assert oct((staging / "etc/fstab").stat().st_mode & 0o777) == "0o644"


def test_install_without_etc(tmp_path):
    install_fstab(tmp_path, b"x\n")
    assert (tmp_path / "etc/fstab").read_bytes() == b"x\n"
    assert not (tmp_path / "etc/fstab.old").exists()
