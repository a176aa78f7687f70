"""EC2 side of a bundle: preflight, RegisterImage, launch permissions, tags, deregister.

RegisterImage as EC2 has it today: tags applied at registration (TagSpecifications: no untagged
AMI ever exists), IMDSv2-only, deprecation, deregistration protection, launch permissions to
accounts, ``all``, organizations and OUs. EC2 reports the bundle of an AMI as ImageLocation.

RegisterImage only fails late and vaguely when the bundle is incomplete ("manifest not
found" or an AMI that never becomes available), so ``preflight`` checks what EC2 will read
— manifest present and parseable, every part present, total size = bundled_size, bucket in
the same region — before the call.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import botocore.exceptions as bexc

from . import interrupts, signalsafe
from .aws import NO_SUCH_IMAGE, ec2_error, ec2_errors, error_code, is_not_found, translate_errors
from .concurrency import run_all
from .errors import (
    BundlerError,
    EC2Error,
    IntegrityError,
    ManifestError,
    PartMissingError,
    UsageError,
)
from .manifest import Manifest, ParsedManifest, is_encrypted, parse_manifest
from .s3 import S3Location, bucket_region, fetch_manifest, list_objects, split_manifest_location
from .signalsafe import Event

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import ImageTypeDef, LaunchPermissionTypeDef
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("bundler.ec2")

ARCHITECTURES = ("i386", "x86_64", "arm64", "x86_64_mac", "arm64_mac")
VIRTUALIZATION_TYPES = ("paravirtual", "hvm")
BOOT_MODES = ("legacy-bios", "uefi", "uefi-preferred")
DEFAULT_WAIT_SECONDS = 900
IMDS_SUPPORT = ("v2.0",)
MAX_DEPRECATION_YEARS = 10  # EC2 refuses a DeprecateAt further out

_EPHEMERAL = re.compile(r"^ephemeral[0-9]+$")
_SNAPSHOT = re.compile(r"^snap-[0-9a-f]+$")
_EBS_TYPES = ("standard", "gp2", "gp3", "io1", "io2", "sc1", "st1")
_ORG_ARN = re.compile(r"^arn:aws[a-z-]*:organizations::[0-9]{12}:organization/o-[a-z0-9]{10,32}$")
_OU_ARN = re.compile(r"^arn:aws[a-z-]*:organizations::[0-9]{12}:ou/o-[a-z0-9]{10,32}"
                     r"/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}$")


@dataclass
class RegisterOptions:
    name: str
    description: str | None = None
    architecture: str | None = None  # None: EC2 takes the manifest's
    virtualization_type: str | None = None
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    block_device_mappings: list[dict[str, Any]] = field(default_factory=list)
    ena_support: bool | None = None
    sriov_net_support: str | None = None
    boot_mode: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    launch_permissions: list[str] = field(default_factory=list)  # "all", account ids, org/OU ARNs
    imds_support: str | None = None  # "v2.0": instances launched from it require IMDSv2
    deprecate_at: datetime.datetime | None = None
    deregistration_protection: bool = False


@dataclass
class PreflightReport:
    image_location: str
    bucket: str
    key: str
    manifest: Manifest
    parts: int
    bundled_size: int
    bucket_region: str | None

    def summary(self) -> dict[str, object]:
        return {"image_location": self.image_location, "name": self.manifest.name,
                "parts": self.parts,
                "bundled_size": self.bundled_size, "bucket_region": self.bucket_region,
                "architecture": self.manifest.arch}


def normalize_image_location(value: str) -> str:
    location, name = split_manifest_location(value)
    return location.image_location(name)


def preflight(s3: S3Client, image_location: str, *, region: str | None = None,
              published: ParsedManifest | None = None) -> PreflightReport:
    """Check the bundle EC2 is about to read; raise naming what is wrong and how to fix it.

    ``published``: the manifest the caller has just put there (install). Its part names are
    known, so the parts' listing is asked together with the bucket and the manifest instead of
    after them; the manifest read back must then be those very bytes."""
    location, name = split_manifest_location(image_location)
    key = location.key(name)
    # Independent round trips, asked together; the bucket's answer is judged first (a
    # missing bucket makes the manifest's error meaningless).
    reads: list[Callable[[], object]] = [partial(bucket_region, s3, location.bucket),
                                         partial(fetch_manifest, s3, location.bucket, key)]
    if published is not None:
        reads.append(partial(_list_parts, s3, location, published.manifest))
    answers = run_all(reads, name="ami-bundler-preflight")
    bucket_at = cast("str | None", signalsafe.result(answers[0]))
    if bucket_at is None:
        raise EC2Error(f"cannot register {image_location}: bucket {location.bucket} does not exist")
    if region and bucket_at != region:
        raise EC2Error(f"cannot register {image_location} in {region}: the bucket is in "
                       f"{bucket_at}; EC2 registers bundles only in the bucket's region: pass "
                       f"--region {bucket_at}")
    raw = cast(bytes, signalsafe.result(answers[1]))
    if published is not None and raw != published.raw:
        raise ManifestError(f"{location.url(name)} is no longer the manifest this run uploaded "
                            "(another upload of that name?): not registering it; re-run")
    if is_encrypted(raw):
        raise ManifestError(f"{location.url(name)} is a legacy encrypted manifest: migrate it "
                            "(ec2-migrate-manifest) before registering")
    parsed = parse_manifest(raw, source=location.url(name))
    manifest = parsed.manifest
    found = (cast("dict[str, tuple[int, str]]", signalsafe.result(answers[2]))
             if published is not None
             else _list_parts(s3, location, manifest))
    _check_parts(location, manifest, found)
    return PreflightReport(location.image_location(name), location.bucket, key, manifest,
                           len(manifest.parts), manifest.bundled_size, bucket_at)


def _list_parts(s3: S3Client, location: S3Location,
                manifest: Manifest) -> dict[str, tuple[int, str]]:
    keys = [location.key(p.filename) for p in manifest.parts]
    return list_objects(s3, location.bucket, os.path.commonprefix(keys)) if keys else {}


def _check_parts(location: S3Location, manifest: Manifest,
                 found: Mapping[str, tuple[int, str]]) -> None:
    keys = [location.key(p.filename) for p in manifest.parts]
    missing = [p.filename for p, k in zip(manifest.parts, keys, strict=True) if k not in found]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise PartMissingError(
            f"bundle {manifest.name} is incomplete in {location.url()}: part {missing[0]}{more} "
            f"missing ({len(manifest.parts) - len(missing)} of {len(manifest.parts)} present): "
            "re-run upload-bundle"
        )
    total = sum(found[k][0] for k in keys)
    if total != manifest.bundled_size:
        raise IntegrityError(
            f"parts of {manifest.name} in {location.url()} hold {total} bytes but the manifest "
            f"says bundled_size {manifest.bundled_size}: they belong to another bundle; re-run "
            "upload-bundle"
        )


# --------------------------------------------------------------------------- argument parsing


def parse_tags(values: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--tag {value!r}: expected KEY=VALUE")
        tags[key.strip()] = val
    return tags


def parse_launch_permissions(values: list[str]) -> list[str]:
    """``all``, 12-digit account ids (hyphens allowed), organization and OU ARNs."""
    out = []
    for value in values:
        v = value.strip()
        if v.lower() == "all":
            out.append("all")
            continue
        if v.startswith("arn:"):
            if not (_ORG_ARN.match(v) or _OU_ARN.match(v)):
                raise UsageError(f"--launch-permission {value!r}: expected an organization ARN "
                                 "(arn:aws:organizations::ACCOUNT:organization/o-…) or an OU ARN "
                                 "(arn:aws:organizations::ACCOUNT:ou/o-…/ou-…)")
            out.append(v)
            continue
        digits = v.replace("-", "")
        if len(digits) != 12 or not digits.isdigit():
            raise UsageError(f"--launch-permission {value!r}: expected a 12-digit account id, "
                             "'all', or an organization/OU ARN")
        out.append(digits)
    return out


def launch_permission(who: str) -> LaunchPermissionTypeDef:
    if who == "all":
        return {"Group": "all"}
    if _ORG_ARN.match(who):
        return {"OrganizationArn": who}
    if _OU_ARN.match(who):
        return {"OrganizationalUnitArn": who}
    return {"UserId": who}


def parse_deprecate_at(value: str, *, now: datetime.datetime | None = None) -> datetime.datetime:
    """``--deprecate-at``: an ISO 8601 time (UTC unless it says otherwise) or a date, in the future
    and at most 10 years ahead, as EC2 requires."""
    text = value.strip()
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--deprecate-at {value!r}: expected a time like 2027-01-31T00:00:00Z or "
                         "a date like 2027-01-31") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if when <= now:
        raise UsageError(f"--deprecate-at {value}: that is not in the future")
    if when > now + datetime.timedelta(days=365 * MAX_DEPRECATION_YEARS + 2):
        raise UsageError(f"--deprecate-at {value}: EC2 allows at most {MAX_DEPRECATION_YEARS} "
                         "years ahead")
    return when.astimezone(datetime.timezone.utc)


def parse_register_block_device_mappings(values: list[str]) -> list[dict[str, Any]]:
    """``DEVICE=ephemeralN | none | [snap-id]:[size]:[delete-on-termination]:[type]:[iops]``
    (repeatable, or comma-separated), as the EC2 API tools' ``-b``."""
    result = []
    for value in values:
        for item in filter(None, (s.strip() for s in value.split(","))):
            device, sep, spec = item.partition("=")
            if not sep or not device or not spec:
                raise UsageError(f"-b/--block-device-mapping {item!r}: expected "
                                 "DEVICE=ephemeralN|none|snap-id:size:…")
            mapping: dict[str, Any] = {"DeviceName": device}
            if _EPHEMERAL.match(spec):
                mapping["VirtualName"] = spec
            elif spec == "none":
                mapping["NoDevice"] = ""
            else:
                mapping["Ebs"] = _ebs(spec, item)
            result.append(mapping)
    return result


