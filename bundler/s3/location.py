"""Where a bundle lives in S3: a bucket and a key prefix, and manifest locations."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..s3names import bucket_and_prefix


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix ("" or ending in "/")."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, value: str | None, flag: str = "-b/--bucket") -> S3Location:
        if value is None or not value.strip().strip("/"):
            raise UsageError(f"{flag} needs BUCKET[/PREFIX], got {value!r}")
        if value.startswith("s3://"):
            value = value[5:]
        bucket, prefix = bucket_and_prefix(value)
        return cls(bucket, prefix)

    def key(self, name: str) -> str:
        return self.prefix + name

    def url(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def image_location(self, manifest_name: str) -> str:
        """What RegisterImage wants (spec §6.1): BUCKET/KEYPREFIX + manifest name."""
        return f"{self.bucket}/{self.prefix}{manifest_name}"


def split_manifest_location(value: str,
                            flag: str = "the manifest location") -> tuple[S3Location, str]:
    """``[s3://]BUCKET/[PREFIX/]NAME.manifest.xml`` → (location, manifest name); errors name
    ``flag``, the argument the value came from."""
    text = value[5:] if value.startswith("s3://") else value
    text = text.strip()
    head, sep, name = text.lstrip("/").rpartition("/")
    if not sep or not head or not name:
        raise UsageError(f"manifest location {value!r} must be BUCKET/[PREFIX/]NAME.manifest.xml")
    if not name.endswith(".manifest.xml"):
        raise UsageError(f"manifest location {value!r} does not end in .manifest.xml")
    bucket, prefix = bucket_and_prefix(head, flag)
    return S3Location(bucket, prefix), name
