"""install bundles during its set-up (``s3.held``): parts are cut while the lease and the
listing are taken, and held — at most --jobs + 2 of them — until both are done; no part request
ever precedes them. A signal in that held phase leaves nothing (no lease, no part, no open
upload), and a gate (the image check) that fails stops the run before any write."""

from __future__ import annotations

import os
import signal
import time
import uuid

import bundler.cli.install as cli_install
from bundler.errors import BundlerError
from bundler.s3 import S3Sink
from bundler.s3.held import HeldSink
from tests.support import crashkit
from tests.support.cli import KIB, install_argv, relay_image, run
from tests.support.s3kit import list_keys


def _argv(image, user_keys, ec2_keys, proxy, bucket, *extra):
    return [*install_argv(image, user_keys, proxy.url, bucket=f"{bucket}/held",
                          ec2cert=ec2_keys[1], name="disk"),
            "-n", f"held-{uuid.uuid4().hex[:8]}", "--jobs", "2", "--no-register", *extra]


def _lease(log):
    return next(r for r in log if r.method == "PUT" and r.path.endswith(".ami-bundler-lock"))


def test_parts_are_cut_during_the_lease_and_wait_for_it(capsys, monkeypatch, proxy, s3, bucket,
                                                        tmp_path, user_keys, ec2_keys):
    image = relay_image(tmp_path, monkeypatch)  # 11 parts of 64 KiB
    proxy.add_rule("delay", r"held/disk\.ami-bundler-lock$", method="PUT", times=1, delay=0.6)
    handed_over = []
    real = HeldSink._hand_over

    def hand_over(self: HeldSink) -> None:
        handed_over.append(len(self._held))
        real(self)

    monkeypatch.setattr(HeldSink, "_hand_over", hand_over)
    code, _, err = run(capsys, *_argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check"))
    assert code == 0, err
    # The lease took 0.6 s: the pipeline filled the hold (--jobs 2 + 2) meanwhile, and no more.
    assert handed_over == [4]
    log = [r for r in proxy.requests() if r.path.startswith(f"/{bucket}")]
    lease = _lease(log)
    listing = next(r for r in log if "list-type" in r.query and r.started >= lease.ended)
    parts = [r for r in log if ".part." in r.path]
    assert len({r.path for r in parts if r.method == "PUT"}) >= 11
    assert min(r.started for r in parts) >= listing.ended  # nothing before the lease + listing


def test_a_failing_image_check_stops_the_run_before_any_write(capsys, monkeypatch, proxy, s3,
                                                              bucket, tmp_path, user_keys,
                                                              ec2_keys):
    image = relay_image(tmp_path, monkeypatch)

    def failing(args, printer) -> None:
        raise BundlerError("the image does not boot: no /sbin/init")

    monkeypatch.setattr(cli_install, "check_install_image", failing)
    code, _, err = run(capsys, *_argv(image, user_keys, ec2_keys, proxy, bucket))
    assert code != 0
    assert err.strip().splitlines()[-1] == ("ami-bundler: error: the image does not boot: "
                                            "no /sbin/init")
    assert [r for r in proxy.requests() if r.method in ("PUT", "POST", "DELETE")] == []
    assert list_keys(s3, bucket, "held/") == {}


def _signalled_child(argv, hook) -> int:
    def body() -> int:
        hook()  # patches the forked child's own copy of the classes
        return crashkit._main(argv)

    return crashkit._run_in_child(body, 64 * KIB)


def _left_nothing(proxy, s3, bucket):
    assert proxy.wait_idle()
    assert list_keys(s3, bucket, "held/") == {}  # no lease, no part, no manifest
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix="held/").get("Uploads", []) == []
    log = [r for r in proxy.requests() if r.path.startswith(f"/{bucket}")]
    assert [r for r in log if ".part." in r.path] == []  # no part was ever sent
    return log


def test_a_signal_while_parts_are_held_behind_the_lease_leaves_nothing(
        monkeypatch, proxy, s3, bucket, tmp_path, user_keys, ec2_keys):
    image = relay_image(tmp_path, monkeypatch)
    # The lease is slow to answer; the signal comes once it is asked for, parts held behind it.
    proxy.add_rule("delay", r"held/disk\.ami-bundler-lock$", method="PUT", times=1, delay=1.0)
    argv = _argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check")

    def hook() -> None:
        real = S3Sink.begin

        def begin(self: S3Sink, name: str, max_parts: int) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # handled on the main thread, holding parts
            real(self, name, max_parts)

        S3Sink.begin = begin

    assert _signalled_child(argv, hook) == 128 + signal.SIGTERM
    log = _left_nothing(proxy, s3, bucket)
    lease = _lease(log)
    release = [r for r in log if r.method == "DELETE" and r.path == lease.path]
    assert release and release[0].started >= lease.ended  # taken, then given back


