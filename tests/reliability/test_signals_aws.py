"""A signal (INT, TERM, HUP in turn) before every filesystem step and every HTTP request of the
commands that talk to S3 and EC2: download-bundle, unbundle --from-s3, delete-bundle,
copy-bundle, install (one region and --regions), register and deregister --delete-bundle.

The CLI runs in a forked child against the strict local AWS (a thread of this process, so the
child's requests reach it over 127.0.0.1). Each signalled run exits 128+signal; then what it
left is inspected: no temporary file, lock or unfinished multipart upload, never a visible
manifest whose parts are not all there and intact, never a bundle deleted while a registered
AMI still uses it, and a registered AMI always names a whole bundle.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from tests.support import crashkit
from tests.support.crashkit import (
    clean_dir,
    inspect_bundle_dir,
    inspect_image_dir,
    walk_signals,
)
from tests.support.s3kit import cli_env, inspect_bundles, list_keys, plain_client


class Cloud:
    """The stand-in's endpoint, a bucket holding the workspace's bundle under src/, clients."""

    def __init__(self, url: str, ws: crashkit.Workspace, bucket: str) -> None:
        self.url = url
        self.ws = ws
        self.bucket = bucket
        self.s3 = plain_client("s3", url)
        self.ec2 = plain_client("ec2", url)
        self.ref = ws.root / "reference"
        self.names = sorted(os.listdir(self.ref))
        self.known = {"img.manifest.xml": (self.ref / "img.manifest.xml").read_bytes()}

    def aws(self, *argv: str) -> list[str]:
        return [*argv, "--endpoint-url", self.url, "-q"]

    def reset_prefix(self, prefix: str, *, bundle: bool) -> None:
        """``prefix`` empty, or holding a pristine copy of the bundle."""
        for key in list_keys(self.s3, self.bucket, prefix):
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        if bundle:
            for name in self.names:
                self.s3.copy_object(Bucket=self.bucket, Key=prefix + name, ACL="aws-exec-read",
                                    CopySource={"Bucket": self.bucket, "Key": "src/" + name})

    def check_prefix(self, when: str, prefix: str, bucket: str | None = None) -> list[str]:
        """Nothing wrong, no lock, no open multipart upload; returns the complete manifests."""
        bucket = bucket or self.bucket
        seen = inspect_bundles(self.s3, bucket, prefix)
        assert seen.ok, f"{when}: {seen.wrong}"
        assert seen.locks == [], f"{when}: the lock was left behind: {seen.locks}"
        uploads = self.s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
        assert uploads == [], f"{when}: multipart uploads left open: {uploads}"
        return seen.complete

    def images(self, name: str) -> list[dict]:
        return self.ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]

    def deregister_all(self, name: str) -> None:
        for image in self.images(name):
            self.ec2.deregister_image(ImageId=image["ImageId"])


@pytest.fixture(scope="module")
def cloud(moto_server: str, tmp_path_factory, user_key_pair, ec2_keys) -> Iterator[Cloud]:
    ws = crashkit.make_workspace(tmp_path_factory.mktemp("sig-aws"), user_key_pair.key_path,
                                 user_key_pair.cert_path, ec2_keys[1], size=2 << 20,
                                 part_size=1 << 20)
    with pytest.MonkeyPatch.context() as mp, crashkit.one_model_loader("s3", "ec2", "sts"):
        for key, value in cli_env(read_timeout=10, connect_timeout=5).items():
            mp.setenv(key, value)
        cloud = Cloud(moto_server, ws, f"sig-{os.urandom(4).hex()}")
        cloud.s3.create_bucket(Bucket=cloud.bucket, ObjectOwnership="ObjectWriter")
        for name in cloud.names:
            cloud.s3.put_object(Bucket=cloud.bucket, Key="src/" + name, ACL="aws-exec-read",
                                Body=(cloud.ref / name).read_bytes())
        yield cloud


def walk(argv: list[str], reset: Callable[[], None], check: Callable[[str], None], *,
         minimum: int, part_size: int | None = None, **kw) -> None:
    visited = walk_signals(argv, reset, check, http=True, part_size=part_size, **kw)
    assert visited >= minimum, f"only {visited} signalled runs"


def test_download_bundle(cloud, tmp_path):
    out = tmp_path / "out"

    def check(when: str) -> None:
        seen = inspect_bundle_dir(out, cloud.ws)
        assert seen.ok, f"{when}: {seen.wrong}"
        assert set(os.listdir(out)) <= set(cloud.names), f"{when}: left {os.listdir(out)}"

    argv = cloud.aws("download-bundle", "-b", f"{cloud.bucket}/src", "-p", "img", "-d", str(out),
                     "-c", str(cloud.ws.cert))
    walk(argv, lambda: clean_dir(out), check, minimum=6)


def test_unbundle_from_s3(cloud, tmp_path):
    out = tmp_path / "out"

    def check(when: str) -> None:
        seen = inspect_image_dir(out, cloud.ws)
        assert seen.ok, f"{when}: {seen.wrong}"
        assert seen.temporary == [], f"{when}: left {seen.temporary}"

    argv = cloud.aws("unbundle", "--from-s3", "-m", f"{cloud.bucket}/src/img.manifest.xml",
                     "-k", str(cloud.ws.key), "-d", str(out))
    # Its requests only: the writing half is unbundle's, walked step by step in test_signals.py.
    walk(argv, lambda: clean_dir(out), check, minimum=3, fs=False)


def test_delete_bundle(cloud):
    prefix = "del/"

    def check(when: str) -> None:
        complete = cloud.check_prefix(when, prefix)
        left = list_keys(cloud.s3, cloud.bucket, prefix)
        assert complete or "del/img.manifest.xml" not in left, when

    argv = cloud.aws("delete-bundle", "-b", f"{cloud.bucket}/del", "-p", "img", "-y")
    walk(argv, lambda: cloud.reset_prefix(prefix, bundle=True), check, minimum=4)


def test_copy_bundle(cloud):
    prefix = "cp/"

    def check(when: str) -> None:
        cloud.check_prefix(when, prefix)

    argv = cloud.aws("copy-bundle", "-b", f"{cloud.bucket}/src", "-d", f"{cloud.bucket}/cp",
                     "-m", "img.manifest.xml", "-c", str(cloud.ws.cert), "-k", str(cloud.ws.key),
                     "--ec2cert", str(cloud.ws.ec2cert), "--copy-mode", "stream")
    # Every other step: its S3 reads are download-bundle's, its writes upload's publish protocol.
    walk(argv, lambda: cloud.reset_prefix(prefix, bundle=False), check, minimum=6, stride=2)


def test_install(cloud, tmp_path):
    prefix, name = "inst/", f"sig-inst-{os.urandom(3).hex()}"
    cwd_before = sorted(os.listdir(crashkit.REPO))

    def reset() -> None:
        cloud.deregister_all(name)
        cloud.reset_prefix(prefix, bundle=False)

    def check(when: str) -> None:
        complete = cloud.check_prefix(when, prefix)
        for image in cloud.images(name):
            assert image["ImageLocation"].endswith("inst/img.manifest.xml"), when
            assert complete == ["img.manifest.xml"], f"{when}: an AMI without its whole bundle"
        assert sorted(os.listdir(crashkit.REPO)) == cwd_before, when

    argv = cloud.aws("install", "-i", str(cloud.ws.image), "-p", "img", "-c", str(cloud.ws.cert),
                     "-k", str(cloud.ws.key), "-u", "123456789012", "-r", "x86_64", "--ec2cert",
                     str(cloud.ws.ec2cert), "-b", f"{cloud.bucket}/inst", "-n", name,
                     "--no-check", "--jobs", "2", "--jobs-compress", "2")
    # Every other step (its bundling half is bundle-image's walk); the pinned test below holds
    # the steps after the manifest PUT.
    walk(argv, reset, check, minimum=8, part_size=cloud.ws.part_size, stride=2)


def test_install_regions(cloud, strict_aws):
    """Bundled once, uploaded and registered in two regions: a signal anywhere leaves each
    region's bucket clean or whole, and no AMI without its bundle."""
    regions = ("us-east-1", "eu-west-1")
    name = f"sig-multi-{os.urandom(3).hex()}"
    buckets = {r: f"sig-{r}-{os.urandom(3).hex()}" for r in regions}
    for region, bucket in buckets.items():
        config = {} if region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}
        plain_client("s3", cloud.url, region).create_bucket(
            Bucket=bucket, ObjectOwnership="ObjectWriter", **config)
    ec2s = {r: plain_client("ec2", cloud.url, r) for r in regions}

    def images(region: str) -> list[dict]:
        return ec2s[region].describe_images(
            Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]

    def reset() -> None:
        for region, bucket in buckets.items():
            for image in images(region):
                ec2s[region].deregister_image(ImageId=image["ImageId"])
            for key in list_keys(cloud.s3, bucket, ""):
                cloud.s3.delete_object(Bucket=bucket, Key=key)

    def check(when: str) -> None:
        for region, bucket in buckets.items():
            complete = cloud.check_prefix(f"{when} in {region}", "", bucket)
            if images(region):
                assert complete == ["img.manifest.xml"], f"{when}: an AMI without its bundle"

    argv = cloud.aws("install", "-i", str(cloud.ws.image), "-p", "img", "-c", str(cloud.ws.cert),
                     "-k", str(cloud.ws.key), "-u", "123456789012", "-r", "x86_64",
                     "--regions", ",".join(regions),
                     *[w for r, b in buckets.items() for w in ("-b", f"{r}={b}")],
                     "--ec2cert-dir", str(strict_aws.keys.cert_dir), "-n", name, "--no-check",
                     "--jobs", "2", "--jobs-compress", "2")
    # Every seventh step: each region's steps are the single-region install's; what is its own,
    # the fan-out's commit and abort, has its pinned test below.
    walk(argv, reset, check, minimum=4, part_size=cloud.ws.part_size, stride=7)


