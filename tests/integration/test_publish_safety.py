"""Never replace or delete a bundle in use (issue 11), against the strict local AWS: RegisterImage
keeps ImageLocation and DescribeImages filters on ``manifest-location``, as EC2 does."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
from botocore.stub import Stubber

from tests.support.bundles import make_fake_bundle
from tests.support.cli import KIB, copy_argv, install_argv, keys_in, run, upload
from tests.support.s3kit import inspect_bundles, one_line_error


def register(capsys, endpoint: str, location: str) -> str:
    code, out, err = run(
        capsys,
        "register",
        location,
        "-n",
        f"in-use-{uuid.uuid4().hex[:10]}",
        "--endpoint-url",
        endpoint,
        "--json",
    )
    assert code == 0, err
    return json.loads(out)["image_id"]


@pytest.fixture
def two_bundles(tmp_path, signing_key):
    """Bundles A and B, both called ``web``: same name, different parts (B is shorter)."""
    a = make_fake_bundle(tmp_path / "a", "web", [64 * KIB, 64 * KIB, 10 * KIB], signing_key)
    b = make_fake_bundle(tmp_path / "b", "web", [64 * KIB, 20 * KIB], signing_key)
    return a, b


def only_bundle(s3, bucket: str, prefix: str, bundle) -> None:
    """The prefix holds exactly ``bundle``: its manifest, every part verified, no leftovers."""
    seen = inspect_bundles(s3, bucket, prefix, known={"m": bundle.manifest_bytes})
    assert seen.ok, seen.wrong
    assert seen.complete == [f"{bundle.manifest_path.name}"]
    assert seen.manifests[bundle.manifest_path.name] == bundle.manifest_bytes
    assert not seen.loose and not seen.locks


def test_upload_of_another_bundle_over_one_is_refused_and_it_stays_intact(
    capsys, endpoint, s3, bucket, two_bundles
):
    a, b = two_bundles
    assert upload(capsys, endpoint, f"{bucket}/amis", a)[0] == 0
    before = keys_in(s3, bucket)
    code, _, err = upload(capsys, endpoint, f"{bucket}/amis", b)
    assert code == 1
    line = one_line_error(err)
    assert line and "already holds a different bundle named web" in line and "--force" in line
    assert keys_in(s3, bucket) == before
    only_bundle(s3, bucket, "amis/", a)


def test_upload_force_replaces_a_bundle_no_ami_uses(capsys, endpoint, s3, bucket, two_bundles):
    a, b = two_bundles
    assert upload(capsys, endpoint, f"{bucket}/amis", a)[0] == 0
    code, _, err = upload(capsys, endpoint, f"{bucket}/amis", b, "--force")
    assert code == 0, err
    only_bundle(s3, bucket, "amis/", b)  # A's third part went as an orphan


def test_same_bundle_again_resumes_without_force(capsys, endpoint, s3, bucket, two_bundles):
    a, _ = two_bundles
    assert upload(capsys, endpoint, f"{bucket}/amis", a)[0] == 0
    code, out, err = upload(capsys, endpoint, f"{bucket}/amis", a, "--json")
    assert code == 0, err
    assert json.loads(out)["parts_skipped"] == 3
    only_bundle(s3, bucket, "amis/", a)


def test_registered_ami_protects_its_bundle_from_upload_force_and_delete(
    capsys, endpoint, s3, ec2, bucket, two_bundles
):
    a, b = two_bundles
    assert upload(capsys, endpoint, f"{bucket}/amis", a)[0] == 0
    ami = register(capsys, endpoint, f"{bucket}/amis/web.manifest.xml")
    before = keys_in(s3, bucket)

    code, _, err = upload(capsys, endpoint, f"{bucket}/amis", b, "--force")
    line = one_line_error(err)
    assert (
        code == 1
        and line
        and ami in line
        and "deregister" in line
        and "not even with --force" in line
    )
    assert keys_in(s3, bucket) == before

    for argv in (["-p", "web"], ["-m", "web.manifest.xml"]):
        code, _, err = run(
            capsys, "delete-bundle", "-b", f"{bucket}/amis", *argv, "-y", "--endpoint-url", endpoint
        )
        line = one_line_error(err)
        assert code == 1 and line and ami in line and "--force" in line and "deregister" in line
        assert keys_in(s3, bucket) == before
    only_bundle(s3, bucket, "amis/", a)

    # --force deletes it, saying which AMI it breaks.
    code, out, err = run(
        capsys,
        "delete-bundle",
        "-b",
        f"{bucket}/amis",
        "-p",
        "web",
        "-y",
        "--force",
        "--endpoint-url",
        endpoint,
        "--json",
    )
    assert code == 0, err
    assert ami in err and json.loads(out)["in_use_by"] == [ami]
    assert keys_in(s3, bucket) == {}


def test_deregister_delete_bundle_keeps_it_while_a_sibling_ami_uses_it(
    capsys, endpoint, s3, ec2, bucket, two_bundles
):
    a, _ = two_bundles
    assert upload(capsys, endpoint, f"{bucket}/amis", a)[0] == 0
    location = f"{bucket}/amis/web.manifest.xml"
    first, second = register(capsys, endpoint, location), register(capsys, endpoint, location)
    code, out, err = run(
        capsys, "deregister", first, "--delete-bundle", "--endpoint-url", endpoint, "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["deleted"] == 0 and result["kept_for"] == [second]
    only_bundle(s3, bucket, "amis/", a)
    [image] = ec2.describe_images(ImageIds=[second])["Images"]
    assert image["State"] == "available"
    code, _, err = run(capsys, "deregister", second, "--delete-bundle", "--endpoint-url", endpoint)
    assert code == 0, err
    assert keys_in(s3, bucket) == {}


def test_install_twice_with_a_changed_image_never_breaks_the_first_ami(
    capsys, endpoint, s3, ec2, bucket, tmp_path, user_keys, ec2_keys
):
    image = tmp_path / "web.img"
    image.write_bytes(b"first image " * 40_000)
    argv = install_argv(image, user_keys, endpoint, bucket=f"{bucket}/web", ec2cert=ec2_keys[1])
    argv += ["--json", "-n", f"web-{uuid.uuid4().hex[:8]}"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    first = json.loads(out)
    before = keys_in(s3, bucket)

    # The same image again: proved identical, nothing uploaded, the AMI is the existing one.
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    again = json.loads(out)
    assert (again["action"], again["registered"], again["image_id"]) == (
        "present",
        "existing",
        first["image_id"],
    )
    assert keys_in(s3, bucket) == before

    # Same size, other bytes: a different bundle, which the AMI protects (even with --force).
    image.write_bytes(b"other image " * 40_000)
    for extra in ([], ["--force"]):
        code, _, err = run(capsys, *argv, *extra)
        line = one_line_error(err)
        assert code == 1 and line and first["image_id"] in line, err
        assert keys_in(s3, bucket) == before


def test_describe_images_denied_warns_and_does_not_block(
    capsys, endpoint, s3, bucket, two_bundles, monkeypatch
):
    from bundler.cli.context import AwsContext

    def denied_ec2(self, region, **kwargs):
        client = boto3.client("ec2", region_name=region or "us-east-1", endpoint_url=endpoint)
        stubber = Stubber(client)
        stubber.add_client_error(
            "describe_images",
            service_error_code="UnauthorizedOperation",
            service_message="not allowed",
            http_status_code=403,
        )
        stubber.activate()
        return client

    monkeypatch.setattr(AwsContext, "ec2", denied_ec2)
    a, b = two_bundles
    assert upload(capsys, endpoint, f"{bucket}/amis", a)[0] == 0
    code, _, err = upload(capsys, endpoint, f"{bucket}/amis", b, "--force")
    assert code == 0, err
    assert "ec2:DescribeImages denied" in err
    only_bundle(s3, bucket, "amis/", b)


def test_orphan_cleanup_failing_after_publishing_only_warns(
    capsys, endpoint, proxy, s3, bucket, two_bundles
):
    a, _ = two_bundles
    s3.put_object(Bucket=bucket, Key="amis/web.part.7", Body=b"left by a killed run")
    proxy.add_rule(
        "status", r"\?delete", method="POST", times=None, status=500, code="InternalError"
    )
    code, out, err = upload(capsys, proxy.url, f"{bucket}/amis", a, "--max-attempts", "1")
    assert code == 0, err
    assert "could not remove stale parts of web" in err and "delete-bundle -p web" in err
    assert "Manifest uploaded to" in out
    seen = inspect_bundles(s3, bucket, "amis/", known={"m": a.manifest_bytes})
    assert seen.ok and seen.complete == ["web.manifest.xml"] and seen.loose == ["web.part.7"]


def test_registered_ami_protects_its_bundle_from_copy_bundle(
    capsys, endpoint, s3, bucket, tmp_path, signing_key, source_bundle, user_keys, region_b
):
    key, cert = user_keys
    dest = f"dst-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(
        Bucket=dest,
        CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        ObjectOwnership="ObjectWriter",
    )
    there = make_fake_bundle(tmp_path / "there", "disk", [64 * KIB, 5 * KIB], signing_key)
    assert upload(capsys, endpoint, f"{dest}/amis", there, "--region", "eu-west-1")[0] == 0
    argv = copy_argv(user_keys, f"{bucket}/src", f"{dest}/amis", "eu-west-1",
                     region_b.cert_path, endpoint)
    code, _, err = run(capsys, *argv)
    line = one_line_error(err)
    assert code == 1 and line and "different bundle" in line and "--force" in line
    ami = register(capsys, endpoint, f"{dest}/amis/disk.manifest.xml")
    before = keys_in(s3, dest)
    code, _, err = run(capsys, *argv, "--force")
    line = one_line_error(err)
    assert code == 1 and line and ami in line and "deregister" in line
    assert keys_in(s3, dest) == before
    only_bundle(s3, dest, "amis/", there)
