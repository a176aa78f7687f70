"""Is it safe to share? AWS's guidelines for shared AMIs, as rules over a ``Tree``.

Warnings by default, errors with ``public=True`` (``check --public``, and before
``--launch-permission all``). Name-based and content-based secret detection is the
content-aware filter's (``bundler.volume.secrets_filter``): one owner for what counts as a
private key; this module adds what only matters for sharing (root's password, sshd, AWS
access keys in configuration, the key installer).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..volume import secrets_filter
from .findings import Finding, Severity
from .tree import Entry, Tree

SCAN_PREFIX = secrets_filter.SCAN_PREFIX
# Where configuration lives: AWS access keys are looked for in these trees' text files.
CONFIG_ROOTS = ("/etc/", "/root/", "/home/", "/opt/", "/srv/", "/usr/local/", "/var/lib/cloud/",
                "/var/www/")
CONFIG_NAMES = (".env", "environment", "credentials", "config")
CONFIG_MAX_SIZE = 1024 * 1024
# Assembled so the pattern itself is never an access-key-shaped literal.
_ACCESS_KEY = re.compile(rb"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z2-7]{16}\b")
_SECRET_KEY = re.compile(rb"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}")
_SHELLS_NO_LOGIN = ("", "*", "x", "!", "!!", "!*")
KEY_INSTALLERS = (
    ("/usr/bin/cloud-init", "cloud-init"),
    ("/usr/share/ec2-instance-connect", "EC2 Instance Connect"),
    ("/usr/lib/systemd/system/ec2-instance-connect.service", "EC2 Instance Connect"),
    ("/etc/init.d/ec2-get-credentials", "ec2-get-credentials"),
    ("/usr/bin/amazon-ec2-init", "amazon-ec2-init"),
    ("/usr/sbin/waagent", "waagent"),
)

# What the filter's name reasons mean for sharing: (rule id, message, fix).
_BY_REASON: tuple[tuple[str, str, str, str], ...] = (
    ("ssh authorized_keys", "share.authorized-keys",
     "an authorized_keys file: whoever holds that key logs in to every instance",
     "delete it; the instance's key pair is installed at first boot (cloud-init)"),
    ("AWS credentials", "share.aws-credentials",
     "AWS credentials: everyone who launches the AMI can use them",
     "delete the file and rotate the keys (IAM roles give instances credentials)"),
    ("shell history", "share.shell-history", "a shell history: it shows commands, often "
     "passwords and tokens", "delete it (and unset HISTFILE while building the image)"),
    ("history", "share.shell-history", "a command history", "delete it"),
    ("credentials file", "share.credentials", "a credentials file",
     "delete it and change the credentials it holds"),
    ("registry credentials", "share.credentials", "container registry credentials",
     "delete it and revoke the tokens"),
)


@dataclass
class ShareContext:
    tree: Tree
    severity: Severity
    findings: list[Finding] = field(default_factory=list)

    def add(self, rule_id: str, path: str | None, message: str, fix: str,
            severity: Severity | None = None) -> None:
        self.findings.append(Finding(severity or self.severity, rule_id, path, message, fix))


def _rel(path: str) -> str:
    return path.lstrip("/")


def rule_secret_names(ctx: ShareContext) -> None:
    """Files secret by their name: the filter's rules, told apart for sharing."""
    for e in ctx.tree.entries():
        if e.kind != "file":
            continue
        reason = secrets_filter.secret_by_name(_rel(e.path))
        if reason is None:
            continue
        if reason == "ssh authorized_keys" and e.size == 0:
            continue
        for key, rule_id, message, fix in _BY_REASON:
            if key in reason:
                ctx.add(rule_id, e.path, message, fix)
                break
        else:
            if "editor" in reason:
                ctx.add("share.leftover", e.path, f"{reason}: may hold what was edited",
                        "delete it", "note" if ctx.severity != "error" else "warning")
            else:
                ctx.add("share.private-key", e.path, f"{reason}: a private key in a shared "
                        "image is public", "delete it")


def _is_host_key(e: Entry) -> bool:
    return e.path.startswith("/etc/ssh/") and re.fullmatch(r"ssh_host_\w+_key", e.name) is not None


def _config_candidate(e: Entry) -> bool:
    if e.size == 0 or e.size > CONFIG_MAX_SIZE:
        return False
    if e.path.startswith(CONFIG_ROOTS) and not e.path.startswith("/usr/local/lib/"):
        return True
    return e.name in CONFIG_NAMES or e.name.endswith(".env")


