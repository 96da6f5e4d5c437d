"""Budgets and alerts topics into their ClickHouse tables: updates, tombstones, replays."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from streams import events
from streams.clickhouse import Target, connect
from streams.migrate import Migrator
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.sink.records import RecordLoader


def budget(budget_id: str, limit: int, **changes: Any) -> dict[str, Any]:
    now = events.now_ms()
    return {
        "budget_id": budget_id,
        "description": None,
        "org_id": "org-1",
        "team_id": None,
        "user_id": None,
        "project_id": None,
        "model": None,
        "client": None,
        "task_type": "agentic",
        "labels": {"repo": "r"},
        "period": "month",
        "timezone": "Europe/Paris",
        "rolling_window_s": None,
        "limit": limit,
        "unit": "usd_nanos",
        "thresholds_pct": [50, 80, 100],
        "mode": "block",
        "forecast": True,
        "created_at": now,
        "updated_at": now,
        **changes,
    }


def alert(alert_id: str, spent: int) -> dict[str, Any]:
    now = events.now_ms()
    return {
        "alert_id": alert_id,
        "kind": "threshold_crossed",
        "detected_at": now,
        "severity": "warning",
        "message": "80% of platform-monthly",
        "budget_id": "platform-monthly",
        "org_id": "org-1",
        "team_id": None,
        "user_id": None,
        "scope": {"org_id": "org-1"},
        "period": "month",
        "period_start": now - 86_400_000,
        "period_end": now + 86_400_000,
        "timezone": "UTC",
        "unit": "usd_nanos",
        "spent": spent,
        "limit": 1000,
        "threshold_pct": 80,
        "percent": 80.5,
        "projected": None,
        "projected_breach_at": None,
        "mode": "alert",
        "event_id": str(uuid.uuid4()),
        "event_time": now,
        "session_id": None,
        "details": {},
    }


def test_budgets_and_alerts_land_in_their_tables(
    stack_settings: Settings, new_topic: Callable[..., str]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        stack_settings,
        topic_budgets=new_topic("budgets", partitions=1, config={"cleanup.policy": "compact"}),
        topic_alerts=new_topic("alerts", partitions=2),
        topic_deadletter=new_topic("records-dlq", partitions=1),
        clickhouse_database=f"records_{suffix}",
        sink_group=f"records-{suffix}",
    )
    admin = connect(settings)
    Migrator(admin, Target.from_settings(settings)).migrate()
    budgets, alerts = AvroCodec("budget"), AvroCodec("budget_alert")
    producer = Producer(settings.kafka_client_config())
    send = producer.produce
    send(settings.topic_budgets, budgets.encode(budget("a", 100)), b"a")
    send(settings.topic_budgets, budgets.encode(budget("b", 200)), b"b")
    send(settings.topic_budgets, budgets.encode(budget("a", 150, description="raised")), b"a")
    send(settings.topic_budgets, None, b"b")  # tombstone: budget b deleted
    send(settings.topic_budgets, b"\x00garbage", b"c")  # dead-lettered, not fatal
    first = alert("alert-1", 805)
    send(settings.topic_alerts, alerts.encode(first), b"alert-1")
    send(settings.topic_alerts, alerts.encode(first), b"alert-1")  # replayed: same alert
    send(settings.topic_alerts, alerts.encode(alert("alert-2", 1001)), b"alert-2")
    producer.flush(30)

    loader = RecordLoader(settings, flush_seconds=0.2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loader.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    client = connect(settings, database=settings.clickhouse_database)
    budgets_sql = (
        "SELECT budget_id, limit_value, description, thresholds_pct, forecast, timezone "
        "FROM budgets FINAL ORDER BY budget_id"
    )
    alerts_sql = (
        "SELECT alert_id, spent, threshold_pct, percent FROM budget_alerts FINAL ORDER BY alert_id"
    )
    # rows of one insert with equal keys are already collapsed on insert (ReplacingMergeTree)
    want_budgets = [("a", 150, "raised", [50, 80, 100], True, "Europe/Paris")]
    want_alerts = [("alert-1", 805, 80, 80.5), ("alert-2", 1001, 80, 80.5)]
    try:
        deadline = time.monotonic() + 120
        while (
            client.query(budgets_sql).result_rows != want_budgets
            or client.query(alerts_sql).result_rows != want_alerts
        ):
            assert not errors, errors
            assert time.monotonic() < deadline, (
                client.query(budgets_sql).result_rows,
                client.query(alerts_sql).result_rows,
            )
            time.sleep(0.2)
    finally:
        loader.stop()
        thread.join(60)
    assert not errors
    client.close()
    admin.command(f"DROP DATABASE `{settings.clickhouse_database}`")
    admin.close()
