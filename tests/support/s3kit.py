"""S3 crash/fault kit shared by tests/reliability/test_s3_*.py and scripts/chaos_s3.py.

* ``MotoEndpoint``: the strict local AWS (moto) on 127.0.0.1 (ephemeral port) that outlives the
  clients we kill.
* ``run_cli``: the real CLI (``python -m bundler``) in a subprocess, optionally SIGKILLed.
* ``inspect_bundles``: what is in a bucket prefix, checked object by object: every manifest
  object present ⇒ every part it names present (list + HEAD) with the manifest's SHA-1 (GET),
  else it is ``wrong`` — a visible bundle that is not whole must never happen.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from bundler.errors import BundlerError
from bundler.manifest import parse_manifest
from bundler.s3 import LOCK_SUFFIX
from tests.support.strictaws import StrictEndpoint

REPO = Path(__file__).resolve().parents[2]
_PART = re.compile(r"\.part\.[0-9]+$")


class MotoEndpoint(StrictEndpoint):
    """``with MotoEndpoint() as url:`` — the strict local AWS (``tests.support.strictaws``) in
    this process, on 127.0.0.1."""


def plain_client(service: str, endpoint_url: str, region: str = "us-east-1") -> Any:
    """A plain boto3 client for checking outcomes independently of bundler.aws."""
    return boto3.client(service, endpoint_url=endpoint_url, region_name=region,
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1}))


def plain_s3(endpoint: str) -> Any:
    return plain_client("s3", endpoint)


def cli_env(*, read_timeout: float = 5.0, connect_timeout: float = 2.0) -> dict[str, str]:
    """Fake credentials, no AWS configuration read, no proxies, short timeouts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k.lower() not in
           ("http_proxy", "https_proxy")}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true",
                "NO_PROXY": "127.0.0.1,localhost", "AMI_BUNDLER_READ_TIMEOUT": str(read_timeout),
                "AMI_BUNDLER_CONNECT_TIMEOUT": str(connect_timeout), "PYTHONPATH": str(REPO)})
    return env


@dataclass
class CliRun:
    killed: bool
    returncode: int
    stderr: str
    seconds: float


def run_cli(argv: list[str], env: dict[str, str], *, kill_after: float | None = None,
            timeout: float = 120.0) -> CliRun:
    """``python -m bundler ARGV``; SIGKILLed after ``kill_after`` seconds if still running."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bundler", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = False
    try:
        _, err = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            proc.kill()
            proc.communicate()
            raise
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=timeout)  # reaped: its PID is really gone
        killed = True
    return CliRun(killed, proc.returncode, err.decode(errors="replace"), time.monotonic() - started)


@dataclass
class Inspection:
    wrong: list[str] = field(default_factory=list)  # a visible manifest that is not whole: never
    complete: list[str] = field(default_factory=list)  # manifests whose parts all verify
    manifests: dict[str, bytes] = field(default_factory=dict)
    loose: list[str] = field(default_factory=list)  # parts no manifest names (unfinished upload)
    locks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.wrong


def put_bundle(s3: Any, bucket: str, bundle: Any, *, acl: str = "aws-exec-read",
               skip_grant: str = "") -> str:
    """A fake bundle straight into ``bucket/img/`` with a plain client (``skip_grant``: the
    part put without the ACL); its image location."""
    for name, part in zip(bundle.part_names, bundle.parts, strict=True):
        extra = {} if name == skip_grant else {"ACL": acl}
        s3.put_object(Bucket=bucket, Key=f"img/{name}", Body=part.data, **extra)
    s3.put_object(Bucket=bucket, Key="img/a.manifest.xml", Body=bundle.manifest_bytes, ACL=acl)
    return f"{bucket}/img/a.manifest.xml"


def list_keys(s3: Any, bucket: str, prefix: str = "") -> dict[str, tuple[int, str]]:
    """key → (size, ETag) under ``prefix``, read with a plain client."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["Size"], o["ETag"].strip('"'))
    return out


