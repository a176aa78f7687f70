"""A publish plan: one image → regions × accounts, read from TOML and checked up front (pure).

Everything a run would trip over later — an unknown key at any level, a region botocore does
not know, a placeholder a template does not have, a bucket name S3 refuses, two targets
sharing one bucket, an account id that does not match its role — is an error before any AWS
call, naming the plan's line (``PLAN.toml:12: unknown key 'regoin' (did you mean
'regions'?)``). Lines come from ``planlines``. docs/publish.md documents every key.

The tag names every AMI a plan registers carries are pinned here (prune reads them too):
``PLAN_TAG`` (the plan's ``name``), ``GENERATION_TAG`` (the rendered AMI name) and
``DIGEST_TAG`` (the bundle manifest's digest: the image's tar-stream SHA-1, the proof that an
existing AMI holds this image, see ``bundler.rerun``; for a directory source the tree's
fingerprint, and ``BUNDLE_DIGEST_TAG`` the manifest digest of the image built from it, see
``publish.tree``).
"""

from __future__ import annotations

import datetime
import difflib
import re
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundlerError, UsageError
from ..manifest import validate_name
from ..regions import validate_region
from ..s3.location import S3Location
from ..s3names import bucket_and_prefix
from ..source import MAX_IMAGE_SIZE
from .planlines import PlanLines

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib

PLAN_TAG = "ami-bundler:plan"
GENERATION_TAG = "ami-bundler:generation"
DIGEST_TAG = "ami-bundler:image-digest"
BUNDLE_DIGEST_TAG = "ami-bundler:bundle-digest"  # a directory source's AMIs (see publish.tree)
RESERVED_TAG_PREFIXES = ("ami-bundler:", "aws:")

# Placeholders: the AMI name template's, and those of the description and tag values (which
# must not change when a later run completes the same generation, so no date or time there).
NAME_FIELDS = ("plan", "arch", "date", "time", "digest")
TEXT_FIELDS = ("plan", "arch", "digest", "generation")
BUCKET_FIELDS = ("region", "account", "plan")
DIGEST_CHARS = 12  # {digest}: the first 12 hex digits of the image digest
DEFAULT_NAME_TEMPLATE = "{plan}-{date}-{arch}"
BUNDLE_ARCHITECTURES = ("i386", "x86_64", "arm64")
MAX_DEPRECATE_DAYS = 3650  # EC2: at most 10 years ahead
MAX_PLAN_BYTES = 1 << 20

_PLAN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# AMI names allow more, but the generation name is also an S3 folder and a tag value.
_GENERATION = re.compile(r"^[A-Za-z0-9._-]{3,128}$")
_ACCOUNT = re.compile(r"^[0-9]{12}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::([0-9]{12}):role/[\w+=,.@/-]{1,512}$")
_EXTERNAL_ID = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
_KERNEL = re.compile(r"^aki-[0-9a-f]{8,17}$")
_RAMDISK = re.compile(r"^ari-[0-9a-f]{8,17}$")


class PlanError(UsageError):
    """A plan that cannot be run, with the file and line: ``PLAN.toml:12: …``."""

    code = "plan"


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class AccountSpec:
    id: str  # 12 digits
    role_arn: str | None = None  # None: the credentials the run starts with are this account's
    external_id: str | None = None


@dataclass(frozen=True)
class Target:
    """One (account, region) and the bucket (and key prefix) its bundles go to."""

    account: AccountSpec
    region: str
    bucket: str
    prefix: str  # "" or "a/b/"

    @property
    def label(self) -> str:
        return f"{self.account.id}/{self.region}"

    def location(self, generation: str) -> S3Location:
        """Each generation's bundle has its own folder: BUCKET/PREFIX/GENERATION/."""
        return S3Location(self.bucket, f"{self.prefix}{generation}/")


