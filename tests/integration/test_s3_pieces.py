"""The tail of a streaming upload in two pieces: install sends its last part (when it is over
5 MiB) as a two-piece multipart upload; its ETag is then not an MD5, and every "does this
object hold these bytes" check (publish's re-check, upload-bundle's resume, copy-bundle) still
holds; a failure aborts the upload, leaving nothing hidden behind."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from bundler.errors import S3Error
from bundler.s3 import multipart
from bundler.s3.etags import is_md5, pieces_etag
from bundler.s3.multipart import Stopped, open_uploads, put_in_pieces
from tests.support.cli import MIB, copy_argv, install_argv, keys_in, run
from tests.support.s3kit import inspect_bundles, list_keys, one_line_error, plain_s3


def _random_image(path, size=16 * MIB):
    path.write_bytes(os.urandom(size))  # incompressible: ~16 MiB bundled, a ~6 MiB last part
    return path


def _uploads(s3, bucket):
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def _install(capsys, proxy, bucket, image, user_keys, ec2_keys, *extra):
    argv = [*install_argv(image, user_keys, proxy.url, bucket=f"{bucket}/pc",
                          ec2cert=ec2_keys[1], name="disk"),
            "-n", f"pc-{uuid.uuid4().hex[:8]}", "--jobs", "3", "--no-check", *extra]
    return run(capsys, *argv)


def test_install_sends_parts_in_two_pieces_on_free_streams(capsys, proxy, s3, ec2, bucket,
                                                            tmp_path, user_keys, ec2_keys):
    image = _random_image(tmp_path / "disk.img")
    code, out, err = _install(capsys, proxy, bucket, image, user_keys, ec2_keys)
    assert code == 0, err
    listing = list_keys(s3, bucket, "pc/")
    parts = sorted(k for k in listing if ".part." in k)
    assert len(parts) == 2
    for key in parts:  # three streams, two parts: each had a second stream free
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert listing[key][1] == pieces_etag(data) and listing[key][1].endswith("-2")
    assert 5 * MIB < listing[parts[-1]][0] < 10 * MIB  # the last part, split 5 MiB + the rest
    assert len(proxy.requests("PUT", r"partNumber=")) == 4
    assert proxy.max_in_flight("PUT") <= 3  # never more requests carrying bytes than --jobs
    assert not _uploads(s3, bucket)  # completed, none left open
    # the bundle is whole (the stand-in's RegisterImage decrypted and inflated every part too)
    seen = inspect_bundles(s3, bucket, "pc/")
    assert seen.complete == ["disk.manifest.xml"] and not seen.wrong and not seen.locks
    grants = s3.get_object_acl(Bucket=bucket, Key=parts[-1])["Grants"]
    assert any(g["Permission"] == "READ" for g in grants)  # aws-exec-read: EC2 may read it
    assert out.strip().splitlines()[-1].startswith("ami-")


def test_one_stream_sends_whole_parts(capsys, proxy, s3, bucket, tmp_path, user_keys, ec2_keys):
    image = _random_image(tmp_path / "disk.img")
    code, _, err = _install(capsys, proxy, bucket, image, user_keys, ec2_keys, "--jobs", "1",
                            "--no-register")
    assert code == 0, err
    assert not proxy.requests("PUT", r"partNumber=")
    listing = list_keys(s3, bucket, "pc/")
    assert all(is_md5(etag) for key, (_, etag) in listing.items() if ".part." in key)


def test_a_failed_piece_aborts_the_upload_and_publishes_nothing(capsys, proxy, s3, bucket,
                                                                tmp_path, user_keys, ec2_keys):
    image = _random_image(tmp_path / "disk.img")
    proxy.add_rule("status", r"partNumber=2", method="PUT", times=None, status=500,
                   code="InternalError")
    # Two attempts per request: the piece fails just the same, without botocore's backoff
    # through eight (what the default costs is not what this test is about).
    code, _, err = _install(capsys, proxy, bucket, image, user_keys, ec2_keys, "--no-register",
                            "--max-attempts", "2")
    assert code != 0
    assert len(proxy.requests("PUT", r"partNumber=2")) >= 2  # the piece was retried, then failed
    assert err.strip().splitlines()[-1].startswith("ami-bundler: error: upload ")
    assert "Traceback" not in err
    assert proxy.requests("DELETE", r"uploadId=")  # AbortMultipartUpload
    assert not _uploads(s3, bucket)
    assert not keys_in(s3, bucket, "pc/")  # no part, no manifest, no lock


def test_a_piece_damaged_on_the_way_is_sent_again_or_fails_clearly(capsys, proxy, s3, bucket,
                                                                   tmp_path, user_keys,
                                                                   ec2_keys):
    """install's S3 sink: a byte flipped in an UploadPart on its way to S3 is refused there
    (BadDigest: the piece is not its Content-MD5), nothing stored; the piece is sent again and
    the bundle is whole. Damaged every time: one clear line, the upload aborted, nothing
    published."""
    image = _random_image(tmp_path / "disk.img")
    proxy.add_rule("flip", r"partNumber=2", method="PUT", times=1)
    code, _, err = _install(capsys, proxy, bucket, image, user_keys, ec2_keys, "--no-register")
    assert code == 0, err
    statuses = [r.status for r in proxy.requests("PUT", r"partNumber=2")]
    assert statuses.count(400) == 1 and statuses.count(200) == len(statuses) - 1, statuses
    seen = inspect_bundles(s3, bucket, "pc/")
    assert seen.complete == ["disk.manifest.xml"] and not seen.wrong and not seen.locks
    assert not _uploads(s3, bucket)

    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys_in(s3, bucket)]})
    proxy.clear()
    proxy.add_rule("flip", r"partNumber=2", method="PUT", times=None)
    code, _, err = _install(capsys, proxy, bucket, image, user_keys, ec2_keys, "--no-register")
    assert code != 0
    line = one_line_error(err)
    assert line and "BadDigest" in line and ".part." in line, err
    assert {r.status for r in proxy.requests("PUT", r"partNumber=2")} == {400}
    assert proxy.requests("DELETE", r"uploadId=")  # AbortMultipartUpload
    assert not _uploads(s3, bucket)
    assert not keys_in(s3, bucket, "pc/")  # no part, no manifest, no lock


def test_copy_bundle_of_a_two_piece_part_gets_an_md5_copy(capsys, proxy, s3, ec2, bucket,
                                                          tmp_path, user_keys, ec2_keys):
    """CopyObject makes a single-operation object: its ETag is the MD5 (as AWS documents); the
    copy's publish re-check expects that, and a re-run over the finished copy changes nothing."""
    image = _random_image(tmp_path / "disk.img")
    code, _, err = _install(capsys, proxy, bucket, image, user_keys, ec2_keys, "--no-register")
    assert code == 0, err
    argv = copy_argv(user_keys, f"{bucket}/pc", f"{bucket}/copy", "us-east-1", ec2_keys[1],
                     proxy.url)
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    copied = list_keys(s3, bucket, "copy/")
    last = sorted(k for k in copied if ".part." in k)[-1]
    data = s3.get_object(Bucket=bucket, Key=last)["Body"].read()
    assert copied[last][1] == hashlib.md5(data).hexdigest()
    assert inspect_bundles(s3, bucket, "copy/").complete == ["disk.manifest.xml"]
    s3.delete_object(Bucket=bucket, Key="copy/disk.manifest.xml")  # as if interrupted
    proxy.clear()
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    # every part proved there by the MD5 its two-piece upload recorded: nothing copied again
    assert json.loads(out)["parts_copied"] == 0
    assert not proxy.requests("PUT", r"/copy/disk\.part\.")
    assert inspect_bundles(s3, bucket, "copy/").complete == ["disk.manifest.xml"]