def inspect_bundles(s3: Any, bucket: str, prefix: str = "", *,
                    known: dict[str, bytes] | None = None) -> Inspection:
    """Check every manifest object under ``prefix``: list + HEAD + GET of each part it names,
    SHA-1 against the manifest. ``known``: manifest name → the bytes one of our runs uploaded
    (a manifest with other bytes is wrong too)."""
    seen = Inspection()
    listing = list_keys(s3, bucket, prefix)
    claimed: set[str] = set()
    for key in sorted(listing):
        name = key[len(prefix):]
        if name.endswith(LOCK_SUFFIX):
            seen.locks.append(name)
            continue
        if not name.endswith(".manifest.xml"):
            continue
        raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        seen.manifests[name] = raw
        if known is not None and raw not in known.values():
            seen.wrong.append(f"{name}: not a manifest any run uploaded")
            continue
        try:
            parsed = parse_manifest(raw, source=name)
        except BundlerError as exc:
            seen.wrong.append(f"{name}: unparsable: {exc}")
            continue
        problems = []
        for entry in parsed.manifest.parts:
            part_key = prefix + entry.filename
            claimed.add(part_key)
            if part_key not in listing:
                problems.append(f"{entry.filename} not listed")
                continue
            try:
                s3.head_object(Bucket=bucket, Key=part_key)
                data = s3.get_object(Bucket=bucket, Key=part_key)["Body"].read()
            except Exception as exc:  # noqa: BLE001 - any failure to read a named part is a finding
                problems.append(f"{entry.filename}: {type(exc).__name__}")
                continue
            if hashlib.sha1(data).hexdigest() != entry.digest.lower():
                problems.append(f"{entry.filename}: SHA-1 differs from the manifest")
        if problems:
            seen.wrong.append(f"{name}: " + "; ".join(problems))
        else:
            seen.complete.append(name)
    seen.loose = sorted(k[len(prefix):] for k in listing if _PART.search(k) and k not in claimed)
    return seen


def one_line_error(stderr: str) -> str | None:
    """The CLI's error line, if stderr ends in exactly one ``ami-bundler: error: …`` line and has
    no traceback; None otherwise."""
    if "Traceback" in stderr:
        return None
    errors = [line for line in stderr.splitlines() if line.startswith("ami-bundler: error: ")]
    return errors[0] if len(errors) == 1 and errors[0].strip() != "ami-bundler: error:" else None


# --------------------------------------------------------------------------- scenarios


@dataclass
class Tally:
    faults_injected: int = 0
    crashes_injected: int = 0
    data_lost: int = 0
    wrong_bytes_accepted: int = 0
    runs: int = 0
    notes: list[str] = field(default_factory=list)

    def lost(self, what: str) -> None:
        self.data_lost += 1
        self.notes.append(f"lost: {what}")

    def wrong(self, what: str) -> None:
        self.wrong_bytes_accepted += 1
        self.notes.append(f"wrong: {what}")

    def as_dict(self) -> dict[str, int]:
        return {"faults_injected": self.faults_injected, "crashes_injected": self.crashes_injected,
                "data_lost": self.data_lost, "wrong_bytes_accepted": self.wrong_bytes_accepted,
                "runs": self.runs}


@dataclass
class World:
    """A moto endpoint, a fault proxy in front of it, keys and an install image."""

    endpoint: str
    proxy: Any  # tests.support.faultproxy.FaultProxy
    root: Path
    key: Path
    cert: Path
    ec2cert: Path
    signing_key: Any
    env: dict[str, str]
    image: Path | None = None
    image_sha1: str = ""
    counter: int = 0
    copy_source: tuple[str, str] | None = None  # (bucket, prefix) of a real bundle "src"

    @property
    def s3(self) -> Any:
        return plain_s3(self.endpoint)

    def new_bucket(self) -> str:
        self.counter += 1
        name = f"chaos-{os.getpid()}-{self.counter}-{os.urandom(3).hex()}"
        # ACLs on: EC2 reads bundles through their grant.
        self.s3.create_bucket(Bucket=name, ObjectOwnership="ObjectWriter")
        return name

    def install_image(self) -> Path:
        """Random head (3 parts) + a long compressible tail, so the part-count bound has two
        digits and the upload goes through provisional names and renames."""
        if self.image is None:
            self.image = self.root / "inst.img"
            with open(self.image, "wb") as fh:
                fh.write(os.urandom(22 * 1024 * 1024))
                fh.write(b"ami-bundler chaos " * (5 * 1024 * 1024))
            self.image_sha1 = hashlib.sha1(self.image.read_bytes()).hexdigest()
        return self.image


