"""A run's report: ``report.md`` and PNG charts from its ``results.json`` and samples.

Charts (matplotlib, no display needed): ``throughput.png`` (produced, worker and sink
events/s over time), ``lag.png`` (worker and sink lag over time), ``alert_latency_cdf.png``,
``overshoot.png`` (per runaway probe: delay to ``check()`` blocked and overshoot in % of the
limit), ``memory.png`` (RSS of every process over time). loadtest/README.md says how to read
them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _samples(folder: Path) -> list[dict[str, Any]]:
    path = folder / "samples.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _rates(samples: list[dict[str, Any]], key: str, window: int = 5) -> list[float]:
    out = []
    for i, s in enumerate(samples):
        j = max(0, i - window)
        span = s["t"] - samples[j]["t"]
        out.append((s[key] - samples[j][key]) / span if span > 0 else 0.0)
    return out


def charts(folder: Path, results: dict[str, Any]) -> list[Path]:
    samples = [s for s in _samples(folder) if s.get("phase") == "load"]
    catch_up = [s for s in _samples(folder) if s.get("phase") == "catch-up"]
    made: list[Path] = []
    for name, rows in (("throughput.png", samples), ("catch_up.png", catch_up)):
        if len(rows) < 2:
            continue
        fig, ax = plt.subplots(figsize=(9, 4))
        t = [s["t"] for s in rows]
        for key, label in (("produced", "produced"), ("worker", "worker"), ("sink", "sink")):
            ax.plot(t, _rates(rows, key), label=f"{label} events/s")
        ax.set_xlabel("seconds")
        ax.set_ylabel("events/s (5 s window)")
        ax.set_title(f"{results['scenario']}: throughput per component")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        made.append(folder / name)
    if len(samples) >= 2:
        fig, ax = plt.subplots(figsize=(9, 4))
        t = [s["t"] for s in samples]
        for key in ("worker", "sink"):
            ax.plot(t, [s["produced"] - s[key] for s in samples], label=f"{key} lag (events)")
        ax.set_xlabel("seconds")
        ax.set_ylabel("events behind")
        ax.set_title(f"{results['scenario']}: consumer lag")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "lag.png", dpi=100)
        plt.close(fig)
        made.append(folder / "lag.png")
        fig, ax = plt.subplots(figsize=(9, 4))
        keys = sorted({k for s in samples for k in s if k.startswith("rss:")})
        for key in keys:
            points = [(s["t"], s[key] / 1024) for s in samples if key in s]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=key[4:])
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(f"{results['scenario']}: memory per process")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "memory.png", dpi=100)
        plt.close(fig)
        made.append(folder / "memory.png")
    latencies_path = folder / "alert_latency_ms.json"
    latencies = json.loads(latencies_path.read_text()) if latencies_path.exists() else []
    if latencies:
        ordered = sorted(latencies)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))])
        ax.set_xlabel("ms, crossing event produced -> alert received")
        ax.set_ylabel("share of alerts")
        ax.set_title(f"{results['scenario']}: alert latency CDF ({len(ordered)} alerts)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "alert_latency_cdf.png", dpi=100)
        plt.close(fig)
        made.append(folder / "alert_latency_cdf.png")
    enforce_path = folder / "enforce.json"
    probes = json.loads(enforce_path.read_text()) if enforce_path.exists() else []
    probes = [p for p in probes if "delay_ms" in p]
    if probes:
        fig, left = plt.subplots(figsize=(8, 4))
        n = [p["probe"] for p in probes]
        left.bar([x - 0.2 for x in n], [p["delay_ms"] for p in probes], 0.4, label="delay ms")
        left.set_ylabel("ms, crossing request -> check() blocked")
        right = left.twinx()
        right.bar(
            [x + 0.2 for x in n],
            [100.0 * p["overshoot_nanos"] / p["limit_nanos"] for p in probes],
            0.4,
            color="tab:red",
            label="overshoot % of limit",
        )
        right.set_ylabel("overshoot, % of the limit")
        left.set_xlabel("runaway probe")
        left.set_title(f"{results['scenario']}: enforcement delay and overshoot")
        fig.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(folder / "overshoot.png", dpi=100)
        plt.close(fig)
        made.append(folder / "overshoot.png")
    return made


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(results: dict[str, Any], pngs: list[Path]) -> str:
    m = results.get("machine", {})
    saturated = ""
    if m.get("saturated"):
        saturated = "; **saturated**: " + "; ".join(m.get("saturated_because", []))
    lines = [
        f"# loadtest `{results['scenario']}`",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores; load average "
        f"{m.get('load_before')} before, {m.get('load_after')} after{saturated}",
        "",
        "## Checker",
        "",
        f"**{'OK' if results.get('check_ok') else 'FAILED'}**: {results.get('check_summary')}",
        "",
        f"Ledger totals (agents' own, merged) agree with the ledger recomputed: "
        f"{results.get('ledger_totals_agree')}; spend ${_fmt(results.get('spend_usd'))}. "
        f"Checked in {_fmt(results.get('check_s'))} s; the runner's peak RSS (it holds the "
        f"ledger) {_fmt(results.get('check_peak_rss_mib'))} MiB.",
        "",
    ]
    phases = results.get("phases") or []
    if phases:
        lines += [
            "## Throughput per phase",
            "",
            "| offered/s | produced/s | worker/s | sink/s | worker lag end | sink lag end | "
            "bounded |",
            "|---:|---:|---:|---:|---:|---:|:--|",
        ]
        for p in phases:
            lines.append(
                f"| {_fmt(p['offered_per_s'])} | {_fmt(p['produced_per_s'])} | "
                f"{_fmt(p['worker_per_s'])} | {_fmt(p['sink_per_s'])} | "
                f"{_fmt(p['worker_lag_end'])} | {_fmt(p['sink_lag_end'])} | "
                f"{'yes' if p['bounded'] else 'NO'} |"
            )
        best = results.get("sustained")
        if best:
            lines += ["", f"Highest sustained end to end: **{_fmt(best['events_per_s'])} "
                      f"events/s** (offered {_fmt(best['offered_per_s'])}/s, lag bounded, "
                      f"0 lost over the run: {results.get('check_ok')})."]  # fmt: skip
        lines.append("")
    if results.get("catch_up"):
        c = results["catch_up"]
        lines += [
            "## Catch-up",
            "",
            f"Backlog {_fmt(c['events'])} events: workers drained it in {_fmt(c['worker_s'])} s "
            f"({_fmt(c['worker_per_s'])} events/s), sinks in {_fmt(c['sink_s'])} s "
            f"({_fmt(c['sink_per_s'])} rows/s); {c['note']}.",
            "",
        ]
    lines += ["## Latencies (ms)", "", "| what | n | p50 | p95 | p99 | max |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for key, label in (
        ("ack_latency_ms", "broker acknowledgement"),
        ("alert_latency_ms", "alert (crossing event produced -> received)"),
        ("report_query_ms", "report query under load"),
    ):
        s = results.get(key) or {}
        lines.append(
            f"| {label} | {_fmt(s.get('n'))} | {_fmt(s.get('p50'))} | {_fmt(s.get('p95'))} | "
            f"{_fmt(s.get('p99'))} | {_fmt(s.get('max'))} |"
        )
    e = results.get("enforcement") or {}
    if e:
        d, o = e["delay_ms"], e["overshoot_pct"]
        lines += [
            "",
            "## Enforcement",
            "",
            f"{e['blocked']} of {e['probes']} runaway probes blocked by `check()`; delay from "
            f"the crossing request p50 {_fmt(d['p50'])} ms, max {_fmt(d['max'])} ms; overshoot "
            f"p50 {_fmt(o['p50'])}%, max {_fmt(o['max'])}% of the ${_fmt(e['limit_usd'])} limit "
            f"(max ${_fmt(e['overshoot_usd_max'])}).",
        ]
    procs = results.get("processes") or {}
    if procs:
        lines += ["", "## Processes", "", "| process | CPU s | cores | peak RSS MiB |"]
        lines.append("|---|---:|---:|---:|")
        for name, p in procs.items():
            lines.append(
                f"| {name} | {_fmt(p['cpu_s'])} | {p['cores']:.2f} | {_fmt(p['peak_rss_mib'])} |"
            )
    compare = results.get("compare") or {}
    if compare:
        lines += ["", "## Limits measured in the same run", ""]
        lines += ["| limit | events/s | ours / limit |", "|---|---:|---:|"]
        for name, c in compare.items():
            ratio = c.get("ratio")
            shown = "-" if ratio is None else f"{ratio:.3f}"
            why = f" ({c['error']})" if c.get("error") else ""
            lines.append(f"| {name}{why} | {_fmt(c.get('events_per_s'))} | {shown} |")
    lines += ["", "## Charts", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, results: dict[str, Any]) -> Path:
    pngs = charts(folder, results)
    path = folder / "report.md"
    path.write_text(markdown(results, pngs))
    return path