def test_upload_bundle_resumes_over_a_part_in_two_pieces(capsys, proxy, s3, bucket, tmp_path,
                                                         user_keys, ec2_keys):
    """A part already there as a two-piece upload of the same bytes is proved from the local
    bytes (its ETag recomputed) and not sent again; the publish re-check accepts it."""
    image = _random_image(tmp_path / "disk.img")
    key, cert = user_keys
    out_dir = tmp_path / "bundle"
    code, _, err = run(capsys, "bundle-image", "-i", image, "-c", cert, "-k", key, "-u",
                       "123456789012", "-r", "x86_64", "--ec2cert", ec2_keys[1], "-d", out_dir,
                       "-p", "disk")
    assert code == 0, err
    last = sorted(out_dir.glob("disk.part.*"))[-1]
    with ThreadPoolExecutor(1) as pool:
        put_in_pieces(s3, bucket, f"up/{last.name}", last.read_bytes(), acl="aws-exec-read",
                      attempts=1, submit=lambda fn: pool.submit(fn),
                      streams=threading.BoundedSemaphore(2))
    proxy.clear()
    code, _, err = run(capsys, "upload-bundle", "-b", f"{bucket}/up", "-m",
                       out_dir / "disk.manifest.xml", "--endpoint-url", proxy.url)
    assert code == 0, err
    assert not proxy.requests("PUT", last.name)  # proved there, not sent again
    assert list_keys(s3, bucket, "up/")[f"up/{last.name}"][1].endswith("-2")
    assert inspect_bundles(s3, bucket, "up/").complete == ["disk.manifest.xml"]


