"""The stand-in's CompleteMultipartUpload (strictaws.s3complete) answers as moto's own does:
the same object, ETag and checksum, or the same refusal, over many uploads — compared with
moto's ``FakeMultipart.complete`` itself, so any drift of the lean one fails here."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from typing import Any

import pytest
from moto.s3 import models
from moto.s3.models import FakeMultipart
from requests.structures import CaseInsensitiveDict

from tests.support.strictaws import s3complete

MIN = 256  # moto's S3_UPLOAD_PART_MIN_SIZE, made small so hundreds of uploads stay quick
ALGORITHMS = (None, "CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME")
TYPES = (None, "COMPOSITE", "FULL_OBJECT")


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "S3_UPLOAD_PART_MIN_SIZE", MIN)


def _upload(sizes: list[int], algorithm: str | None, kind: str | None,
            rng: random.Random) -> FakeMultipart:
    metadata: Any = CaseInsensitiveDict()
    if algorithm:
        metadata["x-amz-checksum-algorithm"] = algorithm
    if kind:
        metadata["x-amz-checksum-type"] = kind
    upload = FakeMultipart("key", metadata, account_id="123456789012", region_name="us-east-1")
    for number, size in enumerate(sizes, 1):
        upload.set_part(number, rng.randbytes(size))
    return upload


def _answer(complete: Any, upload: FakeMultipart, listed: list[tuple[int, str]]) -> Any:
    try:
        return ("ok", complete(upload, iter(listed)))
    except Exception as exc:  # noqa: BLE001 - the refusal is the answer compared
        return ("refused", type(exc).__name__, str(exc))


def _lists(upload: FakeMultipart) -> list[list[tuple[int, str]]]:
    """Every way the tests list an upload's parts: as uploaded (quoted ETags, as clients send
    them, and bare), one ETag wrong, one part never uploaded, one left out, none at all."""
    parts = [(n, '"' + upload.parts[n].etag.strip('"') + '"') for n in sorted(upload.parts)]
    lists = [parts, [(n, etag.strip('"')) for n, etag in parts], []]
    for i in range(len(parts)):
        lists.append([*parts[:i], (parts[i][0], '"' + "0" * 32 + '"'), *parts[i + 1:]])
        lists.append([p for j, p in enumerate(parts) if j != i])
    lists.append([*parts, (len(parts) + 5, '"' + "1" * 32 + '"')])
    return lists


def _compare(upload: FakeMultipart) -> int:
    s3complete.install()
    compared = 0
    for listed in _lists(upload):
        ours = _answer(s3complete.complete, upload, listed)
        assert ours == _answer(s3complete.moto_complete, upload, listed), listed
        compared += 1
    return compared


SIZES = [[MIN], [1], [MIN, MIN], [MIN, 1], [MIN - 1, MIN], [1, 1], [MIN + 7, MIN, 3],
         [MIN, MIN - 1, MIN], [MIN, MIN, MIN, 0], [2 * MIN, MIN + 1, MIN + 2, MIN + 3]]


@pytest.mark.parametrize("algorithm,kind", list(itertools.product(ALGORITHMS, TYPES)))
def test_complete_answers_as_moto_over_sizes_lists_and_checksums(small_parts, algorithm, kind):
    """Pieces of every size around the minimum (a non-last one below it: EntityTooSmall), wrong
    and missing ETags (InvalidPart), no parts (MalformedXML), under every checksum algorithm
    and type moto answers: the same answer as moto's for each."""
    rng = random.Random(f"{algorithm}-{kind}")
    compared = sum(_compare(_upload(sizes, algorithm, kind, rng)) for sizes in SIZES)
    assert compared >= 60


def test_complete_answers_as_moto_at_the_real_minimum():
    """At moto's own 5 MiB minimum: 10 MiB in two pieces (as the tool sends its parts), a
    first piece one byte short of the minimum (EntityTooSmall)."""
    rng = random.Random(5)
    five = models.S3_UPLOAD_PART_MIN_SIZE
    for sizes in ([five, five], [five - 1, five], [five, 1]):
        _compare(_upload(sizes, None, None, rng))


def test_complete_object_etag_and_checksum(small_parts):
    """Independently of moto: the object is its pieces in order, the ETag the MD5 of their
    MD5s with the count, the default checksum the full object's (CRC64NVME, or CRC32 in its
    stead without awscrt, as moto computes it)."""
    from moto.s3.utils import compute_checksum

    rng = random.Random(1)
    upload = _upload([MIN, MIN + 1, 9], None, None, rng)
    pieces = [upload.parts[n].value for n in (1, 2, 3)]
    listed = [(n, upload.parts[n].etag) for n in (1, 2, 3)]
    whole, etag, checksum = s3complete.complete(upload, iter(listed))
    assert whole == b"".join(pieces)
    md5s = b"".join(hashlib.md5(p).digest() for p in pieces)
    assert etag == f"{hashlib.md5(md5s).hexdigest()}-3"
    assert checksum == ("FULL_OBJECT", compute_checksum(whole, "CRC64NVME").decode(), 1)


def test_the_stand_in_completes_with_the_lean_assembly(s3, bucket):
    """Over HTTP the stand-in's Complete is the lean one, and the object reads back whole."""
    assert FakeMultipart.complete is s3complete.complete
    data = os.urandom(5 * 1024 * 1024 + 3)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="whole")["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="whole", UploadId=upload, PartNumber=n,
                            Body=piece)["ETag"]
             for n, piece in ((1, data[:5 * 1024 * 1024]), (2, data[5 * 1024 * 1024:]))]
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="whole", UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    assert done["ETag"].strip('"').endswith("-2")
    assert s3.get_object(Bucket=bucket, Key="whole")["Body"].read() == data