def rule_contents(ctx: ShareContext) -> None:
    """Private keys by content (the filter's scan) and AWS access keys in configuration,
    reading each candidate's first 64 KiB once."""
    named = {e.path for e in ctx.tree.entries()
             if e.kind == "file" and secrets_filter.secret_by_name(_rel(e.path))}
    candidates: list[tuple[Entry, bool, bool]] = []
    for e in ctx.tree.entries():
        if e.kind != "file" or e.path in named:
            continue
        st = _Stat(e)
        keys = secrets_filter.worth_scanning(_rel(e.path), st)  # type: ignore[arg-type]
        config = _config_candidate(e)
        if keys or config:
            candidates.append((e, keys, config))
    wanted = {e.path: (keys, config) for e, keys, config in candidates}
    for e, data in ctx.tree.read_prefixes([c[0] for c in candidates], SCAN_PREFIX):
        if data is None:
            continue
        keys, config = wanted[e.path]
        if keys:
            kind = secrets_filter.private_key_in(data, e.name.lower())
            if kind is not None:
                if _is_host_key(e):
                    ctx.add("share.ssh-host-key", e.path,
                            "an SSH host private key: every instance would share it, so "
                            "anyone with the AMI can impersonate them",
                            "delete /etc/ssh/ssh_host_*_key*; they must be generated at first "
                            "boot (cloud-init, or ssh-keygen -A in a first-boot unit)")
                else:
                    ctx.add("share.private-key", e.path,
                            f"{kind}: a private key in a shared image is public",
                            "delete it (bundle-vol's secret filter leaves such files out)")
                continue
        if config:
            m = _ACCESS_KEY.search(data)
            if m and not m.group(0).endswith(b"EXAMPLE"):
                ctx.add("share.aws-credentials", e.path,
                        f"an AWS access key id ({m.group(0)[:4].decode()}…) in a configuration "
                        "file", "remove it and rotate the key (use an IAM instance role)")
            elif _SECRET_KEY.search(data):
                ctx.add("share.aws-credentials", e.path,
                        "an aws_secret_access_key in a configuration file",
                        "remove it and rotate the key (use an IAM instance role)")


class _Stat:
    """The two stat fields the filter's worth_scanning() looks at."""

    def __init__(self, e: Entry) -> None:
        self.st_mode = e.mode
        self.st_size = e.size


def rule_root_password(ctx: ShareContext) -> None:
    text = ctx.tree.read_text("/etc/shadow")
    if text is None:
        return
    for line in text.splitlines():
        fields = line.split(":")
        if fields[0] != "root" or len(fields) < 2:
            continue
        pw = fields[1]
        if pw == "":
            ctx.add("share.root-password", "/etc/shadow",
                    "root has an empty password: anyone on the console logs in as root",
                    "lock it: passwd -l root (or usermod -p '*' root)")
        elif not pw.startswith("!") and pw not in _SHELLS_NO_LOGIN:
            ctx.add("share.root-password", "/etc/shadow",
                    "root has a password hash: everyone who launches the AMI gets it to crack",
                    "lock it: passwd -l root (or usermod -p '*' root)")
        return


def _sshd_options(tree: Tree) -> dict[str, str]:
    """sshd's effective global options: the first value wins, Include expanded in place."""
    options: dict[str, str] = {}

    def parse(path: str, depth: int = 0) -> bool:
        for raw in (tree.read_text(path) or "").splitlines():
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            key = words[0].lower()
            if key == "match":
                return False        # global options end at the first Match block
            if key == "include" and depth < 4:
                for pattern in words[1:]:
                    pattern = pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}"
                    directory, _, glob = pattern.rpartition("/")
                    for e in tree.glob(directory or "/", glob):
                        if not parse(e.path, depth + 1):
                            return False
                continue
            if len(words) > 1:
                options.setdefault(key, words[1].lower())
        return True

    parse("/etc/ssh/sshd_config")
    return options


def rule_sshd(ctx: ShareContext) -> None:
    if not ctx.tree.is_file("/etc/ssh/sshd_config"):
        return
    opts = _sshd_options(ctx.tree)
    if opts.get("permitrootlogin") == "yes" and opts.get("passwordauthentication", "yes") != "no":
        ctx.add("share.sshd-root-password", "/etc/ssh/sshd_config",
                "sshd lets root log in with a password (PermitRootLogin yes, password "
                "authentication on)",
                "set PermitRootLogin prohibit-password (or no) and PasswordAuthentication no")


def rule_machine_id(ctx: ShareContext) -> None:
    data = ctx.tree.read("/etc/machine-id", 256)
    if data and data.strip():
        ctx.add("share.machine-id", "/etc/machine-id",
                "/etc/machine-id is set: every instance would share it (DHCP client ids, "
                "journal, systemd-networkd addresses)",
                "empty it (truncate -s 0 /etc/machine-id) so each instance makes its own",
                "note")


def rule_key_installer(ctx: ShareContext) -> None:
    if any(ctx.tree.exists(p) for p, _ in KEY_INSTALLERS):
        return
    ctx.add("share.key-installer", None,
            "nothing installs the instance's key pair from the instance metadata (no "
            "cloud-init, EC2 Instance Connect, ...): users cannot log in",
            "install cloud-init (or another instance-metadata key installer)")


RULES: tuple[Callable[[ShareContext], None], ...] = (
    rule_secret_names, rule_contents, rule_root_password, rule_sshd, rule_machine_id,
    rule_key_installer)


def share_findings(tree: Tree, *, public: bool = False,
                   rules: Iterable[Callable[[ShareContext], None]] = RULES) -> list[Finding]:
    ctx = ShareContext(tree, "error" if public else "warning")
    for rule in rules:
        rule(ctx)
    return ctx.findings
