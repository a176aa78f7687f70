#!/usr/bin/env python3
"""The main job, end to end, on the embedded default: no AWS account needed.

1. start the strict local AWS (S3+EC2: moto patched as AWS behaves, 127.0.0.1, ephemeral port),
   whose EC2 has key pairs of its own; the tool finds their certificates through
   $AMI_BUNDLER_EC2_CERT_DIR, as it would an ec2-ami-tools directory;
2. generate a signing key pair;
3. build a small root filesystem directory (with planted secrets that must not ship);
4. bundle-vol it into an ext4 image and a bundle (keeping the image to compare against);
5. install: bundle the image, stream the parts to S3 and register the AMI, in one run — the
   stand-in EC2 reads the bundle as EC2 does (grants, its own key, digests, gzip'd tar);
6. describe the AMI; unbundle it straight from S3 and show the image is identical;
7. deregister the AMI and delete its bundle.

Every step runs the real ``ami-bundler`` command line, printed before it runs.
Usage: scripts/demo.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ACCOUNT = "123456789012"
BUCKET = "ami-bundler-demo"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(*args: object, env: dict[str, str], capture_json: bool = False) -> dict | None:
    cmd = [str(a) for a in args]
    print("$ ami-bundler " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    full = [sys.executable, "-m", "bundler", *cmd]
    if capture_json:
        out = subprocess.run(full, env=env, check=False, capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"demo: step failed with exit code {out.returncode}")
        if out.stderr.strip():
            sys.stderr.write(out.stderr)
        return json.loads(out.stdout)
    code = subprocess.run(full, env=env, check=False).returncode
    if code != 0:
        raise SystemExit(f"demo: step failed with exit code {code}")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path,
                    help="where to work (default: a fresh temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ami-bundler-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    from local_endpoint import start_local_endpoint
    from make_sample_rootfs import make_rootfs

    step("start the strict local AWS (S3 + EC2)")
    url, stop = start_local_endpoint()
    import local_endpoint

    print(f"endpoint: {url}; its EC2 certificates: {local_endpoint.CERT_DIR}")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo",
               AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=url, AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AMI_BUNDLER_EC2_CERT_DIR=str(local_endpoint.CERT_DIR))
    env.pop("AWS_PROFILE", None)
    try:
        keys = work / "keys"
        keys.mkdir(exist_ok=True)
        step("generate a signing key and certificate")
        if not (keys / "user-key.pem").exists():
            run("keygen", "--key", keys / "user-key.pem", "--cert", keys / "user-cert.pem", env=env)
        sign = ["-c", keys / "user-cert.pem", "-k", keys / "user-key.pem", "-u", ACCOUNT,
                "-r", "x86_64"]

        step("build a small root filesystem directory")
        rootfs = work / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        planted = make_rootfs(rootfs)
        print(f"{rootfs}: {sum(1 for _ in rootfs.rglob('*'))} entries; planted secrets: "
              + ", ".join(planted.get("filtered", [])))

        step("bundle-vol: root filesystem → ext4 image → bundle (no loop devices, no mounts)")
        out = work / "bundle"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        vol = run("bundle-vol", "-v", rootfs, "-d", out, "-p", "demo",
                  "--keep-image", "--generate-fstab",
                  "--no-inherit", "--no-check", *sign, "--json", env=env, capture_json=True)
        image = Path(vol["image"])
        print(f"image {image} ({image.stat().st_size} bytes, ext4 {vol['uuid']}), "
              f"{len(vol['bundle']['parts'])} part(s); {vol['entries']} entries kept, "
              f"{vol['excluded']} left out")

        step("install: bundle the image, stream parts to S3, register the AMI — one run, no parts "
             "on disk")
        # The sample tree has no kernel or init (it shows the pipeline, not a bootable OS), so
        # install's boot check would refuse it; `ami-bundler check` is how a real image is vetted.
        installed = run("install", "-i", image, "-p", "demo", *sign, "-b", f"{BUCKET}/amis",
                        "-n", "ami-bundler-demo",
                        "--description", "made by scripts/demo.py", "--tag", "project=ami-bundler",
                        "--json", "--no-check", env=env, capture_json=True)
        ami = installed["image_id"]
        location = installed["image_location"]
        cert = installed["ec2_certificate"]
        print(f"key wrapped to {cert['path']} ({cert['subject']}, sha256 {cert['sha256'][:23]}…)")
        print(f"registered {ami} from {location}")
        from tests.support.strictaws.bundlecheck import CHECKED

        seen = CHECKED[location]
        print("the stand-in EC2 decrypted ec2_encrypted_key with the private key of its own "
              f"{seen.key}, checked {seen.parts} part(s) against their SHA-1 and the aws-exec-read "
              f"grant, and read the gzip'd tar: {seen.members} member(s), {seen.tar_bytes} bytes")

        step("describe the AMI")
        import boto3

        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=url,
                           aws_access_key_id="demo", aws_secret_access_key="demo")
        described = ec2.describe_images(ImageIds=[ami])["Images"][0]
        for key in ("ImageId", "Name", "Description", "ImageLocation", "Architecture",
                    "RootDeviceType", "State"):
            print(f"  {key:15} {described.get(key)}")
        for tag in described.get("Tags", []):
            print(f"  tag             {tag['Key']}={tag['Value']}")

        step("unbundle straight from S3 and compare with the image")
        restored = work / "restored"
        shutil.rmtree(restored, ignore_errors=True)
        restored.mkdir()
        run("unbundle", "--from-s3", "-m", location, "-k", keys / "user-key.pem", "-d", restored,
            env=env)
        same = filecmp.cmp(image, restored / image.name, shallow=False)
        print(f"restored image identical to the bundled one: {same}")
        if not same:
            raise SystemExit("demo: the restored image differs")

        step("clean up: deregister the AMI and delete its bundle")
        run("deregister", ami, "--delete-bundle", env=env)
        print(f"\ndemo finished in {time.monotonic() - started:.1f}s: {ami} built, verified, "
              "removed")
    finally:
        stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
