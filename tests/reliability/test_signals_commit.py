"""A signal at the commit point of every command that publishes a bundle: install (one region
and a multi-region relayed ``publish``), upload-bundle and copy-bundle (ec2-migrate-bundle).

The commit point is the manifest PUT (``bundler.s3.publish``): the proxy holds that request
and the signal is sent from outside while it is held — so the manifest lands and may be
seen, and an AMI registered from it, by anyone. From then on the bundle is never deleted:
the run exits 128+signal with one line saying what is published — and, for a command that
was to register an AMI, a hint line saying how to finish (the same command again, which then
registers it with the settings given) — the lease is released, and nothing else is left: no
orphan part, no open multipart upload, no AMI registered by the interrupted run. (The other
side of the commit point, a signal held while the sink commits and the manifest is never sent:
test_signals_pieces.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from tests.support import crashkit
from tests.support.cli import (
    KIB,
    MIB,
    copy_argv,
    images_named,
    install_argv,
    write_publish_plan,
)
from tests.support.faultproxy import Rule
from tests.support.s3kit import REPO, cli_env, inspect_bundles, list_keys, plain_client
from tests.support.strictaws.accounts import BASE_ACCOUNT

MANIFEST_PUT = r"\.manifest\.xml$"


def _signal_while_held(argv: list[str], held: Rule, signum: int = signal.SIGTERM,
                       hits: int = 1) -> tuple[int, str]:
    """``ami-bundler ARGV`` in a subprocess, sent ``signum`` once ``held`` holds ``hits``
    requests. Returns (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "bundler", *argv, "-q"], cwd=REPO,
                            env=cli_env(read_timeout=20), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while held.hits < hits and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # poll: the request comes from the child
        assert held.hits >= hits, f"the held request never came: {proc.poll()}"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err.decode()


def _kept(s3, bucket: str, prefix: str, manifest: str = "disk.manifest.xml") -> None:
    """``prefix`` holds exactly one whole bundle: every part its manifest names and nothing
    else — no orphan part, no lease, no open multipart upload."""
    seen = inspect_bundles(s3, bucket, prefix)
    assert seen.ok, seen.wrong
    assert seen.complete == [manifest], seen
    assert seen.loose == [] and seen.locks == [], seen
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    assert uploads == [], f"multipart uploads left open: {uploads}"


RERUN_HINT = ("hint: run the same command again: it finds the published bundle, uploads "
              "nothing and registers the AMI")


def _says_published(err: str, url: str, signum: int = signal.SIGTERM, *,
                    hint: str | None = None) -> str:
    """The error line names what is published; a command that was to register an AMI says
    that it did not and gives ``hint`` on the line after, one that was not gives none."""
    lines = err.strip().splitlines()
    [line] = [entry for entry in lines if ": error: " in entry]
    assert f"interrupted by {signal.Signals(signum).name}" in line, err
    assert f"{url} is published (a complete bundle, kept)" in line, err
    assert ("AMI not registered" in line) == (hint is not None), err
    assert lines[-1] == (hint or line), err
    assert "Traceback" not in err, err
    return line


