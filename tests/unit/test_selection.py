"""File selection for bundle-vol, on a fake filesystem (pyfakefs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import set_uid

from bundler.errors import UsageError, VolumeError
from bundler.volume import VolumeConfig, check_preconditions, select_volume
from bundler.volume.mounts import Mount, parse_mountinfo, parse_swaps
from bundler.volume.secrets_filter import private_key_in, secret_by_name
from bundler.volume.selection import (
    SelectionConfig,
    normalize_pattern,
    select_files,
    split_patterns,
)

VOL = Path("/srv/rootfs")

# Key-shaped fakes are assembled at run time so that no file in the repository looks like a key.
def pem(label: bytes, body: bytes) -> bytes:
    return b"-----BEGIN " + label + b"-----\n" + body + b"\n-----END " + label + b"-----\n"


PRIVATE_PEM = pem(b"RSA " + b"PRIVATE KEY", b"MIIEpAIBAAKCAQEAx")
OPENSSH_KEY = pem(b"OPENSSH " + b"PRIVATE KEY", b"b3BlbnNzaC1rZXktdjEAAAAA")
CERT_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"


def make(fs, files: dict[str, bytes | str]) -> None:
    for rel, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        fs.create_file(VOL / rel, contents=data)


def run(**kw) -> tuple[set[str], dict[str, str], list[str]]:
    sel = select_files(SelectionConfig(volume=VOL, **kw))
    return ({e.rel for e in sel.entries}, {x.rel: x.reason for x in sel.excluded}, sel.warnings)


@pytest.fixture
def tree(fs):
    make(fs, {
        "etc/hostname": "host\n",
        "etc/ssl/certs/ca-certificates.crt": CERT_PEM * 3,
        "etc/ssl/certs/Some_Root_CA.pem": CERT_PEM,
        "etc/ssl/private/ssl-cert-snakeoil.key": PRIVATE_PEM,
        "etc/apt/trusted.gpg.d/debian-archive.gpg": b"\x99\x02\x0d\x04" + b"\0" * 64,
        "usr/share/keyrings/debian-archive-keyring.gpg": b"\x99\x02\x0d\x04" + b"\1" * 64,
        "root/secret-export.gpg": b"\x95\x03\x0d\x04" + b"\0" * 64,  # old-format tag 5
        "root/.gnupg/private-keys-v1.d/AB12.key": "Key: (protected-private-key ...)",
        "home/bob/.ssh/id_rsa": "not even a key, excluded by name",
        "home/bob/.ssh/id_rsa.pub": "ssh-rsa AAAA bob@host\n",
        "home/bob/.ssh/id_ed25519": OPENSSH_KEY,
        "home/bob/.ssh/authorized_keys": "ssh-rsa AAAA\n",
        "home/bob/.ssh/known_hosts": "host ssh-rsa AAAA\n",
        "home/bob/.bash_history": "ls\n",
        "home/bob/.zsh_history": "ls\n",
        "home/bob/.python_history": "1+1\n",
        "home/bob/notes.txt~": "backup",
        "home/bob/.notes.txt.swp": "swap",
        "home/bob/.#lock": "lock",
        "home/bob/#autosave#": "auto",
        "home/bob/deploy-key": b"some text\n" + PRIVATE_PEM,
        "home/bob/server.pem": CERT_PEM + PRIVATE_PEM,
        "home/bob/app.jks": b"\xfe\xed\xfe\xed",
        "home/bob/x.priv": b"k",
        "usr/lib/python3/test_ssl.py": b"KEY = '''" + PRIVATE_PEM + b"'''",
        "usr/bin/ls": b"\x7fELF" + b"\0" * 100,
        "proc/1/status": "x",
        "sys/kernel/x": "x",
        "dev/null": "",
        "mnt/data/file": "x",
        "media/cdrom/file": "x",
    })
    return fs


def test_virtual_dirs_kept_empty(tree):
    kept, excluded, _ = run()
    for d in ("proc", "sys", "dev"):
        assert d in kept
        assert excluded[f"{d}/*"].startswith("virtual filesystem")
    assert not any(k.startswith(("proc/", "sys/", "dev/")) for k in kept)
    # A built tree's mnt and media are its own content (only the live / mounts things there).
    assert {"mnt/data/file", "media/cdrom/file"} <= kept


def test_secret_filter_removes_keys_keeps_public_material(tree):
    kept, excluded, _ = run()
    for secret in ("home/bob/.ssh/id_rsa", "home/bob/.ssh/id_ed25519",
                   "home/bob/.ssh/authorized_keys",
                   "home/bob/.bash_history", "home/bob/.zsh_history", "home/bob/.python_history",
                   "home/bob/notes.txt~", "home/bob/.notes.txt.swp", "home/bob/.#lock",
                   "home/bob/#autosave#", "home/bob/deploy-key", "home/bob/server.pem",
                   "home/bob/app.jks", "home/bob/x.priv", "etc/ssl/private/ssl-cert-snakeoil.key",
                   "root/secret-export.gpg", "root/.gnupg/private-keys-v1.d/AB12.key"):
        assert secret not in kept, secret
        assert excluded[secret].startswith("secret:"), secret
    for public in ("etc/ssl/certs/ca-certificates.crt", "etc/ssl/certs/Some_Root_CA.pem",
                   "etc/apt/trusted.gpg.d/debian-archive.gpg",
                   "usr/share/keyrings/debian-archive-keyring.gpg", "home/bob/.ssh/id_rsa.pub",
                   "home/bob/.ssh/known_hosts", "usr/lib/python3/test_ssl.py", "usr/bin/ls",
                   "etc/hostname"):
        assert public in kept, public
    assert "private key (PEM/OpenSSH)" in excluded["home/bob/deploy-key"]


def test_no_filter_keeps_secrets(tree):
    kept, excluded, _ = run(secret_filter=False)
    assert {"home/bob/.ssh/id_rsa", "home/bob/.bash_history", "home/bob/deploy-key"} <= kept
    assert not any(r.startswith("secret") for r in excluded.values())


def test_user_excludes_globs_commas_and_absolute(tree):
    kept, excluded, _ = run(excludes=["/srv/rootfs/home/bob/*.txt~,usr/bin/*", "/etc/ssl/certs"])
    assert "usr/bin" in kept and "usr/bin/ls" not in kept
    assert excluded["usr/bin/ls"] == "excluded by -e usr/bin/*"
    assert "etc/ssl/certs" not in kept and "etc/ssl/certs/Some_Root_CA.pem" not in kept
    assert excluded["etc/ssl/certs"] == "excluded by -e etc/ssl/certs"


def test_split_and_normalize_patterns():
    assert split_patterns(["a,b", " c ", "d,,"]) == ["a", "b", "c", "d"]
    assert normalize_pattern("/tmp/*", Path("/")) == "tmp/*"
    assert normalize_pattern("/srv/rootfs/var/log/", VOL) == "var/log"
    assert normalize_pattern("/var/log", VOL) == "var/log"
    assert normalize_pattern("./var//log", VOL) == "var/log"


def test_include_overrides_exclude_and_filter(tree):
    kept, excluded, _ = run(excludes=["usr/bin"], includes=["usr/bin", "home/bob/.bash_history"])
    assert "usr/bin/ls" in kept
    assert "home/bob/.bash_history" in kept
    assert "home/bob/.zsh_history" not in kept


def test_include_reaches_into_excluded_directory(tree):
    kept, excluded, _ = run(excludes=["home"], includes=["home/bob/.ssh/known_hosts"])
    assert {"home", "home/bob", "home/bob/.ssh", "home/bob/.ssh/known_hosts"} <= kept
    assert "home/bob/.ssh/id_rsa.pub" not in kept
    assert excluded["home/bob/.ssh/id_rsa.pub"].startswith("inside an excluded directory")


def test_include_cannot_resurrect_virtual_contents(tree):
    kept, _, _ = run(includes=["proc/1/status", "proc"])
    assert "proc/1/status" not in kept


def test_destination_inside_volume_is_excluded(tree):
    tree.create_file(VOL / "tmp/out/image.part.0", contents="x")
    kept, excluded, _ = run(hard_excludes={VOL / "tmp/out": "destination directory"})
    assert "tmp" in kept and "tmp/out" not in kept
    assert excluded["tmp/out"] == "destination directory"


def test_destination_via_select_volume(tree):
    tree.create_dir(VOL / "var/tmp/dest")
    tree.create_file(VOL / "var/tmp/dest/old.part.0", contents="x")
    sel = select_volume(VolumeConfig(volume=VOL, destination=VOL / "var/tmp/dest"),
                        mounts=[], swap_files=[])
    assert "var/tmp/dest" not in {e.rel for e in sel.entries}


def test_symlinks_never_followed(fs):
    make(fs, {"etc/hostname": "h"})
    fs.create_symlink(VOL / "loop", VOL)                 # points at the volume itself
    fs.create_symlink(VOL / "etc/a", VOL / "etc/b")      # a -> b -> a
    fs.create_symlink(VOL / "etc/b", VOL / "etc/a")
    fs.create_symlink(VOL / "etc/dangling", "/nonexistent")
    kept, _, warnings = run()
    assert {"loop", "etc/a", "etc/b", "etc/dangling"} <= kept
    assert not any(k.startswith("loop/") for k in kept)
    assert warnings == []


def test_unreadable_file_warns_and_is_left_out(fs, caplog):
    make(fs, {"etc/shadow-backup": "root:x", "etc/hostname": "h", "var/big.bin": b"\0" * 10})
    os.chmod(VOL / "etc/shadow-backup", 0o000)
    os.chmod(VOL / "var/big.bin", 0o000)
    fs.create_dir(VOL / "secret-dir")
    fs.create_file(VOL / "secret-dir/x")
    os.chmod(VOL / "secret-dir", 0o000)
    set_uid(1000)
    kept, excluded, warnings = run()
    assert "etc/hostname" in kept
    assert "etc/shadow-backup" not in kept
    assert excluded["etc/shadow-backup"].startswith("unreadable")
    assert "secret-dir" in kept
    assert any("shadow-backup" in w for w in warnings)
    assert any("secret-dir" in w for w in warnings)
    assert "cannot read /etc/shadow-backup" in caplog.text


def test_mount_policies(fs):
    make(fs, {"boot/vmlinuz": "k", "home/u/f": "x", "net/share/f": "x", "run/lock/x": "x"})
    mounts = [Mount(str(VOL / "boot"), "ext4", "/dev/sda2"),
              Mount(str(VOL / "net"), "nfs4", "srv:/x"),
              Mount(str(VOL / "run"), "tmpfs", "tmpfs"), Mount("/elsewhere", "ext4", "/dev/sdb")]
    kept, excluded, _ = run(mounts=mounts)                # default: no mount below the volume
    assert "boot" in kept and "boot/vmlinuz" not in kept
    assert "--local-mounts" in excluded["boot/*"]
    kept, excluded, _ = run(mounts=mounts, mount_policy="local")
    assert "boot/vmlinuz" in kept                         # local disk fs: crossed (classic)
    assert "net" in kept and "net/share" not in kept      # nfs: mount point kept empty
    assert "use --all" in excluded["net/*"]
    assert "run" in kept and "run/lock" not in kept
    kept, _, _ = run(mounts=mounts, mount_policy="all")
    assert {"net/share/f", "run/lock/x", "boot/vmlinuz"} <= kept
    kept, _, _ = run(mounts=mounts, mount_policy="one-filesystem")
    assert "boot" in kept and "boot/vmlinuz" not in kept


def test_swap_files_excluded(fs):
    swap = bytearray(64 * 1024)
    swap[4086:4096] = b"SWAPSPACE2"
    make(fs, {"swapfile": bytes(swap), "other": b"\0" * 64 * 1024, "listed": b"x"})
    kept, excluded, _ = run(swap_files=[str(VOL / "listed")])
    assert excluded["swapfile"] == "swap file" and excluded["listed"] == "swap file"
    assert "other" in kept


def test_unmatched_exclude_reported(tree):
    sel = select_files(SelectionConfig(volume=VOL, excludes=["no/such/*"]))
    assert sel.unmatched_excludes == ["no/such/*"]


def test_missing_volume(fs):
    with pytest.raises(VolumeError, match="does not exist"):
        select_files(SelectionConfig(volume=Path("/nope")))


def test_entries_parent_first_and_used_bytes(tree):
    sel = select_files(SelectionConfig(volume=VOL))
    seen = set()
    for e in sel.entries:
        parent = e.rel.rpartition("/")[0] if "/" in e.rel else ""
        assert e.rel == "" or parent in seen
        seen.add(e.rel)
    assert sel.used_bytes > 0


def test_live_root_needs_root_and_skips_run_tmp(fs, monkeypatch):
    fs.create_file("/etc/hostname", contents="h")
    fs.create_file("/run/sshd.pid", contents="1")
    fs.create_file("/tmp/scratch", contents="x")
    fs.create_file("/proc/cpuinfo", contents="x")
    fs.create_file("/dest/image.part.0", contents="x")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(VolumeError, match="needs root"):
        check_preconditions(VolumeConfig(volume=Path("/"), destination=Path("/dest")))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    check_preconditions(VolumeConfig(volume=Path("/"), destination=Path("/dest")))
    sel = select_volume(VolumeConfig(volume=Path("/"), destination=Path("/dest"),
                                     excludes=["/tmp/*"]), mounts=[], swap_files=[])
    kept = {e.rel for e in sel.entries}
    assert {"etc/hostname", "run", "tmp", "proc"} <= kept
    assert not {"run/sshd.pid", "tmp/scratch", "proc/cpuinfo", "dest"} & kept


def test_preconditions(fs):
    fs.create_dir(VOL)
    fs.create_dir("/out")
    with pytest.raises(VolumeError, match="does not exist"):
        check_preconditions(VolumeConfig(volume=Path("/missing"), destination=Path("/out")))
    with pytest.raises(UsageError, match="mutually exclusive"):
        check_preconditions(VolumeConfig(volume=VOL, destination=Path("/out"), fstab=Path("/x"),
                                         generate_fstab=True))
    with pytest.raises(UsageError, match="10240"):
        check_preconditions(VolumeConfig(volume=VOL, destination=Path("/out"), size_mib=20000))
    check_preconditions(VolumeConfig(volume=VOL, destination=Path("/out"), size_mib=20000,
                                     size_checks=False))


def test_parse_mountinfo_and_swaps():
    text = ("22 27 0:21 / /proc rw,relatime - proc proc rw\n"
            "40 27 8:2 / /srv/my\\040disk rw - ext4 /dev/sda2 rw\n")
    assert parse_mountinfo(text) == [Mount("/proc", "proc", "proc"),
                                     Mount("/srv/my disk", "ext4", "/dev/sda2")]
    swaps = ("Filename Type Size Used Priority\n/swapfile file 1048572 0 -2\n"
             "/dev/sda3 partition 1 0 -3\n")
    assert parse_swaps(swaps) == ["/swapfile"]


def test_private_key_detection_pure():
    assert private_key_in(PRIVATE_PEM)
    assert private_key_in(b"-----BEGIN " + b"PRIVATE KEY-----\n")
    assert private_key_in(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert private_key_in(b"-----BEGIN EC " + b"PRIVATE KEY-----\n")
    assert private_key_in(b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n")
    assert private_key_in(b"PuTTY-User-Key-File-3: ssh-ed25519\n")
    assert private_key_in(b"\x95\x01", "k.gpg")          # old-format secret key packet
    assert private_key_in(b"\xc5\x01", "k.gpg")          # new-format secret key packet
    assert not private_key_in(b"\x99\x01", "k.gpg")      # public key packet
    assert not private_key_in(CERT_PEM)
    assert not private_key_in(b"-----BEGIN PUBLIC KEY-----\n")
    assert secret_by_name("home/u/.ssh/id_rsa.pub") is None
    assert secret_by_name("home/u/.ssh/authorized_keys") == "ssh authorized_keys"
    assert secret_by_name("etc/ssl/certs/a.pem") is None


def test_unmatched_patterns_warn(tree):
    sel = select_files(SelectionConfig(volume=VOL, excludes=["no/such/*"], includes=["nor/this"]))
    assert sel.unmatched_excludes == ["no/such/*"] and sel.unmatched_includes == ["nor/this"]
    assert any("-e no/such/* matched nothing" in w for w in sel.warnings)
    assert any("-i nor/this matched nothing" in w for w in sel.warnings)


def test_bind_mounts_and_file_mounts_left_out(fs):
    make(fs, {"srv/data/x": "host data", "etc/resolv.conf": "nameserver\n", "boot/k": "k"})
    mounts = [Mount(str(VOL / "srv"), "ext4", "/dev/vda", root="/home/alice"),
              Mount(str(VOL / "etc/resolv.conf"), "ext4", "/dev/vda", root="/etc/shadow"),
              Mount(str(VOL / "boot"), "ext4", "/dev/sda2")]
    for policy in ("one-filesystem", "local"):
        kept, excluded, _ = run(mounts=mounts, mount_policy=policy)
        assert "srv" in kept and "srv/data" not in kept
        assert "bind mount of /home/alice" in excluded["srv/*"]
        assert "etc/resolv.conf" not in kept and "file mount" in excluded["etc/resolv.conf"]
    assert "boot/k" in kept                     # --local-mounts crosses a real local mount
    kept, _, _ = run(mounts=mounts, mount_policy="all")
    assert {"srv/data/x", "etc/resolv.conf", "boot/k"} <= kept


def test_non_utf8_names_and_mount_points(fs):
    bad = os.fsdecode(b"caf\xe9")
    make(fs, {f"{bad}/x": "x", "mnt/ok": "x"})
    text = os.fsencode(f"40 27 8:2 / {VOL}/") + b"caf\\351 rw - tmpfs none rw\n"
    mounts = parse_mountinfo(text)
    assert mounts == [Mount(f"{VOL}/{bad}", "tmpfs", "none")]
    sel = select_files(SelectionConfig(volume=VOL, mounts=mounts))
    ex = {x.rel: x for x in sel.excluded}
    assert ex[f"{bad}/*"].display() == "/caf\\xe9/*"
    assert "mnt/ok" in {e.rel for e in sel.entries}


def test_display_is_lossless():
    from bundler.volume.safefs import display, undisplay

    for name in ("plain/path", os.fsdecode(b"a\xff\xfeb"), "back\\slash", "tab\there", "é€"):
        shown = display(name)
        assert shown.isprintable() and undisplay(shown) == name
        shown.encode("utf-8")                   # always printable as UTF-8
    assert display(os.fsdecode(b"\xff")) == "\\xff"


def test_parse_mountinfo_root_field():
    text = "36 35 98:0 /mnt1 /srv/bind rw,noatime master:1 - ext3 /dev/root rw\n"
    assert parse_mountinfo(text) == [Mount("/srv/bind", "ext3", "/dev/root", root="/mnt1")]
    assert parse_mountinfo(text)[0].is_bind
