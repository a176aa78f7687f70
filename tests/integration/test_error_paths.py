"""Error paths name the real cause: one regression test for each case the error-path issue
reported (and the others of each class found with them), through the real CLI entry point.

Each failure must be one ``ami-bundler: error: …`` line (plus at most a ``hint:`` line), the
documented exit code, the same as JSON on stdout under --json, and leave nothing behind.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
from pathlib import Path

import pytest

from bundler.cli import main
from bundler.errors import EXIT_INPUT, EXIT_INTEGRITY, EXIT_USAGE
from tests.support.bundles import make_fake_bundle
from tests.support.cli import keys_in, run

ACCOUNT = "123456789012"


def error_line(err: str) -> str:
    """The error line; fails unless stderr is exactly it and at most one hint line."""
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("ami-bundler: error: "), err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, user_key_pair, ec2_key_pair) -> Path:
    """A real 3-part bundle (parts of 1 MiB would need the pipeline's knob; 21 MiB it is)."""
    root = tmp_path_factory.mktemp("errpaths")
    image = root / "img"
    image.write_bytes(random.Random(5).randbytes(21 << 20))
    dest = root / "b"
    assert main(["bundle-image", "-i", str(image), "-c", str(user_key_pair.cert_path), "-k",
                 str(user_key_pair.key_path), "-u", ACCOUNT,
                 "--ec2cert", str(ec2_key_pair.cert_path),
                 "-d", str(dest), "-r", "x86_64", "-q"]) == 0
    return dest


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst / "img.manifest.xml"


def test_parts_out_of_order_say_so(capsys, tmp_path, bundle_dir, user_key_pair):
    manifest = copy_bundle(bundle_dir, tmp_path / "b")
    d = manifest.parent
    os.rename(d / "img.part.0", d / "swap")
    os.rename(d / "img.part.1", d / "img.part.0")
    os.rename(d / "swap", d / "img.part.1")
    code, _, err = run(capsys, "unbundle", "-m", manifest, "-k", user_key_pair.key_path,
                       "-d", tmp_path / "out")
    line = error_line(err)
    assert code == EXIT_INTEGRITY
    assert ("img.part.0 (index 0) holds the data of img.part.1 (index 1)" in line
            and "out of order" in line)
    assert "AES key" not in line
    assert not (tmp_path / "out").exists()  # created for the run, removed with its failure
    code, _, err = run(capsys, "verify", manifest, "-k", user_key_pair.key_path)
    assert code == EXIT_INTEGRITY and "holds the data of img.part.0" in error_line(err)


def test_verify_json_reports_every_problem(capsys, tmp_path, bundle_dir, user_key_pair,
                                           ec2_key_pair):
    manifest = copy_bundle(bundle_dir, tmp_path / "b")
    (manifest.parent / "img.part.1").write_bytes(b"corrupt")
    (manifest.parent / "img.part.2").unlink()
    # signed by the user key, checked against another certificate: three problems
    code, out, err = run(capsys, "verify", manifest, "-c", ec2_key_pair.cert_path, "--json")
    assert code == EXIT_INTEGRITY
    result = json.loads(out)
    assert result["ok"] is False and result["signature"] == "invalid"
    assert len(result["problems"]) == 3, result["problems"]
    assert result["error"]["code"] == "signature" and result["error"]["exit_code"] == code
    assert any("img.part.2" in p and "missing" in p for p in result["problems"])
    assert any("img.part.1" in p and "corrupt" in p for p in result["problems"])
    error_line(err)
    code, out, _ = run(capsys, "verify", bundle_dir / "img.manifest.xml",
                       "-c", user_key_pair.cert_path, "--json")
    assert code == 0 and json.loads(out)["ok"] is True and json.loads(out)["problems"] == []


def test_non_xml_manifest_is_not_called_encrypted(capsys, tmp_path):
    for data in (b"hello world\n", bytes(range(3, 200)), b"\xff\xfe garbage"):
        path = tmp_path / "m.manifest.xml"
        path.write_bytes(data)
        code, _, err = run(capsys, "inspect", path)
        line = error_line(err)
        assert code == EXIT_INPUT and "is not a manifest" in line and "pass -k" not in line, line


def test_only_private_key_given_names_it(capsys, tmp_path, bundle_dir, ec2_key_pair):
    code, _, err = run(capsys, "verify", bundle_dir / "img.manifest.xml",
                       "-k", ec2_key_pair.key_path)
    line = error_line(err)
    assert code == EXIT_INTEGRITY
    assert f"the public half of private key {ec2_key_pair.key_path} (no -c given)" in line
    assert "the given certificate" not in line
    code, _, err = run(capsys, "unbundle", "-m", bundle_dir / "img.manifest.xml",
                       "-k", ec2_key_pair.key_path, "-d", tmp_path / "o")
    assert "public half of the private key (-k; no -c given)" in error_line(err)


@pytest.mark.parametrize(("value", "expected"), [("-5", "between 1 and"), ("0", "between 1 and"),
                                                 ("ten", "not a whole byte count")])
def test_image_size_out_of_range_is_a_usage_error(capsys, tmp_path, value, expected, user_key_pair,
                                                  ec2_key_pair):
    code, out, err = run(capsys, "bundle-image", "-i", "-", "--image-size", value, "-p", "x", "-c",
                         user_key_pair.cert_path, "-k", user_key_pair.key_path, "-u", ACCOUNT,
                         "--ec2cert", ec2_key_pair.cert_path, "-d", tmp_path, "--json")
    line = error_line(err)
    assert (code == EXIT_USAGE and "--image-size" in line and expected in line
            and "empty" not in line)
    assert json.loads(out)["error"] == {"code": "usage", "message": line.split("error: ", 1)[1],
                                        "hint": "see 'ami-bundler bundle-image --help'",
                                        "exit_code": 2}


def test_migrate_manifest_on_a_read_only_filesystem(capsys, tmp_path, bundle_dir, user_key_pair,
                                                    ec2_key_pair, monkeypatch):
    """EROFS: even removing the never-created temporary file fails; that must not become a
    traceback hiding the real error. (Root ignores directory modes, so the filesystem is faked.)"""
    manifest = copy_bundle(bundle_dir, tmp_path / "b")
    before = manifest.read_bytes()
    real_open, real_unlink = os.open, os.unlink

    def ro_open(path, flags, *a, **k):
        if str(path).startswith(str(manifest.parent)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    def ro_unlink(path, *a, **k):
        if str(path).startswith(str(manifest.parent)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "unlink", ro_unlink)
    code, _, err = run(capsys, "migrate-manifest", "-m", manifest, "-c", user_key_pair.cert_path,
                       "-k",
                       user_key_pair.key_path, "--ec2cert", ec2_key_pair.cert_path,
                       "--kernel", "aki-12345678")
    line = error_line(err)
    assert code == EXIT_INPUT and "Read-only file system" in line and str(manifest.parent) in line
    assert manifest.read_bytes() == before


@pytest.mark.parametrize("url",
                         ["127.0.0.1:5123", "localhost", "ftp://127.0.0.1:1",
                                 "http://127.0.0.1:99999", "http://", "http://a b"])
def test_endpoint_url_without_scheme_is_a_usage_error(capsys, tmp_path, url, aws_env):
    code, _, err = run(capsys, "download-bundle", "-b", "some-bucket", "-p", "x", "-d", tmp_path,
                       "--endpoint-url", url)
    line = error_line(err)
    assert code == EXIT_USAGE and "--endpoint-url" in line, line


@pytest.mark.parametrize("target",
                         ["My_Bucket", "bad..dots", "192.168.5.4", "ab", "good-bucket/a//b",
                                    "good-bucket/a/../b", "xn--bucket"])
def test_bucket_and_prefix_rules_are_checked_first(capsys, tmp_path, target, endpoint, s3,
                                                   signing_key):
    bundle = make_fake_bundle(tmp_path / "b", "v", [1000], signing_key)
    before = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    code, _, err = run(capsys, "upload-bundle", "-b", target, "-m", bundle.manifest_path,
                       "--endpoint-url", endpoint)
    line = error_line(err)
    assert code == EXIT_USAGE and ("bucket name" in line or "key prefix" in line), line
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == before


def test_corrupt_local_part_is_not_called_another_bundles(capsys, tmp_path, endpoint, s3,
                                                          signing_key):
    bundle = make_fake_bundle(tmp_path / "b", "c", [1000, 2000, 3000], signing_key)
    (tmp_path / "b" / bundle.part_names[1]).write_bytes(os.urandom(2000))
    new_bucket = f"never-made-{os.urandom(4).hex()}"
    code, _, err = run(capsys, "upload-bundle", "-b", new_bucket, "-m", bundle.manifest_path,
                       "--endpoint-url", endpoint)
    line = error_line(err)
    assert code == EXIT_INTEGRITY and "c.part.1" in line and "is corrupt" in line
    assert "another bundle" not in line
    # the local check runs before anything remote: no empty bucket is left behind
    assert new_bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_upload_part_n_to_an_empty_prefix(capsys, tmp_path, endpoint, s3, bucket, signing_key):
    bundle = make_fake_bundle(tmp_path / "b", "p", [1000, 2000, 3000], signing_key)
    code, _, err = run(capsys, "upload-bundle", "-b", f"{bucket}/x", "-m", bundle.manifest_path,
                       "--part", "2", "--endpoint-url", endpoint)
    line = error_line(err)
    assert (code == EXIT_USAGE and "--part 2 skips p.part.0 and 1 more" in line
            and "disappeared" not in line)
    assert keys_in(s3, bucket) == {}
    code, _, err = run(capsys, "upload-bundle", "-b", f"{bucket}/x", "-m", bundle.manifest_path,
                       "--part", "3", "--endpoint-url", endpoint)
    assert code == EXIT_USAGE and "parts 0 to 2" in error_line(err)


def test_download_prefix_with_a_folder_finds_the_parts_beside_the_manifest(capsys, tmp_path,
                                                                           endpoint, bucket,
                                                                           signing_key):
    bundle = make_fake_bundle(tmp_path / "b", "img", [1000, 2000], signing_key)
    code, _, err = run(capsys, "upload-bundle", "-b", f"{bucket}/x", "-m", bundle.manifest_path,
                       "--endpoint-url", endpoint)
    assert code == 0, err
    out_dir = tmp_path / "new" / "dl"  # created when missing
    code, out, err = run(capsys, "download-bundle", "-b", bucket, "-p", "x/img", "-d", out_dir,
                         "--endpoint-url", endpoint)
    assert code == 0, err
    assert sorted(os.listdir(out_dir)) == ["img.manifest.xml", "img.part.0", "img.part.1"]
    # no -c/-k: said out loud, on stderr and in the result
    assert "signature was not checked" in err and "(signature NOT checked)" in out


def test_output_directories_are_created_unbundle_private(capsys, tmp_path, bundle_dir,
                                                         user_key_pair):
    out = tmp_path / "a" / "b"
    code, _, err = run(capsys, "unbundle", "-m", bundle_dir / "img.manifest.xml",
                       "-k", user_key_pair.key_path, "-d", out, "-q")
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "unbundle", "-m", bundle_dir / "img.manifest.xml",
                       "-k", user_key_pair.key_path, "-d", tmp_path / "file")
    assert code == EXIT_INPUT and "exists and is not a directory" in error_line(err)


@pytest.mark.parametrize(("stderr", "expected", "unexpected"), [
    ("mke2fs: No space left on device while writing out and closing file system",
     "no space left in", "-s/--size"),
    ("__populate_fs: Could not allocate block in ext2 filesystem while writing file", "filled up",
     "--image-dir"),
])
def test_bundle_vol_full_disk_is_not_a_size_problem(tmp_path, monkeypatch, stderr, expected,
                                                    unexpected):
    from bundler.errors import VolumeError
    from bundler.tools import ToolError
    from bundler.volume import imagefs

    def failing(cmd, *a, **k):
        raise ToolError("mke2fs failed", cmd=cmd, returncode=1, stderr=stderr)

    monkeypatch.setattr(imagefs, "run", failing)
    params = imagefs.FsParams(size_bytes=512 << 20, label=None,
                              uuid="0" * 8 + "-0000-0000-0000-" + "0" * 12)
    with pytest.raises(VolumeError) as info:
        imagefs.make_filesystem(tmp_path, tmp_path / "img", params, min_mib=401)
    assert expected in str(info.value) and unexpected not in str(info.value)


@pytest.mark.parametrize(("argv", "expected"), [
    (["boot-test", "/etc/hostname", "--timeout", "0"], "argument --timeout: '0'"),
    (["boot-test", "/etc/hostname", "--memory", "0"], "argument --memory: '0'"),
    (["check", "--from-s3", "-m", "My_Bucket/x.manifest.xml", "-k", "KEY"], "'My_Bucket' in -m"),
    (["unbundle", "--from-s3", "-m", "b..b/x.manifest.xml", "-k", "KEY", "-d", "OUT"], "in -m"),
    (["register", "ok-bucket/../x.manifest.xml", "-n", "n"], "in the manifest location"),
])
def test_check_boot_test_and_s3_manifests_are_validated_naming_the_argument(
        capsys, tmp_path, user_key_pair, aws_env, argv, expected):
    """boot-test's --timeout/--memory used to be taken as any number (0: an instant 'did not
    boot'; qemu failing on 0 MiB); a bad bucket in -m was blamed on --bucket."""
    argv = [str(user_key_pair.key_path) if a == "KEY" else str(tmp_path / "o") if a == "OUT" else a
            for a in argv]
    code, _, err = run(capsys, *argv, "--endpoint-url", "http://127.0.0.1:9")
    assert code == EXIT_USAGE, err
    line = error_line(err)
    assert expected in line and "--bucket" not in line, line
