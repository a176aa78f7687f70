"""bundle-vol's mount policy: one filesystem unless asked otherwise (live / and trees)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bundler.cli.vol import mount_policy


def args(volume: str, **flags: bool) -> argparse.Namespace:
    base = {"all": False, "one_file_system": False, "local_mounts": False}
    base.update(flags)
    return argparse.Namespace(volume=Path(volume), **base)


@pytest.mark.parametrize(("volume", "flags", "policy"), [
    ("/", {}, "one-filesystem"),
    ("/", {"all": True}, "all"),
    ("/", {"local_mounts": True}, "local"),
    ("/srv/rootfs", {}, "one-filesystem"),      # no mount below the volume by default
    ("/srv/rootfs", {"local_mounts": True}, "local"),
    ("/srv/rootfs", {"one_file_system": True}, "one-filesystem"),
    ("/srv/rootfs", {"all": True}, "all"),
])
def test_mount_policy(volume, flags, policy):
    assert mount_policy(args(volume, **flags)) == policy
