"""`cniwarden doctor`: the agent's node scan, printed for a person.

Works without the API server (reads the agent's manifest to know which files
are ours). It asks the node's runtime itself over its CRI socket (name, version,
NetworkReady) and judges the node by that runtime's rules, or by every rule set
when no runtime answers; a runtime that disagrees with the model is a problem.
Exit codes: 0 when the node is fine (warnings allowed), 1 when there
are errors but the runtime can still start pods (e.g. a foreign file wins over
ours), 2 when the runtime cannot start pods at all (the node is broken).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from cni_operator.node import manifest as manifest_io
from cni_operator.node.binaries import VersionProber
from cni_operator.node.cri import RuntimeProbe
from cni_operator.node.manifest import Manifest, ManifestError
from cni_operator.node.paths import HostPaths
from cni_operator.node.scan import NodeScan, report_dict, scan_node
from cni_operator.problems import ERROR, Problem
from cni_operator.runtime_order import RuntimeView
from cni_operator.runtime_truth import Judgement, RuntimeFacts, judge

EXIT_OK, EXIT_PROBLEMS, EXIT_BROKEN = 0, 1, 2


def detect_runtimes(facts: RuntimeFacts, choice: str) -> list[str]:
    """The rule sets to judge by: the one asked for, the runtime's, or every one."""
    return [choice] if choice != "auto" else list(facts.judged_by)


def ask_runtime(host_root: Path, endpoint: str | None) -> RuntimeFacts:
    probe = RuntimeProbe(host_root, endpoint)
    try:
        return probe.facts()
    finally:
        probe.close()


def _runtime_lines(judgement: Judgement, facts: RuntimeFacts) -> str:
    runtime = judgement.runtime
    if runtime["identified"]:
        api = f"CRI {runtime['apiVersion']}, " if runtime["apiVersion"] else ""
        head = f"Runtime: {runtime['summary']} ({api}{runtime['endpoint']})"
    else:
        head = f"Runtime: {runtime['summary']}: {runtime.get('error', '')}"
    head += f"; judged by {', '.join(runtime['judgedBy'])} rules"
    if runtime["ruleSets"]:
        head += f" (rule set {', '.join(runtime['ruleSets'])})"
    head += "\n"
    if facts.network_ready is not None:
        said = "true" if facts.network_ready else "false"
        detail = ", ".join(x for x in (facts.network_reason, facts.network_message) if x)
        head += f"Runtime says: NetworkReady={said}" + (f" ({detail})" if detail else "") + "\n"
    elif facts.status_error:
        head += f"Runtime says: nothing ({facts.status_error})\n"
    return head


def _versions(values: object) -> str:
    if not isinstance(values, list) or not values:
        return "VERSION: no answer"
    return f"CNI {values[0]}..{values[-1]}" if len(values) > 1 else f"CNI {values[0]}"


