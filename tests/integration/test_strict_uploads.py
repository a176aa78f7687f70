"""Multipart uploads on the stand-in as on S3 (strictaws.s3uploads), over HTTP on 127.0.0.1:
parts listed out of order are InvalidPartOrder and nothing is made; an upload id the bucket does
not have is 404 NoSuchUpload for every call that names one."""

from __future__ import annotations

import os

import botocore.exceptions as bexc
import pytest

FIVE = 5 * 1024 * 1024
NO_SUCH_UPLOAD = ("NoSuchUpload", 404)


def _refusal(exc: pytest.ExceptionInfo) -> tuple[str, int]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def _pieces(s3, bucket: str, key: str, sizes: list[int]) -> tuple[str, list[dict[str, object]]]:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                                      PartNumber=n, Body=os.urandom(size))["ETag"]}
             for n, size in enumerate(sizes, 1)]
    return upload, parts


@pytest.mark.parametrize("order", [[2, 1], [1, 3, 2], [1, 1, 2], [3, 2, 1], [1, 2, 2]])
def test_parts_out_of_ascending_order_are_invalid_part_order(s3, bucket, order):
    """S3: 400 InvalidPartOrder for a list not in ascending order of part number (a number
    listed twice too), before any piece is looked at (a small piece listed before the last
    is not EntityTooSmall here); the upload stays and completes when listed in order."""
    upload, parts = _pieces(s3, bucket, "k", [FIVE, FIVE, 1])
    with pytest.raises(bexc.ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload,
                                     MultipartUpload={"Parts": [parts[n - 1] for n in order]})
    assert _refusal(exc) == ("InvalidPartOrder", 400)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload,
                                 MultipartUpload={"Parts": parts})
    assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == 2 * FIVE + 1


def test_parts_in_ascending_order_with_gaps_complete(s3, bucket):
    """Ascending is enough: numbers need not be consecutive, nor every piece listed."""
    upload, parts = _pieces(s3, bucket, "k", [FIVE, FIVE, 7])
    s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload,
                                 MultipartUpload={"Parts": [parts[0], parts[2]]})
    assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == FIVE + 7


def _calls(s3, bucket: str, upload: str) -> dict[str, object]:
    s3.put_object(Bucket=bucket, Key="src", Body=b"source")
    return {
        "UploadPart": lambda: s3.upload_part(Bucket=bucket, Key="k", UploadId=upload,
                                             PartNumber=1, Body=b"piece"),
        "UploadPartCopy": lambda: s3.upload_part_copy(Bucket=bucket, Key="k", UploadId=upload,
                                                      PartNumber=1,
                                                      CopySource=f"{bucket}/src"),
        "ListParts": lambda: s3.list_parts(Bucket=bucket, Key="k", UploadId=upload),
        "CompleteMultipartUpload": lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key="k", UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}]}),
        "AbortMultipartUpload": lambda: s3.abort_multipart_upload(Bucket=bucket, Key="k",
                                                                  UploadId=upload),
    }


@pytest.mark.parametrize("operation", ["UploadPart", "UploadPartCopy", "ListParts",
                                       "CompleteMultipartUpload", "AbortMultipartUpload"])
@pytest.mark.parametrize("how", ["never made", "aborted"])
def test_an_unknown_upload_id_is_no_such_upload(s3, bucket, operation, how):
    """S3: 404 NoSuchUpload (with the UploadId) for an id never made or already aborted."""
    if how == "never made":
        upload = "VXBsb2FkIElEIG5ldmVyIG1hZGU"
    else:
        upload = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
        s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload)
    call = _calls(s3, bucket, upload)[operation]
    with pytest.raises(bexc.ClientError) as exc:
        call()  # type: ignore[operator]
    assert _refusal(exc) == NO_SUCH_UPLOAD
    assert exc.value.response["Error"]["UploadId"] == upload
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["src"]


def test_a_completed_upload_is_no_such_upload_for_its_pieces(s3, bucket):
    """Once completed, the id is gone for UploadPart and AbortMultipartUpload; a repeated
    Complete answers with the object it made (as S3 answers a retried Complete)."""
    upload, parts = _pieces(s3, bucket, "k", [FIVE, 3])
    done = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload,
                                        MultipartUpload={"Parts": parts})
    again = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload,
                                         MultipartUpload={"Parts": parts})
    assert again["ETag"] == done["ETag"]
    for call in (lambda: s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=3,
                                        Body=b"late"),
                 lambda: s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload)):
        with pytest.raises(bexc.ClientError) as exc:
            call()
        assert _refusal(exc) == NO_SUCH_UPLOAD
    assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == FIVE + 3
