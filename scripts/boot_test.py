#!/usr/bin/env python3
"""Boot test: bundle-vol a real Debian root filesystem, unbundle it and boot it under qemu.

    scripts/boot_test.py [--schemes mbr,gpt,none,mbr-xfs] [--timeout S] [--cache DIR]
                         [--workdir DIR] [--prepare-only] [--keep]

1. A Debian bookworm root filesystem with a kernel and GRUB 2 for BIOS (debootstrap
   ``--variant=minbase --include=linux-image-amd64,grub-pc-bin,systemd-sysv,udev``), built
   once and cached under /var/cache/ami-bundler-boot (or $AMI_BUNDLER_BOOT_CACHE); the apt
   mirror is read from this machine's apt sources and never printed or left in the tree.
   A oneshot systemd unit in the tree prints ``BOOT-OK <uuid of />`` to /dev/ttyS0 and powers
   off; a systemd-networkd .network file gives the first interface DHCP.
2. For each scheme: ``ami-bundler bundle-vol -P SCHEME`` (GRUB 2 installed for mbr/gpt,
   menu.lst generated for none), ``ami-bundler unbundle``, then boot the *unbundled* image:
   mbr/gpt from the disk (BIOS → GRUB 2 → kernel), none with ``-kernel/-initrd`` and the
   cmdline of the generated menu.lst (console=hvc0 → ttyS0: qemu has no Xen console).
   A scheme ``SCHEME-TYPE`` (``mbr-xfs``, ``gpt-btrfs``) bundles with ``--fs-type TYPE``:
   GRUB 2 then reads the root from that filesystem (its module in core.img).
3. The serial log is polled for the marker until a timeout; the marker's UUID must be the
   image's filesystem UUID. Boot time (qemu start → marker) is reported.

Needs root (debootstrap, mke2fs -d of a tree with device nodes), debootstrap and
qemu-system-x86_64. Software emulation (TCG) by default: a /dev/kvm that opens is no proof
that KVM works (in nested sandboxes the guest kernel hangs in decompression); ``--accel kvm``
or AMI_BUNDLER_BOOT_ACCEL=kvm|auto to use it.
Exit status 0 when every scheme booted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
PACKAGES = ("linux-image-amd64", "grub-pc-bin", "systemd-sysv", "udev", "initramfs-tools")
DEFAULT_ACCEL = os.environ.get("AMI_BUNDLER_BOOT_ACCEL", "tcg")
DEFAULT_CACHE = Path(os.environ.get("AMI_BUNDLER_BOOT_CACHE", "/var/cache/ami-bundler-boot"))
MARKER = "BOOT-OK"
MARKER_UNIT = """\
[Unit]
Description=ami-bundler boot test marker
After=local-fs.target
DefaultDependencies=yes

[Service]
Type=oneshot
# The UUID of the filesystem actually mounted as / proves the right disk was booted.
ExecStart=/bin/sh -c 'echo "BOOT-OK $(findmnt -n -o UUID /)" > /dev/ttyS0'
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
"""
NETWORK_FILE = """\
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""