def render_text(
    scan: NodeScan,
    manifest: Manifest,
    runtimes: list[str],
    out: TextIO,
    runtime_text: str = "",
) -> None:
    paths = scan.paths
    w = out.write
    w(f"cniwarden doctor: {paths.conf_dir}  (bin dir {paths.bin_dir})\n\n")
    if runtime_text:
        w(runtime_text + "\n")
    views: dict[str, RuntimeView] = {
        "containerd": scan.analysis.containerd,
        "crio": scan.analysis.crio,
    }
    for runtime, view in views.items():
        marker = "" if runtime in runtimes else "  (not this node's runtime)"
        label = "CRI-O" if runtime == "crio" else runtime
        used = view.file or "nothing"
        if view.network:
            used += f" (network {view.network})"
        ok = "ok" if view.healthy else "BROKEN"
        w(f"{label:<11} uses {used}: {ok}, {view.message}{marker}\n")
    w("\nOur files:\n")
    if not manifest.networks:
        w("  none (no cniwarden agent has written here)\n")
    for network, managed in sorted(manifest.networks.items()):
        w(f"  {managed.file}  network {network}, generation {managed.generation}\n")
    w("\nForeign files:\n")
    if not scan.analysis.foreign:
        w("  none\n")
    for verdict in scan.analysis.foreign:
        tags = ", ".join(str(v) for v in verdict.verdicts) or "in use"
        w(f"  {verdict.file}  [{tags}] {verdict.detail}\n")
    w("\nBinaries named by configs (and ours):\n")
    if not scan.binaries:
        w("  none\n")
    for binary in scan.binaries:
        if not binary.get("present"):
            w(f"  {binary['name']}  MISSING\n")
            continue
        owner = "ours" if binary.get("owned") else "not ours"
        w(
            f"  {binary['name']}  sha256 {str(binary['sha256'])[:16]}...  "
            f"{_versions(binary.get('versions'))}  ({owner})\n"
        )
    if scan.attachments.by_network:
        w("\nLive attachments:\n")
        for network, items in sorted(scan.attachments.by_network.items()):
            w(f"  {network}: {len(items)}\n")
    if scan.quarantined:
        w("\nQuarantined by cniwarden (restored when the network is deleted):\n")
        for entry in scan.quarantined:
            w(f"  {entry.original} -> {entry.stored}  ({entry.time}, network {entry.network})\n")
    w(f"\nProblems ({len(scan.problems)}):\n")
    if not scan.problems:
        w("  none\n")
    for problem in scan.problems:
        w(f"  {problem.severity.upper():<7} {problem.code}: {problem.message}\n")
        w(f"          fix: {problem.fix}\n")


def verdict(scan: NodeScan, runtimes: list[str], runtime_down: bool = False) -> int:
    views = {"containerd": scan.analysis.containerd, "crio": scan.analysis.crio}
    if runtime_down or any(not views[r].healthy for r in runtimes):
        return EXIT_BROKEN
    if any(p.severity == ERROR for p in scan.problems):
        return EXIT_PROBLEMS
    return EXIT_OK


def load_manifest(paths: HostPaths) -> tuple[Manifest, Problem | None]:
    """The agent's manifest, or an empty one and the problem: the doctor still scans."""
    try:
        return manifest_io.load(paths), None
    except ManifestError as error:
        return Manifest(), Problem(
            "ManifestUnreadable",
            ERROR,
            f"{error}; every file is shown as foreign",
            f"Repair {paths.manifest} or move it aside (the agent then writes its configs again).",
            str(paths.manifest),
        )


def main(
    host_root: Path,
    *,
    as_json: bool = False,
    runtime: str = "auto",
    endpoint: str | None = None,
) -> int:
    paths = HostPaths(host_root)
    manifest, unreadable = load_manifest(paths)
    facts = ask_runtime(host_root, endpoint)
    if runtime not in ("auto", facts.kind):
        facts = replace(facts, name=runtime, version="")
    runtimes = detect_runtimes(facts, runtime)
    scan = scan_node(paths, manifest, VersionProber(), runtimes=facts.rules)
    if unreadable is not None:
        scan.problems.insert(0, unreadable)
    report = report_dict(scan, manifest)
    judgement = judge(report["runtimes"], facts, conf_dir=str(paths.conf_dir))
    first, last = judgement.split()
    scan.problems[:0] = first
    scan.problems.extend(last)
    code = verdict(scan, runtimes, runtime_down=facts.network_ready is False)
    if as_json:
        report = report_dict(scan, manifest)  # again: with the judgement's problems
        report["runtime"] = judgement.runtime
        report["runtimeVerdict"] = judgement.verdict
        report["runtimesJudged"] = runtimes
        report["exitCode"] = code
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_text(scan, manifest, runtimes, sys.stdout, _runtime_lines(judgement, facts))
        summary = {EXIT_OK: "OK", EXIT_PROBLEMS: "PROBLEMS", EXIT_BROKEN: "BROKEN"}[code]
        sys.stdout.write(f"\nVerdict: {summary} (judged by {', '.join(runtimes)})\n")
    return code
