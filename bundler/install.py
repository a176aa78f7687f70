"""``install`` in one region: bundle → parallel PUTs → RegisterImage, in one streaming run.

Parts go from the compressor straight to S3 (none touch the disk); the AMI is registered only
after the manifest is in the bucket. Several regions: ``multiregion.install_regions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ec2 import RegisterOptions, register_image, wait_available
from .pipeline import BundleKeys, BundleOptions, BundleResult, bundle
from .progress import NULL_PROGRESS, ProgressListener
from .s3 import DEFAULT_ACL, DEFAULT_ATTEMPTS, DEFAULT_JOBS, S3Location, S3Sink
from .source import ImageSource


@dataclass
class InstallResult:
    bundle: BundleResult
    image_location: str
    bytes_uploaded: int
    image_id: str | None = None
    region: str | None = None  # where the AMI was registered
    state: str | None = None  # with wait: the final state

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {**self.bundle.summary(), "image_location": self.image_location,
                                "bytes_uploaded": self.bytes_uploaded}
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
    progress: ProgressListener = NULL_PROGRESS,
) -> InstallResult:
    """Bundle ``source`` into ``location`` and, with ``register`` (and ``ec2``), register it.

    ``register.name`` empty means the bundle's name.
    """
    sink = S3Sink(s3, location.bucket, location.prefix, acl=acl, jobs=jobs, attempts=attempts,
                  progress=progress)
    result = bundle(source, sink, keys, options, progress)
    out = InstallResult(result, location.image_location(result.manifest_name), sink.bytes_uploaded)
    if register is None or ec2 is None:
        return out
    if not register.name:
        register.name = options.name
    out.image_id = register_image(ec2, out.image_location, register)
    out.region = ec2.meta.region_name
    if wait:
        out.state = wait_available(ec2, out.image_id, timeout=wait_timeout)
    return out