def log(msg: str) -> None:
    print(f"[boot-test] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ rootfs

def find_mirror(suite: str = SUITE) -> str | None:
    """First http(s) 'deb' URI for ``suite`` in this machine's apt sources (never printed)."""
    files = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.lstrip().startswith("#") or ":" not in line:
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if ("deb" in fields.get("types", "").split()
                        and suite in fields.get("suites", "").split()
                        and fields.get("enabled", "yes").lower() != "no"):
                    for uri in fields.get("uris", "").split():
                        if uri.startswith(("http:", "https:", "file:")):
                            return uri
        elif f.suffix == ".list":
            for line in text.splitlines():
                words = line.split()
                if not words or words[0] != "deb":
                    continue
                words = words[1:]
                if words and words[0].startswith("["):
                    while words and not words[0].endswith("]"):
                        words = words[1:]
                    words = words[1:]
                if len(words) >= 2 and words[1] == suite and words[0].startswith(("http", "file")):
                    return words[0]
    return None


def build_rootfs(cache: Path) -> Path:
    """The cached Debian tree (built on first use); returns its path."""
    tree = cache / f"{SUITE}-rootfs"
    stamp = cache / f"{SUITE}-rootfs.complete"
    wanted = " ".join(PACKAGES)
    if stamp.is_file() and stamp.read_text().strip() == wanted and tree.is_dir():
        log(f"cached root filesystem: {tree}")
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    if tree.exists():
        shutil.rmtree(tree)
    mirror = find_mirror()
    if not mirror:
        sys.exit(f"no 'deb' entry for {SUITE} in this machine's apt sources")
    if not shutil.which("debootstrap"):
        sys.exit("debootstrap not installed (apt-get install debootstrap)")
    log(f"debootstrap --variant=minbase {SUITE} (+{','.join(PACKAGES)}) into {tree}; "
        "mirror from apt sources (not printed)")
    started = time.monotonic()
    logfile = cache / "debootstrap.log"
    proc = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(tree),
         mirror], capture_output=True, text=True)
    logfile.write_text((proc.stdout + proc.stderr).replace(mirror, "<apt-mirror>"))
    if proc.returncode:
        sys.exit(f"debootstrap failed (exit {proc.returncode}), see {logfile}")
    for f in (tree / "var/cache/apt/archives").glob("*.deb"):
        f.unlink()
    sources = tree / "etc/apt/sources.list"
    if sources.is_file():
        sources.write_text(sources.read_text().replace(mirror, "http://apt-mirror.invalid/debian"))
    stamp.write_text(wanted + "\n")
    log(f"root filesystem built in {time.monotonic() - started:.0f} s")
    return tree


def customize(tree: Path) -> None:
    """Marker unit, DHCP network file, hostname, empty root password for the serial console."""
    unit = tree / "etc/systemd/system/boot-ok.service"
    unit.write_text(MARKER_UNIT)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "boot-ok.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/boot-ok.service")
    net = tree / "etc/systemd/network"
    net.mkdir(parents=True, exist_ok=True)
    (net / "80-dhcp.network").write_text(NETWORK_FILE)
    (tree / "etc/hostname").write_text("boot-test\n")
    # No network in the guest: do not wait for it (the unit only needs local filesystems).
    for name in ("systemd-networkd-wait-online.service",):
        mask = tree / "etc/systemd/system" / name
        if not mask.is_symlink():
            mask.symlink_to("/dev/null")


# ------------------------------------------------------------------------------ bundling

def make_keys(directory: Path) -> tuple[Path, Path, Path]:
    """A signing key pair and a stand-in EC2 certificate in a fresh directory."""
    from bundler.keys import keygen

    for name in ("user", "ec2"):
        keygen(directory / f"{name}-key.pem", directory / f"{name}-cert.pem")
    return directory / "user-key.pem", directory / "user-cert.pem", directory / "ec2-cert.pem"


def ami_bundler() -> list[str]:
    exe = Path(sys.executable).parent / "ami-bundler"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bundler"]


def bundle_and_unbundle(tree: Path, scheme: str, work: Path,
                        keys: tuple[Path, Path, Path]) -> tuple[Path, dict, float, float]:
    """(unbundled image, bundle-vol JSON summary, bundle seconds, unbundle seconds)."""
    key, cert, ec2 = keys
    out = work / f"bundle-{scheme}"
    out.mkdir()
    prefix = f"boot-{scheme}"
    part, _, fstype = scheme.partition("-")
    cmd = ami_bundler() + [
        "bundle-vol", "-v", str(tree), "-d", str(out), "--image-dir", str(tree.parent),
        "-p", prefix, "-P", part, "--generate-fstab", "-k", str(key), "-c", str(cert),
        "--ec2cert", str(ec2), "-u", "123456789012", "-r", "x86_64", "--batch", "--no-inherit",
        "--json", "--compression", "fast"]
    if fstype:
        cmd += ["--fs-type", fstype]
    if part == "none":
        cmd.append("--generate-menu-lst")
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    bundle_s = time.monotonic() - started
    if proc.returncode:
        raise RuntimeError(f"bundle-vol -P {scheme} failed: {proc.stderr.strip()}")
    for line in proc.stderr.splitlines():
        if "warning" in line.lower():
            log(f"bundle-vol -P {scheme}: {line.strip()}")
    summary = json.loads(proc.stdout)
    if fstype and summary["filesystem"] != fstype:
        raise RuntimeError(f"bundle-vol --fs-type {fstype} made {summary['filesystem']}")
    unb = work / f"unbundled-{scheme}"
    unb.mkdir()
    started = time.monotonic()
    proc = subprocess.run(ami_bundler() + [
        "unbundle", "-m", str(out / f"{prefix}.manifest.xml"), "-k", str(key), "-d", str(unb),
        "--batch", "-q"], capture_output=True, text=True)
    unbundle_s = time.monotonic() - started
    if proc.returncode:
        raise RuntimeError(f"unbundle of -P {scheme} failed: {proc.stderr.strip()}")
    shutil.rmtree(out)
    return unb / prefix, summary, bundle_s, unbundle_s


