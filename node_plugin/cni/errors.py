"""CNI error codes and the one exception type every verb raises.

Codes 0-99 are the spec's (SPEC.md "Error codes"); 100+ are ours. The reference
plugins map every untyped failure to 999; we keep 999 for truly unexpected
failures and give the failures an operator must act on their own code, so a
runtime log line is enough to know what happened.
"""

from __future__ import annotations

# Spec codes.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_DEGRADED = 51

# cniwarden codes (documented in the README's "Plugins" section).
RANGE_EXHAUSTED = 110
ADDRESS_UNAVAILABLE = 111
DUPLICATE_ALLOCATION = 112
INTERFACE_EXISTS = 120
NETNS_UNAVAILABLE = 121
BRIDGE_CONFLICT = 122
DELEGATE_NOT_FOUND = 130
DELEGATE_FAILED = 131
DELEGATE_TIMEOUT = 132
CHECK_FAILED = 140
INTERNAL = 999


class CniError(Exception):
    """A failure reported to the runtime as `{"code", "msg", "details"}` on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, object]:
        out: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CniError({self.code}, {self.msg!r}, {self.details!r})"


def invalid_config(field: str, problem: str) -> CniError:
    """Code 7 with a message that starts with the offending field's path."""
    return CniError(INVALID_CONFIG, f"invalid network config: {field}: {problem}")
