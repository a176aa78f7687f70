"""``install`` in one region: bundle → parallel PUTs → RegisterImage, in one streaming run.

Parts go from the compressor straight to S3 (none touch the disk); the AMI is registered only
after the manifest is in the bucket. A re-run whose bundle is proved to hold this very image
(``rerun.existing_bundle``) uploads nothing and registers only if needed; a different bundle of
that name is the publish protocol's to refuse (``force``, ``in_use``). Several regions:
``multiregion.install_regions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ec2 import RegisterOptions, register_image, wait_available
from .pipeline import BundleKeys, BundleOptions, BundleResult, bundle
from .progress import NULL_PROGRESS, ProgressListener
from .rerun import ImageFingerprint, existing_bundle, find_registered
from .s3 import DEFAULT_ACL, DEFAULT_ATTEMPTS, DEFAULT_JOBS, InUseLookup, S3Location, S3Sink
from .source import ImageSource


@dataclass
class InstallResult:
    bundle: BundleResult | None  # None when the bundle was already there (action "present")
    image_location: str
    bytes_uploaded: int
    image_id: str | None = None
    region: str | None = None  # where the AMI was registered
    state: str | None = None  # with wait: the final state
    action: str = "bundled"  # bundled | present
    registered: str = "no"  # new | existing | no

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            **(self.bundle.summary() if self.bundle else {}),
            "image_location": self.image_location,
            "bytes_uploaded": self.bytes_uploaded,
            "action": self.action,
            "registered": self.registered,
        }
        if self.image_id is not None:
            data.update(image_id=self.image_id, region=self.region, state=self.state)
        return data


def install_bundle(
    source: ImageSource,
    keys: BundleKeys,
    options: BundleOptions,
    *,
    s3: Any,
    location: S3Location,
    ec2: Any | None = None,
    register: RegisterOptions | None = None,
    wait: bool = False,
    wait_timeout: float = 900,
    acl: str = DEFAULT_ACL,
    jobs: int = DEFAULT_JOBS,
    attempts: int = DEFAULT_ATTEMPTS,
    force: bool = False,
    in_use: InUseLookup | None = None,
    progress: ProgressListener = NULL_PROGRESS,
) -> InstallResult:
    """Bundle ``source`` into ``location`` and, with ``register`` (and ``ec2``), register it.

    ``register.name`` empty means the bundle's name. ``force``: replace a different bundle of that
    name (never one a registered AMI uses, as ``in_use`` tells).
    """
    manifest_name = f"{options.name}.manifest.xml"
    try:
        existing = existing_bundle(
            s3,
            location,
            manifest_name,
            ImageFingerprint(source, options.name),
            keys.user_public_key,
        )
    except BaseException:
        source.close()
        raise
    if existing is not None and existing.same_image:
        source.close()
        out = InstallResult(None, location.image_location(manifest_name), 0, action="present")
    else:
        sink = S3Sink(
            s3,
            location.bucket,
            location.prefix,
            acl=acl,
            jobs=jobs,
            attempts=attempts,
            force=force,
            in_use=in_use,
            progress=progress,
        )
        result = bundle(source, sink, keys, options, progress)
        out = InstallResult(
            result, location.image_location(result.manifest_name), sink.bytes_uploaded
        )
    if register is None or ec2 is None:
        return out
    if not register.name:
        register.name = options.name
    out.region = ec2.meta.region_name
    if out.action == "present":
        out.image_id = find_registered(ec2, register.name, out.image_location)
    if out.image_id is not None:
        out.registered = "existing"
        return out
    out.image_id = register_image(ec2, out.image_location, register)
    out.registered = "new"
    if wait:
        out.state = wait_available(ec2, out.image_id, timeout=wait_timeout)
    return out
