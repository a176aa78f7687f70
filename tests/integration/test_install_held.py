"""install bundles during its set-up (``s3.held``): parts are cut while the lease and the
listing are taken, and held — at most --jobs + 2 of them — until both are done; no part request
ever precedes them. A signal in that held phase leaves nothing (no lease, no part, no open
upload), and a gate (the image check) that fails stops the run before any write."""

from __future__ import annotations

import os
import signal
import uuid

import bundler.cli.install as cli_install
from bundler.errors import BundlerError
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


def test_a_signal_while_parts_are_held_leaves_nothing(monkeypatch, proxy, s3, bucket, tmp_path,
                                                      user_keys, ec2_keys):
    image = relay_image(tmp_path, monkeypatch)
    # The lease is slow to answer: the signal lands while parts are held behind it.
    proxy.add_rule("delay", r"held/disk\.ami-bundler-lock$", method="PUT", times=1, delay=1.0)
    argv = _argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check")

    def body() -> int:
        real = HeldSink.put_part

        def put_part(self: HeldSink, part) -> None:
            real(self, part)
            if part.index == 1 and not self.ready:
                os.kill(os.getpid(), signal.SIGTERM)

        HeldSink.put_part = put_part  # the forked child's own copy of the class
        return crashkit._main(argv)

    code = crashkit._run_in_child(body, 64 * KIB)
    assert code == 128 + signal.SIGTERM
    assert proxy.wait_idle()
    assert list_keys(s3, bucket, "held/") == {}  # no lease, no part, no manifest
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix="held/").get("Uploads", []) == []
    log = [r for r in proxy.requests() if r.path.startswith(f"/{bucket}")]
    assert [r for r in log if ".part." in r.path] == []  # no part was ever sent
    lease = _lease(log)
    release = [r for r in log if r.method == "DELETE" and r.path == lease.path]
    assert release and release[0].started >= lease.ended  # taken, then given back