def _ebs(spec: str, item: str) -> dict[str, Any]:
    fields = spec.split(":")
    if len(fields) > 5:
        raise UsageError(f"-b {item!r}: too many ':' fields (snap-id:size:delete:type:iops)")
    fields += [""] * (5 - len(fields))
    snap, size, delete, vtype, iops = fields
    ebs: dict[str, Any] = {}
    if snap:
        if not _SNAPSHOT.match(snap):
            raise UsageError(f"-b {item!r}: {snap!r} is not a snapshot id (snap-…)")
        ebs["SnapshotId"] = snap
    if size:
        if not size.isdigit():
            raise UsageError(f"-b {item!r}: size {size!r} must be GiB as a number")
        ebs["VolumeSize"] = int(size)
    if not snap and not size:
        raise UsageError(f"-b {item!r}: an EBS mapping needs a snapshot id or a size")
    if delete:
        if delete not in ("true", "false"):
            raise UsageError(f"-b {item!r}: delete-on-termination must be true or false")
        ebs["DeleteOnTermination"] = delete == "true"
    if vtype:
        if vtype not in _EBS_TYPES:
            raise UsageError(f"-b {item!r}: volume type must be one of {', '.join(_EBS_TYPES)}")
        ebs["VolumeType"] = vtype
    if iops:
        if not iops.isdigit():
            raise UsageError(f"-b {item!r}: iops must be a number")
        ebs["Iops"] = int(iops)
    return ebs