def make_world(endpoint: str, proxy: Any, root: Path) -> World:
    from bundler import keys as keylib

    root.mkdir(parents=True, exist_ok=True)
    key, cert, ec2key, ec2cert = root / "k.pem", root / "c.pem", root / "ek.pem", root / "ec.pem"
    keylib.keygen(key, cert)
    keylib.keygen(ec2key, ec2cert)
    return World(endpoint, proxy, root, key, cert, ec2cert, keylib.load_private_key(key), cli_env())


def _md5s(bundle: Any) -> dict[str, tuple[int, str]]:
    named = zip(bundle.part_names, bundle.parts, strict=True)
    return {n: (len(p.data), hashlib.md5(p.data).hexdigest()) for n, p in named}


def upload_crash(world: World, rng: Any, tally: Tally, *, replace_old: bool | None = None) -> None:
    """upload-bundle killed after a random delay (sometimes over an older bundle of the same
    name), inspected, then re-run: it must complete, re-sending only the parts not intact."""
    from tests.support.bundles import make_fake_bundle

    bucket = world.new_bucket()
    tag = os.urandom(3).hex()
    bundle = make_fake_bundle(world.root / f"up-{tag}", "crash", [96 * 1024] * 8, world.signing_key)
    known = {"crash.manifest.xml": bundle.manifest_bytes}
    argv = ["upload-bundle", "-b", f"{bucket}/c", "-m", str(bundle.manifest_path), "--jobs", "2",
            "--endpoint-url", world.proxy.url]
    if replace_old if replace_old is not None else rng.random() < 0.5:
        argv.append("--force")  # a different bundle of that name is replaced only when told
        old = make_fake_bundle(world.root / f"old-{tag}", "crash", [96 * 1024] * 6,
                               world.signing_key)
        rc = run_cli_here(["upload-bundle", "-b", f"{bucket}/c", "-m", str(old.manifest_path),
                           "--endpoint-url", world.endpoint], world.env)
        tally.runs += 1
        if rc.returncode != 0:
            tally.lost(f"upload of the old bundle failed: {rc.stderr.strip()}")
            return
        known = {"crash.manifest.xml": bundle.manifest_bytes, "old": old.manifest_bytes}
    world.proxy.clear()
    world.proxy.add_rule("delay", r"\.part\.", method="PUT", times=None, delay=0.1)
    first = run_cli(argv, world.env, kill_after=rng.uniform(0.35, 1.1))
    tally.runs += 1
    tally.crashes_injected += first.killed
    world.proxy.wait_idle()
    seen = inspect_bundles(world.s3, bucket, "c/", known=known)
    for problem in seen.wrong:
        tally.wrong(f"after killed upload-bundle: {problem}")
    before = list_keys(world.s3, bucket, "c/")
    intact = {n for n, v in _md5s(bundle).items() if before.get("c/" + n) == v}
    world.proxy.clear()
    again = run_cli_here(argv, world.env)
    tally.runs += 1
    if again.returncode != 0:
        tally.lost(f"upload-bundle re-run failed: {again.stderr.strip()}")
        return
    sent = {r.key[len("c/"):] for r in world.proxy.requests("PUT", r"\.part\.")}
    if sent != set(bundle.part_names) - intact:
        expected = sorted(set(bundle.part_names) - intact)
        tally.notes.append(f"resume sent {sorted(sent)}, expected {expected}")
    seen = inspect_bundles(world.s3, bucket, "c/",
                           known={"crash.manifest.xml": bundle.manifest_bytes})
    for problem in seen.wrong:
        tally.wrong(f"after re-run: {problem}")
    if seen.complete != ["crash.manifest.xml"]:
        tally.lost(f"re-run did not leave a complete bundle: {seen}")
    if seen.loose or seen.locks:
        tally.notes.append(f"leftovers after upload-bundle re-run: {seen.loose + seen.locks}")


