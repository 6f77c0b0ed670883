"""Self-contained kubeconfig files (certificates embedded) and HTTPS probes."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from pathlib import Path

import yaml

from .pki import CertPair


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write(path: Path, *, cluster: str, server: str, ca: Path, client: CertPair, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def https_get(
    url: str, *, ca: Path | None = None, client: CertPair | None = None, timeout: float = 5
) -> tuple[int, str]:
    """GET over TLS; without `ca` the server certificate is not verified (self-signed
    healthz endpoints of the controller manager and scheduler)."""
    if ca is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
        return int(resp.status), resp.read().decode(errors="replace")


def http_get_json(url: str, timeout: float = 5) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def http_get_text(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode(errors="replace"))
