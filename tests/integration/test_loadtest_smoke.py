"""The load-test harness end to end on the session's stack: the smoke scenario runs, the
checker says 0 lost / duplicated / mispriced / missing and extra alerts, the report is
written; then a row removed behind the harness's back is found by the same checker.

It checks the harness and the checker, not speed (a short, slow rate)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from loadtest import scenario as scenarios
from loadtest.agents import probe_budgets
from loadtest.report import write_report
from loadtest.run import run
from streams.clickhouse import connect
from streams.loadtest.checker import Ledger, check
from streams.settings import Settings

pytestmark = pytest.mark.integration


def test_smoke_scenario_passes_and_its_checker_sees_a_lost_row(
    stack_settings: Settings, tmp_path: Path
) -> None:
    smoke = scenarios.load("smoke").with_overrides(duration_s=20.0)
    results = run(smoke, tmp_path, base=stack_settings, keep=True)
    assert results["check_ok"], results["check_summary"]
    assert results["ledger_totals_agree"], results["ledger_totals_diff"]
    check_counts = results["check"]
    assert check_counts["acked"] >= 0.9 * smoke.rate * 20
    for name in ("lost", "duplicated", "mispriced", "missing_alerts", "extra_alerts"):
        assert check_counts[name] == 0, name
    assert check_counts["alerts_expected"] > 0  # the budgets were crossed: alerts were judged
    enforcement = results["enforcement"]
    assert enforcement["blocked"] == enforcement["probes"] == smoke.enforce_probes
    assert results["alert_latency_ms"]["n"] > 0
    assert not results["failed_agents"]
    # the broker's and ClickHouse's CPU and memory are sampled too (the sizing needs them)
    local = {
        "kafka": stack_settings.kafka_is_local,
        "clickhouse": stack_settings.clickhouse_is_local,
    }
    assert {k for k, v in local.items() if v} <= set(results["processes"]), results["processes"]
    report = write_report(tmp_path, results)
    text = report.read_text()
    assert "**OK**" in text
    for png in ("throughput.png", "lag.png", "memory.png", "alert_latency_cdf.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    json.loads((tmp_path / "results.json").read_text())

    # the same checker over the same ledger, after one stored event is removed: it says so
    settings = dataclasses.replace(stack_settings, **results["run_settings"])
    ledger = Ledger.load(
        *sorted(tmp_path.glob("ledger-*.jsonl")),
        budgets=smoke.budgets() + probe_budgets(smoke.traffic.prefix, smoke.enforce_probes),
    )
    victim = sorted(ledger.acked)[0]
    client = connect(settings, database=settings.clickhouse_database)
    try:
        client.command(
            "ALTER TABLE token_events DELETE WHERE event_id = toUUID({id:String})",
            parameters={"id": victim},
            settings={"mutations_sync": 2},
        )
    finally:
        client.close()
    again = check(settings, ledger)
    assert again.lost == 1 and not again.ok