def install_crash(world: World, rng: Any, tally: Tally, *, verify_image: bool = False) -> None:
    """install killed after a random delay; no manifest unless whole; a re-run completes and
    leaves exactly the bundle (stale provisional parts and the lock gone)."""
    bucket = world.new_bucket()
    image = world.install_image()
    argv = ["install", "-i", str(image), "-c", str(world.cert), "-k", str(world.key),
            "-u", "123456789012",
            "-r", "x86_64", "--ec2cert", str(world.ec2cert), "-b", f"{bucket}/i",
            "--no-register", "--jobs", "3", "--endpoint-url", world.proxy.url]
    world.proxy.clear()
    world.proxy.add_rule("delay", r"\.part\.", method="PUT", times=None, delay=0.3)
    first = run_cli(argv, world.env, kill_after=rng.uniform(0.4, 2.0))
    tally.runs += 1
    tally.crashes_injected += first.killed
    world.proxy.wait_idle()
    seen = inspect_bundles(world.s3, bucket, "i/")
    for problem in seen.wrong:
        tally.wrong(f"after killed install: {problem}")
    world.proxy.clear()
    again = run_cli_here(argv, world.env)
    tally.runs += 1
    if again.returncode != 0:
        tally.lost(f"install re-run failed: {again.stderr.strip()}")
        return
    seen = inspect_bundles(world.s3, bucket, "i/")
    for problem in seen.wrong:
        tally.wrong(f"after install re-run: {problem}")
    if seen.complete != ["inst.img.manifest.xml"]:
        tally.lost(f"install re-run did not leave a complete bundle: {seen.complete}")
    if seen.loose or seen.locks:
        tally.notes.append(f"leftovers after install re-run: {seen.loose + seen.locks}")
    if verify_image:
        out = world.root / f"unb-{os.urandom(3).hex()}"
        out.mkdir()
        rc = run_cli_here(["unbundle", "--from-s3", "-m", f"{bucket}/i/inst.img.manifest.xml",
                           "-k", str(world.key), "-d", str(out), "--endpoint-url",
                           world.endpoint], world.env)
        tally.runs += 1
        got = out / "inst.img"
        if rc.returncode != 0 or hashlib.sha1(got.read_bytes()).hexdigest() != world.image_sha1:
            why = rc.stderr.strip() or "image differs"
            tally.wrong(f"unbundle --from-s3 after install re-run: {why}")


CONCURRENT_OK = ("another upload", "lost the lock", "disappeared from",
                 "already holds a different bundle")


