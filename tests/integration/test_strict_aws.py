"""The strict local AWS itself: S3 and EC2 refuse what the real services refuse (checked with a
plain boto3 client, independent of bundler.aws)."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid

import botocore.exceptions as bexc
import pytest

from tests.support.bundles import make_fake_bundle
from tests.support.s3kit import put_bundle
from tests.support.strictaws.keyring import keyring
from tests.support.strictaws.s3rules import EC2_CANONICAL_ID


def _code(exc: pytest.ExceptionInfo) -> tuple[str, int]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def _name() -> str:
    return f"strict-{uuid.uuid4().hex[:12]}"


def test_new_bucket_has_acls_disabled_and_public_access_blocked(s3):
    name = _name()
    s3.create_bucket(Bucket=name)
    rules = s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"]
    assert rules == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    pab = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    assert all(pab[k] for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                                "RestrictPublicBuckets"))
    for call in (lambda: s3.put_object(Bucket=name, Key="a", Body=b"x", ACL="aws-exec-read"),
                 lambda: s3.create_multipart_upload(Bucket=name, Key="b", ACL="aws-exec-read"),
                 lambda: s3.put_bucket_acl(Bucket=name, ACL="private")):
        with pytest.raises(bexc.ClientError) as exc:
            call()
        assert _code(exc) == ("AccessControlListNotSupported", 400)
    assert "Contents" not in s3.list_objects_v2(Bucket=name)  # refused before anything was stored
    s3.put_object(Bucket=name, Key="plain", Body=b"x")  # no ACL: fine
    s3.put_object(Bucket=name, Key="full", Body=b"x", ACL="bucket-owner-full-control")
    with pytest.raises(bexc.ClientError) as exc:
        s3.put_object_acl(Bucket=name, Key="plain", ACL="aws-exec-read")
    assert _code(exc) == ("AccessControlListNotSupported", 400)
    assert s3.get_object_acl(Bucket=name, Key="plain")["Grants"]  # reading ACLs still works


def test_ownership_can_be_changed_and_grants_are_recorded(s3):
    name = _name()
    s3.create_bucket(Bucket=name)
    s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls={
        "Rules": [{"ObjectOwnership": "BucketOwnerPreferred"}]})
    s3.put_object(Bucket=name, Key="m.manifest.xml", Body=b"x", ACL="aws-exec-read")
    grants = s3.get_object_acl(Bucket=name, Key="m.manifest.xml")["Grants"]
    assert {"Grantee": {"ID": EC2_CANONICAL_ID, "DisplayName": "za-team", "Type": "CanonicalUser"},
            "Permission": "READ"} in grants
    with pytest.raises(bexc.ClientError) as exc:  # Block Public Access is still on
        s3.put_object(Bucket=name, Key="p", Body=b"x", ACL="public-read")
    assert _code(exc) == ("AccessDenied", 403)
    s3.delete_public_access_block(Bucket=name)
    s3.put_object(Bucket=name, Key="p", Body=b"x", ACL="public-read")


def test_create_bucket_with_acl_enabling_ownership(s3):
    name = _name()
    s3.create_bucket(Bucket=name, ObjectOwnership="ObjectWriter")
    rules = s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"]
    assert rules == [{"ObjectOwnership": "ObjectWriter"}]
    s3.put_object(Bucket=name, Key="a", Body=b"x", ACL="aws-exec-read")
    with pytest.raises(bexc.ClientError) as exc:
        s3.create_bucket(Bucket=_name(), ACL="public-read")
    assert _code(exc)[0] == "InvalidBucketAclWithObjectOwnership"


@pytest.fixture
def bundle(tmp_path, signing_key):
    return make_fake_bundle(tmp_path / "b", "a", [64 * 1024, 20 * 1024], signing_key)


def _manifest(s3, bucket: str, bundle) -> str:
    return put_bundle(s3, bucket, bundle)


def test_register_image_keeps_what_ec2_reports(s3, ec2, bucket, bundle):
    location = _manifest(s3, bucket, bundle)
    image_id = ec2.register_image(
        ImageLocation=location, Name=_name(), VirtualizationType="hvm", ImdsSupport="v2.0",
        KernelId="aki-12345678", BootMode="uefi",
        BlockDeviceMappings=[{"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}],
        TagSpecifications=[{"ResourceType": "image",
                            "Tags": [{"Key": "team", "Value": "os"}]}])["ImageId"]
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["ImageLocation"] == location
    assert image["Architecture"] == "x86_64"  # from the manifest
    assert image["VirtualizationType"] == "hvm"
    assert image["RootDeviceType"] == "instance-store"
    assert image["KernelId"] == "aki-12345678"
    assert image["ImdsSupport"] == "v2.0"
    assert image["BlockDeviceMappings"] == [{"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}]
    assert image["Tags"] == [{"Key": "team", "Value": "os"}]
    for filters in ([{"Name": "manifest-location", "Values": [location]}],
                    [{"Name": "name", "Values": [image["Name"]]}],
                    [{"Name": "owner-id", "Values": [image["OwnerId"]]},
                     {"Name": "tag:team", "Values": ["os"]}]):
        assert [i["ImageId"] for i in ec2.describe_images(Filters=filters)["Images"]] == [image_id]
    assert ec2.describe_images(Filters=[{"Name": "manifest-location",
                                         "Values": ["x/y.manifest.xml"]}])["Images"] == []

    ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt="2030-01-02T03:04:00Z")
    ec2.enable_image_deregistration_protection(ImageId=image_id)
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["DeprecationTime"].startswith("2030-01-02T03:04")
    assert image["DeregistrationProtection"] == "enabled-without-cooldown"
    with pytest.raises(bexc.ClientError):
        ec2.deregister_image(ImageId=image_id)
    ec2.disable_image_deregistration_protection(ImageId=image_id)
    ec2.deregister_image(ImageId=image_id)


def test_register_image_refuses_what_ec2_refuses(s3, ec2, bucket, bundle):
    with pytest.raises(bexc.ClientError) as exc:
        ec2.register_image(ImageLocation=f"{bucket}/missing.manifest.xml", Name=_name())
    assert _code(exc)[0] == "InvalidManifest"
    location = _manifest(s3, bucket, bundle)
    name = _name()
    ec2.register_image(ImageLocation=location, Name=name)
    with pytest.raises(bexc.ClientError) as exc:
        ec2.register_image(ImageLocation=location, Name=name)
    assert _code(exc)[0] == "InvalidAMIName.Duplicate"


def test_block_public_access_for_amis_refuses_sharing_with_all(s3, ec2, bucket, bundle):
    image_id = ec2.register_image(ImageLocation=_manifest(s3, bucket, bundle),
                                  Name=_name())["ImageId"]
    assert (ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"]
            == "block-new-sharing")
    with pytest.raises(bexc.ClientError) as exc:
        ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"Group": "all"}]})
    assert _code(exc)[0] == "OperationNotPermitted"
    ec2.modify_image_attribute(ImageId=image_id,
                               LaunchPermission={"Add": [{"UserId": "210987654321"}]})


@pytest.mark.parametrize(("damage", "message"), [
    ("other-region", "another region's EC2 certificate"),
    ("grant", "lacks the aws-exec-read grant"),
    ("tampered", "does not match its digest"),
    ("garbage", "gzip"),
])
def test_register_checks_the_bundle_as_ec2_does(s3, ec2, bucket, tmp_path, signing_key, damage,
                                                message):
    sizes = [64 * 1024, 20 * 1024]
    if damage == "other-region":  # wrapped to Cape Town's certificate, registered in us-east-1
        bundle = make_fake_bundle(tmp_path / "b", "a", sizes, signing_key,
                                  ec2_public_key=keyring().private_key("af-south-1").public_key())
    else:
        bundle = make_fake_bundle(tmp_path / "b", "a", sizes, signing_key)
    location = put_bundle(s3, bucket, bundle, skip_grant="a.part.1" if damage == "grant" else "")
    if damage == "tampered":
        data = bytearray(bundle.parts[1].data)
        data[100] ^= 1
        s3.put_object(Bucket=bucket, Key="img/a.part.1", Body=bytes(data), ACL="aws-exec-read")
    if damage == "garbage":  # digests match, but the bytes are not an encrypted gzip stream
        junk = os.urandom(len(bundle.parts[0].data))
        s3.put_object(Bucket=bucket, Key="img/a.part.0", Body=junk, ACL="aws-exec-read")
        manifest = bundle.manifest_bytes.replace(bundle.parts[0].sha1.encode(),
                                                 hashlib.sha1(junk).hexdigest().encode())
        s3.put_object(Bucket=bucket, Key="img/a.manifest.xml", Body=manifest, ACL="aws-exec-read")
    with pytest.raises(bexc.ClientError) as exc:
        ec2.register_image(ImageLocation=location, Name=_name())
    assert _code(exc)[0] == "InvalidManifest"
    assert message in exc.value.response["Error"]["Message"]


@pytest.fixture(params=["full", "manifest"])
def register_check(request, monkeypatch):
    """The stand-in's RegisterImage depth (the server runs in this process)."""
    from tests.support.strictaws import bundlecheck

    monkeypatch.setattr(bundlecheck, "REGISTER_CHECK", request.param)
    return request.param


