"""Publish plans: parsing, every check up front, and errors that name the plan's line (pure)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest

from bundler.publish.plan import (
    DIGEST_TAG,
    GENERATION_TAG,
    PLAN_TAG,
    PlanError,
    load_plan,
    parse_plan,
    publish_time,
)
from bundler.publish.planlines import PlanLines

GOOD = """\
# a plan
name = "web"
ami_name = "web-{date}-{arch}"
description = "Web tier {generation}"
regions = [
  "us-east-1",
  "eu-west-1",
  "ap-southeast-2",
]
bucket = "amis-{account}-{region}/web"
launch_permissions = [
  "333333333333",
  "arn:aws:organizations::111111111111:organization/o-abcdefghij",
]
deprecate_after_days = 90
deregistration_protection = true

[source]
image = "build/web.img"
format = "raw"

[bundle]
cert = "keys/cert.pem"
private_key = "keys/pk.pem"

[[accounts]]
id = "111111111111"

[[accounts]]
id = "2222-2222-2222"
role_arn = "arn:aws:iam::222222222222:role/ami-publisher"
external_id = "ci-publish"

[boot]
architecture = "arm64"
boot_mode = "uefi"
imds_support = "v2.0"
ena_support = true
block_device_mappings = ["sdb=ephemeral0"]