# ------------------------------------------------------------------------------ qemu

@dataclass
class BootResult:
    scheme: str
    booted: bool
    seconds: float
    detail: str


def boot(image: Path, scheme: str, uuid: str, work: Path, timeout: float,
         accel: str = "tcg") -> BootResult:
    """Boot through bundler.boottest (what ``ami-bundler boot-test`` runs): mbr/gpt from the
    disk, none with the kernel and cmdline of the generated menu.lst."""
    from bundler.boottest import BootConfig, BootTestError, boot_image

    serial = work / f"serial-{scheme}.log"
    config = BootConfig(expect=rf"{MARKER} (\S+)", timeout=timeout, accel=accel,
                        console_log=serial, work_dir=work)
    log(f"booting -P {scheme} ({accel}) ...")
    try:
        result = boot_image(image, config)
    except BootTestError as exc:
        sys.exit(str(exc))
    if not result.booted:
        tail = "\n".join(result.tail)
        return BootResult(scheme, False, result.seconds,
                          f"{result.reason}; serial log tail:\n{tail}")
    found = result.groups[0] if result.groups else None
    if found != uuid:
        return BootResult(scheme, False, result.seconds,
                          f"booted a filesystem with UUID {found}, expected {uuid}")
    return BootResult(scheme, True, result.seconds, f"{MARKER} {found} ({result.accel})")


# ------------------------------------------------------------------------------ main

def run_boot_test(schemes: list[str], *, cache: Path = DEFAULT_CACHE, workdir: Path | None = None,
                  timeout: float = 600.0, keep: bool = False,
                  accel: str = DEFAULT_ACCEL) -> list[BootResult]:
    tree = build_rootfs(cache)
    customize(tree)
    work = Path(tempfile.mkdtemp(prefix="boot-test-", dir=workdir or cache))
    results = []
    try:
        keys = make_keys(work)
        for scheme in schemes:
            try:
                image, summary, b_s, u_s = bundle_and_unbundle(tree, scheme, work, keys)
            except RuntimeError as exc:
                results.append(BootResult(scheme, False, 0.0, str(exc)))
                log(f"-P {scheme}: FAILED: {exc}")
                continue
            log(f"-P {scheme}: bundle-vol {b_s:.1f} s, unbundle {u_s:.1f} s, image "
                f"{summary['image_size'] // 2**20} MiB, UUID {summary['uuid']}")
            result = boot(image, scheme, summary["uuid"], work, timeout, accel)
            results.append(result)
            log(f"-P {scheme}: {'BOOTED' if result.booted else 'FAILED'} in "
                f"{result.seconds:.1f} s: {result.detail}")
            if not keep:
                image.unlink()
    finally:
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default="mbr,gpt,none",
                        help="comma-separated -P schemes to test (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the marker per boot (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="where the Debian tree is cached (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: in the cache)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="only build/refresh the cached root filesystem")
    parser.add_argument("--accel", choices=["tcg", "kvm", "auto"], default=DEFAULT_ACCEL,
                        help="qemu accelerator (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep images and serial logs")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("the boot test needs root (debootstrap, device nodes in the image)")
    if args.prepare_only:
        customize(build_rootfs(args.cache))
        return 0
    results = run_boot_test([s.strip() for s in args.schemes.split(",") if s.strip()],
                            cache=args.cache, workdir=args.workdir, timeout=args.timeout,
                            keep=args.keep, accel=args.accel)
    print(f"{'scheme':9} {'result':7} {'boot s':>7}  detail")
    for r in results:
        print(f"{r.scheme:9} {'ok' if r.booted else 'FAILED':7} {r.seconds:7.1f}  "
              f"{r.detail.splitlines()[0] if r.booted else r.detail}")
    return 0 if results and all(r.booted for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