@pytest.mark.parametrize(("damage", "message"), [
    ("unsigned", "not signed"),
    ("missing", "part not found"),
    ("short", "bundled_size"),
    ("other-region", "another region's EC2 certificate"),
    ("grant", "lacks the aws-exec-read grant"),
])
def test_register_refuses_a_bad_manifest_at_either_depth(s3, ec2, bucket, tmp_path, signing_key,
                                                         register_check, damage, message):
    """What EC2 learns from the manifest and the bucket's listing is checked at both depths
    (`manifest` is what benchmarks use: it must not let these through)."""
    sizes = [64 * 1024, 20 * 1024]
    ec2_key = (keyring().private_key("af-south-1").public_key() if damage == "other-region"
               else None)
    bundle = make_fake_bundle(tmp_path / "b", "a", sizes, signing_key, ec2_public_key=ec2_key)
    location = put_bundle(s3, bucket, bundle, skip_grant="a.part.1" if damage == "grant" else "")
    if damage == "unsigned":
        start = bundle.manifest_bytes.index(b"<signature>") + len(b"<signature>")
        end = bundle.manifest_bytes.index(b"</signature>")
        s3.put_object(Bucket=bucket, Key="img/a.manifest.xml", ACL="aws-exec-read",
                      Body=bundle.manifest_bytes[:start] + bundle.manifest_bytes[end:])
    if damage == "missing":
        s3.delete_object(Bucket=bucket, Key="img/a.part.1")
    if damage == "short":  # 16 bytes gone: whole AES blocks still, but not the bundle described
        s3.put_object(Bucket=bucket, Key="img/a.part.1", Body=bundle.parts[1].data[:-16],
                      ACL="aws-exec-read")
    with pytest.raises(bexc.ClientError) as exc:
        ec2.register_image(ImageLocation=location, Name=_name())
    assert _code(exc)[0] == "InvalidManifest"
    assert message in exc.value.response["Error"]["Message"]