def concurrent_uploads(world: World, rng: Any, tally: Tally) -> list[CliRun]:
    """Two different bundles, one name, one prefix, at the same time: never an interleaved bundle;
    a loser fails with a clear line; a sequential re-run of it then completes."""
    from tests.support.bundles import make_fake_bundle

    bucket = world.new_bucket()
    tag = os.urandom(3).hex()
    bundles = [make_fake_bundle(world.root / f"cc-{tag}-{i}", "dup", [64 * 1024] * 6,
                                world.signing_key)
               for i in range(2)]
    known = {f"b{i}": b.manifest_bytes for i, b in enumerate(bundles)}
    world.proxy.clear()
    world.proxy.add_rule("delay", r"\.part\.", method="PUT", times=None, delay=0.05)
    procs = []
    for b in bundles:
        argv = ["upload-bundle", "-b", f"{bucket}/d", "-m", str(b.manifest_path), "--jobs", "2",
                "--endpoint-url", world.proxy.url]
        procs.append(subprocess.Popen([sys.executable, "-m", "bundler", *argv], cwd=REPO,
                                      env=world.env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(rng.uniform(0, 0.3))  # a random head start, not a wait for anything
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        results.append(CliRun(False, proc.returncode, err.decode(errors="replace"), 0.0))
    tally.runs += 2
    world.proxy.wait_idle()
    seen = inspect_bundles(world.s3, bucket, "d/", known=known)
    for problem in seen.wrong:
        tally.wrong(f"concurrent uploads: {problem}")
    for res, b in zip(results, bundles, strict=True):
        if res.returncode == 0:
            continue
        line = one_line_error(res.stderr) or ""
        if not any(s in line for s in CONCURRENT_OK):
            tally.notes.append(f"concurrent loser's error is unclear: {res.stderr.strip()!r}")
        # The winner's bundle is there now: replacing it takes --force.
        rerun = run_cli(["upload-bundle", "-b", f"{bucket}/d", "-m", str(b.manifest_path),
                         "--force", "--endpoint-url", world.endpoint], world.env)
        tally.runs += 1
        if rerun.returncode != 0:
            tally.lost(f"re-run of the concurrent loser failed: {rerun.stderr.strip()}")
        seen = inspect_bundles(world.s3, bucket, "d/", known={"dup.manifest.xml": b.manifest_bytes})
        if seen.wrong or seen.complete != ["dup.manifest.xml"]:
            tally.wrong(f"after the loser's re-run: {seen.wrong or seen.complete}")
    return results


# --------------------------------------------------------------------------- kill at every step

WRITES = "PUT|POST|DELETE"


def run_cli_killed_at(rule: Any, argv: list[str], env: dict[str, str], *,
                      timeout: float = 120.0) -> CliRun:
    """The CLI with ``env`` in a forked child (this process has loaded it: no interpreter
    start-up, which was most of each killed run), SIGKILLed the moment the proxy ``rule``
    holds one of its requests (the request never reaches S3): a kill right before that step.
    If the run ends first, it is not killed. Its output is discarded (``stderr`` is empty)."""
    from tests.support.crashkit import start_in_child

    def body() -> int:
        from bundler.cli import main

        os.environ.clear()
        os.environ.update(env)
        return main(list(argv))

    started = time.monotonic()
    pid = start_in_child(body)
    killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if rule.hits or time.monotonic() - started > timeout:
            killed = bool(rule.hits)
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)  # reaped: its PID is really gone
            break
        time.sleep(0.005)
    return CliRun(killed, os.waitstatus_to_exitcode(status), "", time.monotonic() - started)


def run_cli_here(argv: list[str], env: dict[str, str]) -> CliRun:
    """The CLI in this process (a re-run needs no fresh interpreter: faster), with ``env``."""
    import contextlib
    import io

    from bundler.cli import main

    saved = dict(os.environ)
    err = io.StringIO()
    started = time.monotonic()
    try:
        os.environ.clear()
        os.environ.update(env)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return CliRun(False, code, err.getvalue(), time.monotonic() - started)


def _put_fake(world: World, bucket: str, prefix: str, bundle: Any) -> None:
    for name, part in zip(bundle.part_names, bundle.parts, strict=True):
        world.s3.put_object(Bucket=bucket, Key=prefix + name, Body=part.data, ACL="aws-exec-read")
    world.s3.put_object(Bucket=bucket, Key=prefix + bundle.manifest_path.name,
                        Body=bundle.manifest_bytes, ACL="aws-exec-read")


def kill_at_every_step(world: World, tally: Tally, what: str, *, prepare: Any, argv_for: Any,
                       prefix: str, final: str, steps: list[int] | None = None) -> int:
    """Run ``argv_for(bucket, url)`` once to count its writes into a fresh bucket (``prepare``d:
    returns the manifests already there, name → bytes), then once per write N, killed right
    before write N: every visible manifest must be a whole bundle we know (the old one or the
    new one), never one over foreign parts; a re-run must leave exactly ``final``, complete.
    Returns the number of writes."""
    bucket = world.new_bucket()
    prepare(bucket)
    world.proxy.clear()
    clean = run_cli(argv_for(bucket, world.proxy.url), world.env)
    tally.runs += 1
    if clean.returncode != 0:
        tally.lost(f"{what}: the uninterrupted run failed: {clean.stderr.strip()}")
        return 0
    def into_bucket(r: Any) -> bool:  # an object write, or a bucket-level POST (DeleteObjects)
        return r.path.startswith(f"/{bucket}/") or (r.path == f"/{bucket}" and r.method == "POST")

    count = len([r for r in world.proxy.requests()
                 if r.method in WRITES.split("|") and into_bucket(r)])
    for n in steps if steps is not None else range(count):
        bucket = world.new_bucket()
        known = prepare(bucket) or None
        world.proxy.clear()
        # Object writes and DeleteObjects (POST /bucket?delete); not the bucket itself.
        rule = world.proxy.add_rule("stall", f"^/{bucket}(/|\\?)", method=WRITES, skip=n, delay=0.5)
        first = run_cli_killed_at(rule, argv_for(bucket, world.proxy.url), world.env)
        tally.runs += 1
        tally.crashes_injected += first.killed
        world.proxy.wait_idle()
        after = inspect_bundles(world.s3, bucket, prefix, known=known)
        for problem in after.wrong:
            tally.wrong(f"{what} killed before write {n + 1} of {count}: {problem}")
        again = run_cli_here(argv_for(bucket, world.endpoint), world.env)
        tally.runs += 1
        if again.returncode != 0:
            tally.lost(f"{what} re-run after a kill before write {n + 1}: {again.stderr.strip()}")
            continue
        done = inspect_bundles(world.s3, bucket, prefix)
        if done.wrong or done.complete != [final] or done.loose or done.locks:
            tally.wrong(f"{what} re-run after a kill before write {n + 1}: {done}")
    return count


def _copy_source(world: World) -> tuple[str, str]:
    """A real bundle ``src`` (2 parts) installed once per world."""
    if world.copy_source is None:
        image = world.root / "src"
        with open(image, "wb") as fh:
            fh.write(os.urandom(12 * 1024 * 1024))
        bucket = world.new_bucket()
        rc = run_cli(["install", "-i", str(image), "-c", str(world.cert), "-k", str(world.key),
                      "-u", "123456789012",
                      "-r", "x86_64", "--ec2cert", str(world.ec2cert), "-b", f"{bucket}/s",
                      "--no-register", "--endpoint-url", world.endpoint], world.env)
        if rc.returncode != 0:
            raise RuntimeError(f"install of the copy source failed: {rc.stderr.strip()}")
        world.copy_source = (bucket, "s/")
    return world.copy_source


def copy_kills(world: World, tally: Tally, *, replace: bool, steps: list[int] | None = None) -> int:
    """copy-bundle (server-side) killed before each of its writes, into an empty destination or
    (``replace``, with --force) over a different bundle of the same name."""
    from tests.support.bundles import make_fake_bundle

    src_bucket, src_prefix = _copy_source(world)
    old = make_fake_bundle(world.root / f"copy-old-{os.urandom(3).hex()}", "src", [64 * 1024] * 4,
                           world.signing_key)

    def prepare(bucket: str) -> None:
        # The new manifest is made (migrated) by the run itself: whether a visible one is whole
        # is what inspect_bundles checks, part by part.
        if replace:
            _put_fake(world, bucket, "d/", old)

    def argv_for(bucket: str, url: str) -> list[str]:
        return ["copy-bundle", "-c", str(world.cert), "-k", str(world.key),
                "-m", "src.manifest.xml",
                "-b", f"{src_bucket}/{src_prefix}", "-d", f"{bucket}/d", "--region", "us-east-1",
                "--ec2cert", str(world.ec2cert), "--jobs", "2", "--endpoint-url", url,
                *(["--force"] if replace else [])]

    return kill_at_every_step(world, tally,
                              "copy-bundle" + (" --force over another bundle" if replace else ""),
                              prepare=prepare, argv_for=argv_for, prefix="d/",
                              final="src.manifest.xml", steps=steps)


def replace_kills(world: World, tally: Tally, *, steps: list[int] | None = None) -> int:
    """upload-bundle --force of bundle B over a different bundle A of the same name, killed before
    each of its writes."""
    from tests.support.bundles import make_fake_bundle

    tag = os.urandom(3).hex()
    old = make_fake_bundle(world.root / f"rep-old-{tag}", "rep", [64 * 1024] * 5, world.signing_key)
    new = make_fake_bundle(world.root / f"rep-new-{tag}", "rep", [64 * 1024] * 3, world.signing_key)

    def prepare(bucket: str) -> dict[str, bytes]:
        _put_fake(world, bucket, "r/", old)
        return {"old": old.manifest_bytes, "new": new.manifest_bytes}

    def argv_for(bucket: str, url: str) -> list[str]:
        return ["upload-bundle", "-b", f"{bucket}/r", "-m", str(new.manifest_path),
                "--force", "--jobs", "2", "--endpoint-url", url]

    return kill_at_every_step(world, tally, "upload-bundle --force", prepare=prepare,
                              argv_for=argv_for, prefix="r/", final="rep.manifest.xml", steps=steps)

