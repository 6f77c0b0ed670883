"""How libcni runs a network configuration list, as data: what the readiness probe
execs, in which order, with which stdin and environment.

Pure. Follows libcni (containernetworking/cni `libcni/api.go`) for a conflist:

- ADD runs the plugins in order; each gets the list's `name` and `cniVersion`
  injected and, from the second on, the previous plugin's result as `prevResult`.
- CHECK (cniVersion 0.4.0 and later, unless `disableCheck`) runs them in order,
  each with the ADD's final result as `prevResult`.
- DEL runs them in reverse order, with the ADD's final result as `prevResult` from
  0.4.0 on (none before, or when the ADD gave none).

A single-plugin `.conf`/`.json` file is run as a list of that one plugin, as
libcni's `ConfListFromConf` does. The probe provides no capabilities, so no
`runtimeConfig` is injected (a runtime passes only those it has).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CHECK_SINCE = (0, 4, 0)


class ConfigError(ValueError):
    """A config file libcni would refuse to load."""


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise ConfigError(f"cniVersion {version!r} is not a version") from None


@dataclass(frozen=True)
class NetworkList:
    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False

    @property
    def checks(self) -> bool:
        return not self.disable_check and version_tuple(self.cni_version) >= CHECK_SINCE

    @property
    def del_gets_prev_result(self) -> bool:
        return version_tuple(self.cni_version) >= CHECK_SINCE

    def plugin_types(self) -> list[str]:
        return [str(p["type"]) for p in self.plugins]


def load(data: bytes, filename: str) -> NetworkList:
    """The file as libcni loads it (`.conflist`, or a single plugin `.conf`/`.json`)."""
    try:
        doc = json.loads(data)
    except ValueError as error:
        raise ConfigError(f"{filename} is not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{filename} is not a JSON object")
    if filename.endswith(".conflist"):
        plugins = doc.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise ConfigError(f"{filename} has no plugins")
    else:
        plugins = [doc]
    name, version = doc.get("name"), doc.get("cniVersion") or "0.1.0"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{filename} has no network name")
    if not isinstance(version, str):
        raise ConfigError(f"{filename}: cniVersion is not a string")
    version_tuple(version)
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise ConfigError(f"{filename}: plugins[{index}] has no type")
    return NetworkList(name, version, tuple(plugins), bool(doc.get("disableCheck")))


def plugin_stdin(
    network: NetworkList, plugin: Mapping[str, Any], prev_result: Mapping[str, Any] | None
) -> bytes:
    """One plugin's stdin: its config, the list's name and version, and prevResult."""
    conf = dict(plugin)
    conf["name"] = network.name
    conf["cniVersion"] = network.cni_version
    conf.pop("prevResult", None)
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    return json.dumps(conf).encode()


def environment(
    command: str, container_id: str, netns: str, ifname: str, cni_path: str
) -> dict[str, str]:
    """The CNI_* variables a runtime sets (containerd's CNI_ARGS, with the probe's id
    as pod name and infra container, so a plugin that reads them gets a value)."""
    args = (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=cniwarden-probe;"
        f"K8S_POD_NAME={container_id};K8S_POD_INFRA_CONTAINER_ID={container_id}"
    )
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": cni_path,
        "CNI_ARGS": args,
    }