def test_only_the_full_check_reads_the_parts(s3, ec2, bucket, tmp_path, signing_key,
                                             register_check):
    """A part corrupted in place (same size, its digest no longer matching) is what only reading
    it finds: `full` refuses it, `manifest` registers it as EC2 would (the launch would fail)."""
    bundle = make_fake_bundle(tmp_path / "b", "a", [64 * 1024, 20 * 1024], signing_key)
    location = put_bundle(s3, bucket, bundle)
    data = bytearray(bundle.parts[1].data)
    data[100] ^= 1
    s3.put_object(Bucket=bucket, Key="img/a.part.1", Body=bytes(data), ACL="aws-exec-read")
    if register_check == "manifest":
        assert ec2.register_image(ImageLocation=location, Name=_name())["ImageId"]
        return
    with pytest.raises(bexc.ClientError) as exc:
        ec2.register_image(ImageLocation=location, Name=_name())
    assert "does not match its digest" in exc.value.response["Error"]["Message"]


def test_local_endpoint_takes_the_register_check():
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[2] / "scripts"))
    import local_endpoint

    assert local_endpoint.parser().parse_args([]).register_check == "full"
    assert local_endpoint.parser().parse_args(
        ["--register-check", "manifest"]).register_check == "manifest"
    with pytest.raises(SystemExit):
        local_endpoint.parser().parse_args(["--register-check", "lenient"])
    from tests.support.strictaws import StrictEndpoint

    assert StrictEndpoint(register_check="manifest").register_check == "manifest"
    with pytest.raises(ValueError, match="register_check"):
        StrictEndpoint(register_check="none")


