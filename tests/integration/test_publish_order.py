"""The publish protocol's order, checked once against every writer of a bundle (issue 11):
upload-bundle, install (streaming sink), copy-bundle (= migrate-bundle), install --regions
(fan-out, and a re-run that completes a region by copy). A recording proxy sees every request.

For each bundle written: the lease is taken before any other write; a different bundle's
manifest is retired before the first new part; every part write ends before the manifest PUT
starts, with a listing (parts re-checked) and a HEAD of the lease in between; the manifest is
PUT once; the lease is released after it."""

from __future__ import annotations

import json
import os
import uuid
from urllib.parse import unquote

from bundler.s3 import LOCK_SUFFIX
from tests.support.bundles import make_fake_bundle
from tests.support.cli import (
    KIB,
    MIB,
    copy_argv,
    install_argv,
    run,
    sparse_image,
    upload,
    write_publish_plan,
)
from tests.support.s3kit import inspect_bundles


def check_order(records, bucket: str, prefix: str, name: str, *, replaced: bool) -> None:
    recs = sorted(
        (r for r in records if r.path.startswith(f"/{bucket}/") or r.path == f"/{bucket}"),
        key=lambda r: r.started,
    )
    lock, manifest = f"{prefix}{name}{LOCK_SUFFIX}", f"{prefix}{name}.manifest.xml"
    [lock_put, *_] = [r for r in recs if r.method == "PUT" and r.key == lock]
    writes = [
        r for r in recs if r.method in ("PUT", "POST", "DELETE") and r.key not in (lock, "")
    ]  # not the bucket
    assert writes and all(r.started >= lock_put.ended for r in writes), "a write before the lease"
    [manifest_put] = [r for r in recs if r.method == "PUT" and r.key == manifest]
    part_writes = [r for r in recs if r.method == "PUT" and ".part." in r.key]
    assert part_writes, "no part written"
    assert all(p.ended <= manifest_put.started for p in part_writes), "a part after the manifest"
    last_part = max(p.ended for p in part_writes)
    between = [r for r in recs if r.started >= last_part and r.ended <= manifest_put.started]
    assert any(r.method == "GET" and "list-type=2" in r.query for r in between), (
        "parts not re-checked"
    )
    assert any(r.method == "HEAD" and r.key == lock for r in between), "lease not re-checked"
    retired = [
        r
        for r in recs
        if r.method == "POST" and "delete" in r.query and manifest.encode() in r.body_prefix
    ]
    if replaced:
        assert retired and retired[0].ended <= min(p.started for p in part_writes), (
            "old manifest not retired first"
        )
    else:
        assert not retired
    released = [r for r in recs if r.method == "DELETE" and r.key == lock]
    assert released and released[-1].started >= manifest_put.ended, (
        "lease released before the manifest"
    )


def bundle_ok(s3, bucket: str, prefix: str, manifest: str) -> None:
    seen = inspect_bundles(s3, bucket, prefix)
    assert seen.ok and seen.complete == [manifest] and not seen.loose and not seen.locks, seen


def test_upload_bundle_order(capsys, endpoint, proxy, s3, bucket, tmp_path, signing_key):
    old = make_fake_bundle(tmp_path / "old", "web", [64 * KIB] * 3, signing_key)
    new = make_fake_bundle(tmp_path / "new", "web", [64 * KIB] * 2, signing_key)
    for bundle, replaced in ((old, False), (new, True)):
        proxy.clear()
        code, _, err = upload(capsys, proxy.url, f"{bucket}/u", bundle, "--force")
        assert code == 0, err
        check_order(proxy.requests(), bucket, "u/", "web", replaced=replaced)
    bundle_ok(s3, bucket, "u/", "web.manifest.xml")


def test_install_order_streaming_sink(
    capsys, endpoint, proxy, s3, bucket, tmp_path, signing_key, user_keys, ec2_keys
):
    old = make_fake_bundle(tmp_path / "old", "disk", [64 * KIB] * 2, signing_key)
    assert upload(capsys, endpoint, f"{bucket}/i", old)[0] == 0
    image = tmp_path / "disk"
    sparse_image(image, 24 * MIB)
    proxy.clear()
    argv = install_argv(image, user_keys, proxy.url, bucket=f"{bucket}/i", ec2cert=ec2_keys[1],
                        register=False)
    code, _, err = run(capsys, *argv, "--force")
    assert code == 0, err
    check_order(proxy.requests(), bucket, "i/", "disk", replaced=True)
    bundle_ok(s3, bucket, "i/", "disk.manifest.xml")


