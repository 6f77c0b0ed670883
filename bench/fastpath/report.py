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
        f"{data['rounds']} rounds, ipMasq={data['masq']}, load avg {data['loadavg']}",
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
        target = f"<= {TARGETS[verb]}x" if verb in TARGETS else ""
        lines.append(f"| {verb} | " + " | ".join(cells + ratios) + f" | {target} |")
    cpu = data["cpu"]
    lines += [
        "",
        "CPU time per call (mean; plugin processes, plus the server's threads for the shim):",
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
        "DEL also until the last host veth is gone from the link list):",
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