def test_the_next_publication_aborts_pieces_a_killed_writer_left(capsys, proxy, s3, bucket,
                                                                  tmp_path, user_keys, ec2_keys):
    """SIGKILL leaves a multipart upload open (hidden, billed): the next install of that name
    aborts it after its manifest, and leaves other names' uploads alone."""
    left = s3.create_multipart_upload(Bucket=bucket, Key="pc/disk.part.1", ACL="aws-exec-read")
    s3.upload_part(Bucket=bucket, Key="pc/disk.part.1", UploadId=left["UploadId"],
                   PartNumber=1, Body=b"x" * 1024)
    s3.create_multipart_upload(Bucket=bucket, Key="pc/other.part.1")
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(MIB))
    code, _, err = _install(capsys, proxy, bucket, image, user_keys, ec2_keys, "--no-register")
    assert code == 0, err
    assert [u["Key"] for u in _uploads(s3, bucket)] == ["pc/other.part.1"]
    assert open_uploads(s3, bucket, "pc/disk.") == []


def test_a_stopped_writer_aborts_its_pieces_instead_of_completing(proxy, bucket):
    """The sink's abort sets ``stopping``: pieces in flight finish, the upload is aborted."""
    s3 = plain_s3(proxy.url)
    stopping = threading.Event()
    stopping.set()
    with ThreadPoolExecutor(1) as pool, pytest.raises(Stopped):
        put_in_pieces(s3, bucket, "st/disk.part.0", os.urandom(6 * MIB), acl="aws-exec-read",
                      attempts=1, submit=lambda fn: pool.submit(fn),
                      streams=threading.BoundedSemaphore(2), stopping=stopping)
    assert len(proxy.requests("PUT", r"partNumber=")) == 2
    assert proxy.requests("DELETE", r"uploadId=")  # AbortMultipartUpload
    assert not proxy.requests("POST", r"uploadId=")  # never completed
    assert not _uploads(s3, bucket) and not keys_in(s3, bucket, "st/")


def test_a_short_object_is_never_split(s3, bucket):
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError):
        put_in_pieces(s3, bucket, "x", b"y" * (5 * MIB), acl=None, attempts=1,
                      submit=lambda fn: pool.submit(fn), streams=threading.BoundedSemaphore(2))
    assert not _uploads(s3, bucket)


def test_a_split_part_records_its_whole_md5_and_a_failed_create_sends_nothing(proxy, bucket):
    """The whole part's MD5 (computed in the first piece's pass) is in the object's metadata
    and returned; when the create fails, no piece is sent and no upload is left open."""
    s3 = plain_s3(proxy.url)
    data = os.urandom(7 * MIB)
    with ThreadPoolExecutor(1) as pool:
        etag, md5 = put_in_pieces(s3, bucket, "md/disk.part.0", data, acl="aws-exec-read",
                                  attempts=1, submit=lambda fn: pool.submit(fn),
                                  streams=threading.BoundedSemaphore(2))
    assert md5 == hashlib.md5(data).digest() and etag == pieces_etag(data)
    head = s3.head_object(Bucket=bucket, Key="md/disk.part.0")
    assert head["Metadata"]["ami-bundler-md5"] == md5.hex()
    proxy.clear()
    proxy.add_rule("status", r"disk\.part\.1\?uploads", method="POST", times=None, status=500,
                   code="InternalError")
    with ThreadPoolExecutor(1) as pool, pytest.raises(S3Error):
        put_in_pieces(s3, bucket, "md/disk.part.1", data, acl="aws-exec-read", attempts=1,
                      submit=lambda fn: pool.submit(fn), streams=threading.BoundedSemaphore(2))
    assert not proxy.requests("PUT", r"partNumber=")
    assert not _uploads(s3, bucket) and "md/disk.part.1" not in keys_in(s3, bucket, "md/")


