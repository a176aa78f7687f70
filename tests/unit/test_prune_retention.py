"""Which generations prune keeps (bundler.publish.prune: pure selection)."""

from __future__ import annotations

import datetime

from bundler.publish.prune import Retention, generations, old_generations

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)


def _image(image_id: str, days_old: float, generation: str | None = None, name: str = "") -> dict:
    when = NOW - datetime.timedelta(days=days_old)
    tags = [{"Key": "gen", "Value": generation}] if generation else []
    return {"ImageId": image_id, "Name": name or image_id,
            "CreationDate": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "Tags": tags}


def test_generations_group_by_tag_else_name_newest_first():
    found = generations([_image("ami-1", 9, "g1"), _image("ami-2", 8, "g1"),
                         _image("ami-3", 1, "g2"), _image("ami-4", 5, name="untagged")], "gen")
    assert [(g.name, [i["ImageId"] for i in g.images]) for g in found] == [
        ("g2", ["ami-3"]), ("untagged", ["ami-4"]), ("g1", ["ami-1", "ami-2"])]
    assert found[-1].created == NOW - datetime.timedelta(days=8)  # its newest AMI


def test_keep_and_older_than():
    found = generations([_image(f"ami-{d}", d, f"g{d}") for d in (1, 5, 10, 40)], "gen")
    names = lambda gens: [g.name for g in gens]  # noqa: E731
    kept, old = old_generations(found, Retention(keep=2), NOW)
    assert (names(kept), names(old)) == (["g1", "g5"], ["g10", "g40"])
    kept, old = old_generations(found, Retention(keep=1, older_than_days=7), NOW)
    assert (names(kept), names(old)) == (["g1", "g5"], ["g10", "g40"])
    kept, old = old_generations(found, Retention(keep=1, older_than_days=30), NOW)
    assert names(old) == ["g40"]
    # the newest generation stays however old it is
    kept, old = old_generations(found, Retention(keep=1, older_than_days=0), NOW)
    assert names(kept) == ["g1"] and len(old) == 3
    assert old_generations([], Retention(keep=3), NOW) == ([], [])
