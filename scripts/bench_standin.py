#!/usr/bin/env python3
"""The stand-in's own CPU per 10 MiB PutObject, UploadPart and CompleteMultipartUpload, as the
product sends them (its S3 client, Content-MD5, the aws-exec-read ACL; a completed object of
two 5 MiB pieces, as install's parts go): the strict local AWS
(``scripts/local_endpoint.py``) runs in its own process, and its user + system time from
``/proc/PID/stat`` is read before and after the requests. The benchmarks run the stand-in on the
same 2 cores as the tool, so every millisecond it spends per part is taken from the tool.

    python scripts/bench_standin.py                  # 40 PUTs, UploadParts and Completes
    python scripts/bench_standin.py --repo /tmp/old  # the stand-in of another checkout (A/B)

Hold ``flock -x /work/coord/bench.lock`` while timing. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_upload import start  # noqa: E402

MIB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of the whole process (its exited threads' included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start_endpoint(repo: Path, key_buffer: int) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = str(repo)
    env["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(key_buffer)  # as bench_end_to_end runs it
    return start([sys.executable, str(repo / "scripts" / "local_endpoint.py")], env, cwd=repo)


def measure(url: str, pid: int, count: int, size: int, rounds: int) -> dict[str, list[float]]:
    from bundler.aws import AwsOptions, s3_client
    from bundler.s3.objects import put_bytes

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    client = s3_client(AwsOptions(endpoint_url=url, max_attempts=1))
    bucket = "bench-standin"
    client.create_bucket(Bucket=bucket, ObjectOwnership="ObjectWriter")
    data = os.urandom(size)
    md5 = hashlib.md5(data).digest()
    content_md5 = base64.b64encode(md5).decode("ascii")
    body = bytearray(data)  # as the product's pieces go (bytearray, sent as it is)
    put_bytes(client, bucket, "warm", data, md5=md5)  # first-request set-up out of the timing
    out: dict[str, list[float]] = {"put": [], "upload_part": [], "complete": []}
    for _ in range(rounds):
        before = cpu_seconds(pid)
        for _ in range(count):
            put_bytes(client, bucket, "part", data, md5=md5, attempts=1)
        out["put"].append((cpu_seconds(pid) - before) / count)
        upload = client.create_multipart_upload(Bucket=bucket, Key="pieces",
                                                ACL="aws-exec-read")["UploadId"]
        before = cpu_seconds(pid)
        for _ in range(count):
            client.upload_part(Bucket=bucket, Key="pieces", UploadId=upload, PartNumber=1,
                               Body=body, ContentMD5=content_md5)  # type: ignore[arg-type]
        out["upload_part"].append((cpu_seconds(pid) - before) / count)
        client.abort_multipart_upload(Bucket=bucket, Key="pieces", UploadId=upload)
        out["complete"].append(time_completes(client, pid, bucket, data, count))
    return out


def time_completes(client: Any, pid: int, bucket: str, data: bytes, count: int) -> float:
    """CPU per CompleteMultipartUpload of ``data`` in two pieces: every upload's pieces are
    sent first, then only the completes are timed (one /proc tick is 10 ms: many in a row)."""
    half = len(data) // 2
    pieces = [data[:half], data[half:]]
    uploads = []
    for i in range(count):
        key = f"whole-{i}"
        upload = client.create_multipart_upload(Bucket=bucket, Key=key,
                                                ACL="aws-exec-read")["UploadId"]
        etags = [client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                                    Body=piece)["ETag"] for n, piece in enumerate(pieces, 1)]
        uploads.append((key, upload, etags))
    before = cpu_seconds(pid)
    for key, upload, etags in uploads:
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag}
                                       for n, etag in enumerate(etags, 1)]})
    spent = (cpu_seconds(pid) - before) / count
    for key, _, _ in uploads:
        client.delete_object(Bucket=bucket, Key=key)
    return spent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT,
                    help="the checkout whose stand-in to start (default: this one)")
    ap.add_argument("--count", type=int, default=40, help="requests per round and kind")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=10)
    ap.add_argument("--key-buffer-mib", type=int, default=16,
                    help="objects up to this size stay in the stand-in's memory (moto's "
                         "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE), as bench_end_to_end's default")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    proc, url = start_endpoint(args.repo.resolve(), args.key_buffer_mib * MIB)
    try:
        result = measure(url, proc.pid, args.count, args.size_mib * MIB, args.rounds)
    finally:
        proc.terminate()
        proc.wait(10)
    summary = {kind: {"median_ms": round(statistics.median(v) * 1000, 1),
                      "rounds_ms": [round(x * 1000, 1) for x in v]}
               for kind, v in result.items()}
    if args.json:
        print(json.dumps({"repo": str(args.repo), "size_mib": args.size_mib, **summary}))
    else:
        for kind, s in summary.items():
            print(f"{kind}: {s['median_ms']} ms of the stand-in's CPU per {args.size_mib} MiB "
                  f"request (rounds {s['rounds_ms']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
