#!/usr/bin/env python3
"""Upload throughput and memory: ``upload-bundle --jobs 1`` vs the default, against a local
moto server behind a proxy that adds latency per request (and optionally a per-stream
bandwidth cap, which is what makes a single TCP stream slow on a real WAN).

    python scripts/bench_upload.py                    # ~1 GiB, 20 ms/request, 16 MiB/s per stream
    python scripts/bench_upload.py --size-mib 256 --bandwidth 0   # latency only

moto and the proxy run in their own processes so that only the uploader's memory is
measured (peak RSS of the upload process from wait4). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024
PART = 10 * MIB


def start(cmd: list[str], env: dict[str, str], *,
          cwd: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """Start a helper that prints its URL on the first stdout line."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"{cmd[1]} did not start: {line!r}")
    return proc, line


def local_env() -> dict[str, str]:
    """This environment minus any real AWS settings and proxies, with fake credentials: the
    benchmarks only ever talk to the local endpoint."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and "proxy" not in k.lower()}
    nowhere = tempfile.mkdtemp(prefix="bench-noaws-")
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=f"{nowhere}/config",
               AWS_SHARED_CREDENTIALS_FILE=f"{nowhere}/credentials",
               AWS_EC2_METADATA_DISABLED="true", PYTHONPATH=str(ROOT))
    return env


def make_bundle(directory: Path, size: int) -> Path:
    """Random parts written one at a time (never all in memory) and a signed manifest."""
    from bundler import keys as keylib
    from bundler.manifest import Manifest, PartEntry, part_names

    count = max(1, -(-size // PART))
    names = part_names("bench", count)
    entries = []
    for i, name in enumerate(names):
        data = os.urandom(min(PART, size - i * PART))
        (directory / name).write_bytes(data)
        entries.append(PartEntry(i, name, hashlib.sha1(data).hexdigest()))
    keylib.keygen(directory / "key.pem", directory / "cert.pem")
    manifest = Manifest(name="bench", user="123456789012", digest="0" * 40, size=size,
                        bundled_size=size,
                        ec2_encrypted_key="ab" * 128, user_encrypted_key="ab" * 128,
                        ec2_encrypted_iv="ab" * 128, user_encrypted_iv="ab" * 128, parts=entries)
    path = directory / "bench.manifest.xml"
    path.write_bytes(keylib.sign_manifest(manifest, keylib.load_private_key(directory / "key.pem")))
    return path


def upload(manifest: Path, endpoint: str, bucket: str, jobs: int,
           env: dict[str, str]) -> tuple[float, float, float]:
    """(upload seconds as reported, wall seconds incl. interpreter start, peak RSS MiB) of one
    full upload in a child process."""
    cmd = [sys.executable, "-c", "from bundler.cli import run; run()", "upload-bundle",
           "-b", bucket,
           "-m", str(manifest), "--endpoint-url", endpoint, "--jobs", str(jobs),
           "--no-resume", "--json"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"upload with --jobs {jobs} failed")
    return json.loads(out)["seconds"], wall, usage.ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def print_timeline(trace: Path, launched: float, wall: float, title: str, *,
                   indent: str = "  ", width: int = 90, file: Any = None) -> None:
    """The requests the latency proxy traced (``--trace``) while a run started at ``launched``
    (monotonic) lasted ``wall`` seconds, in seconds from its launch."""
    end = launched + wall
    rows = []
    for line in trace.read_text().splitlines():
        began, ended, method, path, status, size = line.split(" ", 5)
        if launched <= float(began) <= end:
            rows.append((float(began) - launched, float(ended) - launched, method, path,
                         status, int(size)))
    print(f"{indent}timeline of {title} (s from launch; ends {wall:.2f}):", file=file)
    for began, ended, method, path, status, size in sorted(rows):
        body = f" {size / MIB:.1f} MiB" if size > 65536 else ""
        print(f"{indent}  {began:6.2f} {ended:6.2f} {method:6s} {status} {path[:width]}{body}",
              file=file)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--delay", type=float, default=0.020,
                    help="seconds added per request (default 0.020)")
    ap.add_argument("--bandwidth", type=float, default=16.0,
                    help="MiB/s per request stream; 0 = unlimited")
    ap.add_argument("--jobs", type=int, nargs="*", default=[1, 8],
                    help="job counts to compare (default 1 8)")
    args = ap.parse_args()

    env = local_env()

    moto, moto_url = start([sys.executable, "scripts/local_endpoint.py"], env)
    proxy_cmd = [sys.executable, "-m", "tests.support.faultproxy", "--upstream", moto_url,
                 "--delay", str(args.delay)]
    if args.bandwidth > 0:
        proxy_cmd += ["--bandwidth", str(args.bandwidth * MIB)]
    proxy, proxy_url = start(proxy_cmd, env)
    try:
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                          aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(s3={"addressing_style": "path"}))
        with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
            size = args.size_mib * MIB
            print(f"making a {args.size_mib} MiB bundle …", flush=True)
            manifest = make_bundle(Path(tmp), size)
            results = {}
            for jobs in args.jobs:
                bucket = f"bench-{jobs}-{os.getpid()}"
                s3.create_bucket(Bucket=bucket, ObjectOwnership="ObjectWriter")
                seconds, wall, rss = upload(manifest, proxy_url, bucket, jobs, env)
                results[jobs] = seconds
                print(f"--jobs {jobs:>2}: {seconds:7.2f}s  {size / MIB / seconds:7.1f} MiB/s  "
                      f"(wall {wall:.2f}s incl. start-up)  peak RSS {rss:6.1f} MiB", flush=True)
                # Free moto's copy before the next run.
                keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
                for start_at in range(0, len(keys), 1000):
                    s3.delete_objects(Bucket=bucket, Delete={
                        "Objects": [{"Key": k} for k in keys[start_at:start_at + 1000]]})
            if len(results) >= 2:
                base, best = results[args.jobs[0]], results[args.jobs[-1]]
                print(f"speed-up --jobs {args.jobs[-1]} vs --jobs {args.jobs[0]}: "
                      f"{base / best:.1f}x (delay {args.delay * 1000:.0f} ms/request, "
                      f"""{'no bandwidth cap' if args.bandwidth <= 0
                           else f'{args.bandwidth:g} MiB/s per stream'})""")
    finally:
        for proc in (proxy, moto):
            proc.terminate()
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