def test_a_signal_while_parts_are_held_behind_the_probe_takes_no_lease(
        monkeypatch, proxy, s3, bucket, tmp_path, user_keys, ec2_keys):
    image = relay_image(tmp_path, monkeypatch)
    # Bundling starts before the probes: the manifest's HEAD is slow, parts are cut meanwhile.
    proxy.add_rule("delay", r"held/disk\.manifest\.xml$", method="HEAD", times=1, delay=1.0)
    argv = _argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check")

    def hook() -> None:
        real = HeldSink.put_part

        def put_part(self: HeldSink, part) -> None:
            real(self, part)
            if part.index == 1 and not self.ready:
                os.kill(os.getpid(), signal.SIGTERM)

        HeldSink.put_part = put_part

    assert _signalled_child(argv, hook) == 128 + signal.SIGTERM
    log = _left_nothing(proxy, s3, bucket)
    probe = next(r for r in log if r.method == "HEAD" and r.path.endswith("disk.manifest.xml"))
    assert probe.ended - probe.started >= 1.0  # the signal came while it was being answered
    assert [r for r in log if r.method in ("PUT", "POST", "DELETE")] == []  # not even a lease


def test_parts_are_cut_while_the_probes_are_answered(capsys, monkeypatch, proxy, s3, bucket,
                                                     tmp_path, user_keys, ec2_keys):
    image = relay_image(tmp_path, monkeypatch)
    proxy.add_rule("delay", r"held/disk\.manifest\.xml$", method="HEAD", times=1, delay=0.6)
    handed_over = []
    cut = []
    real, real_put = HeldSink._hand_over, HeldSink.put_part

    def hand_over(self: HeldSink) -> None:
        handed_over.append(len(self._held))
        real(self)

    def put_part(self: HeldSink, part) -> None:
        cut.append(time.monotonic())  # the proxy's clock too
        real_put(self, part)

    monkeypatch.setattr(HeldSink, "_hand_over", hand_over)
    monkeypatch.setattr(HeldSink, "put_part", put_part)
    code, _, err = run(capsys, *_argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check"))
    assert code == 0, err
    log = [r for r in proxy.requests() if r.path.startswith(f"/{bucket}")]
    probe = next(r for r in log if r.method == "HEAD" and r.path.endswith("disk.manifest.xml"))
    assert cut[3] < probe.ended  # the hold filled while the probe was answered
    assert handed_over == [4]  # and no more
    lease = _lease(log)
    assert lease.started >= probe.ended  # the lease only once the probe found nothing
    assert min(r.started for r in log if ".part." in r.path) >= lease.ended


def _count_early_stops(monkeypatch) -> list[int]:
    """How many parts each early bundle (started before the probes) had cut when stopped."""
    import bundler.install as install_module

    stops: list[int] = []
    real = install_module._bundle_while_probing

    def counted(*args, **kwargs):
        calls = []
        real_put = HeldSink.put_part

        def put_part(self: HeldSink, part) -> None:
            calls.append(part.index)
            real_put(self, part)

        monkeypatch.setattr(HeldSink, "put_part", put_part)
        try:
            out = real(*args, **kwargs)
        finally:
            monkeypatch.setattr(HeldSink, "put_part", real_put)
        if out is None:
            stops.append(len(calls))
        return out

    monkeypatch.setattr(install_module, "_bundle_while_probing", counted)
    return stops


def test_a_bundle_already_there_stops_the_early_bundle_before_any_write(
        capsys, monkeypatch, proxy, s3, bucket, tmp_path, user_keys, ec2_keys):
    image = relay_image(tmp_path, monkeypatch)
    argv = _argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check")
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    before = list_keys(s3, bucket, "held/")
    # The probe is slow, so the early bundle has parts cut when it learns the bundle is there.
    proxy.clear()
    proxy.add_rule("delay", r"held/disk\.manifest\.xml$", method="HEAD", times=1, delay=0.5)
    stops = _count_early_stops(monkeypatch)
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "already holds this image: nothing bundled or uploaded" in out
    assert len(stops) == 1 and stops[0] >= 1  # it had begun, and was stopped
    assert [r for r in proxy.requests() if r.method in ("PUT", "POST", "DELETE")] == []
    assert list_keys(s3, bucket, "held/") == before


def test_force_over_a_different_bundle_reads_the_image_again(
        capsys, monkeypatch, endpoint, proxy, s3, bucket, tmp_path, user_keys, ec2_keys):
    image = relay_image(tmp_path, monkeypatch)
    argv = _argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check")
    assert run(capsys, *argv)[0] == 0
    with open(image, "r+b") as fh:  # another image under the same bundle name
        fh.write(os.urandom(640 * KIB))
    stops = _count_early_stops(monkeypatch)
    code, _, err = run(capsys, *argv)
    assert code == 1 and "different bundle" in err  # refused without --force: nothing written
    assert len(stops) == 1
    proxy.clear()
    code, out, err = run(capsys, *argv, "--force")
    assert code == 0, err
    assert len(stops) == 2  # stopped again, then bundled from the image read anew
    key, cert = user_keys
    dest = tmp_path / "out"
    dest.mkdir()
    code, _, err = run(capsys, "unbundle", "--from-s3", "-m", f"{bucket}/held/disk.manifest.xml",
                       "-k", str(ec2_keys[0]), "-c", str(cert), "-d", str(dest),
                       "--endpoint-url", endpoint)
    assert code == 0, err
    assert (dest / "disk").read_bytes() == image.read_bytes()
