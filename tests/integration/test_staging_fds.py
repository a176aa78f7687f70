"""bundle-vol's staging copy gives back every directory descriptor it duplicated, also when it
fails with batches queued: a batch owns two duplicated directory fds that its task closes, and a
batch cancelled before it ran must have them closed by the clean-up (they leaked: up to two per
queued batch, for the life of a library caller's process). Real files and fds."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from bundler.volume import VolumeConfig, select_volume
from bundler.volume import staging as stagelib


def _fds_into(root: Path) -> list[str]:
    """This process's open descriptors on anything under ``root``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if target == str(root) or target.startswith(f"{root}/"):
            found.append(target)
    return found


def test_a_failed_staging_closes_the_fds_of_the_batches_it_cancelled(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    for d in ("d1", "d2", "d3", "d4"):
        (tree / d).mkdir(parents=True)
        (tree / d / "f").write_bytes(d.encode())
    out = tmp_path / "out"
    out.mkdir()
    selection = select_volume(VolumeConfig(volume=tree, destination=out, clone_only=True))

    # One worker, held in the first batch until the clean-up has cancelled the queued ones
    # (the pool's shutdown comes right after): the second batch is then surely cancelled
    # before it ran, never started by the worker in between.
    gate = threading.Event()
    original = stagelib._Stager.copy_batch

    def held_first(self, fds, batch):  # type: ignore[no-untyped-def]
        assert gate.wait(10), "the clean-up never came"
        return original(self, fds, batch)

    class GatedPool(stagelib.Executor):
        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            gate.set()
            super().shutdown(wait=wait, cancel_futures=cancel_futures)

    def fail_at_d4(rel: str) -> None:
        if rel == "d4/f":  # d1's and d2's batches are queued by now, d3's not yet
            raise RuntimeError("stop here")

    monkeypatch.setattr(stagelib._Stager, "copy_batch", held_first)
    monkeypatch.setattr(stagelib, "Executor", GatedPool)
    monkeypatch.setattr(stagelib, "STAGE_HOOK", fail_at_d4)
    with pytest.raises(RuntimeError, match="stop here"):
        stagelib.stage(selection, tmp_path / "staging", workers=1)
    assert gate.is_set()
    assert _fds_into(tmp_path) == []
