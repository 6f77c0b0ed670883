"""A pydantic base that reads JSON the way Go's encoding/json does for the reference plugins.

Decision (documented in the README): keys match case-insensitively, an exact match
preferred, because Go's decoder does and users' configs written for the reference
plugins rely on it (`"isgateway": true` works there). `null` means "not given", as
in Go. Types are strict: `"mtu": "1500"` or `"isGateway": "true"` are errors, as
they are for the reference. Unknown keys are ignored (runtimes add their own).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from node_plugin.cni.errors import INVALID_CONFIG, CniError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class GoModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=False)

    @model_validator(mode="before")
    @classmethod
    def _fold_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        names = {(f.alias or n) for n, f in cls.model_fields.items()}
        by_lower = {name.lower(): name for name in names}
        out: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            if key in names:
                out[key] = value
                continue
            canon = by_lower.get(key.lower()) if isinstance(key, str) else None
            if canon is not None and canon not in data:
                out[canon] = value
            else:
                out[key] = value
        return out


def _parse_ip(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
    return value


def _parse_ip_or_cidr(value: Any) -> Any:
    """Requested addresses may be written `10.0.0.5` or `10.0.0.5/24` (the address counts)."""
    if isinstance(value, str):
        return _parse_ip(value.split("/", 1)[0] if "/" in value else value)
    return value


IP = Annotated[IPAddress, BeforeValidator(_parse_ip)]
RequestedIP = Annotated[IPAddress, BeforeValidator(_parse_ip_or_cidr)]


def field_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """('ipam', 'ranges', 0, 1, 'subnet') -> 'ipam.ranges[0][1].subnet'."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union")):
            continue
        else:
            out += f".{part}" if out else part
    return out


def config_error(exc: ValidationError, prefix: str = "") -> CniError:
    """The first validation problem as code 7, naming the field the way the user wrote it."""
    problems = []
    for item in exc.errors(include_url=False):
        path = field_path(tuple(item["loc"]), prefix)
        msg = item["msg"].removeprefix("Value error, ")
        problems.append(f"{path}: {msg}" if path else msg)
    first = problems[0] if problems else str(exc)
    return CniError(INVALID_CONFIG, f"invalid network config: {first}", "; ".join(problems[1:]))