def test_register_and_deregister_with_its_bundle(cloud):
    """register: one request, signalled before or after it. deregister --delete-bundle: the
    bundle is never deleted while the AMI is still registered."""
    name = f"sig-reg-{os.urandom(3).hex()}"
    location = f"{cloud.bucket}/reg/img.manifest.xml"
    cloud.reset_prefix("reg/", bundle=True)

    def reset_register() -> None:
        cloud.deregister_all(name)

    def check_register(when: str) -> None:
        assert len(cloud.images(name)) <= 1, when
        cloud.check_prefix(when, "reg/")

    walk(cloud.aws("register", location, "-n", name, "--no-check"), reset_register,
         check_register, minimum=2, fs=False)

    def reset_deregister() -> None:
        cloud.deregister_all(name)
        cloud.reset_prefix("reg/", bundle=True)
        cloud.ec2.register_image(ImageLocation=location, Name=name, Architecture="x86_64")

    def check_deregister(when: str) -> None:
        complete = cloud.check_prefix(when, "reg/")
        if cloud.images(name):
            assert complete == ["img.manifest.xml"], f"{when}: the AMI's bundle was deleted"

    def deregister_argv() -> list[str]:  # the AMI id is new after each reset
        return cloud.aws("deregister", cloud.images(name)[0]["ImageId"], "--delete-bundle")

    walk(deregister_argv, reset_deregister, check_deregister, minimum=3, fs=False)


