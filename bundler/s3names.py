"""S3 naming rules, as AWS states them now (pure).

General purpose bucket names (docs.aws.amazon.com, "General purpose bucket naming rules"):
3-63 characters of a-z 0-9 . -, beginning and ending with a letter or digit, no two adjacent
periods, not shaped like an IP address, not starting with ``xn--``, ``sthree-`` or
``amzn-s3-demo-``, not ending with ``-s3alias``, ``--ol-s3``, ``.mrap``, ``--x-s3`` or
``--table-s3`` (reserved for access points, Multi-Region Access Points, directory and table
buckets). S3 stopped creating the legacy names (capitals, underscores, up to 255) in 2018,
and they cannot be reached with virtual-hosted addressing; ami-bundler refuses them.

Key prefixes: S3 keys are up to 1024 bytes of UTF-8. A prefix is written as path segments
between ``/``; empty, ``.`` and ``..`` segments are refused (S3 would keep them literally, so
``a/../b`` and ``a//b`` name other keys than they appear to), as are control characters.
"""

from __future__ import annotations

import re

from .errors import UsageError

MAX_KEY_BYTES = 1024
_BUCKET_CHARS = re.compile(r"[a-z0-9.-]+")
_IP_SHAPED = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def bucket_problem(name: str) -> str | None:
    """Why ``name`` is not a valid bucket name today, or None."""
    if not 3 <= len(name) <= 63:
        return f"is {len(name)} characters long (3 to 63 allowed)"
    if not _BUCKET_CHARS.fullmatch(name):
        bad = sorted({c for c in name if not _BUCKET_CHARS.fullmatch(c)})
        return f"holds {''.join(bad)!r}: only lowercase letters, digits, '.' and '-' are allowed"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "must begin and end with a letter or digit"
    if ".." in name:
        return "holds two adjacent periods"
    if _IP_SHAPED.fullmatch(name):
        return "is shaped like an IP address"
    for prefix in _RESERVED_PREFIXES:
        if name.startswith(prefix):
            return f"starts with the reserved prefix {prefix!r}"
    for suffix in _RESERVED_SUFFIXES:
        if name.endswith(suffix):
            return f"ends with the reserved suffix {suffix!r}"
    return None


def check_bucket(name: str, flag: str = "--bucket") -> str:
    problem = bucket_problem(name)
    if problem:
        raise UsageError(f"invalid bucket name {_show(name)} in {flag}: it {problem}",
                         hint="S3 bucket names are 3-63 characters of a-z 0-9 . - (AWS's naming "
                              "rules)")
    return name


def check_prefix(prefix: str, flag: str = "--bucket") -> str:
    """A key prefix ``a/b`` (outer slashes already stripped) → ``"a/b/"``; "" stays ""."""
    if not prefix:
        return ""
    for segment in prefix.split("/"):
        if segment in ("", ".", ".."):
            what = "an empty segment ('//')" if not segment else f"a {segment!r} segment"
            raise UsageError(f"key prefix {_show(prefix)} in {flag} holds {what}: S3 keeps it "
                             "literally, so the objects would not be where the path suggests",
                             hint="write the prefix as plain segments, e.g. BUCKET/amis/web")
    if _CONTROL.search(prefix):
        raise UsageError(f"key prefix {_show(prefix)} in {flag} holds control characters")
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError(f"key prefix {_show(prefix)} in {flag} is not valid UTF-8") from None
    if size + 1 > MAX_KEY_BYTES - 64:  # room for NAME.part.NN / NAME.manifest.xml
        raise UsageError(f"key prefix in {flag} is {size} bytes: S3 keys are at most "
                         f"{MAX_KEY_BYTES} bytes")
    return prefix + "/"


def bucket_and_prefix(value: str, flag: str = "--bucket") -> tuple[str, str]:
    """``BUCKET[/KEY/PREFIX]`` → (bucket, "key/prefix/" or "") as classic split_container, but
    with AWS's current naming rules checked."""
    segments = value.strip("/").split("/", 1)
    bucket = segments[0]
    if not bucket:
        raise UsageError(f"empty bucket in {flag} {_show(value)}; expected BUCKET[/PREFIX]")
    check_bucket(bucket, flag)
    return bucket, check_prefix(segments[1] if len(segments) > 1 else "", flag)
