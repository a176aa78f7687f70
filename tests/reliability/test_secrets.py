"""Secrets: the AES key and IV and the private key never reach argv, logs (even --debug),
exception messages or files; loose key-file permissions are warned about; keygen writes the
key 0600 atomically."""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bundler import keys as keylib
from bundler.cli import main
from bundler.errors import OutputError
from bundler.manifest import parse_manifest
from tests.support import crashkit
from tests.support.crashkit import REPO


@pytest.fixture(scope="module")
def ws(tmp_path_factory, user_key_pair, ec2_key_pair) -> crashkit.Workspace:
    return crashkit.make_workspace(tmp_path_factory.mktemp("secrets"), user_key_pair.key_path,
                                   user_key_pair.cert_path, ec2_key_pair.cert_path, size=3 << 20)


def secrets_of(manifest: Path, key_path: Path) -> list[bytes]:
    """Every spelling of the bundle's secrets that must never be shown: AES key and IV (raw,
    hex, upper-case hex) and the body lines of the private key PEM."""
    m = parse_manifest(manifest.read_bytes()).manifest
    private = keylib.load_private_key(key_path)
    key, iv = keylib.unwrap_key_iv(private, m)
    spelled = [v for raw in (key, iv) for v in (raw, raw.hex().encode(),
                                                raw.hex().upper().encode())]
    pem_lines = [line for line in key_path.read_bytes().splitlines()
                 if line and not line.startswith(b"-----")]
    assert len(pem_lines) > 10
    return spelled + pem_lines


def leaks(blob: bytes, secrets: list[bytes]) -> list[bytes]:
    return [s for s in secrets if s in blob]


class NoSubprocess(AssertionError):
    pass


@pytest.fixture
def forbid_subprocesses(monkeypatch):
    """Any attempt to start a process fails the test: no key can be on a child's argv."""
    def refuse(*args, **kwargs):
        raise NoSubprocess(f"a subprocess was started: {args[:2]!r}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve",
                 "execvp", "execvpe", "popen"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)


def test_bundle_and_unbundle_start_no_process(ws, tmp_path, forbid_subprocesses, capsys):
    dest, out = tmp_path / "dest", tmp_path / "out"
    dest.mkdir()
    out.mkdir()
    assert main(ws.bundle_args(dest, "img", "--debug")) == 0
    assert main(ws.unbundle_args(dest / "img.manifest.xml", out, "--debug")) == 0
    assert main(["verify", str(dest / "img.manifest.xml"), "-k", str(ws.key), "--decrypt"]) == 0
    assert crashkit.sha1_file(out / "img") == ws.image_sha1


def run(argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bundler", *argv], cwd=REPO, capture_output=True,
                          timeout=120)


def test_debug_output_and_files_never_show_the_secrets(ws, tmp_path):
    dest, out = tmp_path / "dest", tmp_path / "out"
    dest.mkdir()
    out.mkdir()
    bundled = run(ws.bundle_args(dest, "img", "--debug", "--verbose"))
    assert bundled.returncode == 0, bundled.stderr
    manifest = dest / "img.manifest.xml"
    secrets = secrets_of(manifest, ws.key)
    unbundled = run(ws.unbundle_args(manifest, out, "--debug"))
    assert unbundled.returncode == 0, unbundled.stderr
    assert b"DEBUG" in bundled.stderr + unbundled.stderr  # debug logging really was on
    for proc in (bundled, unbundled):
        assert leaks(proc.stdout + proc.stderr, secrets) == []
    # Files: the parts are ciphertext, the manifest holds only wrapped keys.
    for path in dest.iterdir():
        assert leaks(path.read_bytes(), secrets) == [], path
    # Failures under --debug print a traceback: still no secret in it.
    part = dest / "img.part.0"
    data = part.read_bytes()
    part.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # always a change, whatever the byte was
    failed = run(ws.unbundle_args(manifest, tmp_path / "out2", "--debug"))
    assert failed.returncode != 0 and b"Traceback" in failed.stderr
    assert leaks(failed.stdout + failed.stderr, secrets) == []


def test_decryption_failure_messages_hold_no_key_material(tmp_path):
    """A signed bundle whose ciphertext is garbage: the error names the problem, not the key."""
    from tests.support import harness

    manifest, parts = harness.signed_bundle(b"", 10, gzip_data=os.urandom(5000))
    from bundler.errors import BundlerError
    from bundler.pipeline import unbundle

    with pytest.raises(BundlerError) as info:
        unbundle(parse_manifest(manifest), harness.MemoryPartSource(parts), tmp_path,
                 harness.fuzz_key())
    text = str(info.value).encode() + repr(info.value).encode()
    for secret in (harness.KEY, harness.IV):
        assert secret not in text and secret.hex().encode() not in text
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- key files


def test_loose_private_key_permissions_are_warned_about(user_key_pair, tmp_path, caplog):
    loose = tmp_path / "loose.pem"
    loose.write_bytes(user_key_pair.key_path.read_bytes())
    for mode, warned in ((0o600, False), (0o400, False), (0o640, True), (0o604, True),
                         (0o644, True)):
        loose.chmod(mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bundler.keys"):
            keylib.load_private_key(loose)
        hits = [r for r in caplog.records if "readable by group/others" in r.getMessage()]
        assert bool(hits) == warned, oct(mode)
        if warned:
            assert "chmod 600" in hits[0].getMessage()


def test_keygen_key_is_never_wider_than_0600_even_with_umask_0(tmp_path, monkeypatch):
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    seen_modes: list[int] = []
    real_write = os.write

    def watching_write(fd, data):
        seen_modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", watching_write)
    old = os.umask(0)
    try:
        keylib.keygen(key, cert)
    finally:
        os.umask(old)
    assert seen_modes and seen_modes[0] == 0o600  # the key: created 0600 before a byte was written
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["c.pem", "k.pem"]


def test_keygen_failure_leaves_no_partial_key(tmp_path, monkeypatch):
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    real_write = os.write
    calls = [0]

    def failing_write(fd, data):
        calls[0] += 1
        if calls[0] == 1:
            real_write(fd, bytes(data)[:100])  # half the key is on disk…
            raise OSError(errno.ENOSPC, "No space left on device")  # …then the disk is full
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OutputError, match="No space left"):
        keylib.keygen(key, cert)
    assert os.listdir(tmp_path) == []  # no key under its name, no temporary file


def test_keygen_certificate_failure_removes_the_fresh_key(tmp_path, monkeypatch):
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    real_link = os.link

    def link(src, dst, *args, **kwargs):
        if Path(dst).name == "c.pem":
            raise OSError(errno.EIO, "Input/output error")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "rename", lambda *a,
                        **k: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OutputError):
        keylib.keygen(key, cert)
    assert os.listdir(tmp_path) == []
