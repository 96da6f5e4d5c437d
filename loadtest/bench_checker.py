"""Time and peak memory of the checker's ledger side on a large ledger (no services).

    python -m loadtest.bench_checker generate --events 1500000 --out /tmp/ledger-1.5m
    python -m loadtest.bench_checker measure /tmp/ledger-1.5m

``generate`` writes the ledger files a run of the ``steady`` scenario would (two agents'
``ledger-N.jsonl``, in the fault suite's format, with broker positions on a fake clock at
8,000 events/s) and the budgets planned for it. ``measure`` does what ``loadtest/run.py``
does with a ledger after a run, except the ClickHouse and topic reads: load it, the agents'
totals recomputed from it, the alerts the reference model implies, every budget's totals,
the crossing events' produce times. It prints seconds per part and the peak RSS of the
process (``ru_maxrss``). The ClickHouse side of ``check`` is measured by the runs themselves
(the runner's RSS in ``samples.jsonl`` is not sampled; ``results.json`` has ``check_s`` and
``check_peak_rss_mib``).
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import time
from pathlib import Path

from loadtest import scenario as scenarios
from loadtest.traffic import Traffic
from streams import events
from streams.budgets import Budget
from streams.loadtest import checker
from streams.loadtest.checker import Ledger, LedgerWriter

RATE = 8000.0
PARTITIONS = 4


def generate(count: int, out: Path, agents: int = 2) -> None:
    out.mkdir(parents=True, exist_ok=True)
    steady = scenarios.load("steady")
    start = events.now_ms() - int(count / RATE * 1000)
    budgets = steady.with_overrides(rate=count / steady.seconds).budgets(now_ms=start)
    (out / "budgets.pickle").write_bytes(pickle.dumps(budgets))
    offsets = [0] * PARTITIONS
    for agent in range(agents):
        traffic = Traffic(steady.traffic, agent, agents)
        with LedgerWriter(out / f"ledger-{agent}.jsonl") as ledger:
            for i in range(count // agents):
                now = start + int((i * agents + agent) / RATE * 1000)
                event = traffic.next(now)
                p = hash(event["org_id"]) % PARTITIONS
                ledger.acked(event, p, offsets[p], now + 2)
                offsets[p] += 1


def _budgets(folder: Path) -> list[Budget]:
    loaded: list[Budget] = pickle.loads((folder / "budgets.pickle").read_bytes())
    return loaded


def measure(folder: Path) -> dict[str, float]:
    from loadtest.ledger import SpendTotals

    budgets = _budgets(folder)
    figures: dict[str, float] = {}
    started = time.perf_counter()
    ledger = Ledger.load(*sorted(folder.glob("ledger-*.jsonl")), budgets=budgets)
    figures["load_s"] = time.perf_counter() - started
    t = time.perf_counter()
    if hasattr(SpendTotals, "of_ledger"):
        totals = SpendTotals.of_ledger(ledger)
    else:  # the checker before 2026-12-02's compact ledger
        totals = SpendTotals().add_all(ledger.acked.values())
    figures["spend_totals_s"] = time.perf_counter() - t
    t = time.perf_counter()
    expected = checker.reference_expected_alerts(ledger)
    figures["expected_alerts_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if hasattr(ledger, "amounts"):
        amounts = {b.budget_id: ledger.amounts(b) for b in budgets}
    else:
        from streams.pricing import default_catalog

        catalog = default_catalog()
        amounts = {
            b.budget_id: checker.budget_amounts(b, ledger.acked.values(), catalog) for b in budgets
        }
    figures["budget_amounts_s"] = time.perf_counter() - t
    figures["total_s"] = time.perf_counter() - started
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["events"] = len(ledger.acked)
    figures["messages"] = ledger.acked_messages
    figures["alerts_expected"] = len(expected)
    figures["spend_usd"] = totals.total_cost() / 1e9
    figures["budget_periods"] = sum(len(a) for a in amounts.values())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("--events", type=int, default=1_500_000)
    gen.add_argument("--out", type=Path, required=True)
    meas = sub.add_parser("measure")
    meas.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.cmd == "generate":
        generate(args.events, args.out)
    else:
        print(json.dumps({k: round(v, 2) for k, v in measure(args.folder).items()}))


if __name__ == "__main__":
    main()
