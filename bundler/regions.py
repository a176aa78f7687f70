"""Region names and partitions — from botocore's data, not a hard-coded table.

Pure logic apart from reading botocore's bundled ``endpoints`` data (cached): which regions exist,
which partition (``aws``, ``aws-cn``, ``aws-us-gov``, …) a region belongs to, and how
``install --regions`` maps each region to a bucket. Which EC2 certificate wraps bundle keys in a
region is ``ec2certs``'s.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from collections.abc import Iterable, Sequence

from .errors import UsageError
from .s3names import bucket_and_prefix

log = logging.getLogger("bundler.regions")

DEFAULT_PARTITION = "aws"
_SHAPE = re.compile(r"^[a-z]{2,}(-[a-z0-9]+)+-\d+$")
_TEMPLATE_FIELD = "{region}"


@functools.lru_cache(maxsize=1)
def _endpoint_partitions() -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(partition name, region regex, EC2 regions) for every partition botocore knows."""
    import botocore.session

    session = botocore.session.get_session()
    regexes: dict[str, str] = {}
    try:
        for entry in session.get_data("endpoints").get("partitions", []):
            regexes[entry["partition"]] = entry.get("regionRegex", "")
    except Exception:  # an odd botocore layout only costs us the regex fallback
        log.debug("cannot read botocore endpoint regexes", exc_info=True)
    out = []
    for partition in session.get_available_partitions():
        regions = tuple(sorted(session.get_available_regions("ec2", partition_name=partition)))
        out.append((partition, regexes.get(partition, ""), regions))
    return tuple(out)


def partitions() -> list[str]:
    return [name for name, _, _ in _endpoint_partitions()]


def known_regions(partition: str | None = None) -> list[str]:
    """Every EC2 region botocore knows, optionally of one partition."""
    return [region for name, _, regions in _endpoint_partitions()
            if partition is None or name == partition for region in regions]


def partition_of(region: str) -> str:
    """The partition of ``region``: botocore's region lists first, then its region regexes."""
    region = region.strip().lower()
    for name, _, regions in _endpoint_partitions():
        if region in regions:
            return name
    # A region newer than this botocore: its partition's regex still recognises it. The
    # commercial partition's regex is the loosest, so it is tried last.
    ordered = sorted(_endpoint_partitions(), key=lambda p: p[0] == DEFAULT_PARTITION)
    for name, regex, _ in ordered:
        if regex and re.match(regex, region):
            return name
    return DEFAULT_PARTITION


def same_partition(a: str, b: str) -> bool:
    return partition_of(a) == partition_of(b)


def validate_region(name: str, flag: str = "--region", *, allow_unknown: bool = False) -> str:
    """``name`` normalised, if botocore knows it; otherwise a UsageError with a suggestion.

    ``allow_unknown`` accepts a well-formed name botocore does not list yet (a brand-new
    region), since the partition regexes still place it.
    """
    region = (name or "").strip().lower()
    known = known_regions()
    if region in known:
        return region
    if allow_unknown and _SHAPE.match(region):
        log.warning("region %s is not in this botocore's partition data; assuming partition %s",
                    region, partition_of(region))
        return region
    close = _suggestions(region, known)
    hint = f": did you mean {' or '.join(close)}?" if close else ""
    what = "not a region name" if not _SHAPE.match(region) else "not a region botocore knows"
    raise UsageError(
        f"{flag} {name!r} is {what}{hint} (known regions come from botocore's partition data: "
        f"{', '.join(known[:6])}, …; upgrade botocore for a region launched after it)"
    )


def _distance(a: str, b: str) -> int:
    """Levenshtein distance (region names are short, so the quadratic table is nothing)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _suggestions(region: str, known: Sequence[str]) -> list[str]:
    # Typos are a letter or two off; rank by edit distance, ties alphabetically (stable output).
    near = sorted((d, k) for k in known if (d := _distance(region, k)) <= 2)
    if near:
        return [k for _, k in near[:3]]
    return difflib.get_close_matches(region, known, n=2, cutoff=0.75)


def parse_regions(value: str | Sequence[str], flag: str = "--regions", *,
                  allow_unknown: bool = False) -> list[str]:
    """``us-east-1,eu-west-1`` (or a list of such strings) → validated regions, first-seen order."""
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for raw in item.split(","):
            if not raw.strip():
                continue
            region = validate_region(raw, flag, allow_unknown=allow_unknown)
            if region not in out:
                out.append(region)
    if not out:
        raise UsageError(f"{flag} needs at least one region, e.g. us-east-1,eu-west-1")
    return out


def bucket_map(regions: Sequence[str], *, template: str | None = None,
               pairs: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """Region → (bucket, key prefix) from ``--bucket-template`` and/or
    ``--bucket REGION=BUCKET[/PREFIX]``.

    Explicit pairs win over the template; every region must end up with a bucket, and a pair for
    a region that is not in ``regions`` is an error (most likely a typo).
    """
    explicit: dict[str, tuple[str, str]] = {}
    for pair in pairs:
        region, sep, target = pair.partition("=")
        if not sep or not region.strip() or not target.strip():
            raise UsageError(f"--bucket {pair!r}: with --regions, give REGION=BUCKET[/PREFIX] "
                             "(or use --bucket-template 'name-{region}')")
        region = validate_region(region, "--bucket")
        if region not in regions:
            raise UsageError(f"--bucket {pair!r}: region {region} is not in --regions "
                             f"{','.join(regions)}")
        explicit[region] = bucket_and_prefix(target.strip())
    if template is not None and _TEMPLATE_FIELD not in template:
        raise UsageError(f"--bucket-template {template!r} must contain {_TEMPLATE_FIELD} "
                         "(bucket names are global: one bucket per region)")
    out: dict[str, tuple[str, str]] = {}
    for region in regions:
        if region in explicit:
            out[region] = explicit[region]
        elif template is not None:
            out[region] = bucket_and_prefix(template.replace(_TEMPLATE_FIELD, region))
        else:
            raise UsageError(f"no bucket for region {region}: pass --bucket "
                             f"{region}=BUCKET[/PREFIX] "
                             "or --bucket-template 'my-amis-{region}'")
    buckets = [bucket for bucket, _ in out.values()]
    dupes = sorted({b for b in buckets if buckets.count(b) > 1})
    if dupes:
        # A bucket lives in one region, and EC2 registers a bundle only from its own region.
        raise UsageError(f"bucket {dupes[0]} is given for more than one region: each region needs "
                         "its own bucket")
    return out


__all__ = [
    "bucket_map",
    "known_regions",
    "parse_regions",
    "partition_of",
    "partitions",
    "same_partition",
    "validate_region",
]