# --------------------------------------------------------------------------- EC2 calls


def register_image(ec2: EC2Client, image_location: str, options: RegisterOptions) -> str:
    """RegisterImage for an instance-store bundle (tags included), then deprecation,
    deregistration protection and launch permissions."""
    if "all" in options.launch_permissions:
        check_public_sharing_allowed(ec2)  # before the AMI exists, not after
    params: dict[str, Any] = {"ImageLocation": image_location, "Name": options.name}
    optional = {
        "Description": options.description,
        "Architecture": options.architecture,
        "VirtualizationType": options.virtualization_type,
        "KernelId": options.kernel_id,
        "RamdiskId": options.ramdisk_id,
        "SriovNetSupport": options.sriov_net_support,
        "BootMode": options.boot_mode,
        "EnaSupport": options.ena_support,
        "ImdsSupport": options.imds_support,
        "BlockDeviceMappings": options.block_device_mappings or None,
        "TagSpecifications": [{"ResourceType": "image",
                               "Tags": [{"Key": k, "Value": v} for k, v in options.tags.items()]}]
        if options.tags else None,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    with translate_errors(lambda exc: _register_error(exc, image_location)):
        image_id = ec2.register_image(**params)["ImageId"]
    interrupts.registered(image_location, image_id)
    log.info("registered %s as %s", image_location, image_id)
    if options.deprecate_at is not None:
        set_deprecation(ec2, image_id, options.deprecate_at, just_registered=True)
    if options.deregistration_protection:
        protect_from_deregistration(ec2, image_id, just_registered=True)
    if options.launch_permissions:
        add_launch_permissions(ec2, image_id, options.launch_permissions, just_registered=True)
    return image_id


def set_deprecation(ec2: EC2Client, image_id: str, at: datetime.datetime, *,
                    just_registered: bool = False) -> None:
    """EnableImageDeprecation: the AMI stays launchable by its owner after ``at``."""
    with translate_errors(lambda exc: _setting_error(exc, image_id, "set its deprecation time",
                                                     just_registered)):
        ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt=at)


