"""A problem on a node, with its fix: what the agent reports and the doctor prints.

Pure, so the steps of a pass that decide (the gate, the intake) can name problems
without importing the node scan and what it runs (VERSION probes).
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    code: str
    severity: str
    message: str
    fix: str
    path: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
        }
        if self.path:
            out["path"] = self.path
        return out