def test_install_interrupted_at_its_manifest_put_keeps_the_bundle(proxy, moto_server, s3, ec2,
                                                                  bucket, tmp_path, user_keys,
                                                                  ec2_keys):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(7 * MIB))  # one part, its tail in two pieces
    held = proxy.add_rule("delay", MANIFEST_PUT, method="PUT", times=1, delay=1.0)
    name = f"sig-commit-{uuid.uuid4().hex[:8]}"
    argv = [*install_argv(image, user_keys, proxy.url, bucket=f"{bucket}/sig",
                          ec2cert=ec2_keys[1], name="disk"), "-n", name, "--no-check",
            "--jobs", "2"]
    code, err = _signal_while_held(argv, held)
    assert code == 128 + signal.SIGTERM, err
    assert proxy.wait_idle()
    url = f"s3://{bucket}/sig/disk.manifest.xml"
    _says_published(err, url, hint=RERUN_HINT)
    _kept(s3, bucket, "sig/")
    assert images_named(ec2, name) == []  # the run stopped before registering
    # The hint's way to finish: the same command registers the kept bundle, under the AMI
    # name given (-n), uploading no part again.
    parts_before = len(proxy.requests("PUT", r"\.part\."))
    done = subprocess.run([sys.executable, "-m", "bundler", *argv, "-q"], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(proxy.requests("PUT", r"\.part\.")) == parts_before
    assert [i["ImageLocation"] for i in images_named(ec2, name)] == [url.removeprefix("s3://")]
    _kept(s3, bucket, "sig/")


def _small_image_args(tmp_path, user_keys, ec2_keys) -> list[str]:
    """A 300 KiB image (several 64 KiB parts) and the arguments every bundling command takes
    for it: image, keys, account, architecture, EC2 certificate."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(300 * KIB))
    key, cert = user_keys
    return ["-i", str(image), "-c", str(cert), "-k", str(key), "-u", "123456789012",
            "-r", "x86_64", "--ec2cert", str(ec2_keys[1])]


def test_upload_bundle_interrupted_at_its_manifest_put_keeps_the_bundle(proxy, s3, bucket,
                                                                        tmp_path, user_keys,
                                                                        ec2_keys):
    out = tmp_path / "bundle"
    code = crashkit.run_cli(["bundle-image", *_small_image_args(tmp_path, user_keys, ec2_keys),
                             "-d", str(out), "-p", "disk", "-q"], 64 * KIB)
    assert code == 0
    # A stale part of an earlier, longer bundle: removed after the manifest, signal or not.
    s3.put_object(Bucket=bucket, Key="up/disk.part.99", Body=b"stale")
    held = proxy.add_rule("delay", MANIFEST_PUT, method="PUT", times=1, delay=1.0)
    code, err = _signal_while_held(["upload-bundle", "-b", f"{bucket}/up", "-m",
                                    str(out / "disk.manifest.xml"), "--endpoint-url",
                                    proxy.url], held, signal.SIGINT)
    assert code == 128 + signal.SIGINT, err
    assert proxy.wait_idle()
    _says_published(err, f"s3://{bucket}/up/disk.manifest.xml", signal.SIGINT)
    _kept(s3, bucket, "up/")


def test_copy_bundle_interrupted_at_its_manifest_put_keeps_the_copy(proxy, s3, bucket,
                                                                    tmp_path, user_keys,
                                                                    ec2_keys):
    src = f"{bucket}/src"
    code = crashkit.run_cli(["install", *_small_image_args(tmp_path, user_keys, ec2_keys),
                             "-b", src, "-p", "disk", "--no-register", "--no-check",
                             "--endpoint-url", proxy.url, "-q"], 64 * KIB)
    assert code == 0
    held = proxy.add_rule("delay", r"/dst/disk\.manifest\.xml$", method="PUT", times=1,
                          delay=1.0)
    argv = copy_argv(user_keys, src, f"{bucket}/dst", "us-east-1", ec2_keys[1], proxy.url)
    code, err = _signal_while_held(argv, held, signal.SIGHUP)
    assert code == 128 + signal.SIGHUP, err
    assert proxy.wait_idle()
    _says_published(err, f"s3://{bucket}/dst/disk.manifest.xml", signal.SIGHUP)
    _kept(s3, bucket, "dst/")
    _kept(s3, bucket, "src/")  # the source untouched


def test_relayed_publish_interrupted_at_a_manifest_put_keeps_what_is_published(
        proxy, moto_server, tmp_path, user_keys, ec2_cert_dir, monkeypatch):
    """publish over two regions of one account: bundled to one, relayed to the other. The
    signal arrives while the first manifest PUT is held: that region is kept; the other is
    either kept too (its manifest had gone up) or left empty (stopped before its own commit
    point) — never deleted once visible, never half there."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    regions = ("us-east-1", "eu-west-1")
    tag = uuid.uuid4().hex[:8]
    image = tmp_path / "web.img"
    with open(image, "wb") as fh:
        fh.truncate(MIB)
        fh.write(os.urandom(200 * KIB))
    plan = tmp_path / "plan.toml"
    write_publish_plan(plan, f"relay-{tag}", regions, f"sig-commit-{tag}-{{region}}", image,
                       user_keys, account=BASE_ACCOUNT)
    held = proxy.add_rule("delay", MANIFEST_PUT, method="PUT", times=None, delay=1.0)
    code, err = _signal_while_held(["publish", str(plan), "--endpoint-url", proxy.url,
                                    "--ec2cert-dir", str(ec2_cert_dir), "--jobs", "2"], held)
    assert code == 128 + signal.SIGTERM, err
    assert proxy.wait_idle()
    first = proxy.requests("PUT", MANIFEST_PUT)[0].path
    *_, line, hint = err.strip().splitlines()
    assert hint == "hint: run the same publish again: it keeps what is published and registers "\
        "what is missing", err
    published = 0
    for region in regions:
        bucket = f"sig-commit-{tag}-{region}"
        client = plain_client("s3", moto_server, region)
        keys = list_keys(client, bucket)
        ec2 = plain_client("ec2", moto_server, region)
        assert images_named(ec2, f"relay-{tag}-*") == [], region
        manifests = [k for k in keys if k.endswith(".manifest.xml")]
        if not manifests:
            assert keys == {}, f"{region}: left {keys}"
            assert f"/{bucket}/" not in first, f"{region}: its held manifest was deleted"
            continue
        [manifest] = manifests
        prefix = manifest.rpartition("/")[0] + "/"
        _kept(client, bucket, prefix, manifest[len(prefix):])
        assert f"s3://{bucket}/{manifest} is published" in line, err
        assert line.endswith("AMI not registered") or "AMI not registered;" in line, err
        published += 1
    assert published >= 1, err


def test_the_ledger_says_what_a_run_published():
    """What the interrupted run's line is made of (bundler.interrupts): each manifest the
    publish protocol made visible, with the AMI the run registered from it, if any."""
    from bundler import interrupts
    from bundler.cli.failure import failure_of
    from bundler.errors import Interrupted

    interrupts.clear()
    try:
        assert "nothing partial was kept" in failure_of(Interrupted(2)).message
        interrupts.published("s3://b/p/a.manifest.xml", "b/p/a.manifest.xml")
        interrupts.published("s3://c/b.manifest.xml", "c/b.manifest.xml")
        interrupts.registered("c/b.manifest.xml", "ami-12345678")
        interrupts.registered("d/never.manifest.xml", "ami-0")  # not published by this run
        failure = failure_of(Interrupted(15), "run it again")
        assert failure.exit_code == 143 and "\n" not in failure.message
        assert ("s3://b/p/a.manifest.xml is published (a complete bundle, kept), AMI not "
                "registered; s3://c/b.manifest.xml is published and registered as ami-12345678"
                in failure.message)
        assert failure.hint == "run it again"
        assert [p["image_id"] for p in failure.envelope()["published"]] == [None, "ami-12345678"]
        # A command that registers nothing (upload-bundle, copy-bundle) names no AMI
        uploaded = failure_of(Interrupted(15))
        assert "AMI" not in uploaded.message.replace("ami-12345678", "") and not uploaded.hint
        interrupts.registered("b/p/a.manifest.xml", "ami-87654321")  # every AMI made: no hint
        assert failure_of(Interrupted(15), "run it again").hint is None
    finally:
        interrupts.clear()
    assert interrupts.kept() == []
