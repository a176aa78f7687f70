#!/usr/bin/env python3
"""Smoke test against a REAL AWS account (never run by CI): does ami-bundler work on AWS itself?

    python scripts/aws_smoke.py --region eu-west-1 --bucket my-bundle-bucket [--profile P] [--keep]

Uses the default credential chain (or --profile). Steps, each printed with what it did:
  1. keygen: a throwaway signing key pair (in a temporary directory, 0600);
  2. install: a small image (8 MiB, random head, zero tail) bundled, streamed to
     s3://BUCKET/ami-bundler-smoke-<time>/ and registered as an AMI (tagged
     purpose=ami-bundler-smoke),
     waiting until it is available — this exercises the shipped EC2 certificate, the bucket's
     Object Ownership and the aws-exec-read grant, and EC2 decrypting the bundle;
  3. describe: the AMI as EC2 reports it (ImageLocation, RootDeviceType, state);
  4. unbundle --from-s3: the bundle read back from S3 and compared with the image;
  5. deregister --delete-bundle: the AMI and its bundle removed (skipped with --keep).
On failure the AMI it made (if any) is deregistered and its bundle deleted. Costs: a few S3
requests and MiB, one short-lived AMI; no instance is launched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def say(text: str) -> None:
    print(text, flush=True)


def cli(argv: list[str], env: dict[str, str], *, json_out: bool = True) -> dict:
    say("$ ami-bundler " + " ".join(shlex.quote(a) for a in argv))
    done = subprocess.run([sys.executable, "-m", "bundler", *argv,
                           *(["--json"] if json_out else [])],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if done.stderr.strip():
        sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"exit code {done.returncode}")
    return json.loads(done.stdout) if json_out and done.stdout.strip() else {}


def make_image(path: Path) -> str:
    with open(path, "wb") as fh:
        fh.write(os.urandom(2 * MIB))
        fh.truncate(8 * MIB)
    return hashlib.sha1(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", required=True)
    ap.add_argument("--bucket", required=True,
                    help="bucket for the bundle (created in --region if missing)")
    ap.add_argument("--profile", help="AWS profile (default: the default credential chain)")
    ap.add_argument("--keep", action="store_true", help="leave the AMI and bundle in place")
    ap.add_argument("--enable-bucket-acls", action="store_true",
                    help="passed to install (see README)")
    args = ap.parse_args(argv)

    import boto3

    session = boto3.Session(profile_name=args.profile, region_name=args.region)
    account = session.client("sts").get_caller_identity()["Account"]
    ec2 = session.client("ec2")
    env = dict(os.environ, AWS_DEFAULT_REGION=args.region, PYTHONPATH=str(ROOT))
    if args.profile:
        env["AWS_PROFILE"] = args.profile
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = f"ami-bundler-smoke-{stamp}"
    image_id = None
    started = time.monotonic()
    say(f"account {account}, region {args.region}, bucket {args.bucket}, AMI name {name}")
    with tempfile.TemporaryDirectory(prefix="ami-bundler-smoke-") as tmp:
        work = Path(tmp)
        try:
            say("\n== 1. keygen")
            cli(["keygen", "--key", str(work / "key.pem"), "--cert", str(work / "cert.pem")], env,
                json_out=False)
            image = work / "smoke.img"
            digest = make_image(image)
            say(f"image {image}: 8 MiB, sha1 {digest}")

            say("\n== 2. install (bundle → S3 → RegisterImage, wait until available)")
            extra = ["--enable-bucket-acls"] if args.enable_bucket_acls else []
            installed = cli(["install", "-i", str(image), "-p", "smoke",
                             "-c", str(work / "cert.pem"),
                             "-k", str(work / "key.pem"), "-u", account, "-r", "x86_64",
                             "--region", args.region,
                             "-b", f"{args.bucket}/{name}", "-n", name,
                             "--tag", "purpose=ami-bundler-smoke", "--wait", *extra], env)
            image_id = installed["image_id"]
            cert = installed.get("ec2_certificate", {})
            say(f"registered {image_id} from {installed['image_location']} "
                f"({installed.get('state')}); key wrapped to {cert.get('path')} sha256 "
                f"{cert.get('sha256')}")

            say("\n== 3. describe")
            described = ec2.describe_images(ImageIds=[image_id])["Images"][0]
            for key in ("ImageId", "Name", "State", "ImageLocation", "RootDeviceType",
                        "Architecture"):
                say(f"  {key:15} {described.get(key)}")
            if described.get("ImageLocation") != installed["image_location"]:
                raise RuntimeError("EC2 reports another ImageLocation than the one registered")

            say("\n== 4. unbundle --from-s3")
            out = work / "restored"
            out.mkdir()
            cli(["unbundle", "--from-s3", "-m", installed["image_location"],
                 "-k", str(work / "key.pem"),
                 "-d", str(out), "--region", args.region], env, json_out=False)
            restored = hashlib.sha1((out / "smoke").read_bytes()).hexdigest()
            say(f"restored image sha1 {restored}: "
                f"{'identical' if restored == digest else 'DIFFERENT'}")
            if restored != digest:
                raise RuntimeError("the image read back from S3 differs")

            if args.keep:
                say(f"\n== 5. skipped (--keep): {image_id} and s3://{args.bucket}/{name}/ stay")
            else:
                say("\n== 5. deregister --delete-bundle")
                cli(["deregister", image_id, "--delete-bundle", "--region", args.region], env,
                    json_out=False)
                image_id = None
        except Exception as exc:  # noqa: BLE001 - report, clean up, exit non-zero
            say(f"\nSMOKE TEST FAILED: {exc}")
            if image_id and not args.keep:
                say(f"cleaning up {image_id} …")
                try:
                    cli(["deregister", image_id, "--delete-bundle", "--region", args.region], env,
                        json_out=False)
                except RuntimeError as cleanup:
                    say(f"cleanup failed ({cleanup}): remove {image_id} and "
                        f"s3://{args.bucket}/{name}/ by hand")
            return 1
    say(f"\nsmoke test passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