@dataclass(frozen=True)
class VolumeOptions:
    """What a plan's ``[source]`` says about the image bundle-vol builds from a directory (the
    same meaning as bundle-vol's flags of these names); part of the tree's fingerprint."""

    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    secret_filter: bool = True
    fs_type: str = "auto"
    size_mib: int | None = None
    partition: str = "none"
    bootloader: str = "auto"
    kernel_cmdline: str = ""
    generate_menu_lst: bool = False
    generate_fstab: bool = False
    label: str | None = None
    uuid: str | None = None
    drop_oversize_xattrs: bool = False


@dataclass(frozen=True)
class Source:
    image: Path | None  # resolved against the plan file's directory; or:
    format: str | None = None  # None: by content
    allow_backing_file: bool = False
    directory: Path | None = None  # a root filesystem tree, imaged by bundle-vol
    volume: VolumeOptions = field(default_factory=VolumeOptions)

    @property
    def path(self) -> Path:
        out = self.image if self.image is not None else self.directory
        assert out is not None
        return out


@dataclass(frozen=True)
class Keys:
    cert: Path | None = None  # None: from the command line (-c / -k)
    private_key: Path | None = None
    ec2cert_dir: Path | None = None


@dataclass(frozen=True)
class Boot:
    architecture: str = "x86_64"
    virtualization_type: str | None = None
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    boot_mode: str | None = None
    ena_support: bool | None = None
    sriov_net_support: str | None = None
    imds_support: str | None = None
    block_device_mappings: tuple[str, ...] = ()  # as register -b: DEVICE=ephemeralN|none|…


@dataclass(frozen=True)
class Plan:
    name: str
    source: Source
    regions: tuple[str, ...]
    accounts: tuple[AccountSpec, ...]
    targets: tuple[Target, ...]  # accounts × regions, account by account
    bucket_template: str
    ami_name: str = DEFAULT_NAME_TEMPLATE
    bundle_name: str = ""  # the bundle's NAME (NAME.manifest.xml); default: the plan's name
    user: str = ""  # the account id in the manifest; default: the first account's
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    launch_permissions: tuple[str, ...] = ()  # account ids, org/OU ARNs, "all"
    boot: Boot = field(default_factory=Boot)
    keys: Keys = field(default_factory=Keys)
    compression: str = "default"
    deprecate_after_days: int | None = None
    deregistration_protection: bool = False
    path: str = "PLAN.toml"

    @property
    def manifest_name(self) -> str:
        return f"{self.bundle_name}.manifest.xml"

    def generation(self, *, digest: str, when: datetime.datetime) -> str:
        """The AMI name this run would give a new generation of the image ``digest``."""
        return render(self.ami_name, name_values(self, digest=digest, when=when))

    def text_values(self, *, digest: str, generation: str) -> dict[str, str]:
        return {"plan": self.name, "arch": self.boot.architecture,
                "digest": digest[:DIGEST_CHARS], "generation": generation}

    def rendered_description(self, *, digest: str, generation: str) -> str | None:
        if self.description is None:
            return None
        return render(self.description, self.text_values(digest=digest, generation=generation))

    def rendered_tags(self, *, digest: str, generation: str) -> dict[str, str]:
        """The plan's tags and the three pinned ones, as every AMI of ``generation`` has them."""
        values = self.text_values(digest=digest, generation=generation)
        tags = {key: render(value, values) for key, value in self.tags.items()}
        tags.update({PLAN_TAG: self.name, GENERATION_TAG: generation, DIGEST_TAG: digest})
        return tags


def name_values(plan: Plan, *, digest: str, when: datetime.datetime) -> dict[str, str]:
    when = when.astimezone(datetime.timezone.utc)
    return {"plan": plan.name, "arch": plan.boot.architecture, "date": when.strftime("%Y-%m-%d"),
            "time": when.strftime("%H%M%S"), "digest": digest[:DIGEST_CHARS]}


def render(template: str, values: Mapping[str, str]) -> str:
    return template.format_map(dict(values))


def publish_time(environ: Mapping[str, str], now: datetime.datetime | None = None
                 ) -> datetime.datetime:
    """The time ``{date}`` and ``{time}`` render: SOURCE_DATE_EPOCH when set (reproducible
    builds: CI sets it from the commit), else now (UTC)."""
    epoch = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        if not epoch.isdigit():
            raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r}: expected whole seconds since 1970")
        return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
    return now or datetime.datetime.now(datetime.timezone.utc)


