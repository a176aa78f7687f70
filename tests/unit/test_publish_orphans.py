"""Which of a plan's bundle folders prune may take as orphans (bundler.publish.orphans, pure)."""

from __future__ import annotations

import datetime

from bundler.publish.orphans import Listed, orphan_folders

T0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)
M = "web.manifest.xml"


def bundle(folder: str, at: datetime.datetime, *, manifest: bool = True, parts: int = 2,
           lock: bool = False, prefix: str = "amis/") -> list[Listed]:
    out = [Listed(f"{prefix}{folder}/web.part.{n}", 100, at) for n in range(parts)]
    if manifest:
        out.append(Listed(f"{prefix}{folder}/{M}", 10, at))
    if lock:
        out.append(Listed(f"{prefix}{folder}/web.ami-bundler-lock", 1, at))
    return out


def find(listing: list[Listed], used=(), kept=("g3",), older_than=T0 + 10 * HOUR):
    return orphan_folders(listing, bucket="b", prefix="amis/", manifest_name=M, used=set(used),
                          kept=set(kept), older_than=older_than)


def test_only_old_unused_unlocked_bundles_of_the_plans_naming_are_orphans() -> None:
    listing = [
        *bundle("g1", T0),                          # the orphan
        *bundle("g2", T0 + HOUR),                   # an AMI names it
        *bundle("g3", T0 + 2 * HOUR),               # a generation kept
        *bundle("g4", T0 + 11 * HOUR),              # newer than the kept: maybe in flight
        *bundle("g5", T0, lock=True),               # an upload holds the lock
        Listed("amis/g6/other.manifest.xml", 10, T0),  # another bundle's name
        Listed("amis/g6/other.part.0", 10, T0),
        *bundle("deep/g7", T0),                     # not a generation folder of the plan
        *bundle("g8", T0, prefix="elsewhere/"),     # outside the prefix
        Listed("amis/g9/web.part.0", 100, T0),      # leftover parts: the manifest is gone
        Listed("amis/g9/web.part.1", 100, T0),
    ]
    found = find(listing, used={"b/amis/g2/web.manifest.xml"})
    assert [(o.generation, o.manifest, o.bytes) for o in found] == [
        ("g1", True, 210), ("g9", False, 200)]
    assert found[0].image_location == "b/amis/g1/web.manifest.xml" and found[0].keys == ()
    assert found[1].keys == ("amis/g9/web.part.0", "amis/g9/web.part.1")


def test_one_object_newer_than_the_horizon_keeps_the_whole_folder() -> None:
    listing = [*bundle("g1", T0), Listed("amis/g1/web.part.9", 100, T0 + 20 * HOUR)]
    assert find(listing) == []
    assert [o.generation for o in find(listing, older_than=T0 + 21 * HOUR)] == ["g1"]