def test_copy_etag_is_the_md5_of_the_data_without_hashing_it_again(s3, bucket, monkeypatch):
    """AWS: a plaintext copy's ETag is the MD5 of its data, so a single-PUT source's ETag; a
    multipart source's copy gets the MD5 of the whole data, not the source's "-N" ETag. The
    stand-in takes the known MD5 instead of hashing the copied bytes (its CPU per copy)."""
    import moto.s3.models as models

    data = os.urandom(3 << 20)
    md5 = hashlib.md5(data).hexdigest()
    s3.put_object(Bucket=bucket, Key="src", Body=data)
    hashed = []
    original = models.md5_hash
    monkeypatch.setattr(models, "md5_hash", lambda *a, **k: hashed.append(1) or original(*a, **k))
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"},
                            ACL="aws-exec-read")
    assert copied["CopyObjectResult"]["ETag"].strip('"') == md5
    assert hashed == []  # the copy's ETag came from the source, not from hashing 3 MiB again
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == data
    assert s3.head_object(Bucket=bucket, Key="dst")["ETag"].strip('"') == md5
    monkeypatch.setattr(models, "md5_hash", original)
    # The copy is its own object: replacing, then deleting its source leaves it as it was.
    s3.put_object(Bucket=bucket, Key="src", Body=b"another object")
    s3.delete_object(Bucket=bucket, Key="src")
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == data

    upload = s3.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    pieces = [os.urandom(5 << 20), os.urandom(1 << 20)]
    etags = [s3.upload_part(Bucket=bucket, Key="multi", UploadId=upload, PartNumber=n + 1,
                            Body=piece)["ETag"] for n, piece in enumerate(pieces)]
    s3.complete_multipart_upload(Bucket=bucket, Key="multi", UploadId=upload, MultipartUpload={
        "Parts": [{"ETag": e, "PartNumber": n + 1} for n, e in enumerate(etags)]})
    assert s3.head_object(Bucket=bucket, Key="multi")["ETag"].strip('"').endswith("-2")
    copied = s3.copy_object(Bucket=bucket, Key="multi-copy",
                            CopySource={"Bucket": bucket, "Key": "multi"})
    whole = hashlib.md5(b"".join(pieces)).hexdigest()
    assert copied["CopyObjectResult"]["ETag"].strip('"') == whole


# --------------------------------------------------------------------------- Content-MD5


def _b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def _digest_refusal(exc: pytest.ExceptionInfo) -> tuple[str, int, str]:
    err = exc.value.response
    return (err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"],
            err["Error"]["Message"])


BAD_DIGEST = ("BadDigest", 400, "The Content-MD5 you specified did not match what we received.")
INVALID_DIGEST = ("InvalidDigest", 400, "The Content-MD5 you specified was invalid.")


def test_put_with_a_wrong_content_md5_is_bad_digest_and_stores_nothing(s3, bucket):
    """S3: a body whose MD5 is not its Content-MD5 is refused (400 BadDigest, with the digest
    it was told to expect and the one it computed) and nothing is stored: a key that did not
    exist still does not, one that did keeps its old bytes."""
    data, other = os.urandom(64 * 1024), os.urandom(64 * 1024)
    with pytest.raises(bexc.ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="new", Body=data, ContentMD5=_b64md5(other))
    assert _digest_refusal(exc) == BAD_DIGEST
    error = exc.value.response["Error"]
    assert error["ExpectedDigest"] == hashlib.md5(other).hexdigest()
    assert error["CalculatedDigest"] == _b64md5(data)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)

    s3.put_object(Bucket=bucket, Key="old", Body=other)
    with pytest.raises(bexc.ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="old", Body=data, ContentMD5=_b64md5(other),
                      ACL="aws-exec-read")
    assert _digest_refusal(exc) == BAD_DIGEST
    assert s3.get_object(Bucket=bucket, Key="old")["Body"].read() == other


def test_upload_part_with_a_wrong_content_md5_is_bad_digest_and_stores_nothing(s3, bucket):
    upload = s3.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    piece = os.urandom(5 << 20)
    with pytest.raises(bexc.ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="multi", UploadId=upload, PartNumber=1, Body=piece,
                       ContentMD5=_b64md5(piece[1:]))
    assert _digest_refusal(exc) == BAD_DIGEST
    assert "Parts" not in s3.list_parts(Bucket=bucket, Key="multi", UploadId=upload)
    # the upload itself is still open and takes the right bytes
    etag = s3.upload_part(Bucket=bucket, Key="multi", UploadId=upload, PartNumber=1, Body=piece,
                          ContentMD5=_b64md5(piece))["ETag"]
    assert etag.strip('"') == hashlib.md5(piece).hexdigest()
    s3.abort_multipart_upload(Bucket=bucket, Key="multi", UploadId=upload)


