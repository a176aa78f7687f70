"""``check`` (will it boot on instance-store instance types, is it safe to share) and
``boot-test`` (boot it under qemu and wait for a login prompt)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .checking import add_source_options, open_source_image, open_source_tree, print_report
from .common import Printer, count, seconds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check", help="will an image boot on EC2 instance-store types, is it safe to share",
        description="Check a root filesystem directory, a disk image (ext2/3/4, partitioned or "
                    "not, read without mounting) or a bundle for what stops it booting on the "
                    "instance types that take instance-store roots (Xen, x86_64, BIOS) and for "
                    "what must not be in a shared AMI. Exit 0 when there is no error.")
    add_source_options(p, what="check")
    p.add_argument("--public", action="store_true",
                   help="the image will be public: the sharing rules are errors")
    p.add_argument("--only", choices=["boot", "share"], help="run only one family of rules")
    p.set_defaults(func=run_check)

    p = sub.add_parser(
        "boot-test", help="boot an image or bundle under qemu and wait for a login prompt",
        description="Boot the image (or the bundle's image) under qemu-system-x86_64 with a "
                    "serial console, no network and a copy-on-write overlay (the image is never "
                    "modified); exit 0 only when --expect appeared on the console.")
    add_source_options(p, what="boot")
    p.add_argument("--expect", metavar="REGEX",
                   help="console text that means booted (default: a login prompt or systemd's "
                        "multi-user target)")
    p.add_argument("--timeout", type=seconds, default=300.0, metavar="SECONDS",
                   help="how long to wait for it (default: %(default)s)")
    p.add_argument("--console-log", type=Path, metavar="FILE", help="save the whole console log")
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto",
                   help="qemu accelerator (default: KVM when /dev/kvm works, else TCG)")
    p.add_argument("--memory", type=count(16, 1 << 20, "guest memory in MiB"), default=1024,
                   metavar="MIB",
                   help="guest memory (default: %(default)s)")
    p.add_argument("--kernel-cmdline", metavar="ARGS",
                   help="for a partitionless (PV-GRUB) image: extra kernel arguments")
    p.set_defaults(func=run_boot_test)


def run_check(args: argparse.Namespace, printer: Printer) -> int:
    from ..check import check_tree

    started = time.monotonic()
    with open_source_tree(args, printer) as tree:
        report = check_tree(tree, public=args.public, boot=args.only != "share",
                            share=args.only != "boot", started=started)
    print_report(report, printer)
    return 0 if report.ok else 1


def run_boot_test(args: argparse.Namespace, printer: Printer) -> int:
    from ..boottest import BootConfig, boot_image

    config = BootConfig(timeout=args.timeout, accel=args.accel, memory_mib=args.memory,
                        console_log=args.console_log, extra_cmdline=args.kernel_cmdline or "",
                        work_dir=args.work_dir)  # the overlay is private working data too
    if args.expect:
        config.expect = args.expect
    with open_source_image(args, printer) as image:
        printer.note(f"booting {image if args.source else args.manifest} under qemu "
                     f"(timeout {args.timeout:.0f} s) ...")
        result = boot_image(image, config)
    human = ([f"booted: {result.marker!r} after {result.seconds:.1f} s ({result.accel})"]
             if result.booted else
             [f"did not boot ({result.reason}) after {result.seconds:.1f} s ({result.accel}); "
              "last console lines:", *("  " + line for line in result.tail)])
    if result.console_log:
        human.append(f"console log: {result.console_log}")
    printer.result(result.summary(), human)
    return 0 if result.booted else 1
