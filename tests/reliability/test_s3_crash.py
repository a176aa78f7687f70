"""kill -9 of the real CLI (upload-bundle, install) at random moments against a moto server that
outlives it: never a visible manifest while a part is missing or wrong; a re-run completes
(upload-bundle re-sends only what is not intact; install leaves no stale part or lock)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.s3 import LOCK_SUFFIX
from tests.support.cli import run
from tests.support.faultproxy import FaultProxy
from tests.support.s3kit import (
    Tally,
    World,
    copy_kills,
    install_crash,
    list_keys,
    make_world,
    replace_kills,
    upload_crash,
)

SEED = 20261127


@pytest.fixture(scope="module")
def world(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with FaultProxy(moto_server, seed=SEED) as proxy:
        yield make_world(moto_server, proxy, tmp_path_factory.mktemp("s3crash"))


def assert_clean(tally: Tally) -> None:
    assert tally.wrong_bytes_accepted == 0 and tally.data_lost == 0, tally.notes
    assert not tally.notes, tally.notes


@pytest.mark.parametrize("i", range(3))
def test_upload_bundle_killed_at_random_then_resumed(world: World, i: int) -> None:
    tally = Tally()
    upload_crash(world, random.Random(SEED + i), tally, replace_old=i == 1)
    assert_clean(tally)


@pytest.mark.parametrize("i", range(2))
def test_install_killed_at_random_then_rerun(world: World, i: int) -> None:
    tally = Tally()
    install_crash(world, random.Random(SEED + 10 + i), tally, verify_image=i == 0)
    assert_clean(tally)


def test_delete_bundle_removes_what_a_killed_install_left(capsys, world: World,
                                                          monkeypatch) -> None:
    """Provisional parts and the lock of a dead run are NAME.part.N / NAME.ami-bundler-lock:
    ``delete-bundle -p NAME`` removes them (as does a re-run of install, see above)."""
    for k, v in world.env.items():
        monkeypatch.setenv(k, v)
    s3 = world.s3
    bucket = world.new_bucket()
    for key in ("x/inst.img.part.00", "x/inst.img.part.01", "x/inst.img" + LOCK_SUFFIX,
                "x/other.part.0"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"left by a killed run")
    code, _, err = run(capsys, "delete-bundle", "-b", f"{bucket}/x", "-p", "inst.img", "-y",
                       "--endpoint-url", world.endpoint)
    assert code == 0, err
    assert list(list_keys(s3, bucket)) == ["x/other.part.0"]


def test_stale_lock_of_a_dead_run_is_taken_over(capsys, world: World, monkeypatch,
                                                tmp_path: Path) -> None:
    import json
    import socket

    from tests.support.bundles import make_fake_bundle

    for k, v in world.env.items():
        monkeypatch.setenv(k, v)
    s3 = world.s3
    bucket = world.new_bucket()
    bundle = make_fake_bundle(tmp_path / "b", "lk", [1000, 2000], world.signing_key)
    dead = {"tool": "ami-bundler", "host": socket.gethostname(), "pid": 2**22 + 12345,
            "token": "dead"}
    s3.put_object(Bucket=bucket, Key="lk" + LOCK_SUFFIX, Body=json.dumps(dead).encode())
    code, _, err = run(capsys, "upload-bundle", "-b", bucket, "-m", str(bundle.manifest_path),
                       "--endpoint-url", world.endpoint)
    assert code == 0, err
    assert set(list_keys(s3, bucket)) == {"lk.part.0", "lk.part.1", "lk.manifest.xml"}


def test_copy_bundle_over_another_bundle_killed_before_every_write(world: World) -> None:
    tally = Tally()
    writes = copy_kills(world, tally, replace=True)
    assert writes == 7  # lease, retire the old manifest, 2 parts, manifest, orphans, release
    assert tally.crashes_injected == writes
    assert_clean(tally)


def test_copy_bundle_into_an_empty_place_killed_between_parts_and_before_the_manifest(
    world: World,
) -> None:
    tally = Tally()
    # Writes: lease, 2 parts, manifest, release.
    assert copy_kills(world, tally, replace=False, steps=[2, 3]) == 5
    assert tally.crashes_injected == 2
    assert_clean(tally)


def test_forced_replacement_killed_before_every_write(world: World) -> None:
    tally = Tally()
    writes = replace_kills(world, tally)
    assert writes == 8  # lease, retire, 3 parts, manifest, orphans, release
    assert tally.crashes_injected == writes
    assert_clean(tally)
