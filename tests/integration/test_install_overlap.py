"""install's set-up overlaps: the image is opened (its zero scan reads every data block) while
S3 answers the first round trip, and registering reads the manifest back and lists its parts
in one round trip; a manifest that changed since the run published it is never registered."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

import bundler.cli.inputs as cli_inputs
from bundler.ec2 import preflight
from bundler.errors import ManifestError
from bundler.manifest import parse_manifest
from tests.support.cli import MIB, install_argv, run, sparse_image


def _argv(image, user_keys, ec2_keys, proxy, bucket, *extra):
    return [*install_argv(image, user_keys, proxy.url, bucket=f"{bucket}/ov",
                          ec2cert=ec2_keys[1], name="disk"),
            "-n", f"ov-{uuid.uuid4().hex[:8]}", "--jobs", "2", "--no-check", *extra]


def test_the_image_opens_while_s3_answers(capsys, monkeypatch, proxy, s3, bucket, tmp_path,
                                          user_keys, ec2_keys):
    image = tmp_path / "disk.img"
    sparse_image(image, 12 * MIB)
    proxy.add_rule("delay", rf"^/{bucket}$", method="HEAD", times=1, delay=0.5)
    during = []
    real = cli_inputs.image_source_from_args

    def opening(args):
        # the bucket's HEAD (the first request) is logged once answered: not yet, if in parallel
        during.append(not proxy.requests("HEAD", rf"^/{bucket}$"))
        return real(args)

    monkeypatch.setattr(cli_inputs, "image_source_from_args", opening)
    code, _, err = run(capsys, *_argv(image, user_keys, ec2_keys, proxy, bucket, "--no-register"))
    assert code == 0, err
    assert during == [True]


def test_a_bad_image_still_fails_cleanly_when_opened_meanwhile(capsys, proxy, s3, bucket,
                                                               tmp_path, user_keys, ec2_keys):
    code, _, err = run(capsys, *_argv(tmp_path / "missing.img", user_keys, ec2_keys, proxy,
                                      bucket, "--no-register"))
    assert code != 0
    assert err.strip().splitlines()[-1].startswith("ami-bundler: error:")
    assert "Traceback" not in err
    assert not proxy.requests("PUT")  # nothing written


def test_register_reads_back_and_lists_in_one_round_trip(capsys, proxy, s3, bucket, tmp_path,
                                                         user_keys, ec2_keys):
    """A bundle found there (an earlier run uploaded it, unregistered) is read back before it
    is registered, its parts listed in the same round trip. (One this run has just published
    is registered straight away: test_install_critical_path.)"""
    image = tmp_path / "disk.img"
    sparse_image(image, 12 * MIB)
    argv = _argv(image, user_keys, ec2_keys, proxy, bucket)
    code, _, err = run(capsys, *argv, "--no-register")
    assert code == 0, err
    proxy.clear()
    # the manifest's read-back, slowed: the parts' listing must not wait for it
    proxy.add_rule("delay", r"ov/disk\.manifest\.xml$", method="GET", times=None, delay=0.4)
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("ami-")
    log = [r for r in proxy.requests() if f"/{bucket}" in r.path]
    back = [r for r in log if r.method == "GET" and r.path.endswith(".xml")][-1]
    listing = [r for r in log if "list-type" in r.query and r.started < back.ended]
    assert listing and listing[-1].ended > back.started  # asked together, not after it
    assert not proxy.requests("PUT", r"\.part\.")  # nothing bundled again


def test_a_manifest_changed_since_publishing_is_not_registered(capsys, proxy, s3, bucket,
                                                               tmp_path, user_keys, ec2_keys):
    image = tmp_path / "disk.img"
    sparse_image(image, 12 * MIB)
    code, _, err = run(capsys, *_argv(image, user_keys, ec2_keys, proxy, bucket,
                                      "--no-register"))
    assert code == 0, err
    raw = s3.get_object(Bucket=bucket, Key="ov/disk.manifest.xml")["Body"].read()
    ours = parse_manifest(raw, source="ours")
    location = f"{bucket}/ov/disk.manifest.xml"
    assert preflight(s3, location, published=ours).parts == len(ours.manifest.parts)
    with pytest.raises(ManifestError, match="no longer the manifest this run uploaded"):
        preflight(s3, location, published=dataclasses.replace(ours, raw=raw + b"\n"))