def test_a_part_never_waits_for_a_worker_busy_completing_another(capsys, proxy, s3, bucket,
                                                                 tmp_path, user_keys, ec2_keys):
    """A split part's worker holds no stream while its CompleteMultipartUpload is answered: the
    parts after it start on the free streams meanwhile (every part in flight has a worker of
    its own), instead of waiting for that answer."""
    image = _random_image(tmp_path / "disk.img", 32 * MIB)  # 4 parts: 3 × 10 MiB + the rest
    proxy.add_rule("delay", r"uploadId=", method="POST", times=None, delay=1.0)  # completes
    code, _, err = _install(capsys, proxy, bucket, image, user_keys, ec2_keys, "--jobs", "2",
                            "--no-register")
    assert code == 0, err
    completes = proxy.requests("POST", r"uploadId=")
    assert completes  # the first parts went in pieces, with two streams free
    later = proxy.requests("PUT", r"\.part\.[23]")
    assert later
    # parts 2 and 3 started while the first complete was still held
    assert min(r.started for r in later) < min(r.ended for r in completes)
    listing = list_keys(s3, bucket, "pc/")
    assert len([k for k in listing if ".part." in k]) == 4 and not _uploads(s3, bucket)


def test_a_piece_is_sent_from_the_part_itself_with_no_copy_of_its_bytes(proxy, bucket):
    """A piece's body reads views of the part (botocore takes no view as a body, but a file
    whose reads are views it sends as they are): nothing of the part is copied, while a piece
    waits for a stream or while it is sent, and each piece still goes with its Content-MD5,
    its length and no ``Expect: 100-continue`` (a round trip more, which botocore adds to a
    file's upload). Both pieces copied before waiting, then one copy per stream (9c3697b), cost
    an install of random-512M.img ~120, then ~50 MiB of its peak RSS."""
    s3 = plain_s3(proxy.url)
    data = os.urandom(12 * MIB)
    waiting = threading.Semaphore(0)
    go = threading.Event()
    bodies: list[object] = []
    upload_part = s3.upload_part

    def spy(**kwargs):
        body = kwargs["Body"]
        bodies.append(body.read(16).obj)  # what the body's reads are views of
        body.seek(0)
        return upload_part(**kwargs)

    s3.upload_part = spy

    class Streams:
        def __enter__(self) -> Streams:
            waiting.release()
            assert go.wait(30)
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    def ours() -> int:  # what multipart.py allocated and still holds (not the stand-in's)
        mine = tracemalloc.Filter(True, multipart.__file__)
        return sum(t.size for t in tracemalloc.take_snapshot().filter_traces([mine]).traces)

    tracemalloc.start()
    try:
        with ThreadPoolExecutor(1) as pool, ThreadPoolExecutor(1) as runner:
            done = runner.submit(put_in_pieces, s3, bucket, "cp/disk.part.0", data,
                                 acl="aws-exec-read", attempts=1,
                                 submit=lambda fn: pool.submit(fn), streams=Streams())
            for _ in range(2):  # both pieces hashed, created, waiting for a stream
                assert waiting.acquire(timeout=30)
            held = ours()
            go.set()
            etag, md5 = done.result(30)
    finally:
        go.set()
        tracemalloc.stop()
    assert held < MIB, f"{held} bytes held while waiting for a stream"
    assert len(bodies) == 2 and all(obj is data for obj in bodies)
    assert etag == pieces_etag(data) and md5 == hashlib.md5(data).digest()
    assert s3.get_object(Bucket=bucket, Key="cp/disk.part.0")["Body"].read() == data
    sent = proxy.requests("PUT", r"partNumber=")
    assert sorted(int(r.headers["content-length"]) for r in sent) == [6 * MIB, 6 * MIB]
    assert all(r.headers.get("content-md5") and "expect" not in r.headers for r in sent)
