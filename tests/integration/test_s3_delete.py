"""delete-bundle against moto over HTTP: by manifest, by prefix (paginated), dry run, prompts."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from tests.support.bundles import make_fake_bundle
from tests.support.cli import KIB, keys_in, run, upload


def delete(capsys, endpoint, target, *extra):
    return run(capsys, "delete-bundle", "-b", target, "--endpoint-url", endpoint, *extra)


def test_delete_by_prefix_paginates_past_1000_keys(capsys, proxy, s3, bucket):
    names = [f"k/big.part.{i:04d}" for i in range(1003)] + ["k/big.manifest.xml", "k/big.manifest"]
    decoys = ["k/big.part.x", "k/bigger.part.1", "k/big.part.1.bak", "k/other.manifest.xml",
              "big.part.1"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"."), names + decoys))

    code, out, err = delete(capsys, proxy.url, f"{bucket}/k/", "-p", "big", "--dry-run", "--json")
    assert code == 0, err
    assert sorted(json.loads(out)["keys"]) == sorted(names)
    assert len(keys_in(s3, bucket)) == len(names) + len(decoys)
    assert len(proxy.requests("GET", r"list-type=2")) >= 2  # more than one page

    code, out, err = delete(capsys, proxy.url, f"{bucket}/k/", "-p", "big", "-y")
    assert code == 0, err
    assert "Deleted 1005 objects" in out
    assert sorted(keys_in(s3, bucket)) == sorted(decoys)
    batches = proxy.requests("POST", r"delete")
    assert len(batches) == 2  # DeleteObjects takes at most 1000 keys


def test_delete_with_local_manifest_removes_exactly_its_objects(capsys, endpoint, s3, bucket,
                                                                tmp_path, signing_key):
    bundle = make_fake_bundle(tmp_path / "b", "lm", [10 * KIB] * 3, signing_key)
    assert upload(capsys, endpoint, f"{bucket}/p", bundle)[0] == 0
    s3.put_object(Bucket=bucket, Key="p/lm.part.9", Body=b"not in the manifest")
    code, out, err = delete(capsys, endpoint, f"{bucket}/p", "-m", str(bundle.manifest_path),
                            "--batch")
    assert code == 2 and "--batch never prompts" in err  # classic: --batch is not "yes"
    assert len(keys_in(s3, bucket)) == 5
    code, out, err = delete(capsys, endpoint, f"{bucket}/p", "-m", str(bundle.manifest_path),
                            "--batch", "-y")
    assert code == 0, err
    assert set(keys_in(s3, bucket)) == {"p/lm.part.9"}
    # the object of the same bundle name that this manifest does not list is kept, out loud
    assert "1 other object of bundle lm" in err and "p/lm.part.9" in err


def test_delete_with_remote_manifest_name(capsys, endpoint, s3, bucket, tmp_path, signing_key):
    bundle = make_fake_bundle(tmp_path / "b", "rm", [10 * KIB] * 2, signing_key)
    assert upload(capsys, endpoint, bucket, bundle)[0] == 0
    code, out, err = delete(capsys, endpoint, bucket, "-m", "rm.manifest.xml", "-y", "--clear")
    assert code == 0, err
    assert "Deleted bucket" in out
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_clear_keeps_non_empty_bucket(capsys, endpoint, s3, bucket, tmp_path, signing_key):
    bundle = make_fake_bundle(tmp_path / "b", "ck", [10 * KIB], signing_key)
    assert upload(capsys, endpoint, bucket, bundle)[0] == 0
    s3.put_object(Bucket=bucket, Key="keep-me", Body=b"x")
    code, out, err = delete(capsys, endpoint, bucket, "-p", "ck", "-y", "--clear")
    assert code == 0, err
    assert "not empty" in out
    assert set(keys_in(s3, bucket)) == {"keep-me"}


def test_non_interactive_without_yes_refuses(capsys, endpoint, s3, bucket, tmp_path, signing_key,
                                             monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    bundle = make_fake_bundle(tmp_path / "b", "ni", [10 * KIB], signing_key)
    assert upload(capsys, endpoint, bucket, bundle)[0] == 0
    code, _, err = delete(capsys, endpoint, bucket, "-p", "ni")
    assert code == 2 and "-y" in err
    assert len(keys_in(s3, bucket)) == 2


def test_delete_needs_m_or_p(capsys, endpoint, bucket):
    code, _, err = delete(capsys, endpoint, bucket)
    assert code == 2 and "-m" in err and "-p" in err


def test_nothing_to_delete(capsys, endpoint, bucket):
    code, out, err = delete(capsys, endpoint, bucket, "-p", "ghost", "-y")
    assert code == 0 and "Nothing to delete" in out