def protect_from_deregistration(ec2: EC2Client, image_id: str, *,
                                just_registered: bool = False) -> None:
    """EnableImageDeregistrationProtection: DeregisterImage is refused until it is turned off."""
    with translate_errors(lambda exc: _setting_error(exc, image_id,
                                                     "turn on deregistration protection",
                                                     just_registered)):
        ec2.enable_image_deregistration_protection(ImageId=image_id)


def _setting_error(exc: BaseException, image_id: str, what: str,
                   just_registered: bool) -> BundlerError:
    """A setting that failed on an AMI. One just registered exists now without it: the message
    says so and gives the ways out, because the run's failure would otherwise hide the AMI."""
    err = ec2_error(exc, f"{what} on {image_id}")
    if not just_registered:
        return err
    text = str(err)
    reason = text.removeprefix(f"{what} on {image_id}: ")
    return EC2Error(f"registered {image_id} but could not {what}: {reason}; fix it and set it on "
                    f"{image_id} with the aws CLI, or deregister it")


def _register_error(exc: BaseException, image_location: str) -> EC2Error:
    code = error_code(exc)
    if code == "InvalidManifest":
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        detail = " ".join(str(message).split())
        return EC2Error(f"EC2 rejected {image_location} "
                        f"(InvalidManifest{': ' + detail if detail else ''}): "
                        "check that the manifest and parts carry the aws-exec-read ACL and the "
                        "bundle was made with this region's EC2 certificate (--region/--ec2cert)")
    if code == "InvalidAMIName.Duplicate":
        return EC2Error("an AMI named like this already exists in the region: pick another "
                        "-n/--name")
    return ec2_error(exc, f"register {image_location}")  # type: ignore[return-value]