@pytest.mark.parametrize("where", ("orphans", "release"))
def test_install_interrupted_after_its_manifest_keeps_the_bundle(cloud, monkeypatch, where):
    """The walk's find, pinned: an interrupt after the manifest PUT (while stale parts are
    removed or the lease released) used to make the sink's abort delete the published bundle's
    parts, leaving a visible manifest naming missing parts. install releases the lease on a
    thread of its own (beside the registration's first reads): there a real SIGTERM comes
    while it is under way, and the release still ends before the run does."""
    import signal

    import bundler.s3.lock as lock
    import bundler.s3.publish as publish
    from bundler.cli import main
    from bundler.errors import Interrupted

    prefix, name = f"pin-{where}/", f"sig-pin-{os.urandom(3).hex()}"
    fired = []

    def interrupt(original):
        def wrapper(*args, **kwargs):
            if not fired:
                fired.append(True)
                raise Interrupted(15)
            return original(*args, **kwargs)
        return wrapper

    def signal_then(original):
        def wrapper(*args, **kwargs):
            if not fired:
                fired.append(True)
                os.kill(os.getpid(), signal.SIGTERM)  # handled on the main thread
            return original(*args, **kwargs)
        return wrapper

    if where == "orphans":
        monkeypatch.setattr(publish, "remove_orphans", interrupt(publish.remove_orphans))
    else:
        monkeypatch.setattr(lock.UploadLock, "release", signal_then(lock.UploadLock.release))
    ws = cloud.ws
    code = main(cloud.aws("install", "-i", str(ws.image), "-p", "img", "-c", str(ws.cert), "-k",
                          str(ws.key), "-u", "123456789012", "-r", "x86_64", "--ec2cert",
                          str(ws.ec2cert), "-b", f"{cloud.bucket}/{prefix[:-1]}", "-n", name,
                          "--no-check", "--no-register"))
    assert fired and code == 128 + 15
    assert cloud.check_prefix(where, prefix) == ["img.manifest.xml"]


