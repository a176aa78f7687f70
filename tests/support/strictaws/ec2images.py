"""EC2 images as EC2 has them today, patched into moto's EC2 responses (in the server process).

moto's RegisterImage keeps only Name and Description. Here RegisterImage keeps (and
DescribeImages reports) ImageLocation, Architecture (the manifest's when not given),
VirtualizationType, RootDeviceType ``instance-store``, KernelId, RamdiskId, BlockDeviceMappings,
ImdsSupport, BootMode, EnaSupport, SriovNetSupport and the TagSpecifications tags (applied at
registration); the bundle is checked as EC2 does (``bundlecheck``) and RegisterImage fails with
``InvalidManifest`` otherwise. Also: Enable/DisableImageDeprecation,
Enable/DisableImageDeregistrationProtection (DeregisterImage refused while on),
block public access for AMIs (``block-new-sharing`` by default, as for new accounts: sharing
with ``all`` refused), and the DescribeImages filters ``manifest-location``, ``name``,
``owner-id``, ``tag:*``.
"""

from __future__ import annotations

import datetime
from typing import Any

from . import bundlecheck

_installed = False
# (account, region) → "block-new-sharing" | "unblocked"
IMAGE_BPA: dict[tuple[str, str], str] = {}
DEFAULT_IMAGE_BPA = "block-new-sharing"


def _error(code: str, message: str) -> Exception:
    from moto.ec2.exceptions import EC2ClientError

    return EC2ClientError(code, message)


