#!/usr/bin/env python3
"""Create a small but realistic root filesystem tree for demos and tests of bundle-vol.

    scripts/make_sample_rootfs.py DIR

Works without root (ownership is left as the caller's). The tree holds what the file selection
must keep (binaries, a symlink, a hard link, CA certificates, an apt keyring, a sparse file,
an ssh public key) and what it must leave out (a user's ssh private key, authorized_keys,
shell history, an editor swap file, contents of /proc and /dev).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path


def _certificate_and_key() -> tuple[bytes, bytes]:
    """A throwaway self-signed CA certificate and an RSA private key, made now (never stored)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sample Root CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    ssh_key = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), ssh_key


def make_rootfs(root: Path) -> dict[str, list[str]]:
    """Build the tree; returns the paths that must be kept and those that must be filtered."""
    root.mkdir(parents=True, exist_ok=True)
    for d in ("bin", "dev", "etc/apt/trusted.gpg.d", "etc/ssl/certs", "etc/ssh", "home/alice/.ssh",
              "mnt", "media", "proc/1", "root", "sys", "tmp", "usr/bin", "usr/lib", "var/log",
              "var/lib/sample"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    (root / "etc/hostname").write_text("sample\n")
    (root / "etc/os-release").write_text('PRETTY_NAME="Sample Linux"\nID=sample\n')
    (root / "etc/fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "alice:x:1000:1000::/home/alice:/bin/sh\n")
    (root / "proc/1/status").write_text("Name: init\n")  # must not be copied
    sh = root / "usr/bin/sh"
    sh.write_bytes(b"#!/bin/true\n" + b"\x7fELF" * 1024)
    os.chmod(sh, 0o755)
    ls = root / "usr/bin/ls"
    ls.write_bytes(b"\x7fELF-ls" * 2048)
    os.chmod(ls, 0o755)
    if not (root / "usr/bin/dir").exists():
        os.link(ls, root / "usr/bin/dir")                      # hard link
    if not (root / "bin/sh").is_symlink():
        os.symlink("../usr/bin/sh", root / "bin/sh")          # symlink
    cert, private_key = _certificate_and_key()
    (root / "etc/ssl/certs/sample-root-ca.pem").write_bytes(cert)
    (root / "etc/ssl/certs/ca-certificates.crt").write_bytes(cert)
    # A binary OpenPGP public-key packet header (tag 6) is what a dearmored apt keyring starts with.
    keyring = root / "etc/apt/trusted.gpg.d/sample-archive.gpg"
    keyring.write_bytes(b"\x99\x01\x0d\x04" + os.urandom(256))
    (root / "home/alice/.ssh/id_rsa").write_bytes(private_key)
    os.chmod(root / "home/alice/.ssh/id_rsa", 0o600)
    (root / "home/alice/.ssh/id_rsa.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E sample@host\n")
    (root / "home/alice/.ssh/authorized_keys").write_text("ssh-rsa AAAAB3NzaC1yc2E sample@host\n")
    (root / "home/alice/.bash_history").write_text("export AWS_SECRET_ACCESS_KEY=do-not-ship\n")
    (root / "etc/ssh/ssh_host_rsa_key").write_bytes(private_key)
    (root / "etc/.hosts.swp").write_bytes(b"b0VIM 9.0")
    (root / "var/log/syslog").write_text("boot ok\n")
    with open(root / "var/lib/sample/sparse.db", "wb") as fh:  # 64 MiB, 2 data blocks
        fh.write(b"header")
        fh.seek(64 * 1024 * 1024 - 5)
        fh.write(b"tail\n")
    return {
        "kept": ["etc/hostname", "usr/bin/ls", "usr/bin/dir", "bin/sh",
                 "etc/ssl/certs/sample-root-ca.pem", "etc/apt/trusted.gpg.d/sample-archive.gpg",
                 "home/alice/.ssh/id_rsa.pub", "var/lib/sample/sparse.db"],
        "filtered": ["home/alice/.ssh/id_rsa", "home/alice/.ssh/authorized_keys",
                     "home/alice/.bash_history", "etc/ssh/ssh_host_rsa_key", "etc/.hosts.swp",
                     "proc/1/status"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    info = make_rootfs(args.directory)
    print(f"sample root filesystem in {args.directory}")
    print("  must be kept:     " + ", ".join(info["kept"]))
    print("  must be filtered: " + ", ".join(info["filtered"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