def check_public_sharing_allowed(ec2: EC2Client) -> None:
    """Block public access for AMIs (on by default for new accounts) refuses ``all``."""
    region = ec2.meta.region_name
    try:
        state = ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"]
    except (bexc.ClientError, bexc.BotoCoreError) as exc:
        log.info("cannot read the block-public-access-for-AMIs state of %s: %s", region,
                 error_code(exc) or exc)
        return
    if state == "block-new-sharing":
        raise EC2Error(_public_blocked(region))


def _public_blocked(region: str) -> str:
    return (f"block public access for AMIs is on in {region}: the AMI cannot be shared with all; "
            "share it with accounts or an organization (--launch-permission ACCOUNT|ARN), or turn "
            f"the block off with `aws ec2 disable-image-block-public-access --region {region}`")


def add_launch_permissions(ec2: EC2Client, image_id: str, who: list[str], *,
                           just_registered: bool = False) -> None:
    adds = [launch_permission(w) for w in who]
    try:
        ec2.modify_image_attribute(ImageId=image_id, Attribute="launchPermission",
                                   LaunchPermission={"Add": adds})
    except (bexc.ClientError, bexc.BotoCoreError) as exc:
        if error_code(exc) == "OperationNotPermitted" and "all" in who:
            blocked = _public_blocked(ec2.meta.region_name)
            raise EC2Error(f"registered {image_id} but {blocked}" if just_registered
                           else f"{image_id}: {blocked}") from None
        raise _setting_error(exc, image_id, "set launch permissions", just_registered) from None


def describe_image(ec2: EC2Client, image_id: str) -> ImageTypeDef:
    with ec2_errors(f"describe {image_id}"):
        try:
            images = ec2.describe_images(ImageIds=[image_id])["Images"]
        except bexc.ClientError as exc:
            if not is_not_found(exc, NO_SUCH_IMAGE):
                raise
            images = []
    if not images:
        raise EC2Error(f"image {image_id} not found in this region (check --region)")
    return images[0]


def wait_available(ec2: EC2Client, image_id: str, *, timeout: float = DEFAULT_WAIT_SECONDS,
                   delay: float = 5.0) -> str:
    """Poll until the image is available (or failed), for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        state = describe_image(ec2, image_id).get("State", "")
        if state == "available":
            return state
        if state in ("failed", "invalid", "deregistered", "error"):
            raise EC2Error(f"image {image_id} became {state}: check the bundle and the "
                           "aws-exec-read ACL")
        if time.monotonic() + delay > deadline:
            raise EC2Error(f"image {image_id} is still {state or 'pending'} after {timeout:.0f}s: "
                           "check later with describe-images")
        # On a worker thread (install's regions) no signal reaches this wait, and the run's
        # clean-up waits for it: a run told to stop ends it here.
        pause, resume = Event(), time.monotonic() + delay
        while (left := resume - time.monotonic()) > 0:
            interrupts.stop_if_signalled()
            pause.wait(min(0.1, left))


def image_location_of(image: Mapping[str, Any]) -> str | None:
    """The bundle an instance-store AMI was registered from, as EC2 reports it."""
    location = image.get("ImageLocation")
    if isinstance(location, str) and location.endswith(".manifest.xml"):
        return location
    return None


def deregister_image(ec2: EC2Client, image_id: str) -> None:
    with ec2_errors(f"deregister {image_id}"):
        ec2.deregister_image(ImageId=image_id)


__all__ = [
    "ARCHITECTURES",
    "BOOT_MODES",
    "IMDS_SUPPORT",
    "PreflightReport",
    "RegisterOptions",
    "VIRTUALIZATION_TYPES",
    "add_launch_permissions",
    "check_public_sharing_allowed",
    "deregister_image",
    "describe_image",
    "image_location_of",
    "launch_permission",
    "normalize_image_location",
    "parse_deprecate_at",
    "parse_launch_permissions",
    "parse_register_block_device_mappings",
    "parse_tags",
    "preflight",
    "protect_from_deregistration",
    "register_image",
    "set_deprecation",
    "wait_available",
]