def test_install_regions_signal_during_a_regions_publish_keeps_it_whole(cloud, strict_aws,
                                                                        monkeypatch):
    """The regions walk's find, pinned: SIGTERM arriving while one region's thread publishes
    (parts re-checked, manifest not yet PUT) used to let the main thread's abort delete that
    region's parts under the thread, which then PUT a manifest naming them."""
    import signal
    import threading

    import bundler.s3.publish as publish
    from bundler.cli import main

    original = publish.Publication.check_parts
    sent = threading.Event()

    def check_then_signal(self, expected):
        original(self, expected)
        if not sent.is_set():
            sent.set()
            # To the main thread itself (a process-wide kill may land on this one instead).
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            # Wide open, the window the abort used to run in before this thread's manifest PUT.
            threading.Event().wait(0.3)

    monkeypatch.setattr(publish.Publication, "check_parts", check_then_signal)
    bucket = f"pin-{os.urandom(4).hex()}"
    regions = ("us-east-1", "eu-west-1")
    for region in regions:
        config = {} if region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}
        plain_client("s3", cloud.url, region).create_bucket(
            Bucket=f"{bucket}-{region}", ObjectOwnership="ObjectWriter", **config)
    ws = cloud.ws
    code = main(cloud.aws("install", "-i", str(ws.image), "-p", "img", "-c", str(ws.cert), "-k",
                          str(ws.key), "-u", "123456789012", "-r", "x86_64", "--regions",
                          ",".join(regions), "--bucket-template", f"{bucket}-{{region}}",
                          "--ec2cert-dir", str(strict_aws.keys.cert_dir), "--no-register",
                          "--no-check"))
    assert sent.is_set() and code == 128 + signal.SIGTERM
    for region in regions:
        cloud.check_prefix(region, "", f"{bucket}-{region}")


def test_check_from_s3_removes_its_private_image(cloud, tmp_path):
    """check --from-s3 unpacks the (decrypted) bundle into a private directory under
    --work-dir: gone whichever request the signal lands before."""
    work = tmp_path / "work"
    work.mkdir()

    def check(when: str) -> None:
        assert os.listdir(work) == [], f"{when}: left {os.listdir(work)}"

    argv = cloud.aws("check", "--from-s3", "-m", f"{cloud.bucket}/src/img.manifest.xml", "-k",
                     str(cloud.ws.key), "--work-dir", str(work))
    # The workspace image is random bytes: no filesystem to check, exit 1 when not signalled.
    walk(argv, lambda: None, check, minimum=3, fs=False, finished=1)


