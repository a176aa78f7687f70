"""install re-runs after the image changed in place (issue 11, problem 3): "present" only for a
bundle proved to hold this very image, never the old bundle copied to a new region."""

from __future__ import annotations

import json
import os
import uuid

from tests.support.cli import MIB, install_argv, run
from tests.support.s3kit import inspect_bundles

ALL_THREE = ("us-east-1", "eu-west-1", "cn-north-1")


def install(capsys, endpoint, image, template, certs, user_keys, regions, *extra):
    argv = install_argv(image, user_keys, endpoint, name="disk", regions=regions,
                        template=template, cert_dir=certs, register=False)
    return run(capsys, *argv, "--max-attempts", "1", "--json", *extra)


def rewrite_same_size_same_mtime(path) -> None:
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(MIB)
        fh.write(os.urandom(4096))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def digest_in(s3, bucket: str) -> str:
    from bundler.manifest import parse_manifest

    raw = s3.get_object(Bucket=bucket, Key="amis/disk.manifest.xml")["Body"].read()
    return parse_manifest(raw, source="m").manifest.digest


def test_changed_image_is_not_present_and_never_copied_to_a_new_region(
    capsys, endpoint, s3, tmp_path, user_keys, cert_dir
):
    certs, _ = cert_dir
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(6 * MIB)
        fh.write(os.urandom(2 * MIB))
    tag = uuid.uuid4().hex[:8]
    template = f"rerun-{tag}-{{region}}/amis"
    bucket = {r: f"rerun-{tag}-{r}" for r in ("us-east-1", "eu-west-1", "cn-north-1")}
    code, out, err = install(
        capsys, endpoint, image, template, certs, user_keys, ["us-east-1", "eu-west-1"]
    )
    assert code == 0, err
    old_digest = digest_in(s3, bucket["us-east-1"])

    # Unchanged: present everywhere, nothing bundled.
    code, out, err = install(
        capsys, endpoint, image, template, certs, user_keys, ["us-east-1", "eu-west-1"]
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["bundled"] is False
    assert {r: v["action"] for r, v in result["regions"].items()} == {
        "us-east-1": "present",
        "eu-west-1": "present",
    }

    # Changed in place, same size and mtime: the old regions hold a different bundle now (refused
    # without --force), and the new region gets the new image, bundled, not the old one copied.
    rewrite_same_size_same_mtime(image)
    code, out, err = install(capsys, endpoint, image, template, certs, user_keys, ALL_THREE)
    assert code == 3
    result = json.loads(out)
    regions = result["regions"]
    assert sorted(result["failed"]) == ["eu-west-1", "us-east-1"]
    assert all(
        "different bundle" in regions[r]["error"] and "--force" in regions[r]["error"]
        for r in ("us-east-1", "eu-west-1")
    )
    assert regions["cn-north-1"]["action"] == "bundled" and result["bundled"] is True
    new_digest = digest_in(s3, bucket["cn-north-1"])
    assert new_digest != old_digest
    assert digest_in(s3, bucket["us-east-1"]) == digest_in(s3, bucket["eu-west-1"]) == old_digest

    # With --force (no AMI uses them) the old regions are re-bundled with the new image.
    code, out, err = install(capsys, endpoint, image, template, certs, user_keys, ALL_THREE,
                             "--force")
    assert code == 0, err
    result = json.loads(out)
    assert result["regions"]["cn-north-1"]["action"] == "present"
    assert {result["regions"][r]["action"] for r in ("us-east-1", "eu-west-1")} <= {
        "bundled",
        "copied",
    }
    for b in bucket.values():
        assert digest_in(s3, b) == new_digest
        seen = inspect_bundles(s3, b, "amis/")
        assert seen.ok and seen.complete == ["disk.manifest.xml"] and not seen.loose
