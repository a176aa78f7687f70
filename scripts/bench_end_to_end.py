#!/usr/bin/env python3
"""What users wait for, image file to registered AMI: the classic way against ``install``, in one
run.

    python scripts/bench_end_to_end.py [--corpus /tmp/corpus] [--images rootfs.img random-512M.img]
                                       [--delay 0.02] [--bandwidth 16]

Both sides talk to the same local endpoint (moto, scripts/local_endpoint.py) through the same
proxy (tests/support/faultproxy.py) adding per-request latency and a per-stream bandwidth cap,
standing in for a WAN; nothing leaves 127.0.0.1.

* classic: the classic pipeline exactly as scripts/bench_bundle.py times it (tar | tee sha1sum |
  gzip -9 | openssl enc, split, sha1sum), then what ec2-upload-bundle does: one part after the
  other, each PUT on a new connection with Content-MD5, the manifest last, then RegisterImage.
* ours: ``ami-bundler install`` (bundle, parallel upload and register in one streaming run).

Then the way back: ``unbundle --from-s3`` against ``download-bundle`` followed by ``unbundle``.
Every step runs as its own process; the report gives wall times, the ratios and each side's CPU
seconds (from wait4), plus the CPU the endpoint and the proxy used meanwhile, with the load
average: on a shared machine the wall times are only as good as the load lets them be.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_install import cpu_seconds  # noqa: E402
from bench_upload import MIB, local_env, print_timeline, start  # noqa: E402

CLI = [sys.executable, "-m", "bundler"]
USER = "123456789012"


@dataclass
class Step:
    name: str
    wall: float
    cpu: float
    rss_mib: float
    started: float = 0.0  # time.monotonic() at launch (the proxy's trace uses the same clock)


def run(name: str, cmd: list[str] | str, env: dict[str, str], *, shell: bool = False) -> Step:
    started = time.perf_counter()
    launched = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, shell=shell,
                            executable="/bin/bash" if shell else None,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{name} failed:\n{err}")
    return Step(name, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, launched)


# --------------------------------------------------------------------------- the classic upload


def classic_upload(directory: Path, prefix: str, bucket: str, endpoint: str) -> None:
    """ec2-upload-bundle's way, then ec2-register's: serial PUTs, each on a new connection with
    Content-MD5 and the aws-exec-read ACL, the manifest last; RegisterImage."""
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, max_pool_connections=1,
                    retries={"max_attempts": 1})
    s3 = boto3.client("s3", endpoint_url=endpoint, config=config)
    manifest = directory / f"{prefix}.manifest.xml"
    parts = sorted(p for p in directory.iterdir() if p.name.startswith(f"{prefix}.part."))
    for path in [*parts, manifest]:
        data = path.read_bytes()
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        s3.put_object(Bucket=bucket, Key=path.name, Body=data, ContentMD5=md5, ACL="aws-exec-read")
        s3._endpoint.http_session.close()  # the next request opens a new connection
    ec2 = boto3.client("ec2", endpoint_url=endpoint)
    ec2.register_image(ImageLocation=f"{bucket}/{manifest.name}",
                       Name=f"classic-{prefix}-{os.getpid()}", Architecture="x86_64")


def classic_manifest(directory: Path, prefix: str, image: Path, keys: Path, ec2cert: Path) -> None:
    """The manifest ec2-bundle-image writes beside its parts (RSA work of a few milliseconds,
    made here untimed): signed, naming every part with its SHA-1."""
    from bundler import keys as keylib
    from bundler.manifest import Manifest, PartEntry

    parts = sorted(p for p in directory.iterdir() if p.name.startswith(f"{prefix}.part."))
    digest = (directory / "digest").read_text().split()[0]
    entries = [PartEntry(i, p.name, hashlib.sha1(p.read_bytes()).hexdigest())
               for i, p in enumerate(parts)]
    # The key and IV the pipeline encrypted with, wrapped to the user and to the (stand-in) EC2
    # certificate: RegisterImage decrypts the bundle as EC2 does.
    key, iv = (bytes.fromhex(v) for v in (directory / "aes").read_text().split())
    (directory / "aes").unlink()
    user, ec2 = keylib.load_public_key(keys / "user-cert.pem"), keylib.load_public_key(ec2cert)
    manifest = Manifest(name=prefix, user=USER, digest=digest, size=image.stat().st_size,
                        bundled_size=sum(p.stat().st_size for p in parts),
                        ec2_encrypted_key=keylib.wrap(ec2, key),
                        user_encrypted_key=keylib.wrap(user, key),
                        ec2_encrypted_iv=keylib.wrap(ec2, iv),
                        user_encrypted_iv=keylib.wrap(user, iv), parts=entries)
    (directory / f"{prefix}.manifest.xml").write_bytes(
        keylib.sign_manifest(manifest, keylib.load_private_key(keys / "user-key.pem")))


def classic_pipeline(image: Path, out: Path) -> str:
    key_hex, iv_hex = os.urandom(16).hex(), os.urandom(16).hex()
    # for the manifest, untimed
    fd = os.open(out / "aes", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{key_hex} {iv_hex}\n")
    return (
        f"set -o pipefail; tar -c -h -S --owner 0 --group 0 -C {image.parent} {image.name} "
        f"| tee >(sha1sum > {out}/digest) | gzip -9 "
        f"| openssl enc -e -aes-128-cbc -K {key_hex} -iv {iv_hex} > {out}/b.tar.gz.enc "
        f"&& split -b 10485760 -a 2 -d {out}/b.tar.gz.enc {out}/classic.part. "
        f"&& sha1sum {out}/classic.part.* > /dev/null && rm {out}/b.tar.gz.enc"
    )


def empty_bucket(s3: Any, bucket: str) -> None:
    """Delete a finished run's objects: the stand-in holds them in memory."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


