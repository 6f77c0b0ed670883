"""python -m devtools.runtimes differential [...]   the model against the runtimes
python -m devtools.runtimes status --runtime R --net-d DIR --bin-dir DIR [--runp]
    start R standalone on that net.d and bin dir, print CRI Status (and
    `crictl info`'s CNI part), optionally create a pod sandbox, stop."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from devtools.runtimes import differential
from devtools.runtimes.daemon import RUNTIMES, Runtime, Settings


def status(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.runtimes status")
    parser.add_argument("--runtime", required=True, choices=sorted(RUNTIMES))
    parser.add_argument("--net-d", type=Path, required=True)
    parser.add_argument("--bin-dir", type=Path, required=True)
    parser.add_argument("--max-conf-num", type=int, default=1)
    parser.add_argument("--cni-default-network", default="")
    parser.add_argument("--runp", action="store_true", help="also create a pod sandbox")
    args = parser.parse_args(argv)
    settings = Settings(args.max_conf_num, args.cni_default_network)
    with (
        tempfile.TemporaryDirectory(prefix="cniwarden-runtime-") as work,
        Runtime(
            RUNTIMES[args.runtime],
            Path(work),
            settings,
            net_d_dir=args.net_d.resolve(),
            cni_bin_dir=args.bin_dir.resolve(),
        ) as runtime,
    ):
        info = runtime.info()
        out = {
            "version": runtime.version(),
            "networkReady": runtime.network_condition(info),
            "lastCNILoadStatus": info.get("lastCNILoadStatus"),
            "cniNetworks": [
                n["Config"]["Name"] for n in (info.get("cniconfig") or {}).get("Networks") or []
            ],
        }
        if args.runp:
            pod = runtime.run_pod("status-probe")
            out["pod"] = {"sandbox": pod.sandbox, "error": pod.error, "networks": pod.networks}
        print(json.dumps(out, indent=2))
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("differential", "status"):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "status":
        return status(sys.argv[2:])
    return differential.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
