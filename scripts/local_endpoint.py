#!/usr/bin/env python3
"""The strict local AWS (S3 + EC2: moto in server mode, patched as ``tests/support/strictaws``
describes) on 127.0.0.1 with an ephemeral port.

    python scripts/local_endpoint.py --print-env          # prints export lines, stays in the
                                                            foreground
    python scripts/local_endpoint.py --env-file env.sh &   # writes them once the server is ready
    python scripts/local_endpoint.py --register-check manifest   # RegisterImage reads only the
                                                                  manifest, as EC2 does

    from local_endpoint import start_local_endpoint
    url, stop = start_local_endpoint()

The environment it prints points boto3 (and so ami-bundler) at the endpoint with fake
credentials; nothing leaves 127.0.0.1. Stop with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_local_endpoint(register_check: str = "full") -> tuple[str, Callable[[], None]]:
    """Start the strict local AWS on 127.0.0.1:<ephemeral> in this process; returns (url, stop).
    ``register_check``: how deep RegisterImage checks a bundle (tests/support/strictaws/
    bundlecheck.py): ``full`` also decrypts and inflates every part, ``manifest`` checks what
    EC2 checks at registration (the manifest, its keys, the parts' presence, grants, sizes)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.support.strictaws import StrictEndpoint

    endpoint = StrictEndpoint(register_check=register_check)
    url = endpoint.start()
    global CERT_DIR, SECOND_ROLE_ARN
    CERT_DIR = endpoint.keys.cert_dir
    # a second account, reached with AssumeRole from the `testing` credentials' account
    SECOND_ROLE_ARN = endpoint.make_role("210987654321")
    return url, endpoint.stop


CERT_DIR: Path | None = None  # the stand-in EC2's certificates, once started
SECOND_ROLE_ARN: str | None = None  # a role in a second account that the first may assume


def env_lines(url: str, region: str = "us-east-1") -> list[str]:
    # The tool finds the stand-in EC2's certificates as it would an ec2-ami-tools directory.
    extra = [f"export AMI_BUNDLER_EC2_CERT_DIR={CERT_DIR}"] if CERT_DIR else []
    if SECOND_ROLE_ARN:  # for plans with two accounts (not read by the tool itself)
        extra.append(f"export LOCAL_AWS_SECOND_ROLE_ARN={SECOND_ROLE_ARN}")
    return [
        *extra,
        f"export AWS_ENDPOINT_URL={url}",
        "export AWS_ACCESS_KEY_ID=testing",
        "export AWS_SECRET_ACCESS_KEY=testing",
        f"export AWS_DEFAULT_REGION={region}",
        "export AWS_EC2_METADATA_DISABLED=true",
        "unset AWS_PROFILE AWS_SESSION_TOKEN",
    ]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print-env", action="store_true", help="print export lines for a shell")
    ap.add_argument("--env-file", type=Path, help="write the export lines to this file once ready")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--ec2-certs", type=Path, metavar="DIR",
                    help="copy the stand-in EC2's certificates (cert-ec2*.pem) into DIR before "
                         "printing the URL")
    ap.add_argument("--register-check", choices=("full", "manifest"), default="full",
                    help="how deep RegisterImage checks a bundle: full (default: every part "
                         "decrypted and inflated) or manifest (what EC2 checks at registration: "
                         "the manifest, its keys, the parts' presence, grants and sizes)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    url, stop = start_local_endpoint(args.register_check)
    if args.ec2_certs and CERT_DIR:
        args.ec2_certs.mkdir(parents=True, exist_ok=True)
        for cert in CERT_DIR.glob("cert-ec2*.pem"):
            shutil.copyfile(cert, args.ec2_certs / cert.name)
    lines = env_lines(url, args.region)
    if args.env_file:
        tmp = args.env_file.with_name(args.env_file.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, args.env_file)  # appears only complete: callers can poll for it
    if args.print_env:
        print("\n".join(lines), flush=True)
    else:
        print(url, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