@pytest.mark.parametrize("content_md5", [
    "not base64!",
    base64.b64encode(b"\0" * 15).decode(),  # base64, but 120 bits
    hashlib.md5(b"x").hexdigest(),  # the hex digest, not its base64
    "",
], ids=["not-base64", "120-bits", "hex", "empty"])
@pytest.mark.parametrize("operation", ["put_object", "upload_part"])
def test_malformed_content_md5_is_invalid_digest(s3, bucket, operation, content_md5):
    data = b"x" * 1024
    if operation == "put_object":
        def call():
            s3.put_object(Bucket=bucket, Key="k", Body=data, ContentMD5=content_md5)
    else:
        upload = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]

        def call():
            s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=data,
                           ContentMD5=content_md5)
    with pytest.raises(bexc.ClientError) as exc:
        call()
    assert _digest_refusal(exc) == INVALID_DIGEST
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    if operation == "upload_part":
        assert "Parts" not in s3.list_parts(Bucket=bucket, Key="k", UploadId=upload)


def test_right_content_md5_is_stored_and_its_etag_is_the_md5_hashed_once(s3, bucket,
                                                                        monkeypatch):
    """The checked MD5 is the ETag moto would compute: handed over, so the stand-in hashes the
    body once (its CPU per PUT, on the benchmarks' two cores), and the ETag is the MD5."""
    import moto.s3.models as models

    data = os.urandom(3 << 20)
    md5 = hashlib.md5(data).hexdigest()
    hashed = []
    original = models.md5_hash
    monkeypatch.setattr(models, "md5_hash", lambda *a, **k: hashed.append(1) or original(*a, **k))
    put = s3.put_object(Bucket=bucket, Key="k", Body=data, ContentMD5=_b64md5(data),
                        ACL="aws-exec-read")
    assert put["ETag"].strip('"') == md5
    upload = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    piece = s3.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1, Body=data,
                           ContentMD5=_b64md5(data))
    assert piece["ETag"].strip('"') == md5
    assert hashed == []  # neither ETag came from moto hashing the 3 MiB again
    monkeypatch.setattr(models, "md5_hash", original)
    assert s3.head_object(Bucket=bucket, Key="k")["ETag"].strip('"') == md5
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == data
    parts = s3.list_parts(Bucket=bucket, Key="m", UploadId=upload)["Parts"]
    assert [p["ETag"].strip('"') for p in parts] == [md5]
    # without Content-MD5: moto's own ETag, the MD5 all the same
    assert s3.put_object(Bucket=bucket, Key="plain", Body=data)["ETag"].strip('"') == md5


def test_a_wrong_or_malformed_checksum_header_is_refused(s3, bucket):
    """x-amz-checksum-crc32 / -sha256, as botocore sends them (PutObject, and DeleteObjects,
    whose CRC32 botocore always adds, also with the product's when_required): a value that is
    not the body's is BadDigest, one that is no digest of that size is InvalidRequest."""
    data = b"y" * 4096
    with pytest.raises(bexc.ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumCRC32="AAAAAA==")
    assert _digest_refusal(exc) == (
        "BadDigest", 400, "The CRC32 you specified did not match the calculated checksum.")
    with pytest.raises(bexc.ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=data,
                      ChecksumSHA256=base64.b64encode(b"\0" * 32).decode())
    assert _digest_refusal(exc)[:2] == ("BadDigest", 400)
    with pytest.raises(bexc.ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumCRC32="AAAA")
    assert _digest_refusal(exc) == (
        "InvalidRequest", 400, "Value for x-amz-checksum-crc32 header is invalid.")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=data)  # botocore's own CRC32: right, stored

    def damage(request, **_):
        request.headers["x-amz-checksum-crc32"] = "AAAAAA=="

    s3.meta.events.register("before-send.s3.DeleteObjects", damage)
    with pytest.raises(bexc.ClientError) as exc:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k"}]})
    assert _digest_refusal(exc)[:2] == ("BadDigest", 400)
    s3.meta.events.unregister("before-send.s3.DeleteObjects", damage)
    assert s3.head_object(Bucket=bucket, Key="k")  # not deleted
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k"}]})
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
