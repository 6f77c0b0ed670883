"""The CNINetwork API as Python types: names the CRDs fix, and the spec model.

Pure: no kopf or kubernetes imports, so the rendering and safety logic can be
tested on plain dicts. The CRD schema in `crds/` is the API server's copy of the
same rules; `parse_spec` repeats the ones a node needs before it writes. The CNI
versions come from `node_plugin.cni.versions`, the plugins' own list.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from node_plugin.cni import versions as cni_versions

GROUP = "cniwarden.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
NETWORK_KIND = "CNINetwork"
NETWORK_PLURAL = "cninetworks"
NODE_STATE_KIND = "CNINodeState"
NODE_STATE_PLURAL = "cninodestates"
MIGRATION_KIND = "CNIMigration"
MIGRATION_PLURAL = "cnimigrations"

FINALIZER = "cniwarden.io/cleanup"
# The per-generation acknowledgement of a blocked switch: both annotations on the
# CNINetwork. The generation must equal metadata.generation, so an old
# acknowledgement never lets a later change through.
ACK_GENERATION_ANNOTATION = "cniwarden.io/proceed-generation"
ACK_NODES_ANNOTATION = "cniwarden.io/proceed-nodes"

USE_POD_CIDR = "usePodCIDR"
# We render conflists, and a conflist exists from CNI 0.3.0 on; which versions the
# plugins speak is node_plugin's to say (the CRD's enum is checked against this).
CONFLIST_MINIMUM_VERSION = "0.3.0"
SUPPORTED_CNI_VERSIONS: tuple[str, ...] = tuple(
    v for v in cni_versions.SUPPORTED if cni_versions.at_least(v, CONFLIST_MINIMUM_VERSION)
)
PLUGIN_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NETWORK_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
# Matched with fullmatch: `$` would also accept a trailing newline.
SHA256_RE = re.compile(r"[0-9a-f]{64}")


class SpecError(ValueError):
    """A CNINetwork spec that cannot be rendered; the message says what to fix."""


class BinarySource(BaseModel):
    """Where a declared (not ours) plugin binary comes from."""

    model_config = ConfigDict(extra="forbid")

    file: str | None = None
    url: str | None = None


class DeclaredBinary(BaseModel):
    """A plugin binary the user asks us to install, verified by its sha256."""

    model_config = ConfigDict(extra="forbid")

    name: str
    sha256: str
    source: BinarySource

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not PLUGIN_TYPE_RE.fullmatch(value):
            raise ValueError(f"binary name {value!r} is not a valid plugin file name")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not SHA256_RE.fullmatch(value):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return value


class Routing(BaseModel):
    """`spec.routing`: pod networking between nodes (see `hostgw`)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["None", "HostGateway"] = "None"
    ipMasq: bool = False
    clusterCIDRs: list[str] = Field(default_factory=list, max_length=8)

    @field_validator("clusterCIDRs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"clusterCIDRs: {cidr!r} is not a CIDR") from None
        return value


class IpamPolicy(BaseModel):
    """`spec.ipam`: how cniwarden watches the pools (not rendered into the conflist)."""

    model_config = ConfigDict(extra="forbid")

    # Percent of a range set's addresses in use at which IPPoolPressure turns True.
    pressureThreshold: int = Field(90, ge=1, le=100)
    # A lease whose sandbox the runtime no longer lists is reclaimed once this old
    # (longer than kubelet's 2 min RunPodSandbox timeout: an ADD in flight is kept).
    leaseGraceSeconds: int = Field(300, ge=60, le=86400)


class NetworkSpec(BaseModel):
    """`CNINetwork.spec`. Plugin objects stay plain dicts: unknown keys pass through."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(ge=0, le=99)
    networkName: str | None = None
    cniVersion: str = "1.0.0"
    plugins: list[dict[str, Any]] = Field(min_length=1)
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    shadowPolicy: Literal["Report", "Quarantine"] = "Report"
    binaries: list[DeclaredBinary] = Field(default_factory=list)
    disableCheck: bool | None = None
    disableGC: bool | None = None
    routing: Routing | None = None
    ipam: IpamPolicy | None = None

    @field_validator("networkName")
    @classmethod
    def _network_name(cls, value: str | None) -> str | None:
        if value is not None and not PLUGIN_TYPE_RE.fullmatch(value):
            raise ValueError(f"networkName {value!r} is not a valid CNI network name")
        return value

    def cni_name(self, object_name: str) -> str:
        """The CNI network name: spec.networkName, else the object's name."""
        return self.networkName or object_name

    @field_validator("cniVersion")
    @classmethod
    def _version(cls, value: str) -> str:
        if value not in SUPPORTED_CNI_VERSIONS:
            raise ValueError(f"cniVersion {value!r} is not one of {list(SUPPORTED_CNI_VERSIONS)}")
        return value

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, value: list[dict[str, Any]], info: ValidationInfo) -> list[dict[str, Any]]:
        for index, plugin in enumerate(value):
            if (info.context or {}).get(NEW_SPEC):
                _refuse_other_spellings(plugin, index)
            kind = plugin.get("type")
            if not isinstance(kind, str) or not PLUGIN_TYPE_RE.fullmatch(kind):
                raise ValueError(f"plugins[{index}].type must be a plugin file name")
            ipam = plugin.get("ipam")
            if ipam is not None and not isinstance(ipam, dict):
                raise ValueError(f"plugins[{index}].ipam must be an object")
            ipam_type = (ipam or {}).get("type")
            if ipam_type is not None and (
                not isinstance(ipam_type, str) or not PLUGIN_TYPE_RE.fullmatch(ipam_type)
            ):
                raise ValueError(f"plugins[{index}].ipam.type must be a plugin file name")
        return value


