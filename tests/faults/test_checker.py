"""The checker on the real stack: a clean sink-only run checks out; each planted fault is
counted as what it is (lost, duplicated, invented, mispriced rows; missing, duplicate and
extra alerts; a wrong enforcement state)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from confluent_kafka import Producer

from streams.clickhouse import connect
from streams.loadtest.checker import (
    Ledger,
    check,
    reference_expected_alerts,
    simple_expected_alerts,
)
from streams.loadtest.load import plan_budgets, plan_events
from streams.loadtest.procs import Procs, drop, prepare, run_settings, wait_drained
from streams.processors.alerts import threshold_alert_id
from streams.serde import AvroCodec
from streams.settings import Settings

COUNT = 600


def _alert(aid: str, budget_id: str, period_start: int, spent: int, pct: int) -> bytes:
    return AvroCodec("budget_alert").encode(
        {
            "alert_id": aid,
            "kind": "threshold_crossed",
            "detected_at": 1,
            "severity": "warning",
            "message": "planted",
            "budget_id": budget_id,
            "org_id": None,
            "team_id": None,
            "user_id": None,
            "scope": {},
            "period": "month",
            "period_start": period_start,
            "period_end": None,
            "timezone": "UTC",
            "unit": "usd_nanos",
            "spent": spent,
            "limit": None,
            "threshold_pct": pct,
            "percent": None,
            "projected": None,
            "projected_breach_at": None,
            "mode": None,
            "event_id": None,
            "event_time": None,
            "session_id": None,
            "details": {},
        }
    )


def test_checker_counts_each_planted_fault(stack_settings: Settings, tmp_path: Path) -> None:
    settings = run_settings(stack_settings)
    budgets = plan_budgets(plan_events(COUNT))
    prepare(settings, budgets)
    procs = Procs(settings, tmp_path / "logs")
    ledger_path = tmp_path / "ledger.jsonl"
    try:
        procs.start("sink")
        load = procs.load(ledger_path, rate=2000, count=COUNT)
        assert procs.wait(load, 60) == 0
        wait_drained(settings, procs, workers=False)
        ledger = Ledger.load(ledger_path, budgets=budgets)
        assert ledger.acked_messages == COUNT
        assert len(ledger.acked) < COUNT  # the load re-sends some events

        clean = check(settings, ledger, alerts=False)
        assert clean.ok, clean.summary()
        assert (clean.acked, clean.rows, clean.lost, clean.duplicated) == (
            len(ledger.acked),
            len(ledger.acked),
            0,
            0,
        )

        # no worker ran: every implied alert is missing, the block was never set
        expected = reference_expected_alerts(ledger)
        assert len(ledger.positions) == COUNT
        assert expected == simple_expected_alerts(ledger)  # the two models agree here
        assert len(expected) >= 4
        unworked = check(settings, ledger)
        assert unworked.missing_alerts == len(expected) and not unworked.ok
        assert set(unworked.enforcement_diffs) == {"f-team-block"}

        # alerts: one expected published twice, one never implied (a threshold not crossed)
        org0 = next(b for b in budgets if b.budget_id == "f-org0-month")
        aid = next(
            a
            for a in expected
            if a
            in {
                threshold_alert_id(org0.budget_id, org0.definition_version, s, 25)
                for s in _period_starts(ledger, org0.budget_id)
            }
        )
        start = _period_starts(ledger, org0.budget_id)[0]
        producer = Producer(settings.kafka_client_config())
        for _ in range(2):
            producer.produce(
                settings.topic_alerts,
                _alert(aid, org0.budget_id, start, org0.limit // 4, 25),
                aid.encode(),
            )
        never = threshold_alert_id(org0.budget_id, org0.definition_version, start, 100)
        assert never not in expected
        producer.produce(
            settings.topic_alerts, _alert(never, org0.budget_id, start, 1, 100), never.encode()
        )
        block = next(b for b in budgets if b.mode == "block")
        producer.produce(
            settings.topic_enforcement,
            json.dumps({"blocked": True, "spent": block.limit - 1}).encode(),
            block.budget_id.encode(),
        )
        assert producer.flush(30) == 0

        # rows: one deleted, one stored twice, one nobody sent, one priced wrong
        ids = sorted(ledger.acked)
        client = connect(settings, database=settings.clickhouse_database)
        try:
            client.command(
                "ALTER TABLE token_events DELETE WHERE event_id = {i:UUID} "
                "SETTINGS mutations_sync = 1",
                parameters={"i": ids[0]},
            )
            client.command(
                "INSERT INTO token_events SELECT * FROM token_events WHERE event_id = {i:UUID}",
                parameters={"i": ids[1]},
            )
            client.command(
                "INSERT INTO token_events SELECT * REPLACE ({n:UUID} AS event_id) "
                "FROM (SELECT * FROM token_events WHERE event_id = {i:UUID})",
                parameters={"i": ids[2], "n": str(uuid.uuid4())},
            )
            client.command(
                "ALTER TABLE token_events UPDATE cost_nanos = cost_nanos + 1 "
                "WHERE event_id = {i:UUID} SETTINGS mutations_sync = 1",
                parameters={"i": ids[3]},
            )
        finally:
            client.close()
        faulty = check(settings, ledger)
        assert (faulty.lost, faulty.duplicated, faulty.invented, faulty.mispriced) == (1, 1, 1, 1)
        assert faulty.orphan_keys == 1  # the deleted row's dedup key is still there
        assert (faulty.duplicate_alerts, faulty.extra_alerts) == (1, 1)
        assert faulty.missing_alerts == len(expected) - 1
        assert "f-team-block" in faulty.enforcement_diffs
        assert not faulty.ok
        assert "lost 1, duplicated 1, invented 1, mispriced 1" in faulty.summary()
    finally:
        procs.stop_all()
        drop(settings)


def test_openmeter_case_a_dedup_key_stored_without_its_row(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """OpenMeter PR #4902: a dedup key stored while ClickHouse did not have the row, so the
    replay was dropped as a duplicate. Planted here (the key of an event not sent yet), the
    sink drops that event and the checker counts it twice over: lost, and an orphan key."""
    settings = run_settings(stack_settings)
    planned = plan_events(COUNT, seed=3)
    prepare(settings)
    victim = planned[0]["event_id"]
    client = connect(settings, database=settings.clickhouse_database)
    try:
        # the load stamps event_time when it sends: this hour, or the next one
        client.command(
            "INSERT INTO event_ids (hour, event_id, ingested_at) SELECT "
            "toStartOfHour(now()) + INTERVAL number HOUR, {i:UUID}, now() FROM numbers(2)",
            parameters={"i": victim},
        )
    finally:
        client.close()
    procs = Procs(settings, tmp_path / "logs")
    ledger_path = tmp_path / "ledger.jsonl"
    try:
        procs.start("sink")
        load = procs.load(ledger_path, rate=2000, count=COUNT, seed=3)
        assert procs.wait(load, 60) == 0
        wait_drained(settings, procs, workers=False)
        result = check(settings, Ledger.load(ledger_path), alerts=False)
        assert (result.lost, result.orphan_keys, result.duplicated) == (1, 1, 0), result.summary()
        assert result.samples["lost"] == (victim,)
        assert not result.ok
    finally:
        procs.stop_all()
        drop(settings)


def _period_starts(ledger: Ledger, budget_id: str) -> list[int]:
    from streams.loadtest.checker import budget_amounts
    from streams.pricing import default_catalog

    budget = next(b for b in ledger.budgets if b.budget_id == budget_id)
    return sorted(budget_amounts(budget, ledger.acked.values(), default_catalog()))
