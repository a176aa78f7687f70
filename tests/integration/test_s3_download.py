"""download-bundle, S3PartSource, fetch_manifest and S3Sink against moto over HTTP."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bundler.aws import AwsOptions, s3_client
from bundler.errors import IntegrityError, ManifestError, PartMissingError, S3Error
from bundler.manifest import parse_manifest, part_names
from bundler.parts import Part, provisional_name
from bundler.s3 import S3Location, S3PartSource, S3Sink, fetch_manifest
from bundler.transfer import TransferConfig
from tests.support.bundles import make_fake_bundle
from tests.support.cli import KIB, MIB, keys_in, run, upload


@pytest.fixture
def uploaded(capsys, endpoint, bucket, tmp_path, signing_key):
    bundle = make_fake_bundle(tmp_path / "src", "dl", [512 * KIB, 512 * KIB, 100 * KIB],
                              signing_key)
    code, _, err = upload(capsys, endpoint, f"{bucket}/pre", bundle)
    assert code == 0, err
    return bundle


def client_for(url: str, bucket: str):
    return s3_client(AwsOptions(endpoint_url=url, max_attempts=3), bucket=bucket)


def download(capsys, url, bucket, dest: Path, *extra):
    dest.mkdir(exist_ok=True)
    return run(capsys, "download-bundle", "-b", f"{bucket}/pre", "-p", "dl", "-d", str(dest),
               "--endpoint-url", url, *extra)


def test_corrupted_part_in_transit_is_retried(capsys, proxy, bucket, uploaded, tmp_path):
    proxy.add_rule("corrupt", r"dl\.part\.1$", method="GET", times=1)
    code, _, err = download(capsys, proxy.url, bucket, tmp_path / "d")
    assert code == 0, err
    assert (tmp_path / "d" / "dl.part.1").read_bytes() == uploaded.parts[1].data
    assert len(proxy.requests("GET", r"dl\.part\.1$")) == 2


def test_persistently_corrupt_part_fails_naming_it_and_leaves_no_file(capsys, proxy, bucket,
                                                                      uploaded, tmp_path):
    proxy.add_rule("corrupt", r"dl\.part\.2$", method="GET", times=None)
    dest = tmp_path / "d"
    code, _, err = download(capsys, proxy.url, bucket, dest)
    assert code == IntegrityError.exit_code
    assert "dl.part.2" in err and "does not match the manifest" in err
    assert not (dest / "dl.part.2").exists()
    # The manifest comes last, only when all parts are good.
    assert not (dest / "dl.manifest.xml").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


def test_truncated_response_is_retried(capsys, proxy, bucket, uploaded, tmp_path):
    proxy.add_rule("truncate", r"dl\.part\.0$", method="GET", times=1)
    code, _, err = download(capsys, proxy.url, bucket, tmp_path / "d")
    assert code == 0, err
    assert (tmp_path / "d" / "dl.part.0").read_bytes() == uploaded.parts[0].data


def test_manifest_from_another_bundle(capsys, endpoint, s3, bucket, uploaded, tmp_path,
                                      signing_key):
    other = make_fake_bundle(tmp_path / "other", "dl", [512 * KIB, 512 * KIB, 100 * KIB],
                             signing_key)
    s3.put_object(Bucket=bucket, Key="pre/dl.manifest.xml", Body=other.manifest_bytes)
    code, _, err = download(capsys, endpoint, bucket, tmp_path / "d")
    assert code == 5 and "does not match the manifest" in err


def test_signature_checked_with_cert(capsys, endpoint, bucket, uploaded, tmp_path, ec2_keys):
    code, _, err = download(capsys, endpoint, bucket, tmp_path / "d", "-c", str(ec2_keys[1]))
    assert code == 5 and "signature" in err
    assert not (tmp_path / "d" / "dl.part.0").exists()


def test_unknown_bucket(capsys, endpoint, tmp_path):
    code, _, err = run(capsys, "download-bundle", "-b", "no-such-bucket-xyz", "-p", "x",
                       "-d", str(tmp_path), "--endpoint-url", endpoint)
    assert code == 3 and "no-such-bucket-xyz does not exist" in err


def test_missing_manifest(capsys, endpoint, bucket, tmp_path):
    code, _, err = run(capsys, "download-bundle", "-b", bucket, "-p", "nothing",
                       "-d", str(tmp_path), "--endpoint-url", endpoint)
    assert code == 1 and "nothing.manifest.xml does not exist" in err


def test_manifest_name_with_slash_is_refused(capsys, endpoint, bucket, tmp_path):
    code, _, err = run(capsys, "download-bundle", "-b", bucket, "-m", "a/b.manifest.xml",
                       "-d", str(tmp_path), "--endpoint-url", endpoint)
    assert code == 2


def test_fetch_manifest_size_cap(endpoint, s3, bucket):
    s3.put_object(Bucket=bucket, Key="huge.manifest.xml", Body=b"<" + b"x" * 2048)
    client = client_for(endpoint, bucket)
    with pytest.raises(ManifestError, match="limit"):
        fetch_manifest(client, bucket, "huge.manifest.xml", cap=1024)
    assert fetch_manifest(client, bucket, "huge.manifest.xml", cap=4096).startswith(b"<x")


def test_s3_part_source_streams_in_order_with_a_bounded_window(proxy, bucket, uploaded):
    client = client_for(proxy.url, bucket)
    parsed = parse_manifest(uploaded.manifest_bytes)
    source = S3PartSource(client, S3Location(bucket, "pre/"), transfer=TransferConfig(jobs=2),
                          window=2)
    source.check_present(parsed.manifest.parts)
    got = [(e.index, b"".join(chunks)) for e, chunks in source.iter_parts(parsed.manifest.parts)]
    assert got == [(i, p.data) for i, p in enumerate(uploaded.parts)]
    assert proxy.max_in_flight("GET") <= 2


def test_s3_part_source_missing_and_corrupt(proxy, s3, bucket, uploaded):
    client = client_for(proxy.url, bucket)
    entries = parse_manifest(uploaded.manifest_bytes).manifest.parts
    s3.put_object(Bucket=bucket, Key="pre/dl.part.1", Body=b"junk")
    source = S3PartSource(client, S3Location(bucket, "pre/"), transfer=TransferConfig(jobs=2))
    with pytest.raises(IntegrityError, match="dl.part.1"):
        list(source.iter_parts(entries))
    s3.delete_object(Bucket=bucket, Key="pre/dl.part.2")
    with pytest.raises(PartMissingError, match="dl.part.2"):
        source.check_present(entries)


# --------------------------------------------------------------------------- S3Sink


def sink_parts(count: int, size: int = 64 * KIB) -> list[Part]:
    return [Part.of(i, bytes([i % 256]) * size) for i in range(count)]


def test_s3_sink_renames_to_final_names_and_puts_manifest_last(proxy, s3, bucket):
    client = client_for(proxy.url, bucket)
    sink = S3Sink(client, S3Location(bucket, "inst/"), transfer=TransferConfig(jobs=3))
    parts = sink_parts(5)
    sink.begin("sk", 120)  # provisional names have 3 digits, final ones 1
    for part in parts:
        sink.put_part(part)
    sink.commit(part_names("sk", 5), "sk.manifest.xml", b"<manifest/>")
    stored = keys_in(s3, bucket, "inst/")
    assert set(stored) == {f"inst/sk.part.{i}" for i in range(5)} | {"inst/sk.manifest.xml"}
    for i, part in enumerate(parts):
        assert stored[f"inst/sk.part.{i}"] == (len(part.data), hashlib.md5(part.data).hexdigest())
    log = proxy.requests("PUT")
    provisional = {provisional_name("sk", i, 120) for i in range(5)}
    assert {r.key.split("/", 1)[1] for r in log
            if ".part." in r.key and not r.headers.get("x-amz-copy-source")} == provisional
    assert log[-1].key == "inst/sk.manifest.xml"
    assert {r.headers.get("x-amz-acl") for r in log} == {"aws-exec-read"}


def test_s3_sink_same_width_needs_no_copy(proxy, s3, bucket):
    client = client_for(proxy.url, bucket)
    sink = S3Sink(client, S3Location(bucket, ""), transfer=TransferConfig(jobs=2))
    sink.begin("w", 9)
    for part in sink_parts(3):
        sink.put_part(part)
    sink.commit(part_names("w", 3), "w.manifest.xml", b"<manifest/>")
    assert not [r for r in proxy.requests("PUT") if r.headers.get("x-amz-copy-source")]
    assert proxy.requests("POST") == []  # no DeleteObjects either
    assert len(keys_in(s3, bucket)) == 4


def test_s3_sink_error_surfaces_and_abort_cleans_up(proxy, s3, bucket):
    client = client_for(proxy.url, bucket)
    proxy.add_rule("status", r"\.part\.02$", method="PUT", times=None, status=403,
                   code="AccessDenied")
    sink = S3Sink(client, S3Location(bucket, ""), transfer=TransferConfig(jobs=2))
    sink.begin("ab", 20)
    with pytest.raises(S3Error, match="s3:PutObjectAcl"):
        for part in sink_parts(12):
            sink.put_part(part)
        sink.commit(part_names("ab", 12), "ab.manifest.xml", b"<m/>")
    sink.abort()
    assert keys_in(s3, bucket) == {}


def test_s3_sink_back_pressure_bounds_pending_parts(proxy, bucket):
    client = client_for(proxy.url, bucket)
    proxy.add_rule("delay", r"\.part\.", method="PUT", times=None, delay=0.1)
    sink = S3Sink(client, S3Location(bucket, ""), transfer=TransferConfig(jobs=2))
    sink.begin("bp", 9)
    pending_seen = []
    for part in sink_parts(8, 16 * KIB):
        sink.put_part(part)
        pending_seen.append(sum(1 for f in sink._pool._futures if not f.done()))  # noqa: SLF001
    sink.commit(part_names("bp", 8), "bp.manifest.xml", b"<m/>")
    assert max(pending_seen) <= 4
    assert proxy.max_in_flight("PUT") <= 2


def test_large_part_round_trip(capsys, endpoint, s3, bucket, tmp_path, signing_key):
    bundle = make_fake_bundle(tmp_path / "big", "big", [10 * MIB, 5 * MIB], signing_key)
    code, _, err = upload(capsys, endpoint, bucket, bundle)
    assert code == 0, err
    dest = tmp_path / "d"
    dest.mkdir()
    code, _, err = run(capsys, "download-bundle", "-b", bucket, "-p", "big", "-d", str(dest),
                       "--endpoint-url", endpoint)
    assert code == 0, err
    assert (dest / "big.part.0").read_bytes() == bundle.parts[0].data