# Validation context of a spec as the user wrote it now (parse_spec), as opposed to one
# this agent applied earlier (the manifest's), which is taken as it was.
NEW_SPEC = "new-spec"

# The plugin keys the CRD's rules, rendering and the gate look at. The plugins read
# keys case-insensitively (Go's rule), so another spelling of one of these would be
# read by the plugins yet escape every check made on it: refused (as the chart's
# admission policy does at `kubectl apply`).
PLUGIN_KEYS = ("type", "ipam")
IPAM_KEYS = ("type", "subnet", "ranges", "rangeStart", "rangeEnd", "gateway", "dataDir")
RANGE_KEYS = ("subnet", "rangeStart", "rangeEnd", "gateway")


def _refuse_other_spellings(plugin: dict[str, Any], index: int) -> None:
    _canonical_keys(plugin, PLUGIN_KEYS, f"plugins[{index}]")
    ipam = plugin.get("ipam")
    if not isinstance(ipam, dict):
        return
    _canonical_keys(ipam, IPAM_KEYS, f"plugins[{index}].ipam")
    ranges = ipam.get("ranges")
    for set_index, range_set in enumerate(ranges if isinstance(ranges, list) else []):
        for range_index, one in enumerate(range_set if isinstance(range_set, list) else []):
            if isinstance(one, dict):
                where = f"plugins[{index}].ipam.ranges[{set_index}][{range_index}]"
                _canonical_keys(one, RANGE_KEYS, where)


def _canonical_keys(obj: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    canonical = {name.lower(): name for name in known}
    for key in obj:
        name = canonical.get(str(key).lower())
        if name is not None and key != name:
            raise ValueError(
                f"{where}.{key}: write {name!r} (the plugins read keys case-insensitively, "
                f"so {key!r} would escape the checks made on {name!r})"
            )


def parse_spec(raw: dict[str, Any]) -> NetworkSpec:
    """Parse a spec dict, turning pydantic's report into one readable SpecError."""
    try:
        return NetworkSpec.model_validate(raw, context={NEW_SPEC: True})
    except ValidationError as error:
        parts = []
        for item in error.errors():
            where = ".".join(str(p) for p in item["loc"]) or "spec"
            parts.append(f"spec.{where}: {item['msg']}")
        raise SpecError("; ".join(parts)) from None


def config_file_name(priority: int, network: str) -> str:
    """The node file name the API fixes: `<priority, two digits>-<name>.conflist`."""
    return f"{priority:02d}-{network}.conflist"


def url_under_prefix(url: str, prefix: str) -> bool:
    """Is `url` inside `prefix`? Same scheme, host and port, no user info, and a path
    under the prefix's path with no `.`/`..` segment (which a server would resolve
    out of it). Percent-escapes are decoded first, so `%2e%2e` is `..` too."""
    try:
        found, allowed = urlsplit(url), urlsplit(prefix)
        same_port = found.port == allowed.port
    except ValueError:
        return False
    if found.scheme.lower() != allowed.scheme.lower() or not same_port:
        return False
    if (found.hostname or "").lower() != (allowed.hostname or "").lower() or not found.hostname:
        return False
    if found.username is not None or found.password is not None:
        return False
    path = unquote(found.path)
    if any(segment in (".", "..") for segment in path.split("/")):
        return False
    return path.startswith(unquote(allowed.path))


def check_url_prefix(prefix: str) -> str:
    """A prefix for `BinarySourcePolicy`: an http(s) URL with a host whose path ends
    in `/` (so `https://h/org` cannot also allow `https://h/organization-evil`)."""
    parts = urlsplit(prefix)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"binary URL prefix {prefix!r} must be an http(s) URL with a host")
    if not parts.path.endswith("/"):
        raise ValueError(f"binary URL prefix {prefix!r} must end with '/'")
    if parts.query or parts.fragment:
        raise ValueError(f"binary URL prefix {prefix!r} must have no query or fragment")
    return prefix


@dataclass(frozen=True)
class BinarySourcePolicy:
    """Where `spec.binaries[].source.url` may point (the operator's and the agents'
    `--binary-url-prefix`); no prefix: any http(s) URL. A CNINetwork is node-admin
    (its binaries run as root on every node it selects); this narrows what a
    network's author can make the nodes download."""

    url_prefixes: tuple[str, ...] = ()

    def refusals(self, spec: NetworkSpec) -> list[str]:
        if not self.url_prefixes:
            return []
        out = []
        for index, binary in enumerate(spec.binaries):
            url = binary.source.url
            if url is not None and not any(url_under_prefix(url, p) for p in self.url_prefixes):
                out.append(
                    f"spec.binaries[{index}].source.url: {url} is not under an allowed prefix "
                    f"(this cluster allows only: {', '.join(self.url_prefixes)})"
                )
        return out
