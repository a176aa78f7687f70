"""Two upload-bundle runs of two different bundles under one name into one prefix: never an
interleaved bundle (a manifest naming the other bundle's parts)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.aws import AwsOptions, s3_client
from bundler.errors import BundlerError
from bundler.progress import NULL_PROGRESS
from bundler.s3 import LOCK_SUFFIX, ConcurrentUploadError, S3Location, upload_bundle
from bundler.transfer import TransferConfig
from tests.support.bundles import make_fake_bundle
from tests.support.cli import run
from tests.support.faultproxy import FaultProxy
from tests.support.s3kit import (
    CONCURRENT_OK,
    Tally,
    World,
    concurrent_uploads,
    inspect_bundles,
    make_world,
)

SEED = 4242


@pytest.fixture(scope="module")
def world(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with FaultProxy(moto_server, seed=SEED) as proxy:
        yield make_world(moto_server, proxy, tmp_path_factory.mktemp("s3conc"))


@pytest.fixture
def env(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in world.env.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("i", range(2))
def test_two_writers_never_interleave(world: World, i: int) -> None:
    tally = Tally()
    results = concurrent_uploads(world, random.Random(SEED + i), tally)
    assert tally.wrong_bytes_accepted == 0 and tally.data_lost == 0, tally.notes
    assert not tally.notes, tally.notes
    assert any(r.returncode == 0 for r in results)


def test_a_live_lock_refuses_a_second_writer(capsys, world: World, env, tmp_path: Path) -> None:
    bucket = world.new_bucket()
    bundle = make_fake_bundle(tmp_path / "b", "busy", [1000], world.signing_key)
    holder = {"tool": "ami-bundler", "host": socket.gethostname(), "pid": os.getpid(), "token": "x"}
    world.s3.put_object(Bucket=bucket, Key="busy" + LOCK_SUFFIX, Body=json.dumps(holder).encode())
    code, _, err = run(capsys, "upload-bundle", "-b", bucket, "-m", str(bundle.manifest_path),
                       "--endpoint-url", world.endpoint)
    assert code == 3
    assert "another upload of busy" in err and f"pid {os.getpid()}" in err
    assert set(inspect_bundles(world.s3, bucket).locks) == {"busy" + LOCK_SUFFIX}
    assert not inspect_bundles(world.s3, bucket).manifests


class _Intruder:
    """A progress listener that, when the last part is up, overwrites one part the way a writer
    that ignores the lock (an older tool, another host's clock) would."""

    def __init__(self, s3, bucket: str, key: str, parts: int) -> None:
        self.s3, self.bucket, self.key, self.left = s3, bucket, key, parts

    def start(self, stage: str, total: int | None) -> None:
        NULL_PROGRESS.start(stage, total)

    def advance(self, stage: str, n: int) -> None:
        self.left -= 1
        if self.left == 0:
            self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=b"the other bundle's part")

    def finish(self, stage: str) -> None:
        pass


def test_part_replaced_behind_our_back_blocks_the_manifest(world: World, env,
                                                           tmp_path: Path) -> None:
    bucket = world.new_bucket()
    bundle = make_fake_bundle(tmp_path / "b", "race", [3000] * 4, world.signing_key)
    client = s3_client(AwsOptions(endpoint_url=world.endpoint, max_attempts=2), bucket=bucket)
    with pytest.raises(ConcurrentUploadError, match=r"another upload replaced "
                                                    r"race\.part\.2") as info:
        upload_bundle(client, S3Location(bucket, ""), bundle.manifest_path,
                      transfer=TransferConfig(
                          jobs=1, progress=_Intruder(world.s3, bucket, "race.part.2", 4)))
    assert isinstance(info.value, BundlerError) and "\n" not in str(info.value)
    assert any(s in str(info.value) for s in CONCURRENT_OK)
    seen = inspect_bundles(world.s3, bucket)
    assert not seen.manifests and not seen.locks
    # The next run repairs it: the replaced part goes up again, then the manifest.
    result = upload_bundle(client, S3Location(bucket, ""), bundle.manifest_path)
    assert result.parts_uploaded == 1
    seen = inspect_bundles(world.s3, bucket, known={"race.manifest.xml": bundle.manifest_bytes})
    assert seen.ok and seen.complete == ["race.manifest.xml"]
    assert (hashlib.md5(world.s3.get_object(Bucket=bucket, Key="race.part.2")["Body"].read())
            .hexdigest() == hashlib.md5(bundle.parts[2].data).hexdigest())