# --------------------------------------------------------------------------- reading


def load_plan(path: Path | str) -> Plan:
    """Read and check the plan at ``path``; relative paths in it are relative to its directory."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)  # /dev/zero is a path too
    except FileNotFoundError:
        raise PlanError(f"plan {path} not found") from None
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise PlanError(f"cannot read plan {path!r}: {exc}") from None
    if len(data) > MAX_PLAN_BYTES:
        raise PlanError(f"plan {path} is larger than {MAX_PLAN_BYTES // 1024} KiB: not a plan")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(f"plan {path} is not UTF-8 text") from None
    return parse_plan(text, source=str(path), base=path.parent)


def parse_plan(text: str, *, source: str = "PLAN.toml", base: Path | None = None) -> Plan:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = re.search(r"\(at line (\d+), column \d+\)$", message)
        where = m.group(1) if m else "1"
        detail = message[: m.start()].strip() if m else message
        raise PlanError(f"{source}:{where}: not valid TOML: {detail}") from None
    return _Reader(data, PlanLines(text), source, base or Path(".")).plan()


_TOP = ("name", "ami_name", "description", "regions", "bucket", "source", "bundle", "accounts",
        "boot", "tags", "launch_permissions", "deprecate_after_days",
        "deregistration_protection")
_IMAGE_SOURCE = ("image", "format", "allow_backing_file")
_DIRECTORY_SOURCE = ("directory", "exclude", "include", "secret_filter", "fs_type", "size_mib",
                     "partition", "bootloader", "kernel_cmdline", "generate_menu_lst",
                     "generate_fstab", "label", "uuid", "drop_oversize_xattrs")
_SOURCE = (*_IMAGE_SOURCE, *_DIRECTORY_SOURCE)
MAX_SIZE_MIB = MAX_IMAGE_SIZE >> 20  # bundle-vol's -s: EC2's instance-store image limit
_BUNDLE = ("name", "user", "cert", "private_key", "ec2cert_dir", "compression")
_ACCOUNT_KEYS = ("id", "role_arn", "external_id")
_BOOT = ("architecture", "virtualization_type", "kernel_id", "ramdisk_id", "boot_mode",
         "ena_support", "sriov_net_support", "imds_support", "block_device_mappings")
_REQUIRED = ("name", "regions", "bucket", "source", "accounts")


class _Reader:
    def __init__(self, data: dict[str, Any], lines: PlanLines, source: str, base: Path) -> None:
        self.data = data
        self.lines = lines
        self.source = source
        self.base = base

    # errors ---------------------------------------------------------------

    def error(self, path: Sequence[str | int], message: str, *, needle: str | None = None,
              nth: int = 1, hint: str | None = None) -> PlanError:
        line = self.lines.line_of(path, needle, nth)
        return PlanError(f"{self.source}:{line}: {message}", hint=hint)

    def where(self, path: Sequence[str | int]) -> str:
        """A key path as people write it: source.image, accounts[2].role_arn."""
        out = ""
        for part in path:
            out += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out

    def keys(self, table: Mapping[str, Any], allowed: Sequence[str], path: Sequence[str | int]
             ) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                inside = f" in [{self.where(path)}]" if path else ""
                raise self.error((*path, key), f"unknown key {key!r}{inside}{hint}")

    # typed getters ----------------------------------------------------------

    def get(self, table: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
            path: Sequence[str | int], what: str) -> Any:
        value = table.get(key)
        if value is None:
            return None
        # bool is an int in Python, never in a plan
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error((*path, key), f"{self.where((*path, key))} must be {what}")
        return value

    def text(self, table: Mapping[str, Any], key: str, path: Sequence[str | int]) -> str | None:
        value: str | None = self.get(table, key, str, path, "a string")
        if value is not None and not value.strip():
            raise self.error((*path, key), f"{self.where((*path, key))} is empty")
        return value

    def choice(self, table: Mapping[str, Any], key: str, path: Sequence[str | int],
               choices: Sequence[str]) -> str | None:
        value = self.text(table, key, path)
        if value is not None and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error((*path, key), f"{self.where((*path, key))} {value!r} is not one of "
                             f"{', '.join(choices)}{hint}")
        return value

    def strings(self, table: Mapping[str, Any], key: str, path: Sequence[str | int]
                ) -> list[str]:
        value = table.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error((*path, key), f"{self.where((*path, key))} must be a list of strings")
        return list(value)

    def table(self, key: str) -> dict[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.error((key,), f"{key} must be a table ([{key}])")
        return value

    def template(self, value: str, fields: Sequence[str], path: Sequence[str | int]) -> str:
        """``value`` uses only the placeholders ``fields`` and formats."""
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise self.error(path, f"{self.where(path)} {value!r} is not a valid template: {exc} "
                             "(write a literal brace as {{ or }})") from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in fields:
                close = difflib.get_close_matches(name, fields, n=1, cutoff=0.5)
                hint = f" (did you mean {{{close[0]}}}?)" if close else ""
                shown = "{" + name + "}" if name else "{}"
                raise self.error(path, f"{self.where(path)}: unknown placeholder {shown}{hint}; "
                                 f"known: {', '.join('{' + f + '}' for f in fields)}")
            if spec or conversion:
                raise self.error(path, f"{self.where(path)}: placeholder {{{name}}} takes no "
                                 "format or conversion")
        return value

    # the plan ---------------------------------------------------------------

    def plan(self) -> Plan:
        d = self.data
        self.keys(d, _TOP, ())
        for key in _REQUIRED:
            if key not in d:
                raise PlanError(f"{self.source}:1: missing required key {key!r}",
                                hint="docs/publish.md lists every key; examples/publish.toml "
                                "is a complete plan")
        name = self.text(d, "name", ())
        assert name is not None
        if not _PLAN_NAME.match(name):
            raise self.error(("name",), f"name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
                             "(it is the value of the AMIs' ami-bundler:plan tag)")
        regions = self.regions()
        accounts = self.accounts()
        boot = self.boot()
        source = self.source_table()
        bundle = self.table("bundle")
        self.keys(bundle, _BUNDLE, ("bundle",))
        bundle_name = self.text(bundle, "name", ("bundle",)) or name
        try:
            validate_name(bundle_name)
        except UsageError as exc:
            raise self.error(("bundle", "name"),
                             str(exc).replace("; pass another --prefix", "")) from None
        user = self.text(bundle, "user", ("bundle",)) or accounts[0].id
        if not _ACCOUNT.match(user.replace("-", "")):
            raise self.error(("bundle", "user"), f"bundle.user {user!r} is not a 12-digit "
                             "account id")
        keys = Keys(*(self.path_value(bundle, k, ("bundle",))
                      for k in ("cert", "private_key", "ec2cert_dir")))
        compression = self.text(bundle, "compression", ("bundle",)) or "default"
        if compression not in ("default", "fast", "best") and not (
                compression.isdigit() and 1 <= int(compression) <= 9):
            raise self.error(("bundle", "compression"), f"bundle.compression {compression!r}: "
                             "expected default, fast, best or 1-9")
        ami_name = self.text(d, "ami_name", ()) or DEFAULT_NAME_TEMPLATE
        self.template(ami_name, NAME_FIELDS, ("ami_name",))
        sample = render(ami_name, {"plan": name, "arch": boot.architecture, "date": "2026-12-31",
                                   "time": "235959", "digest": "0" * DIGEST_CHARS})
        if not _GENERATION.match(sample):
            raise self.error(("ami_name",), f"ami_name {ami_name!r} renders names like "
                             f"{sample!r}: an AMI name here is 3-128 characters of A-Z a-z 0-9 . "
                             "_ - (it also names the generation's S3 folder)")
        description = self.text(d, "description", ())
        if description is not None:
            self.template(description, TEXT_FIELDS, ("description",))
            if len(description) > 255:
                raise self.error(("description",), "description is longer than EC2's 255 "
                                 "characters")
        bucket_template = self.text(d, "bucket", ())
        assert bucket_template is not None
        targets = self.targets(bucket_template, name, regions, accounts)
        return Plan(
            name=name, source=source, regions=regions, accounts=accounts, targets=targets,
            bucket_template=bucket_template, ami_name=ami_name, bundle_name=bundle_name,
            user=user.replace("-", ""), description=description, tags=self.tags(),
            launch_permissions=self.launch_permissions(), boot=boot, keys=keys,
            compression=compression, deprecate_after_days=self.deprecate_days(),
            deregistration_protection=bool(self.get(d, "deregistration_protection", bool, (),
                                                    "true or false")),
            path=self.source,
        )

    def path_value(self, table: Mapping[str, Any], key: str, path: Sequence[str | int]
                   ) -> Path | None:
        value = self.text(table, key, path)
        return None if value is None else (self.base / Path(value).expanduser())

    def regions(self) -> tuple[str, ...]:
        values = self.strings(self.data, "regions", ())
        if not values:
            raise self.error(("regions",), "regions is empty: list at least one region")
        out: list[str] = []
        for value in values:
            try:
                region = validate_region(value, "region")
            except UsageError as exc:
                raise self.error(("regions",), str(exc), needle=f'"{value}"') from None
            if region in out:
                raise self.error(("regions",), f"region {region} is listed twice",
                                 needle=f'"{value}"', nth=values.count(value))
            out.append(region)
        return tuple(out)

    def accounts(self) -> tuple[AccountSpec, ...]:
        value = self.data.get("accounts")
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise self.error(("accounts",), "accounts must be one or more [[accounts]] tables "
                             "(id = \"123456789012\", optional role_arn)")
        out: list[AccountSpec] = []
        for i, table in enumerate(value):
            path = ("accounts", i)
            self.keys(table, _ACCOUNT_KEYS, path)
            raw = self.text(table, "id", path)
            if raw is None:
                raise self.error(path, f"{self.where(path)} has no id")
            account = raw.replace("-", "")
            if not _ACCOUNT.match(account):
                raise self.error((*path, "id"), f"{self.where((*path, 'id'))} {raw!r} is not a "
                                 "12-digit account id")
            if any(a.id == account for a in out):
                raise self.error((*path, "id"), f"account {account} is listed twice")
            role = self.text(table, "role_arn", path)
            if role is not None:
                m = _ROLE_ARN.match(role)
                if not m:
                    raise self.error((*path, "role_arn"), f"{self.where((*path, 'role_arn'))} "
                                     f"{role!r} is not an IAM role ARN "
                                     "(arn:aws:iam::ACCOUNT:role/NAME)")
                if m.group(1) != account:
                    raise self.error((*path, "role_arn"), f"role {role} is in account "
                                     f"{m.group(1)}, not in {account}: the AMIs would land in "
                                     "another account than the plan says")
            external = self.text(table, "external_id", path)
            if external is not None:
                if role is None:
                    raise self.error((*path, "external_id"), "external_id goes with role_arn")
                if not _EXTERNAL_ID.match(external):
                    raise self.error((*path, "external_id"), "external_id must be 2-1224 "
                                     "characters of letters, digits and +=,.@:/-")
            out.append(AccountSpec(account, role, external))
        return tuple(out)

    def source_table(self) -> Source:
        table = self.table("source")
        p = ("source",)
        self.keys(table, _SOURCE, p)
        image = self.path_value(table, "image", p)
        directory = self.path_value(table, "directory", p)
        if image is None and directory is None:
            raise self.error(p, "source needs image = \"PATH\" (a disk image in any format the "
                             "bundler reads) or directory = \"PATH\" (a root filesystem tree)")
        if image is not None and directory is not None:
            raise self.error((*p, "directory"), "source has both image and directory: give one")
        if image is not None:
            wrong = [k for k in table if k in _DIRECTORY_SOURCE]
            if wrong:
                raise self.error((*p, wrong[0]), f"source.{wrong[0]} goes with a directory "
                                 "source, not an image")
            from ..images import FORMATS

            fmt = self.choice(table, "format", p, FORMATS)
            backing = self.get(table, "allow_backing_file", bool, p, "true or false")
            return Source(image, fmt, bool(backing))
        wrong = [k for k in table if k in _IMAGE_SOURCE and k != "image"]
        if wrong:
            raise self.error((*p, wrong[0]), f"source.{wrong[0]} goes with an image source, not "
                             "a directory")
        return Source(None, directory=directory, volume=self.volume_options(table, p))

    def volume_options(self, table: Mapping[str, Any], p: tuple[str, ...]) -> VolumeOptions:
        from ..volume import imagefs

        def flag(key: str, default: bool) -> bool:
            value = self.get(table, key, bool, p, "true or false")
            return default if value is None else bool(value)

        size = self.get(table, "size_mib", int, p, "a whole number of MiB")
        if size is not None and not 1 <= size <= MAX_SIZE_MIB:
            raise self.error((*p, "size_mib"), f"source.size_mib {size}: 1 to {MAX_SIZE_MIB} MiB "
                             "(EC2's instance-store image limit)")
        fs_type = self.choice(table, "fs_type", p, ("auto", "ext4", "xfs", "btrfs")) or "auto"
        partition = self.choice(table, "partition", p, ("none", "mbr", "gpt")) or "none"
        bootloader = self.choice(table, "bootloader", p, ("auto", "grub2", "none")) or "auto"
        label = self.get(table, "label", str, p, "a string")
        uuid = self.text(table, "uuid", p)
        for key, check in (("label", lambda v: imagefs.check_label(
                v, "btrfs" if fs_type == "auto" else fs_type)), ("uuid", imagefs.check_uuid)):
            value = label if key == "label" else uuid
            if value:
                try:
                    check(value)
                except BundlerError as exc:
                    message = str(exc).replace("--uuid", "uuid").replace(
                        ": pass a shorter --label", "")
                    raise self.error((*p, key), f"source.{key}: {message}") from None
        cmdline = self.get(table, "kernel_cmdline", str, p, "a string") or ""
        if "\n" in cmdline:
            raise self.error((*p, "kernel_cmdline"), "source.kernel_cmdline is one line")
        return VolumeOptions(
            exclude=tuple(self.strings(table, "exclude", p)),
            include=tuple(self.strings(table, "include", p)),
            secret_filter=flag("secret_filter", True), fs_type=fs_type, size_mib=size,
            partition=partition, bootloader=bootloader, kernel_cmdline=cmdline,
            generate_menu_lst=flag("generate_menu_lst", False),
            generate_fstab=flag("generate_fstab", False), label=label, uuid=uuid,
            drop_oversize_xattrs=flag("drop_oversize_xattrs", False))

    def boot(self) -> Boot:
        from ..ec2 import BOOT_MODES, IMDS_SUPPORT, VIRTUALIZATION_TYPES

        table = self.table("boot")
        p = ("boot",)
        self.keys(table, _BOOT, p)
        arch = self.choice(table, "architecture", p, BUNDLE_ARCHITECTURES) or "x86_64"
        kernel = self.text(table, "kernel_id", p)
        if kernel is not None and not _KERNEL.match(kernel):
            raise self.error((*p, "kernel_id"), f"boot.kernel_id {kernel!r} is not a kernel id "
                             "(aki-…)")
        ramdisk = self.text(table, "ramdisk_id", p)
        if ramdisk is not None and not _RAMDISK.match(ramdisk):
            raise self.error((*p, "ramdisk_id"), f"boot.ramdisk_id {ramdisk!r} is not a ramdisk "
                             "id (ari-…)")
        mappings = self.strings(table, "block_device_mappings", p)
        if mappings:
            from ..ec2 import parse_register_block_device_mappings

            for item in mappings:
                try:
                    parse_register_block_device_mappings([item])
                except UsageError as exc:
                    raise self.error((*p, "block_device_mappings"), str(exc).replace(
                        "-b/--block-device-mapping", "block device mapping").replace(
                        "-b ", "block device mapping "), needle=item) from None
        return Boot(
            architecture=arch,
            virtualization_type=self.choice(table, "virtualization_type", p, VIRTUALIZATION_TYPES),
            kernel_id=kernel,
            ramdisk_id=ramdisk,
            boot_mode=self.choice(table, "boot_mode", p, BOOT_MODES),
            ena_support=self.get(table, "ena_support", bool, p, "true or false"),
            sriov_net_support=self.choice(table, "sriov_net_support", p, ("simple",)),
            imds_support=self.choice(table, "imds_support", p, IMDS_SUPPORT),
            block_device_mappings=tuple(mappings),
        )

    def tags(self) -> dict[str, str]:
        table = self.table("tags")
        out: dict[str, str] = {}
        for key, value in table.items():
            path = ("tags", key)
            if not isinstance(value, str):
                raise self.error(path, f"tag {key!r} must have a string value")
            if key.lower().startswith(RESERVED_TAG_PREFIXES):
                raise self.error(path, f"tag {key!r}: keys starting with "
                                 f"{' or '.join(RESERVED_TAG_PREFIXES)} are reserved "
                                 "(ami-bundler sets its own, AWS the aws: ones)")
            if not 1 <= len(key) <= 128 or len(value) > 256:
                raise self.error(path, f"tag {key!r}: EC2 allows keys of 1-128 and values of "
                                 "up to 256 characters")
            out[key] = self.template(value, TEXT_FIELDS, path)
        if len(out) + 3 > 50:
            raise self.error(("tags",), f"{len(out)} tags and ami-bundler's 3 are more than "
                             "EC2's 50 per AMI")
        return out

    def launch_permissions(self) -> tuple[str, ...]:
        from ..ec2 import parse_launch_permissions

        out: list[str] = []
        for value in self.strings(self.data, "launch_permissions", ()):
            try:
                out += [v for v in parse_launch_permissions([value]) if v not in out]
            except UsageError as exc:
                raise self.error(("launch_permissions",), str(exc).replace(
                    "--launch-permission", "launch permission"), needle=value) from None
        return tuple(out)

    def deprecate_days(self) -> int | None:
        days: int | None = self.get(self.data, "deprecate_after_days", int, (),
                                    "a whole number of days")
        if days is not None and not 1 <= days <= MAX_DEPRECATE_DAYS:
            raise self.error(("deprecate_after_days",), f"deprecate_after_days {days}: EC2 "
                             f"allows 1 to {MAX_DEPRECATE_DAYS} days (10 years)")
        return days

    def targets(self, template: str, name: str, regions: Sequence[str],
                accounts: Sequence[AccountSpec]) -> tuple[Target, ...]:
        path = ("bucket",)
        self.template(template, BUCKET_FIELDS, path)
        out: list[Target] = []
        seen: dict[str, str] = {}
        for account in accounts:
            for region in regions:
                rendered = render(template, {"region": region, "account": account.id,
                                             "plan": name})
                try:
                    bucket, prefix = bucket_and_prefix(rendered, "bucket")
                except UsageError as exc:
                    raise self.error(path, f"bucket {template!r} renders {rendered!r} for "
                                     f"{account.id}/{region}: {exc}") from None
                label = f"{account.id}/{region}"
                if bucket in seen:
                    other = seen[bucket].split("/")
                    missing = "{region}" if other[0] == account.id else "{account}"
                    raise self.error(path, f"bucket {template!r} gives {bucket} to both "
                                     f"{seen[bucket]} and {label}: each account and region needs "
                                     f"its own bucket (add {missing})")
                seen[bucket] = label
                out.append(Target(account, region, bucket, prefix))
        return tuple(out)


__all__ = [
    "AccountSpec",
    "BUNDLE_DIGEST_TAG",
    "Boot",
    "DIGEST_TAG",
    "GENERATION_TAG",
    "Keys",
    "PLAN_TAG",
    "Plan",
    "PlanError",
    "Source",
    "Target",
    "VolumeOptions",
    "load_plan",
    "parse_plan",
    "publish_time",
    "render",
]