# --------------------------------------------------------------------------- main


def _walls(walls: list[float]) -> str:
    return (f"{', '.join(f'{w:.2f}' for w in walls)} s (median "
            f"{statistics.median(walls):.2f})")


def product_defaults() -> tuple[int, str]:
    """install's own --jobs and --compression defaults: the benchmark times what users get."""
    from bundler.pipeline import BundleOptions
    from bundler.transfer import DEFAULT_JOBS

    return DEFAULT_JOBS, str(BundleOptions.__dataclass_fields__["compression"].default)


def main() -> int:
    jobs, compression = product_defaults()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/corpus"))
    ap.add_argument("--images", nargs="*", default=["rootfs.img", "random-512M.img"])
    ap.add_argument("--delay", type=float, default=0.020,
                    help="seconds added per request (default 0.020)")
    ap.add_argument("--bandwidth", type=float, default=16.0,
                    help="MiB/s per request stream; 0 = unlimited")
    ap.add_argument("--jobs", type=int, default=None,
                    help=f"install's --jobs (default: the product's, {jobs})")
    ap.add_argument("--compression", default=None,
                    help=f"install's --compression (default: the product's, {compression})")
    ap.add_argument("--register-check", choices=("manifest", "full"), default="manifest",
                    help="how deep the stand-in's RegisterImage checks a bundle: manifest "
                         "(default: what EC2 checks at registration) or full (it also decrypts "
                         "and inflates every part, on this machine's cores)")
    ap.add_argument("--key-buffer-mib", type=int, default=16,
                    help="objects up to this size stay in the stand-in's memory (moto's "
                         "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE, its own default 5 MiB; default: "
                         "%(default)s)")
    ap.add_argument("--check", action="store_true",
                    help="let install stop on its boot checks (default --no-check: the corpus "
                         "images do not boot; classic checks nothing)")
    ap.add_argument("--timeline", action="store_true",
                    help="print install's requests as the proxy saw them, relative to its start")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each side this many times and report each side's fastest run "
                         "(default 1)")
    ap.add_argument("--no-classic", action="store_true",
                    help="time only ami-bundler (while developing: no ratio)")
    ap.add_argument("--classic-upload", nargs=4, metavar=("DIR", "PREFIX", "BUCKET", "ENDPOINT"),
                    help=argparse.SUPPRESS)  # the classic upload, run as a child process
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.classic_upload:
        directory, prefix, bucket, endpoint = args.classic_upload
        classic_upload(Path(directory), prefix, bucket, endpoint)
        return 0
    # Start-up is part of what is timed: byte-compile the package first, as an install does
    # (PYTHONDONTWRITEBYTECODE, set in some CI shells, would otherwise recompile every run).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "bundler")], check=True,
                   stdout=subprocess.DEVNULL)

    env = local_env()
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    # the stand-in EC2's certificates: RegisterImage decrypts with its keys
    ec2certs = work / "ec2-certs"
    # moto spills every object over 5 MiB to a temporary file on this host's disk (~25 ms of
    # the stand-in's one core per 10 MiB part, on both sides' uploads); S3 keeps parts on its
    # own machines: here they stay in the stand-in's memory (as scripts/bench_publish.py does).
    endpoint_env = {**env, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(args.key_buffer_mib * MIB)}
    moto, moto_url = start([sys.executable, "scripts/local_endpoint.py", "--ec2-certs",
                            str(ec2certs), "--register-check", args.register_check],
                           endpoint_env)
    proxy_cmd = [sys.executable, "-m", "tests.support.faultproxy", "--upstream", moto_url,
                 "--delay", str(args.delay), "--trace", str(work / "trace")]
    if args.bandwidth > 0:
        proxy_cmd += ["--bandwidth", str(args.bandwidth * MIB)]
    proxy, proxy_url = start(proxy_cmd, env)
    env = {**env, "AWS_ENDPOINT_URL": proxy_url}
    rows: list[str] = []
    try:
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                          aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(s3={"addressing_style": "path"}))
        # moto builds its EC2 region (default VPCs, the public AMI catalogue) on first use,
        # ~0.3 s that real EC2 never charges: warmed up before anything is timed.
        boto3.client("ec2", endpoint_url=moto_url, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing",
                     ).describe_images(Owners=["self"])
        keys = work / "keys"
        keys.mkdir()
        subprocess.run([*CLI, "keygen", "--key", str(keys / "user-key.pem"), "--cert",
                        str(keys / "user-cert.pem")], check=True, capture_output=True, env=env,
                       cwd=ROOT)
        sign = ["-c", str(keys / "user-cert.pem"), "-k", str(keys / "user-key.pem"), "-u", USER,
                "--ec2cert-dir", str(ec2certs), "-r", "x86_64"]
        tuning = ([] if args.jobs is None else ["--jobs", str(args.jobs)]) + (
            [] if args.compression is None else ["--compression", args.compression])
        s3_flags = ["--endpoint-url", proxy_url, *tuning[:2]]
        cap = "no bandwidth cap" if args.bandwidth <= 0 else f"{args.bandwidth:g} MiB/s per stream"
        used_jobs = args.jobs or jobs
        used_compression = args.compression or compression
        checks = ("the manifest (as EC2 does)" if args.register_check == "manifest"
                  else "every part (decrypt + inflate)")
        conditions = (f"{args.delay * 1000:.0f} ms per request, {cap}, RegisterImage checks "
                      f"{checks}, stand-in objects ≤ {args.key_buffer_mib} MiB in memory, "
                      f"install --jobs {used_jobs} "
                      f"--compression {used_compression}"
                      f"{'' if tuning else ' (the product defaults)'}, {os.cpu_count()} cores"
                      + (f", each side's fastest of {args.repeat} runs" if args.repeat > 1
                         else ""))
        print(f"end to end through a local endpoint: {conditions}", flush=True)
        for image_name in args.images:
            image = args.corpus / image_name
            if not image.exists():
                print(f"{image} not found: run ../shared/bench/make-corpus.sh", flush=True)
                continue
            tag = image_name.split(".")[0].lower()
            subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)
            load = os.getloadavg()[0]
            c_bundle = c_upload = None
            classic_endpoint = size = 0.0
            best: tuple[Step, float, str] | None = None  # install: step, endpoint CPU, bucket
            classic_walls: list[float] = []  # every run, for the medians beside the fastest
            our_walls: list[float] = []
            for rep in range(args.repeat):
                endpoint_before = cpu_seconds(moto, proxy)
                if not args.no_classic:  # bundle, then serial upload + register
                    classic_dir = work / f"classic-{tag}-{rep}"
                    classic_dir.mkdir()
                    cb = run("classic bundle", classic_pipeline(image, classic_dir), env,
                             shell=True)
                    classic_manifest(classic_dir, "classic", image, keys,
                                     ec2certs / "cert-ec2.pem")
                    bucket = f"e2e-classic-{tag}-{os.getpid()}-{rep}"
                    s3.create_bucket(Bucket=bucket, ObjectOwnership="ObjectWriter")  # ACLs on
                    cu = run("classic upload + register",
                             [sys.executable, __file__, "--classic-upload",
                              str(classic_dir), "classic", bucket, proxy_url], env)
                    used = cpu_seconds(moto, proxy) - endpoint_before
                    classic_walls.append(cb.wall + cu.wall)
                    size = sum(p.stat().st_size for p in classic_dir.glob("classic.part.*"))
                    shutil.rmtree(classic_dir)
                    if c_bundle is None or c_upload is None or (
                            cb.wall + cu.wall < c_bundle.wall + c_upload.wall):
                        c_bundle, c_upload, classic_endpoint = cb, cu, used
                    empty_bucket(s3, bucket)  # the stand-in keeps objects in memory
                endpoint_mid = cpu_seconds(moto, proxy)

                # ours: install, with the product's defaults unless told otherwise
                our_bucket = f"e2e-ours-{tag}-{os.getpid()}-{rep}"
                # an existing bucket, as the classic side gets (and as users have)
                s3.create_bucket(Bucket=our_bucket, ObjectOwnership="ObjectWriter")
                step = run("install",
                           [*CLI, "install", "-i", str(image), "-p", tag, *sign, *tuning,
                            "-b", our_bucket, "-n", f"ours-{tag}-{os.getpid()}-{rep}",
                            "--endpoint-url", proxy_url, "-q",
                            *([] if args.check else ["--no-check"])], env)
                endpoint = cpu_seconds(moto, proxy) - endpoint_mid
                our_walls.append(step.wall)
                if best is None or step.wall < best[0].wall:
                    if best is not None:
                        empty_bucket(s3, best[2])
                    best = (step, endpoint, our_bucket)
                else:
                    empty_bucket(s3, our_bucket)
            assert best is not None
            ours, ours_endpoint, our_bucket = best
            if args.timeline:
                print_timeline(work / "trace", ours.started, ours.wall, ours.name, width=70)
            print(f"\n{image_name} ({image.stat().st_size / MIB:.0f} MiB), load average "
                  f"{load:.2f}", flush=True)
            ratio = None
            if c_bundle is not None and c_upload is not None:
                classic_total = c_bundle.wall + c_upload.wall
                print(f"  classic bundle: {size / MIB:.0f} MiB")
                for step in (c_bundle, c_upload):
                    print(f"  {step.name:28s} {step.wall:7.2f} s wall  {step.cpu:6.2f} CPU-s",
                          flush=True)
                print(f"  {'classic total':28s} {classic_total:7.2f} s wall  "
                      f"{c_bundle.cpu + c_upload.cpu:6.2f} CPU-s  (endpoint + proxy "
                      f"{classic_endpoint:.1f} CPU-s)")
                ratio = classic_total / ours.wall
            print(f"  {'ami-bundler install':28s} {ours.wall:7.2f} s wall  {ours.cpu:6.2f} CPU-s"
                  f"  (endpoint + proxy {ours_endpoint:.1f} CPU-s), peak RSS "
                  f"{ours.rss_mib:.0f} MiB")
            if ratio is not None:
                print(f"  image → AMI: {ratio:.1f}× faster", flush=True)
            if args.repeat > 1:
                # The fastest run of each side is what the machine can do; the medians say how
                # much a run on this (shared) machine can be off it.
                print(f"  every run: install {_walls(our_walls)}"
                      + (f"; classic {_walls(classic_walls)}; ratio of the medians "
                         f"{statistics.median(classic_walls) / statistics.median(our_walls):.1f}×"
                         if classic_walls else ""), flush=True)

            # the way back
            down = work / f"down-{tag}"
            down.mkdir()
            manifest = f"{tag}.manifest.xml"
            dl = run("download-bundle",
                     [*CLI, "download-bundle", "-b", our_bucket, "-m", manifest, "-d", str(down),
                      "-k", str(keys / "user-key.pem"), *s3_flags, "-q"], env)
            un = run("unbundle",
                     [*CLI, "unbundle", "-m", str(down / manifest),
                      "-k", str(keys / "user-key.pem"), "-d", str(down), "-q"], env)
            shutil.rmtree(down)
            streamed = work / f"streamed-{tag}"
            streamed.mkdir()
            st = run("unbundle --from-s3",
                     [*CLI, "unbundle", "--from-s3", "-m", f"{our_bucket}/{manifest}", "-k",
                      str(keys / "user-key.pem"), "-d", str(streamed), *s3_flags, "-q"], env)
            same = subprocess.run(["cmp", "-s", str(image), str(streamed / tag)]).returncode == 0
            shutil.rmtree(streamed)
            print(f"  download-bundle + unbundle   {dl.wall + un.wall:7.2f} s wall  "
                  f"{dl.cpu + un.cpu:6.2f} CPU-s")
            print(f"  unbundle --from-s3           {st.wall:7.2f} s wall  {st.cpu:6.2f} CPU-s, "
                  f"peak RSS {st.rss_mib:.0f} MiB, image identical: {same}")
            print(f"  S3 → image: {(dl.wall + un.wall) / st.wall:.1f}× faster", flush=True)
            if c_bundle is not None and c_upload is not None and ratio is not None:
                rows.append(f"| {image_name} | {args.register_check} | "
                            f"{c_bundle.wall + c_upload.wall:.1f} s ({c_bundle.wall:.1f} + "
                            f"{c_upload.wall:.1f}) | {ours.wall:.1f} s | {ratio:.1f}× | "
                            f"{c_bundle.cpu + c_upload.cpu:.1f} / {ours.cpu:.1f} | "
                            f"{ours.rss_mib:.0f} MiB | {dl.wall + un.wall:.1f} s | "
                            f"{st.wall:.1f} s | {(dl.wall + un.wall) / st.wall:.1f}× | "
                            f"{load:.1f} |")
        if rows:
            print(f"\nREADME rows ({time.strftime('%Y-%m-%d')}, {conditions}):")
            print("| image | RegisterImage checks | classic: bundle + serial upload + register | "
                  "install | ratio | CPU-s classic / ours | install peak RSS | "
                  "download-bundle + unbundle | unbundle --from-s3 | ratio | load |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            print("\n".join(rows))
    finally:
        for proc in (proxy, moto):
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
