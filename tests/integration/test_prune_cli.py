"""`ami-bundler prune --plan PLAN.toml` against the strict local AWS: two generations of a plan
in 2 regions × 2 accounts (the second through the plan's role_arn). --dry-run exits 2 and
changes nothing; --keep 1 then removes exactly the old generation's AMIs and bundles and
nothing else — not another AMI sharing a bundle, not a non-plan AMI, not a protected AMI — and
reports the S3 bytes freed; an account whose role cannot be assumed fails alone, in one line.
Outcomes are checked with plain boto3 clients."""

from __future__ import annotations

import json

from tests.integration.test_prune import REGIONS, _keys, _registered, _snapshot
from tests.integration.test_prune import small as small  # noqa: F401 - fixture
from tests.integration.test_prune import world as world  # noqa: F401 - fixture
from tests.integration.test_s3_upload import run


def _plan(tmp_path, name: str, accounts: list[tuple[str, str | None]]) -> str:
    blocks = "".join(f'\n[[accounts]]\nid = "{a}"\n' + (f'role_arn = "{r}"\n' if r else "")
                     for a, r in accounts)
    text = (f'name = "{name}"\nami_name = "{name}-{{date}}"\n'
            f"regions = {json.dumps(list(REGIONS))}\n"
            'bucket = "amis-{account}-{region}"\n\n[source]\nimage = "gone.img"\n' + blocks)
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return str(path)


def test_dry_run_then_keep_one_removes_exactly_the_old_generation(
        capsys, endpoint, world, strict_aws_accounts, tmp_path):
    plan = _plan(tmp_path, world.plan, [(strict_aws_accounts.base, None),
                                        (strict_aws_accounts.second, strict_aws_accounts.role_arn)])
    args = ["prune", "--plan", plan, "--keep", "1", "--endpoint-url", endpoint]
    first, middle, last = world.targets[0], world.targets[1:-1], world.targets[-1]
    freed = sum(t.sizes["g1"] for t in middle)  # first: g1's bundle is shared; last: protected
    before = _snapshot(world)

    code, out, err = run(capsys, *args, "--dry-run", "--json")
    assert code == 2, err
    assert _snapshot(world) == before
    data = json.loads(out)
    assert data["dry_run"] and data["changed"] and data["bytes_freed"] == freed
    by_target = {(t["account"], t["region"]): t for t in data["targets"]}
    assert len(by_target) == 4 and not any(t["error"] for t in data["targets"])
    r = by_target[(first.account, first.region)]
    assert [(i["image_id"], i["state"]) for i in r["images"]] == [
        (first.images["g1"], "would-deregister")]
    assert [(b["state"], b["kept_for"]) for b in r["bundles"]] == [
        ("in-use", [first.images["sharer"]])]
    assert r["kept"] == [f"{world.plan}-g2"]
    r = by_target[(last.account, last.region)]
    assert [(i["image_id"], i["state"]) for i in r["images"]] == [(last.images["g1"], "protected")]
    assert [b["state"] for b in r["bundles"]] == ["kept"]

    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "Deregistered 3 AMIs and deleted 2 bundles in 4 targets; freed" in out
    assert "kept (deregistration protection is on)" in out and "kept: used by" in out
    for t in world.targets:
        images, keys = _registered(t), _keys(t)
        assert t.images["g2"] in images
        assert {k for k in keys if k.startswith("g2/")} == {
            "g2/img.manifest.xml", "g2/img.part.0", "g2/img.part.1"}
        if t is first:  # g1's AMI goes; its bundle stays for the non-plan AMI that shares it
            assert t.images["g1"] not in images
            assert {t.images["sharer"], t.images["unrelated"]} <= images
            assert {"g1/img.manifest.xml", "g1/img.part.0", "unrelated/img.manifest.xml"} <= keys
        elif t is last:  # protected: AMI and bundle kept
            assert t.images["g1"] in images and "g1/img.manifest.xml" in keys
        else:
            assert t.images["g1"] not in images
            assert not {k for k in keys if k.startswith("g1/")}

    code, out, err = run(capsys, *args, "--dry-run")  # nothing more to do
    assert code == 0, err
    assert "Dry run: would deregister 0 AMIs and delete 0 bundles, freeing 0 bytes" in out


def test_an_unreachable_account_fails_alone(capsys, endpoint, small, strict_aws_accounts,
                                            tmp_path):
    plan = _plan(tmp_path, small.plan,
                 [(strict_aws_accounts.base, None),
                  (strict_aws_accounts.second, strict_aws_accounts.untrusted_role_arn)])
    code, out, err = run(capsys, "prune", "--plan", plan, "--keep", "1", "--endpoint-url",
                         endpoint)
    assert code == 4
    denied = [line for line in err.splitlines() if "AssumeRole was denied" in line]
    assert len(denied) == len(REGIONS)  # one line per target of that account
    assert strict_aws_accounts.untrusted_role_arn in denied[0]
    assert "Traceback" not in err
    t = small.targets[0]  # the base account was pruned all the same
    assert t.images["g1"] not in _registered(t) and t.images["g2"] in _registered(t)


def test_prune_needs_a_rule(capsys, tmp_path):
    code, _, err = run(capsys, "prune", "--plan", str(tmp_path / "p.toml"))
    assert code == 2 and "--keep N, --older-than DAYS" in err
