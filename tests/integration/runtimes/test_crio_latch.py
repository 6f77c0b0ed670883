"""CRI-O's NetworkReady latches: once its default network was ready, CRI-O stops
asking (cnimgr's poll ends), so removing every config later leaves CRI Status
saying NetworkReady=true while every new sandbox fails. kubelet therefore keeps
such a node Ready; only the model's prediction (the agent's report) shows it.
This is why the differential test gives CRI-O a fresh process per layout."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from devtools.runtimes.daemon import RUNTIMES, Runtime, wait_for
from devtools.runtimes.differential import CRIO_UNINITIALIZED, install_bin_dir, private_paths

pytestmark = pytest.mark.root


def test_crio_keeps_network_ready_after_its_config_is_gone() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (runtimes, mount namespaces)")
    missing = RUNTIMES["crio"].missing()
    if missing:
        pytest.fail(f"crio cannot run: {missing}")
    with tempfile.TemporaryDirectory(prefix="cniwarden-crio-latch-") as base, private_paths():
        work = Path(base) / "w"
        install_bin_dir(work / "cni-bin")
        net_d = work / "net.d"
        net_d.mkdir()
        config = net_d / "10-a.conflist"
        config.write_text(
            json.dumps({"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "rec"}]})
        )
        with Runtime(RUNTIMES["crio"], work) as crio:
            wait_for(
                "CRI-O's first network status",
                lambda: crio.network_condition()[2] != CRIO_UNINITIALIZED,
                30,
            )
            assert crio.network_condition()[0] is True
            config.unlink()  # the default network's file: ocicni resyncs
            sentinel = net_d / "sync-1"
            sentinel.write_text("")
            wait_for(
                "CRI-O to handle the removal",
                lambda: sentinel.name in crio.log.read_text(errors="replace"),
                30,
            )
            assert crio.network_condition()[0] is True  # latched
            pod = crio.run_pod("after-removal")
            assert pod.sandbox is None
            assert "no CNI configuration file" in pod.error