def _signal_at_a_call_while_a_part_is_written(argv: list[str], call: int, hold: float = 0.05):
    """The CLI in a forked child whose part writes each hold ``hold`` seconds in their fsync
    (on a download thread, the temporary file open); once the main thread is in run_parallel,
    its ``call``-th call into bundler's code waits for such a held write and gets SIGTERM
    there: the signal lands at that function's first instruction (a trace function raising
    on the call event is exactly that), as it does when a loaded machine delivers it late.
    Returns the exit code: 0 when the run made fewer calls, 74 when no part was being
    written at that call (not signalled), 72 when an unsignalled run failed."""
    import sys
    import threading

    import bundler

    root = os.path.dirname(bundler.__file__)
    fired = [False]

    def body() -> int:
        held, lock, fsync = [0], threading.Lock(), os.fsync
        writing = threading.Condition(lock)

        def held_fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if threading.current_thread() is threading.main_thread() or not (
                    ".part." in path and path.endswith(".tmp")):
                return fsync(fd)
            with writing:
                held[0] += 1
                writing.notify_all()
            try:
                threading.Event().wait(hold)
                return fsync(fd)
            finally:
                with writing:
                    held[0] -= 1

        armed, calls = [False], [0]

        def trace(frame, event, arg):
            if event != "call" or fired[0]:
                return None
            code = frame.f_code
            if not armed[0]:
                armed[0] = code.co_name == "run_parallel"
                return None
            if not code.co_filename.startswith(root):
                return None
            calls[0] += 1
            if calls[0] == call:
                with writing:
                    if writing.wait_for(lambda: held[0] > 0, timeout=0.25):
                        fired[0] = True
                if fired[0]:
                    os.kill(os.getpid(), signal.SIGTERM)  # raised here, on the call event
            return None

        os.fsync = held_fsync
        sys.settrace(trace)
        try:
            code = crashkit._main(argv)
        finally:
            sys.settrace(None)
        if calls[0] < call:
            return 0 if code == 0 else 72  # fewer calls: the walk is over
        if not fired[0]:
            return 74 if code == 0 else 72  # no part being written at that call
        return 73 if code == 0 else code

    return crashkit._run_in_child(body, None)


def test_download_bundle_signal_at_any_call_while_a_part_is_written(cloud, tmp_path):
    """The load-only leak of test_download_bundle, pinned: a signal that reaches the main
    thread while a download thread has a part's temporary file open, at any call of bundler's
    code from the pool's start on, leaves no ``.part.N.*.tmp`` (and no other file but the
    bundle's)."""
    out = tmp_path / "out"
    argv = cloud.aws("download-bundle", "-b", f"{cloud.bucket}/src", "-p", "img", "-d", str(out),
                     "-c", str(cloud.ws.cert))
    visited = 0
    for call in range(1, 200):
        clean_dir(out)
        code = _signal_at_a_call_while_a_part_is_written(argv, call)
        assert code != 72, f"call {call}: the unsignalled run failed"
        if code == 0:
            break  # the run made fewer calls
        if code == 74:
            continue  # no part being written at that call (before the first, after the last)
        visited += 1
        when = f"SIGTERM at call {call}"
        assert code == 128 + signal.SIGTERM, f"{when}: exit {code}"
        seen = inspect_bundle_dir(out, cloud.ws)
        assert seen.ok, f"{when}: {seen.wrong}"
        assert set(os.listdir(out)) <= set(cloud.names), f"{when}: left {os.listdir(out)}"
    else:
        raise AssertionError("the run still had calls after 200")
    assert visited >= 5, f"only {visited} signalled runs"