def test_copy_bundle_order(
    capsys, endpoint, proxy, s3, bucket, tmp_path, signing_key, user_keys, ec2_keys, region_b
):
    key, cert = user_keys
    image = tmp_path / "disk"
    sparse_image(image, 24 * MIB)
    argv = install_argv(image, user_keys, endpoint, bucket=f"{bucket}/src", ec2cert=ec2_keys[1],
                        register=False)
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    dest = f"dst-{uuid.uuid4().hex[:12]}"
    for mode in ("server", "stream"):
        old = make_fake_bundle(tmp_path / f"old-{mode}", "disk", [64 * KIB] * 5, signing_key)
        if mode == "server":
            s3.create_bucket(
                Bucket=dest,
                CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
                ObjectOwnership="ObjectWriter",
            )
        assert upload(capsys, endpoint, f"{dest}/{mode}", old, "--region", "eu-west-1")[0] == 0
        proxy.clear()
        argv = copy_argv(user_keys, f"{bucket}/src", f"{dest}/{mode}", "eu-west-1",
                         region_b.cert_path, proxy.url)
        code, _, err = run(capsys, *argv, "--copy-mode", mode, "--force")
        assert code == 0, err
        check_order(proxy.requests(), dest, f"{mode}/", "disk", replaced=True)


def test_install_regions_order_fan_out_then_copy(
    capsys, endpoint, proxy, s3, tmp_path, user_keys, cert_dir
):
    certs, _ = cert_dir
    image = tmp_path / "disk"
    sparse_image(image, 24 * MIB)
    tag = uuid.uuid4().hex[:8]
    regions = ("us-east-1", "eu-west-1")
    argv = install_argv(image, user_keys, proxy.url, regions=regions,
                        template=f"order-{tag}-{{region}}/amis", cert_dir=certs, register=False)
    argv.append("--json")
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    for region in regions:
        check_order(proxy.requests(), f"order-{tag}-{region}", "amis/", "disk", replaced=False)
    # Lose one region's bundle: the re-run completes it by copy, in the same order.
    lost = s3.list_objects_v2(Bucket=f"order-{tag}-eu-west-1")["Contents"]
    s3.delete_objects(
        Bucket=f"order-{tag}-eu-west-1", Delete={"Objects": [{"Key": o["Key"]} for o in lost]}
    )
    proxy.clear()
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert json.loads(out)["regions"]["eu-west-1"]["action"] == "copied"
    check_order(proxy.requests(), f"order-{tag}-eu-west-1", "amis/", "disk", replaced=False)


def test_publish_relay_order_copies_overlap_the_upload(
    capsys, endpoint, proxy, s3, tmp_path, user_keys, ec2_cert_dir, monkeypatch
):
    """publish to three regions of one account: bundled to the first, each part copied
    server-side to the other two as soon as it has landed (bundler.s3.relay). Each relayed
    bucket follows the protocol's order, and its copies start while the upload still runs."""
    import bundler.partcutter

    monkeypatch.setattr(bundler.partcutter, "PART_SIZE", 64 * KIB)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    tag = uuid.uuid4().hex[:8]
    regions = ("us-east-1", "eu-west-1", "eu-central-1")
    image = tmp_path / "disk"
    with open(image, "wb") as fh:  # 1 MiB that does not compress: 17 parts of 64 KiB
        fh.write(os.urandom(MIB))
    plan = tmp_path / "plan.toml"
    write_publish_plan(plan, f"relay-{tag}", regions, f"relay-{tag}-{{region}}/amis", image,
                       user_keys)
    proxy.clear()
    code, out, err = run(capsys, "publish", plan, "--endpoint-url", proxy.url, "--ec2cert-dir",
                         ec2_cert_dir, "--jobs", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    changes = {t["region"]: t["changes"][0] for t in result["targets"]}
    assert changes == {"us-east-1": f"bundle {result['targets'][0]['image_location']}",
                       "eu-west-1": "copy from 123456789012/us-east-1",
                       "eu-central-1": "copy from 123456789012/us-east-1"}
    generation = result["generation"]
    records = proxy.requests()
    leader = f"relay-{tag}-us-east-1"
    writes = [r for r in records if r.method == "PUT" and r.path.startswith(f"/{leader}/")
              and ".part." in r.key]
    uploads = [r for r in writes if not r.headers.get("x-amz-copy-source")]
    assert len(uploads) == 17
    landed = {r.key: r.ended for r in writes}  # uploaded, or renamed at its commit
    for region in regions:
        bucket = f"relay-{tag}-{region}"
        check_order(records, bucket, f"amis/{generation}/", f"relay-{tag}", replaced=False)
        bundle_ok(s3, bucket, f"amis/{generation}/", f"relay-{tag}.manifest.xml")
        if region == "us-east-1":
            continue
        copies = [r for r in records if r.path.startswith(f"/{bucket}/")
                  and r.headers.get("x-amz-copy-source")]
        assert len(copies) >= 17
        # Pipelined: copies began before the upload ended, each after its source landed.
        assert min(c.started for c in copies) < max(u.ended for u in uploads)
        for c in copies:
            src_bucket, _, src_key = unquote(c.headers["x-amz-copy-source"]).lstrip(
                "/").partition("/")
            assert src_bucket == leader and c.started >= landed[src_key], c.key