def _iso(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        when = value
    else:
        text = str(value).replace("Z", "+00:00")
        when = datetime.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def set_creation_date(account: str, region: str, image_id: str,
                      when: datetime.datetime) -> None:
    """Backdate an image (a test's setup: retention by age needs AMIs of different ages)."""
    from moto.ec2.models import ec2_backends

    ec2_backends[account][region].amis[image_id].creation_date = when


def install() -> None:
    global _installed
    if _installed:
        return
    from moto.core.responses import ActionResult
    from moto.ec2.models.amis import Ami
    from moto.ec2.responses.amis import AmisResponse
    from moto.ec2.utils import random_ami_id

    class InstanceStoreAmi(Ami):
        """An instance-store AMI: no EBS snapshot behind it (moto's Ami makes one)."""

        def __init__(self, backend: Any, ami_id: str, params: dict[str, Any]) -> None:
            self.ec2_backend = backend
            self.id = ami_id
            self.state = "available"
            self.image_type = "machine"
            self.owner_id = backend.account_id
            self.owner_alias = None
            self.platform = None
            self.hypervisor = "xen"
            self.product_codes: set[str] = set()
            self.instance_id = None
            self.creation_date = datetime.datetime.now(datetime.timezone.utc)
            self.launch_permissions: list[dict[str, str]] = []
            self.root_device_type = "instance-store"
            self.name = params["Name"]
            self.description = params.get("Description")
            self.image_location = params["ImageLocation"]
            self.architecture = params.get("Architecture")
            self.virtualization_type = params.get("VirtualizationType") or "paravirtual"
            self.kernel_id = params.get("KernelId")
            self.ramdisk_id = params.get("RamdiskId")
            self.root_device_name = params.get("RootDeviceName") or "/dev/sda1"
            self.imds_support = params.get("ImdsSupport")
            self.boot_mode = params.get("BootMode")
            self.ena_support = params.get("EnaSupport")
            self.sriov_net_support = params.get("SriovNetSupport")
            self.sriov = self.sriov_net_support
            self.bdm = params.get("BlockDeviceMappings") or []
            self.deprecation_time: str | None = None
            self.deregistration_protection = "disabled"

        @property
        def block_device_mappings(self) -> list[dict[str, Any]]:
            return self.bdm

        @property
        def public(self) -> bool:
            return self.is_public

        @property
        def imds(self) -> Any:
            return self.imds_support

    orig_filter = Ami.get_filter_value

    def get_filter_value(self: Any, filter_name: str, method_name: str | None = None) -> Any:
        if filter_name == "manifest-location":
            return self.image_location
        if filter_name == "root-device-type":
            return self.root_device_type
        if filter_name == "ramdisk-id":
            return getattr(self, "ramdisk_id", None)
        return orig_filter(self, filter_name, method_name)

    Ami.get_filter_value = get_filter_value
    orig_register = AmisResponse.register_image

    def register_image(self: Any) -> Any:
        location = self._get_param("ImageLocation")
        if not location:  # an EBS-backed registration: not ours, moto's as it is
            return orig_register(self)
        self.error_on_dryrun()
        params = {k: self._get_param(k) for k in (
            "Name", "Description", "ImageLocation", "Architecture", "VirtualizationType",
            "KernelId",
            "RamdiskId", "RootDeviceName", "ImdsSupport", "BootMode", "SriovNetSupport")}
        params["EnaSupport"] = self._get_bool_param("EnaSupport")
        params["BlockDeviceMappings"] = self._get_param("BlockDeviceMappings", [])
        backend = self.ec2_backend
        name = params["Name"]
        if not name:
            raise _error("MissingParameter", "The request must contain the parameter name")
        if params["ImdsSupport"] not in (None, "v2.0"):
            raise _error("InvalidParameterValue", f"Value ({params['ImdsSupport']}) for parameter "
                         "imdsSupport is invalid. Supported value: v2.0")
        if any(a.name == name and a.owner_id == backend.account_id for a in backend.amis.values()):
            raise _error("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI "
                         + next(a.id for a in backend.amis.values() if a.name == name))
        tags: dict[str, str] = {}
        for spec in self._get_param("TagSpecifications", []) or []:
            if spec.get("ResourceType") != "image":
                raise _error("InvalidParameterValue",
                             f"'{spec.get('ResourceType')}' is not a valid "
                             "taggable resource type for this operation.")
            tags.update({t["Key"]: t.get("Value", "") for t in spec.get("Tags", [])})
        found = bundlecheck.check_bundle(backend.account_id, backend.region_name, location)
        if not params["Architecture"]:
            params["Architecture"] = found.architecture or "i386"
        ami = InstanceStoreAmi(backend, random_ami_id(), params)
        backend.amis[ami.id] = ami
        if tags:
            backend.create_tags([ami.id], tags)
        return ActionResult({"ImageId": ami.id})

    def _image(self: Any) -> Any:
        image_id = self._get_param("ImageId")
        images = self.ec2_backend.describe_images(ami_ids=[image_id])
        if not images:
            from moto.ec2.exceptions import InvalidAMIIdError

            raise InvalidAMIIdError(image_id)
        return images[0]

    def enable_image_deprecation(self: Any) -> Any:
        self.error_on_dryrun()
        image = _image(self)
        image.deprecation_time = _iso(self._get_param("DeprecateAt"))
        return ActionResult({"Return": True})

    def disable_image_deprecation(self: Any) -> Any:
        self.error_on_dryrun()
        _image(self).deprecation_time = None
        return ActionResult({"Return": True})

    def enable_image_deregistration_protection(self: Any) -> Any:
        self.error_on_dryrun()
        image = _image(self)
        cooldown = self._get_bool_param("WithCooldown") or False
        image.deregistration_protection = ("enabled-with-cooldown" if cooldown
                                           else "enabled-without-cooldown")  # as EC2 says it
        return ActionResult({"Return": image.deregistration_protection})

    def disable_image_deregistration_protection(self: Any) -> Any:
        self.error_on_dryrun()
        image = _image(self)
        image.deregistration_protection = "disabled"
        return ActionResult({"Return": "disabled"})

    orig_deregister = AmisResponse.deregister_image

    def deregister_image(self: Any) -> Any:
        image = self.ec2_backend.amis.get(self._get_param("ImageId"))
        if (image is not None
                and getattr(image, "deregistration_protection", "disabled") != "disabled"):
            raise _error("InvalidParameterValue", f"Image {image.id} has deregistration protection "
                         "enabled: disable it first (DisableImageDeregistrationProtection)")
        return orig_deregister(self)

    def _bpa_key(self: Any) -> tuple[str, str]:
        return (self.ec2_backend.account_id, self.ec2_backend.region_name)

    def get_image_block_public_access_state(self: Any) -> Any:
        state = IMAGE_BPA.get(_bpa_key(self), DEFAULT_IMAGE_BPA)
        return ActionResult({"ImageBlockPublicAccessState": state})

    def enable_image_block_public_access(self: Any) -> Any:
        self.error_on_dryrun()
        IMAGE_BPA[_bpa_key(self)] = "block-new-sharing"
        return ActionResult({"ImageBlockPublicAccessState": "block-new-sharing"})

    def disable_image_block_public_access(self: Any) -> Any:
        self.error_on_dryrun()
        IMAGE_BPA[_bpa_key(self)] = "unblocked"
        return ActionResult({"ImageBlockPublicAccessState": "unblocked"})

    orig_modify = AmisResponse.modify_image_attribute

    def modify_image_attribute(self: Any) -> Any:
        adds = self._get_param("LaunchPermission", {}).get("Add", []) or []
        group = self._get_param("UserGroups", []) or []
        public = any(p.get("Group") == "all" for p in adds) or (
            self._get_param("OperationType") == "add" and "all" in group)
        if public and IMAGE_BPA.get(_bpa_key(self), DEFAULT_IMAGE_BPA) == "block-new-sharing":
            raise _error("OperationNotPermitted",
                         "You can't publicly share this image because block "
                         "public access for AMIs is enabled for this account in this Region.")
        return orig_modify(self)

    for fn in (register_image, enable_image_deprecation, disable_image_deprecation,
               enable_image_deregistration_protection, disable_image_deregistration_protection,
               deregister_image, get_image_block_public_access_state,
               enable_image_block_public_access,
               disable_image_block_public_access, modify_image_attribute):
        setattr(AmisResponse, fn.__name__, fn)
    _installed = True
