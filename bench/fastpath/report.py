"""The Markdown report of one run."""

from __future__ import annotations

from typing import Any

from bench.stats import rank_percentile as pct

TARGETS = {"ADD": 0.8, "DEL": 0.5}


def report(data: dict[str, Any]) -> str:
    seq = data["sequential"]
    labels = list(seq)
    ref = seq["reference"]
    lines = [
        f"cniwarden fast-path bench, {data['when']}, {data['sandboxes']} sandboxes x "
        f"{data['rounds']} rounds, ipMasq={data['masq']}, load avg {data['loadavg']} at the "
        f"start, {data.get('loadavg_end', '?')} at the end",
        "",
        f"cni-server options: {' '.join(data.get('server_args', [])) or '-'} (the chart's; the "
        "chart sets no --log-level, so the server logs at its default, INFO, to a file)",
        "",
        *headline(data),
        "",
        "Each verb as a whole process, the implementations interleaved per sandbox. DEL here "
        "flatters shim+server: after answering, its reaper unregisters the veth pair while the "
        "next process (another implementation's) runs; the headline takes DEL alone.",
        "",
        "| verb | "
        + " | ".join(f"{label} p50 / p90" for label in labels)
        + " | "
        + " | ".join(f"{label} / ref (p50)" for label in labels[1:])
        + " | target |",
        "|---" * (2 * len(labels) + 1) + "|",
    ]
    for verb in ("ADD", "CHECK", "DEL"):
        cells = [
            f"{pct(seq[label][verb], 0.5):.1f} / {pct(seq[label][verb], 0.9):.1f} ms"
            for label in labels
        ]
        ratios = [
            f"{pct(seq[label][verb], 0.5) / pct(ref[verb], 0.5):.2f}x" for label in labels[1:]
        ]
        target = f"<= {TARGETS[verb]}x" if verb == "ADD" else ""
        lines.append(f"| {verb} | " + " | ".join(cells + ratios) + f" | {target} |")
    cpu = data["cpu"]
    lines += [
        "",
        "CPU time per call (mean; the plugin processes, and for shim+server also the server: "
        "all its threads and children per phase, its reaper and sweeps included):",
        "",
        "| verb | " + " | ".join(cpu) + " |",
        "|---" * (len(cpu) + 1) + "|",
    ]
    for verb in ("ADD", "CHECK", "DEL"):
        lines.append(
            f"| {verb} | " + " | ".join(f"{cpu[label][verb]:.1f} ms" for label in cpu) + " |"
        )
    if "gone" in data:
        gone = data["gone"]
        ref_gone = gone["reference"]
        lines += [
            "",
            "DEL alone (each after the previous one's veth pair is gone), from exec: until the "
            "runtime has its answer, and until the host veth is gone from the kernel's link "
            "list (polled; the server's reaper unregisters it after burying it):",
            "",
            "| | answered p50 / p90 | gone p50 / p90 | answered / ref answered (p50) "
            "| gone / ref gone (p50) |",
            "|---|---|---|---|---|",
        ]
        for label, t in gone.items():
            lines.append(
                f"| {label} | {pct(t['answered'], 0.5):.1f} / {pct(t['answered'], 0.9):.1f} ms "
                f"| {pct(t['gone'], 0.5):.1f} / {pct(t['gone'], 0.9):.1f} ms "
                f"| {pct(t['answered'], 0.5) / pct(ref_gone['answered'], 0.5):.2f}x "
                f"| {pct(t['gone'], 0.5) / pct(ref_gone['gone'], 0.5):.2f}x |"
            )
    par = data["parallel"]
    lines += [
        "",
        f"{data['parallel_n']} in parallel (wall time from the first exec: to the last exit; "
        "DEL also until the last host veth is gone from the link list; median of "
        f"{data.get('parallel_rounds_n', 1)} bursts each, the implementations' order rotated "
        "per round, each burst once the one before is gone):",
        "",
        "| verb | " + " | ".join(par) + " |",
        "|---" * (len(par) + 1) + "|",
    ]
    for verb, key in (("ADD", "ADD"), ("DEL", "DEL"), ("DEL, until gone", "DEL_gone")):
        if all(key in par[label] for label in par):
            lines.append(
                f"| {verb} | " + " | ".join(f"{par[label][key]:.0f} ms" for label in par) + " |"
            )
    if "rss" in data:
        r = data["rss"]
        lines += [
            "",
            f"cni-server memory: idle after warm-up {data['rss_idle_mb']:.1f} MiB; with "
            f"{r['attachments']} attachments VmRSS {r['rss_mb']:.1f} MiB, peak (VmHWM) "
            f"{r['hwm_mb']:.1f} MiB (target < 60 MiB)",
        ]
    if "floor" in data:
        f = data["floor"]
        lines += [
            "",
            f"floors (p50): exec of /bin/true {f['exec_p50']:.2f} ms; shim + socket + "
            f"server with a no-op handler {f['shim_noop_p50']:.2f} ms",
        ]
    if "handler" in data:
        h = data["handler"]
        lines += [
            f"node_plugin.api.handle in a warm process (p50): ADD {h['ADD_p50']:.2f} ms "
            f"({h['ADD_cpu_p50']:.2f} ms CPU), DEL {h['DEL_p50']:.2f} ms "
            f"({h['DEL_cpu_p50']:.2f} ms CPU); the reaper's RTM_DELLINK takes "
            f"{h['DEL_unlink_p50']:.2f} ms (the kernel's RCU barrier) and returns "
            f"{h['DEL_reaped_p50']:.2f} ms after DEL started"
        ]
    return "\n".join(lines) + "\n"


def headline(data: dict[str, Any]) -> list[str]:
    """shim+server / reference at p50: ADD from the sequential run, DEL alone (answered)."""
    seq = data["sequential"]
    if "shim+server" not in seq:
        return []
    add = pct(seq["shim+server"]["ADD"], 0.5) / pct(seq["reference"]["ADD"], 0.5)
    out = f"**Headline** (shim+server / reference, p50): ADD {add:.2f}x (target <= 0.8x)"
    if "gone" in data:
        gone = data["gone"]
        alone = pct(gone["shim+server"]["answered"], 0.5) / pct(gone["reference"]["answered"], 0.5)
        out += f", DEL alone {alone:.2f}x (target <= 0.5x)"
    return [out]