[tags]
Team = "web"
Build = "{plan} {digest}"
"""

NOW = datetime.datetime(2026, 12, 1, 13, 5, 9, tzinfo=datetime.timezone.utc)


def test_a_complete_plan_parses_into_targets_account_by_account() -> None:
    plan = parse_plan(GOOD, base=Path("/plans"))
    assert plan.name == "web" and plan.bundle_name == "web"
    assert plan.manifest_name == "web.manifest.xml"
    assert plan.regions == ("us-east-1", "eu-west-1", "ap-southeast-2")
    assert [a.id for a in plan.accounts] == ["111111111111", "222222222222"]
    assert plan.accounts[1].role_arn == "arn:aws:iam::222222222222:role/ami-publisher"
    assert plan.accounts[1].external_id == "ci-publish"
    assert [t.label for t in plan.targets] == [
        f"{a}/{r}"
        for a in ("111111111111", "222222222222")
        for r in ("us-east-1", "eu-west-1", "ap-southeast-2")
    ]
    t = plan.targets[4]
    assert (t.bucket, t.prefix) == ("amis-222222222222-eu-west-1", "web/")
    loc = t.location("web-2026-12-01-arm64")
    assert loc.image_location(plan.manifest_name) == (
        "amis-222222222222-eu-west-1/web/web-2026-12-01-arm64/web.manifest.xml"
    )
    assert plan.source.image == Path("/plans/build/web.img")
    assert plan.keys.cert == Path("/plans/keys/cert.pem")
    assert plan.user == "111111111111"
    assert plan.boot.architecture == "arm64" and plan.boot.ena_support is True
    assert plan.launch_permissions[0] == "333333333333"
    assert plan.deprecate_after_days == 90 and plan.deregistration_protection


def test_generation_name_tags_and_description_render() -> None:
    plan = parse_plan(GOOD)
    digest = "0123456789abcdef" * 2 + "01234567"
    gen = plan.generation(digest=digest, when=NOW)
    assert gen == "web-2026-12-01-arm64"
    tags = plan.rendered_tags(digest=digest, generation=gen)
    assert tags[PLAN_TAG] == "web" and tags[GENERATION_TAG] == gen and tags[DIGEST_TAG] == digest
    assert tags["Build"] == "web 0123456789ab"
    assert plan.rendered_description(digest=digest, generation=gen) == f"Web tier {gen}"


def test_time_placeholders_follow_source_date_epoch() -> None:
    assert publish_time({"SOURCE_DATE_EPOCH": "86400"}) == datetime.datetime(
        1970, 1, 2, tzinfo=datetime.timezone.utc
    )
    assert publish_time({}, NOW) == NOW
    with pytest.raises(Exception, match="SOURCE_DATE_EPOCH"):
        publish_time({"SOURCE_DATE_EPOCH": "yesterday"})
    plan = parse_plan(GOOD.replace("web-{date}-{arch}", "web-{date}T{time}-{digest}"))
    assert plan.generation(digest="f" * 40, when=NOW) == "web-2026-12-01T130509-ffffffffffff"


def _line_of(text: str, needle: str) -> int:  # the first line holding needle
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(needle)


# (what to replace, with what, the text of the line the error must name, message pattern)
CASES = [
    (
        "regions = [",
        'regoin = "x"\nregions = [',
        "regoin",
        r"unknown key 'regoin' \(did you mean 'regions'\?\)",
    ),
    ('  "eu-west-1",', '  "eu-wset-1",', "eu-wset-1", r"'eu-wset-1' .*did you mean eu-west-1"),
    ('  "eu-west-1",', '  "us-east-1",', ('"us-east-1"', 2), r"region us-east-1 is listed twice"),
    (
        '"web-{date}-{arch}"',
        '"web-{dte}-{arch}"',
        "ami_name",
        r"unknown placeholder \{dte\} \(did you mean \{date\}\?\)",
    ),
    ('"web-{date}-{arch}"', '"web-{date"', "ami_name", r"not a valid template"),
    ('"web-{date}-{arch}"', '"web {date}"', "ami_name", r"renders names like 'web 2026-12-31'"),
    ('"web-{date}-{arch}"', '"web-{date!r}"', "ami_name", r"no format or conversion"),
    ("Web tier {generation}", "Web {date}", "description", r"unknown placeholder \{date\}"),
    (
        'image = "build/web.img"',
        'imgae = "build/web.img"',
        "imgae",
        r"unknown key 'imgae' in \[source\] \(did you mean 'image'\?\)",
    ),
    (
        'format = "raw"',
        'format = "rwa"',
        "format",
        r"source.format 'rwa' is not one of .*did you mean 'raw'",
    ),
    ('boot_mode = "uefi"', 'boot_mode = "efi"', "boot_mode", r"did you mean 'uefi'"),
    (
        'architecture = "arm64"',
        'architecture = "sparc"',
        "architecture",
        r"boot.architecture 'sparc'",
    ),
    (
        "ena_support = true",
        'ena_support = "yes"',
        "ena_support",
        r"boot.ena_support must be true or false",
    ),
    (
        '["sdb=ephemeral0"]',
        '["sdb=ephemeral0", "sdc"]',
        "block_device_mappings",
        r"expected DEVICE=",
    ),
    ('imds_support = "v2.0"', 'imds = "v2.0"', "imds =", r"unknown key 'imds' in \[boot\]"),
    (
        'external_id = "ci-publish"',
        'externalid = "ci-publish"',
        "externalid",
        r"'externalid' in \[accounts\[2\]\] \(did you mean 'external_id'\?\)",
    ),
    (
        'id = "2222-2222-2222"',
        'id = "2222"',
        'id = "2222"',
        r"accounts\[2\].id '2222' is not a 12-digit account id",
    ),
    ("role/ami-publisher", "user/ami-publisher", "role_arn", r"is not an IAM role ARN"),
    (
        "iam::222222222222:role",
        "iam::444444444444:role",
        "role_arn",
        r"is in account 444444444444, not in 222222222222",
    ),
    (
        'id = "2222-2222-2222"',
        'id = "111111111111"',
        ('id = "111111111111"', 2),
        r"account 111111111111 is listed twice",
    ),
    (
        '"amis-{account}-{region}/web"',
        '"amis-{region}/web"',
        "bucket =",
        r"gives amis-us-east-1 to both 1{12}/us-east-1 and 2{12}/us-east-1.*\{account\}",
    ),
    (
        '"amis-{account}-{region}/web"',
        '"Amis_{account}-{region}"',
        "bucket =",
        r"renders 'Amis_111111111111-us-east-1'.*invalid bucket name",
    ),
    (
        '"amis-{account}-{region}/web"',
        '"amis-{acount}-{region}"',
        "bucket =",
        r"unknown placeholder \{acount\} \(did you mean \{account\}\?\)",
    ),
    (
        '"amis-{account}-{region}/web"',
        '"amis-{account}-{region}/a//b"',
        "bucket =",
        r"empty segment",
    ),
    ('Team = "web"', '"aws:team" = "web"', "aws:team", r"reserved"),
    ('Team = "web"', '"ami-bundler:plan" = "x"', "ami-bundler:plan", r"reserved"),
    ('Team = "web"', "Team = 3", "Team", r"tag 'Team' must have a string value"),
    ('Build = "{plan} {digest}"', 'Build = "{time}"', "Build", r"unknown placeholder \{time\}"),
    (
        '"333333333333"',
        '"3333"',
        '"3333"',
        r"launch permission '3333': expected a 12-digit account id",
    ),
    (
        "organization/o-abcdefghij",
        "organisation/o-abcdefghij",
        "organisation",
        r"expected an organization ARN",
    ),
    (
        "deprecate_after_days = 90",
        "deprecate_after_days = 0",
        "deprecate_after_days",
        r"1 to 3650 days",
    ),
    (
        "deprecate_after_days = 90",
        'deprecate_after_days = "90"',
        "deprecate_after_days",
        r"a whole number of days",
    ),
    (
        "deregistration_protection = true",
        "deregistration_protection = 1",
        "deregistration_protection",
        r"true or false",
    ),
    (
        'name = "web"',
        'name = "web tier"',
        'name = "web tier"',
        r"name 'web tier': use 1-64 characters",
    ),
    (
        'cert = "keys/cert.pem"',
        'name = "bad/name"\ncert = "keys/cert.pem"',
        "bad/name",
        r"invalid bundle name",
    ),
    (
        'cert = "keys/cert.pem"',
        'compression = "max"\ncert = "keys/cert.pem"',
        "compression",
        r"expected default, fast, best or 1-9",
    ),
    (
        'cert = "keys/cert.pem"',
        'crt = "keys/cert.pem"',
        "crt =",
        r"unknown key 'crt' in \[bundle\] \(did you mean 'cert'\?\)",
    ),
    ("[tags]", "[tag]", "[tag]", r"unknown key 'tag' \(did you mean 'tags'\?\)"),
    # directory sources
    ('image = "build/web.img"', 'directory = "rootfs"\nimage = "x"', "directory",
     r"both image and directory"),
    ('image = "build/web.img"', 'directory = "rootfs"', 'format = "raw"',
     r"source.format goes with an image source"),
    ('format = "raw"', 'exclude = ["tmp"]', "exclude", r"source.exclude goes with a directory"),
    ('image = "build/web.img"\nformat = "raw"', 'directory = "rootfs"\nsize_mib = 20000',
     "size_mib", r"size_mib 20000: 1 to 10240 MiB"),
    ('image = "build/web.img"\nformat = "raw"', 'directory = "rootfs"\nuuid = "nope"',
     "uuid", r"source.uuid: uuid 'nope' is not a UUID"),
    ('image = "build/web.img"\nformat = "raw"', 'directory = "rootfs"\nfs_type = "ext5"',
     "fs_type", r"'ext5' is not one of auto, ext4, xfs, btrfs \(did you mean 'ext4'\?\)"),
    ('image = "build/web.img"\nformat = "raw"', 'directory = "rootfs"\nexclude = "tmp"\n'
     'secret_filter = "no"', "secret_filter", r"source.secret_filter must be true or false"),
    (
        "deprecate_after_days = 90",
        "deprecate_after_days = 90\ndeprecate_after_days = 91",
        "deprecate_after_days = 91",
        r"not valid TOML",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "line_text", "pattern"),
    CASES,
    ids=[f"{i}-{c[3][:30]}" for i, c in enumerate(CASES)],
)
def test_plan_errors_name_the_line(
    old: str, new: str, line_text: str | tuple[str, int], pattern: str
) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    with pytest.raises(PlanError) as info:
        parse_plan(text, source="site/PLAN.toml")
    message = str(info.value)
    needle, nth = line_text if isinstance(line_text, tuple) else (line_text, 1)
    want = [n for n, line in enumerate(text.splitlines(), 1) if needle in line][nth - 1]
    assert message.startswith(f"site/PLAN.toml:{want}: "), message
    assert re.search(pattern, message), message
    assert "\n" not in message


def test_a_directory_source_and_its_image_options() -> None:
    text = GOOD.replace('image = "build/web.img"\nformat = "raw"', 'directory = "rootfs"\n'
                        'exclude = ["var/cache", "tmp"]\nsecret_filter = false\nsize_mib = 512\n'
                        'partition = "gpt"\nlabel = "root"')
    source = parse_plan(text, base=Path("/site")).source
    assert source.image is None and source.directory == Path("/site/rootfs")
    v = source.volume
    assert v.exclude == ("var/cache", "tmp") and v.secret_filter is False
    assert (v.size_mib, v.partition, v.label, v.fs_type) == (512, "gpt", "root", "auto")


@pytest.mark.parametrize("key", ["name", "regions", "bucket", "source", "accounts"])
def test_required_keys(key: str) -> None:
    lines = GOOD.splitlines()
    if key in ("source", "accounts"):
        text = re.sub(rf"\n\[\[?{key}\]\]?\n(?:[^\[\n][^\n]*\n)*", "\n", GOOD)
    elif key == "regions":
        text = re.sub(r"regions = \[[^\]]*\]\n", "", GOOD)
    else:
        text = "\n".join(line for line in lines if not line.startswith(f"{key} ="))
    with pytest.raises(PlanError, match=rf"PLAN.toml:1: missing required key '{key}'"):
        parse_plan(text)


def test_a_plan_file_that_is_missing_or_not_text(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="not found"):
        load_plan(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(PlanError, match="not UTF-8"):
        load_plan(bad)
    with pytest.raises(PlanError, match="larger than 1024 KiB"):
        load_plan("/dev/zero")
    with pytest.raises(PlanError, match="cannot read plan"):
        load_plan(tmp_path)
    good = tmp_path / "p.toml"
    good.write_text(GOOD)
    assert load_plan(good).source.image == tmp_path / "build/web.img"


def test_plan_lines_places_keys_tables_and_array_items() -> None:
    lines = PlanLines(GOOD)
    assert lines.line_of(("regions",)) == _line_of(GOOD, "regions =")
    assert lines.line_of(("regions",), '"eu-west-1"') == _line_of(GOOD, '"eu-west-1"')
    assert lines.line_of(("accounts", 1, "role_arn")) == _line_of(GOOD, "role_arn")
    assert lines.line_of(("accounts", 1)) == _line_of(GOOD, 'id = "2222') - 1
    assert lines.line_of(("boot", "nothing")) == _line_of(GOOD, "[boot]")
    assert lines.line_of(("nothing",)) == 1
    text = 'a = """\nb = 1\n"""\nb = 2\n'
    assert PlanLines(text).line_of(("b",)) == 4  # not the line inside the string


def test_the_example_plan_parses_and_every_key_is_in_it_and_documented() -> None:
    from bundler.publish import plan as planlib

    root = Path(__file__).resolve().parents[2]
    example = (root / "examples" / "publish.toml").read_text()
    docs = (root / "docs" / "publish.md").read_text()
    parsed = parse_plan(example)
    assert len(parsed.targets) == len(parsed.regions) * len(parsed.accounts) > 1
    keys = [*planlib._TOP, *planlib._SOURCE, *planlib._BUNDLE, *planlib._ACCOUNT_KEYS,
            *planlib._BOOT]
    for key in keys:
        written = rf"^(#? ?{key} =|\[\[?{key}\]\]?$)"
        assert re.search(written, example, re.M), f"{key} missing from the example"
        assert f"`{key}`" in docs or f"`[{key}]`" in docs or f"`[[{key}]]`" in docs, (
            f"{key} not documented in docs/publish.md")
    for name in (*planlib.NAME_FIELDS, *planlib.TEXT_FIELDS, *planlib.BUCKET_FIELDS):
        assert f"`{{{name}}}`" in docs, name
