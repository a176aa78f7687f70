"""``check``: will an image boot on the instance types that take instance-store roots, and is
it safe to share? Findings (``findings``) from rules (``boot_rules``, ``share_rules``) over a
read-only view of the root filesystem (``tree``; images through ``debugfs``; bundles and
sources in ``sources``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .boot_rules import boot_findings
from .findings import Finding, counts, has_errors, sort_findings
from .share_rules import share_findings
from .tree import Tree, VolumeFacts

__all__ = ["CheckReport", "Finding", "VolumeFacts", "check_tree"]


@dataclass
class CheckReport:
    source: str
    facts: VolumeFacts
    findings: list[Finding]
    public: bool
    entries: int
    seconds: float = 0.0
    rules: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not has_errors(self.findings)

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def summary(self) -> dict[str, Any]:
        f = self.facts
        return {
            "source": self.source, "kind": f.kind, "ok": self.ok, "public": self.public,
            "counts": counts(self.findings), "entries": self.entries,
            "filesystem": {"type": f.fs_type, "uuid": f.uuid, "label": f.label},
            "disk": {"bytes": f.disk_bytes, "partition_table": f.scheme,
                     "partitions": f.partitions, "boot_code": f.boot_code},
            "findings": [x.as_dict() for x in self.findings],
            "seconds": round(self.seconds, 3),
        }


def check_tree(tree: Tree, *, public: bool = False, boot: bool = True,
               share: bool = True, started: float | None = None) -> CheckReport:
    """Run the boot rules and the sharing rules (errors when ``public``) over ``tree``."""
    started = time.monotonic() if started is None else started
    findings: list[Finding] = []
    rules = []
    if boot:
        findings += boot_findings(tree)
        rules.append("boot")
    if share:
        findings += share_findings(tree, public=public)
        rules.append("share")
    return CheckReport(tree.facts.description, tree.facts, sort_findings(findings), public,
                       len(tree), time.monotonic() - started, rules)
