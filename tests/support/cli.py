"""Running the CLI in-process from a test, and what the S3/EC2 tests look at afterwards: one
place for the helpers the integration and reliability tests share."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bundler.cli import main
from bundler.s3 import LOCK_SUFFIX
from tests.support.bundles import FakeBundle
from tests.support.s3kit import list_keys

KIB = 1024
MIB = 1024 * 1024
ACCOUNT = "123456789012"
keys_in = list_keys  # key → (size, ETag) under a prefix: the tests' name for it


def run(capsys, *argv: object) -> tuple[int, str, str]:
    """``ami-bundler ARGV`` in this process (paths and numbers as strings): (exit code, stdout,
    stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def relay_image(tmp_path: Path, monkeypatch) -> Path:
    """A 1 MiB raw image whose first 640 KiB do not compress, bundled in 64 KiB parts (11):
    enough parts for a relay's copies to overlap its upload, in well under a second."""
    import bundler.partcutter

    monkeypatch.setattr(bundler.partcutter, "PART_SIZE", 64 * KIB)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.write(os.urandom(640 * KIB))
        fh.truncate(MIB)
    return image


def write_publish_plan(path: Path, name: str, regions: Sequence[str], bucket: str, image: Path,
                       user_keys: tuple[Path, Path], *, account: str = ACCOUNT) -> None:
    """A plan of ``image`` (raw) as AMIs ``NAME-{date}`` in ``regions`` of ``account``, into
    ``bucket`` (a template: ``{region}``), x86_64, signed with ``user_keys`` (key, cert)."""
    key, cert = user_keys
    path.write_text(f"""\
name = "{name}"
ami_name = "{name}-{{date}}"
regions = {json.dumps(list(regions))}
bucket = "{bucket}"

[source]
image = "{image}"

[bundle]
cert = "{cert}"
private_key = "{key}"

[[accounts]]
id = "{account}"

[boot]
architecture = "x86_64"
""")


def publish_runner(plan: Path, endpoint: str, ec2_cert_dir: Path) -> Callable[..., Any]:
    """``publish PLAN --json`` through ``endpoint`` (no retries, so a fault shows at once):
    a function of (capsys, *extra flags) giving (exit code, the parsed report, stderr)."""

    def publish(capsys, *extra: str) -> tuple[int, dict, str]:
        code, out, err = run(capsys, "publish", str(plan), "--endpoint-url", endpoint,
                             "--ec2cert-dir", str(ec2_cert_dir), "--max-attempts", "1",
                             "--json", *extra)
        return code, json.loads(out) if out.strip() else {}, err

    return publish


def upload(
    capsys, endpoint: str, target: str, bundle: FakeBundle, *extra: str
) -> tuple[int, str, str]:
    """``upload-bundle`` of a local bundle to ``target`` (BUCKET[/PREFIX])."""
    return run(capsys, "upload-bundle", "-b", target, "-m", str(bundle.manifest_path),
               "--endpoint-url", endpoint, *extra)


def install_argv(
    image: Path,
    user_keys: tuple[Path, Path],
    endpoint: str,
    *,
    bucket: str | None = None,
    ec2cert: Path | None = None,
    regions: Sequence[str] = (),
    template: str | None = None,
    cert_dir: Path | None = None,
    name: str | None = None,
    register: bool = True,
) -> list[str]:
    """``install`` of ``image`` signed with ``user_keys`` (key, cert) for account ACCOUNT, x86_64:
    into ``bucket`` with ``ec2cert``, or into ``regions`` by ``template`` with ``cert_dir``."""
    key, cert = user_keys
    argv = ["install", "-i", str(image), "-c", str(cert), "-k", str(key), "-u", ACCOUNT,
            "-r", "x86_64"]
    if name is not None:
        argv += ["-p", name]
    if bucket is not None:
        argv += ["-b", bucket]
    if ec2cert is not None:
        argv += ["--ec2cert", str(ec2cert)]
    if regions:
        argv += ["--regions", ",".join(regions)]
    if template is not None:
        argv += ["--bucket-template", template]
    if cert_dir is not None:
        argv += ["--ec2cert-dir", str(cert_dir)]
    if not register:
        argv.append("--no-register")
    return argv + ["--endpoint-url", endpoint]


def register(capsys, url: str, location: str, name: str, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "register", location, "-n", name, "--endpoint-url", url, *extra)


def ami_name() -> str:
    """A fresh AMI name (names are unique per region and account)."""
    return f"ami-bundler-test-{uuid.uuid4().hex[:10]}"


def images_named(ec2, name: str) -> list[dict]:
    filters = [{"Name": "name", "Values": [name]}]
    return ec2.describe_images(Owners=["self"], Filters=filters)["Images"]


def copy_argv(user_keys: tuple[Path, Path], source: str, destination: str, region: str,
              ec2cert: Path, endpoint: str) -> list[str]:
    """``copy-bundle`` of ``disk.manifest.xml`` from ``source`` to ``destination`` (both
    BUCKET/PREFIX) in ``region``, wrapped to ``ec2cert``."""
    key, cert = user_keys
    return ["copy-bundle", "-c", str(cert), "-k", str(key), "-m", "disk.manifest.xml",
            "-b", source, "-d", destination, "--region", region, "--ec2cert", str(ec2cert),
            "--endpoint-url", endpoint]


def bundle_puts(proxy, pattern: str = ".*"):
    """PUTs of bundle objects (not of the upload's lock object, see bundler.s3.UploadLock)."""
    return [r for r in proxy.requests("PUT", pattern) if not r.path.endswith(LOCK_SUFFIX)]


def sparse_image(path: Path, size: int) -> str:
    """Random data in a few places, holes elsewhere; returns its SHA-1."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, length in ((0, 300_000), (5 * MIB, 11 * MIB), (size - 4096, 4096)):
            fh.seek(offset)
            fh.write(os.urandom(length))
    return hashlib.sha1(path.read_bytes()).hexdigest()
