"""install's critical path: the image check runs while S3 is being set up (not before it) and
still gates the first part; independent requests go together; the publish tail lists once."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest

import bundler.cli.install as cli_install
from bundler.cli.checking import CheckFailed
from bundler.s3 import LOCK_SUFFIX
from tests.support.cli import MIB, install_argv, keys_in, run, sparse_image
from tests.support.ext4images import mkfs
from tests.support.roots import dirty_tree


def _argv(image, user_keys, ec2_keys, proxy, bucket, *extra):
    return [*install_argv(image, user_keys, proxy.url, bucket=f"{bucket}/cp",
                          ec2cert=ec2_keys[1], name="disk"),
            "-n", f"cp-{uuid.uuid4().hex[:8]}", "--jobs", "2", *extra]


def _seen(proxy, method: str, pattern: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # poll: the request comes from another thread
        if proxy.requests(method, pattern):
            return True
        time.sleep(0.01)
    return False


def test_the_check_overlaps_the_s3_set_up_and_gates_the_parts(capsys, monkeypatch, proxy, s3,
                                                              bucket, tmp_path, user_keys,
                                                              ec2_keys):
    """A check that only ends once install has asked S3 about the bucket: were it run first (as
    it was), install would never get there and the check would give up."""
    image = tmp_path / "disk.img"
    sparse_image(image, 12 * MIB)
    calls = []

    def slow_check(args, printer):
        calls.append(_seen(proxy, "GET", r"ownershipControls"))
        printer.warn("install: boot.kernel: /boot: no kernel (fix: install one)")
        raise CheckFailed("install: 1 check error(s), first: boot.kernel; pass --no-check to go "
                          "on anyway")

    monkeypatch.setattr(cli_install, "check_install_image", slow_check)
    code, _, err = run(capsys, *_argv(image, user_keys, ec2_keys, proxy, bucket))
    assert calls == [True]  # S3 was asked while the check ran
    assert code == 1
    assert "warning: install: boot.kernel" in err
    assert "--no-check" in err.strip().splitlines()[-1]
    assert not proxy.requests("PUT", r"\.part\.")  # the gate held before the first part
    assert not keys_in(s3, bucket, "cp/")


@pytest.mark.skipif(not shutil.which("debugfs"), reason="needs e2fsprogs")
def test_no_check_still_reports_what_the_check_found(capsys, proxy, s3, bucket, tmp_path,
                                                      user_keys, ec2_keys):
    """--no-check promises "do not stop on errors found by the checks": they still run."""
    image = mkfs(dirty_tree(tmp_path / "dirty"), tmp_path / "dirty.img")
    code, _, err = run(capsys, *_argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check",
                                      "--no-register"))
    assert code == 0, err
    assert "warning: install: boot." in err
    assert "cp/disk.manifest.xml" in keys_in(s3, bucket, "cp/")


def test_the_publish_tail_lists_once_and_still_removes_orphans(capsys, proxy, s3, bucket,
                                                               tmp_path, user_keys, ec2_keys):
    image = tmp_path / "disk.img"
    sparse_image(image, 12 * MIB)
    # a provisional part a killed run left behind
    s3.put_object(Bucket=bucket, Key="cp/disk.part.07", Body=b"stale", ACL="aws-exec-read")
    code, _, err = run(capsys, *_argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check"))
    assert code == 0, err
    assert "cp/disk.part.07" not in keys_in(s3, bucket, "cp/")
    log = [r for r in proxy.requests() if f"/{bucket}" in r.path]
    manifest_put = next(i for i, r in enumerate(log)
                        if r.method == "PUT" and r.path.endswith("disk.manifest.xml"))
    last_part = max(i for i, r in enumerate(log) if r.method == "PUT" and ".part." in r.path)
    listings = [r for r in log[last_part:manifest_put] if "list-type" in r.query]
    assert len(listings) == 1  # the parts' re-check, made together with the lease's HEAD
    # after the manifest: the lease goes and the AMI is registered; no second clean-up listing,
    # and no preflight listing of what the re-check has just listed
    after = [r for r in log[manifest_put:] if "list-type" in r.query]
    assert after == []
    # No part is written before the lease is taken and the target looked at.
    lease = next(r for r in log if r.method == "PUT" and r.path.endswith(LOCK_SUFFIX))
    opened = next(r for r in log if "list-type" in r.query and r.started >= lease.ended)
    assert min(r.started for r in log if ".part." in r.path and r.method == "PUT") >= opened.ended


def test_a_bundle_just_published_is_registered_beside_the_leases_release(capsys, proxy, s3,
                                                                          bucket, tmp_path,
                                                                          user_keys, ec2_keys):
    """The publication re-checked every part and the lease right before the manifest, in a
    bucket found in its region: RegisterImage follows the manifest's PUT with no preflight
    reading it all back, and the lease's release (a round trip nothing waits for) goes beside
    it — a slowed DELETE shows it: RegisterImage has its answer first. The lease is gone once
    install returns."""
    image = tmp_path / "disk.img"
    sparse_image(image, 12 * MIB)
    proxy.add_rule("delay", LOCK_SUFFIX.replace(".", r"\.") + "$", method="DELETE", delay=0.5)
    code, out, err = run(capsys, *_argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check"))
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("ami-")
    log = proxy.requests()
    manifest_put = next(r for r in log
                        if r.method == "PUT" and r.path.endswith("disk.manifest.xml"))
    release = next(r for r in log if r.method == "DELETE" and r.path.endswith(LOCK_SUFFIX))
    registered = next(r for r in log if r.method == "POST" and r.path == "/"
                      and "RegisterImage" in r.body_prefix.decode(errors="replace"))
    after = [r for r in log if r.started >= manifest_put.ended and f"/{bucket}" in r.path]
    assert [r.method for r in after] == ["DELETE"]  # nothing read back
    assert release.started >= manifest_put.ended  # the lease held until the manifest is up
    assert registered.ended < release.ended  # RegisterImage did not wait for the release
    assert not [k for k in keys_in(s3, bucket, "cp/") if k.endswith(LOCK_SUFFIX)]


def test_the_ec2_client_is_made_once_the_last_part_is_on_its_way(capsys, monkeypatch, proxy,
                                                                 s3, bucket, tmp_path,
                                                                 user_keys, ec2_keys):
    """Making it (EC2's model: ~50-75 ms of CPU, ~20 ms of it holding the GIL) would compete
    with the bundling, and with the last part's requests; while the last part uploads the CPU
    is idle. So it is made then: the whole image read, and the last part's pieces on their way
    — after its multipart upload's creation, slowed here, was answered, before the pieces are
    — the manifest not yet."""
    import os
    import time

    from bundler.cli.context import AwsContext

    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(17 * MIB))  # two parts, the last one in two pieces
    read = [0]  # bytes the bundling has read (positioned reads into its buffers)
    real_preadv = os.preadv

    def counting(fd, buffers, offset, *rest):
        got = real_preadv(fd, buffers, offset, *rest)
        read[0] += got
        return got

    seen = []
    real = AwsContext.ec2

    def making(self, *args, **kwargs):
        seen.append((read[0], bool(proxy.requests("PUT", r"disk\.manifest\.xml$")),
                     time.monotonic()))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(os, "preadv", counting)
    monkeypatch.setattr(AwsContext, "ec2", making)
    proxy.add_rule("delay", r"disk\.part\.1\?uploads", method="POST", delay=0.5)
    # and the pieces' answers, so that the client's thread is surely under way before them
    proxy.add_rule("delay", r"disk\.part\.1\?.*uploadId", method="PUT", times=None, delay=0.3)
    code, out, err = run(capsys, *_argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check"))
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("ami-")
    [create] = proxy.requests("POST", r"disk\.part\.1\?uploads")
    pieces = proxy.requests("PUT", r"disk\.part\.1\?.*uploadId")
    assert len(pieces) == 2
    assert read[0] >= 17 * MIB  # (the zero scan reads it too)
    [(at_read, manifest_up, made)] = seen
    assert (at_read, manifest_up) == (read[0], False)
    assert create.ended <= made < max(p.ended for p in pieces)


def test_an_ec2_client_that_cannot_be_made_leaves_the_bundle_for_a_re_run(capsys, monkeypatch,
                                                                         proxy, s3, bucket,
                                                                         tmp_path, user_keys,
                                                                         ec2_keys):
    """Made at the end, it fails the run after the bundle is published: one line, the bundle
    kept whole, no AMI; the next run registers it without bundling again."""
    from bundler.cli.context import AwsContext
    from bundler.errors import UsageError

    image = tmp_path / "disk.img"
    sparse_image(image, 12 * MIB)
    argv = _argv(image, user_keys, ec2_keys, proxy, bucket, "--no-check")

    def broken(self, *args, **kwargs):
        raise UsageError("cannot set up AWS access: no EC2 here")

    with monkeypatch.context() as patched:
        patched.setattr(AwsContext, "ec2", broken)
        code, _, err = run(capsys, *argv)
    assert code != 0
    assert err.strip().splitlines()[-1] == ("ami-bundler: error: cannot set up AWS access: no "
                                            "EC2 here")
    assert "Traceback" not in err
    assert "cp/disk.manifest.xml" in keys_in(s3, bucket, "cp/")
    proxy.clear()
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("ami-")
    assert not proxy.requests("PUT", r"\.part\.")  # registered, not bundled again
