"""What a check reports: findings with a severity, a stable id, the file concerned and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["error", "warning", "note"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "note")


@dataclass(frozen=True)
class Finding:
    severity: Severity
    id: str              # stable, e.g. "boot.kernel"; documented in the README
    path: str | None     # the file concerned, absolute inside the image, or None
    message: str
    fix: str

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)

    def with_severity(self, severity: Severity) -> Finding:
        return Finding(severity, self.id, self.path, self.message, self.fix)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Errors first, then by id and path: a stable order for tables, JSON and tests."""
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.id, f.path or ""))


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def counts(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
