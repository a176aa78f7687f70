"""Instance metadata for ``--inherit`` (spec §8.11), IMDSv2 first.

A session token is requested with ``PUT /latest/api/token``; only if that PUT is refused
outright (403/405: IMDSv2 disabled or an old endpoint) do we fall back to tokenless IMDSv1
requests. Timeouts are short and the total time is bounded, so running off EC2 fails fast
with a message instead of hanging.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import MetadataError

log = logging.getLogger("bundler.volume")

DEFAULT_ENDPOINT = "http://169.254.169.254"
ENDPOINT_ENV = "AMI_BUNDLER_IMDS_ENDPOINT"
TOKEN_TTL = 300
CONNECT_TIMEOUT = 1.0
TOTAL_BUDGET = 10.0


@dataclass
class InstanceMetadata:
    """What --inherit can take from the running instance; None/empty when unavailable."""

    ami_id: str | None = None
    ancestor_ami_ids: list[str] = field(default_factory=list)
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    product_codes: list[str] = field(default_factory=list)
    block_device_mapping: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


class _NotFound(Exception):
    pass


class ImdsClient:
    def __init__(self, endpoint: str | None = None, *, timeout: float = CONNECT_TIMEOUT,
                 budget: float = TOTAL_BUDGET) -> None:
        self.endpoint = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
        self.timeout = timeout
        self.deadline = time.monotonic() + budget
        self.token: str | None = None
        self.v1 = False
        # The metadata service must never go through an HTTP proxy from the environment.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise MetadataError(f"instance metadata at {self.endpoint} did not answer in time: "
                                "not on EC2? use --no-inherit")
        return min(self.timeout, left)

    def _unreachable(self, exc: Exception) -> MetadataError:
        return MetadataError(f"instance metadata not reachable at {self.endpoint.split('//')[-1]}"
                             f" ({_why(exc)}): not on EC2? use --no-inherit")

    def connect(self) -> None:
        """Get an IMDSv2 token, or settle on IMDSv1 when the token endpoint refuses."""
        req = urllib.request.Request(
            f"{self.endpoint}/latest/api/token", method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)})
        try:
            with self.opener.open(req, timeout=self._timeout()) as resp:
                self.token = resp.read().decode().strip()
                log.debug("IMDSv2 token obtained")
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 405):
                log.info("IMDSv2 token refused (HTTP %d); falling back to IMDSv1", exc.code)
                self.v1 = True
                return
            raise MetadataError(f"instance metadata token request failed: HTTP {exc.code} "
                                f"from {self.endpoint}; use --no-inherit") from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from None

    def get(self, path: str) -> str:
        headers = {"X-aws-ec2-metadata-token": self.token} if self.token else {}
        req = urllib.request.Request(f"{self.endpoint}/latest/meta-data/{path}", headers=headers)
        try:
            with self.opener.open(req, timeout=self._timeout()) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise _NotFound(path) from None
            if exc.code == 401:
                raise MetadataError("instance metadata refused the request (HTTP 401): IMDSv2 "
                                    "token missing or expired") from None
            raise MetadataError(f"instance metadata {path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from None


def _why(exc: Exception) -> str:
    reason = getattr(exc, "reason", exc)
    return getattr(reason, "strerror", None) or str(reason)


def fetch_metadata(endpoint: str | None = None, *, timeout: float = CONNECT_TIMEOUT,
                   budget: float = TOTAL_BUDGET) -> InstanceMetadata:
    """Read the inherit fields; MetadataError when the service is not there at all."""
    client = ImdsClient(endpoint, timeout=timeout, budget=budget)
    client.connect()
    md = InstanceMetadata()

    def item(path: str, what: str) -> str | None:
        try:
            return client.get(path).strip()
        except _NotFound:
            # Normal on HVM for kernel/ramdisk; classic printed the same note.
            log.info("Unable to read instance meta-data for %s", what)
            md.unreadable.append(what)
            return None

    md.ami_id = item("ami-id", "ami-id")
    md.ancestor_ami_ids = _lines(item("ancestor-ami-ids", "ancestor-ami-ids"))
    md.kernel_id = item("kernel-id", "kernel-id")
    md.ramdisk_id = item("ramdisk-id", "ramdisk-id")
    md.product_codes = _lines(item("product-codes", "product-codes"))
    for name in _lines(item("block-device-mapping/", "block-device-mapping")):
        name = name.rstrip("/")
        value = item(f"block-device-mapping/{name}", f"block-device-mapping/{name}")
        if value:
            md.block_device_mapping[name] = value
    return md


def _lines(text: str | None) -> list[str]:
    return [ln.strip() for ln in (text or "").splitlines() if ln.strip()]


def merge_inherited(options: Any, md: InstanceMetadata, *, kernel_given: bool, ramdisk_given: bool,
                    productcodes_given: bool, bdm_given: bool) -> Any:
    """Spec §8.11 merge onto a BundleOptions-like dataclass (explicit flags win). Pure."""
    changes: dict[str, Any] = {}
    if not getattr(options, "ancestry", None):
        ancestry = list(md.ancestor_ami_ids)
        if md.ami_id and md.ami_id not in ancestry:
            ancestry.append(md.ami_id)
        if ancestry:
            changes["ancestry"] = ancestry
    if not kernel_given and md.kernel_id:
        changes["kernel_id"] = md.kernel_id
    if not ramdisk_given and md.ramdisk_id:
        changes["ramdisk_id"] = md.ramdisk_id
    if not productcodes_given and md.product_codes:
        changes["product_codes"] = list(md.product_codes)
    if not bdm_given and md.block_device_mapping:
        changes["block_device_mapping"] = dict(md.block_device_mapping)
    return replace(options, **changes) if changes else options
