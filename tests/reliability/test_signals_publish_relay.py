"""``publish`` to two regions of one account: the bundle is uploaded to one region and each
part copied server-side to the other as soon as it has landed (``bundler.s3.relay``). A stop
anywhere in that pipeline — a signal before any of its HTTP requests, a signal or a crash in
the middle of the relayed copies — leaves every bucket either without a manifest or with a
whole bundle, no AMI without its whole bundle, and (signals) no lease behind; after a crash
the re-run takes the dead run's leases over and completes every region.

The CLI runs in a forked child against the strict local AWS (see test_signals_aws.py).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.test_signals_aws import walk
from tests.reliability.test_signals_publish import Env
from tests.support import crashkit
from tests.support.cli import write_publish_plan
from tests.support.s3kit import cli_env, inspect_bundles, list_keys, plain_client
from tests.support.strictaws.accounts import BASE_ACCOUNT

REGIONS = ("us-east-1", "eu-west-1")
PART = 64 << 10
EPOCH = 1_800_000_000


class Regions:
    def __init__(self, url: str, tag: str) -> None:
        self.url = url
        self.name = f"relay-{tag}"
        self.buckets = {r: f"sig-relay-{tag}-{r}" for r in REGIONS}
        self.envs = {r: Env(url) for r in REGIONS}
        for r in REGIONS:
            self.envs[r].s3 = plain_client("s3", url, r)
            self.envs[r].ec2 = plain_client("ec2", url, r)

    def reset(self) -> None:
        for r in REGIONS:
            env = self.envs[r]
            for image in env.plan_images(self.name):
                env.ec2.deregister_image(ImageId=image["ImageId"])
            env.empty_bucket(self.buckets[r])

    def check(self, when: str, *, locks: bool = False) -> dict[str, list[str]]:
        """Every visible manifest whole, every AMI with its whole bundle; no lease left unless
        ``locks`` (a crash leaves its leases for the next run to take over). Region → the
        complete manifests."""
        complete = {}
        for r in REGIONS:
            if locks:
                complete[r] = self._whole(when, r)
            else:
                complete[r] = [m for ms in self.envs[r].check(
                    f"{when} in {r}", self.buckets[r], self.name).values() for m in ms]
        return complete

    def _whole(self, when: str, region: str) -> list[str]:
        env, bucket = self.envs[region], self.buckets[region]
        try:
            keys = list_keys(env.s3, bucket)
        except env.s3.exceptions.NoSuchBucket:
            return []
        out: list[str] = []
        for prefix in sorted({k.rpartition("/")[0] + "/" for k in keys}):
            seen = inspect_bundles(env.s3, bucket, prefix)
            assert seen.ok, f"{when} in {region}: {seen.wrong}"
            out += seen.complete
        for image in env.plan_images(self.name):
            prefix, _, manifest = image["ImageLocation"][len(bucket) + 1:].rpartition("/")
            assert manifest in inspect_bundles(env.s3, bucket, prefix + "/").complete, when
        return out


@pytest.fixture
def relay(moto_server: str, tmp_path: Path, user_keys, ec2_cert_dir) -> Iterator[tuple]:
    with pytest.MonkeyPatch.context() as mp, crashkit.one_model_loader("s3", "ec2", "sts"):
        for key, value in cli_env(read_timeout=10, connect_timeout=5).items():
            mp.setenv(key, value)
        mp.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
        regions = Regions(moto_server, uuid.uuid4().hex[:8])
        image = tmp_path / "web.img"
        with open(image, "wb") as fh:  # 1 MiB: a hole and 200 KiB that does not compress
            fh.truncate(1 << 20)
            fh.write(random.Random(11).randbytes(200 << 10))
        plan = tmp_path / "plan.toml"
        template = regions.buckets[REGIONS[0]].removesuffix(REGIONS[0]) + "{region}/amis"
        write_publish_plan(plan, regions.name, image=image, regions=REGIONS, bucket=template,
                           user_keys=user_keys, account=BASE_ACCOUNT)
        argv = ["publish", str(plan), "--endpoint-url", moto_server, "--ec2cert-dir",
                str(ec2_cert_dir), "--max-attempts", "1", "-q", "--jobs", "2"]
        yield regions, argv


def _armed_copies(at: int, action) -> None:
    """In the child: ``action()`` just before the ``at``-th relayed CopyObject, while the
    bundling is still under way (parts from index ``at`` on are held back until then, so the
    stop lands in the pipeline, not in the commit after it)."""
    import bundler.multiregion as multiregion
    import bundler.s3.relay as relay

    copy, put_part = relay.copy_object, multiregion.FanOutSink.put_part
    count, lock, fired = [0], threading.Lock(), threading.Event()

    def copy_object(*args, **kwargs):
        with lock:
            count[0] += 1
            now = count[0]
        if now == at:
            action()
            fired.set()
        return copy(*args, **kwargs)

    def held_put_part(self, part):
        if part.index >= at:
            fired.wait(30)
        return put_part(self, part)

    relay.copy_object = copy_object
    multiregion.FanOutSink.put_part = held_put_part


def _in_child(argv: list[str], arm) -> int:
    def body() -> int:
        arm()
        return crashkit._main(argv)

    return crashkit._run_in_child(body, PART)


@pytest.mark.parametrize("at", (1, 3))
def test_a_signal_in_the_middle_of_the_relayed_copies(relay, at):
    regions, argv = relay
    regions.reset()

    def stop() -> None:  # to the main thread itself, as a terminal's Ctrl-C or kill would
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    code = _in_child(argv, lambda: _armed_copies(at, stop))
    assert code == 128 + signal.SIGTERM
    complete = regions.check(f"SIGTERM before relayed copy {at}")
    assert complete[REGIONS[1]] == []  # the relayed region never got its manifest


def test_a_crash_in_the_middle_of_the_relayed_copies_then_a_re_run(relay):
    regions, argv = relay
    regions.reset()
    code = _in_child(argv, lambda: _armed_copies(2, lambda: os._exit(crashkit.CRASH_EXIT)))
    assert code == crashkit.CRASH_EXIT
    complete = regions.check("crash before relayed copy 2", locks=True)
    assert complete[REGIONS[1]] == []
    # The dead run's leases name a dead PID on this host: the re-run takes them over at once
    # and completes both regions, leaving nothing else behind.
    assert crashkit.run_cli(argv, PART) == 0
    complete = regions.check("after the re-run")
    for r in REGIONS:
        assert len(complete[r]) == 1 and len(regions.envs[r].plan_images(regions.name)) == 1
        [prefix] = {k.rpartition("/")[0] + "/" for k in list_keys(regions.envs[r].s3,
                                                                  regions.buckets[r])}
        seen = inspect_bundles(regions.envs[r].s3, regions.buckets[r], prefix)
        assert seen.loose == [] and seen.locks == [], seen  # no orphan part, no lease


def test_a_signal_before_any_request_of_a_relayed_publish(relay):
    regions, argv = relay

    def check(when: str) -> None:
        regions.check(when)

    # Every third request of about 60 (two regions' leases, parts, copies, manifests and
    # registrations).
    walk(argv, regions.reset, check, minimum=12, part_size=PART, stride=3)
    for r in REGIONS:
        assert len(regions.envs[r].plan_images(regions.name)) == 1
