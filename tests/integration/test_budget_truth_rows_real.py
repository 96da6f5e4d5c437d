"""Issue 12's rows that involve Kafka or ClickHouse, on the real services: real `spendstream
worker` (and `sink`) processes, the test stack's broker and ClickHouse. The unit tests of
every row are in tests/unit/test_budget_truth_rows.py.

- the baseline race: a budget created while the sink has not loaded the period yet;
- blocks lifted on a limit raised 10x, a switch to alert mode and a delete, and thresholds
  re-evaluated against the new definition;
- an idle partition does not stop spend-spike detection;
- delivery before checkpoint: alerts and blocks the broker refused are not checkpointed as
  sent; the restarted worker publishes them;
- a block published after the last checkpoint lifts after a restart (the budget deleted
  while the worker was down).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from test_worker_scenario import (
    ALERTS,
    CENT,
    CODEC,
    PARTITIONS,
    Workers,
    _event,
    _produce,
    _read_all,
    _unique_settings,
    _wait_caught_up,
)

from streams.budgets import Budget, budget_from_spec, publish
from streams.clickhouse import Target
from streams.events import now_ms, partition_key
from streams.migrate import Migrator
from streams.processors.alerts import spike_alert_id
from streams.processors.periods import MINUTE_MS, calendar_period
from streams.sdk import TokenEventProducer
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics
from streams.worker import worker_topics

pytestmark = pytest.mark.integration


def _alerts(settings: Settings) -> list[dict[str, Any]]:
    return [ALERTS.decode(m.value()) for m in _read_all(settings, settings.topic_alerts)]


def _wait_for(what: str, workers: Workers, found: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers.assert_alive()
        got = found()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout}s; logs in {workers.logs}")


def _thresholds(settings: Settings, budget: Budget) -> dict[int, int]:
    """threshold -> spent of the alerts of ``budget``'s limit."""
    return {
        a["threshold_pct"]: a["spent"]
        for a in _alerts(settings)
        if a["kind"] == "threshold_crossed"
        and a["budget_id"] == budget.budget_id
        and a["limit"] == budget.limit
    }


def test_a_budget_created_while_the_sink_is_behind_starts_from_the_exact_baseline(
    stack_settings: Settings, clickhouse_client: Any, tmp_path: Path
) -> None:
    """Row: a budget created mid-period while the sink is still loading that period: the
    worker waits until the sink has committed past the version's split on every partition,
    then reads the baseline (here the sink starts only after the budget was published: a
    lazy read at once would find nothing and the totals would stay short forever)."""
    settings = _unique_settings(stack_settings)
    Migrator(clickhouse_client, Target.from_settings(settings)).migrate()
    ensure_topics(settings, worker_topics(settings))
    org = f"race-{uuid.uuid4().hex[:8]}"
    now = now_ms()
    first_t = max(now - 5 * MINUTE_MS, calendar_period(now, "month", "UTC").start)
    before = [_event(first_t + i * 1_000, org, "t", "ana", CENT + i) for i in range(200)]
    after = [_event(now + i, org, "t", "bo", CENT) for i in range(20)]
    total = sum(e["cost_nanos"] for e in before + after)
    budget = budget_from_spec(
        {"id": f"{org}-month", "scope": {"org": org}, "limit_usd": f"{total / 1e9:.9f}"},
        now_ms=now,
    )
    assert budget.limit == total
    workers = Workers(settings, tmp_path)
    try:
        workers.start()  # the worker alone: the sink has loaded nothing yet
        _produce(settings, [(partition_key(e), CODEC.encode(e)) for e in before])
        _wait_caught_up(settings, workers)
        publish(settings, {budget.budget_id: budget})
        time.sleep(2)  # the worker reads the budget, splits at the offsets it reached
        _produce(settings, [(partition_key(e), CODEC.encode(e)) for e in after])
        _wait_caught_up(settings, workers)
        assert _thresholds(settings, budget) == {}  # the baseline waits for the sink
        workers.start("sink")
        got = _wait_for(
            "the 100% alert", workers, lambda: (t := _thresholds(settings, budget)).get(100) and t
        )
        assert sorted(got) == [50, 80, 100]
        assert got[100] == total
    finally:
        workers.stop_all()


def _spend(producer: TokenEventProducer, org: str, user: str, cost_nanos: int) -> None:
    """One claude-code request of ``user`` in team platform of ``org``, flushed."""
    producer.record(
        org_id=org,
        team_id="platform",
        user_id=user,
        client="claude-code",
        provider="anthropic",
        model="claude-sonnet-4-5",
        cost_nanos=cost_nanos,
    )
    producer.flush()


def _blocked(producer: TokenEventProducer, org: str) -> Any:
    return producer.check(org_id=org, team_id="platform", user_id="ana")


def test_a_block_lifts_on_a_10x_limit_raise_a_switch_to_alert_mode_and_a_delete(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """Row: a limit raised 10x, a budget switched to alert mode, or deleted, while its scope is
    blocked: the block is lifted on the enforcement topic within seconds; thresholds are
    re-evaluated against the new definition (110% of the new limit alerts and blocks again)."""
    settings = _unique_settings(kafka_settings)
    ensure_topics(settings, worker_topics(settings))
    org = f"lift-{uuid.uuid4().hex[:8]}"
    day_ago = now_ms() - 86_400_000
    cap = budget_from_spec(
        {
            "id": f"{org}-cap",
            "scope": {"org": org},
            "mode": "block",
            "period": "day",
            "limit_usd": "1.00",
        },
        now_ms=day_ago,
    )
    publish(settings, {cap.budget_id: cap})
    workers = Workers(settings, tmp_path)
    producer = TokenEventProducer(settings)
    try:
        workers.start()
        producer.watch_enforcement()
        _spend(producer, org, "ana", 110 * CENT)
        _wait_for("blocked at $1.10 of $1", workers, lambda: _blocked(producer, org))

        def change(budget: Budget | None, blocked: bool, what: str) -> float:
            publish(settings, {cap.budget_id: budget})
            sent = time.monotonic()
            _wait_for(what, workers, lambda: (_blocked(producer, org) is not None) == blocked, 60)
            return time.monotonic() - sent

        raised = _replace(cap, limit=cap.limit * 10)
        lifted_raise = change(raised, False, "lifted on the raise")
        _spend(producer, org, "bo", 1_000 * CENT)  # $11.10 of $10
        block = _wait_for(
            "blocked at 111% of the new limit", workers, lambda: _blocked(producer, org)
        )
        assert block.spent == 1_110 * CENT
        got = _wait_for(
            "the new definition's alerts", workers, lambda: _thresholds(settings, raised)
        )
        assert sorted(got) == [50, 80, 100]
        lifted_mode = change(_replace(raised, mode="alert"), False, "lifted on alert mode")
        change(_replace(raised, mode="block", description="again"), True, "blocked again")
        lifted_delete = change(None, False, "lifted on the delete")
        took = f"{lifted_raise:.1f}s / {lifted_mode:.1f}s / {lifted_delete:.1f}s"
        print(f"lifted {took} after the raise / the switch / the delete")
        assert max(lifted_raise, lifted_mode, lifted_delete) < 30
    finally:
        workers.stop_all()
        producer.close()


def _replace(budget: Budget, **changes: Any) -> Budget:
    return dataclasses.replace(budget, updated_at=budget.updated_at + 1, **changes)


def test_an_idle_partition_does_not_stop_spend_spike_detection(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """Row: partitions 1-3 idle (no record ever): after the idleness timeout they no longer
    hold stage 2's watermark back, and a spike on partition 0 is detected."""
    settings = _unique_settings(kafka_settings)
    ensure_topics(
        settings,
        [TopicSpec(settings.topic_events, PARTITIONS, {"message.timestamp.type": "CreateTime"})],
    )
    ensure_topics(settings, worker_topics(settings))
    org = f"idle-{uuid.uuid4().hex[:8]}"
    now = now_ms()
    spike = now - 9 * MINUTE_MS
    spike -= spike % MINUTE_MS
    events = [
        _event(spike - m * MINUTE_MS + 5_000, org, "t", "ana", 10 * CENT) for m in range(15, 0, -1)
    ]
    events += [_event(spike + 5_000 + i, org, "t", "ana", 50 * CENT) for i in range(10)]
    producer = Producer(settings.kafka_client_config())
    for e in events:
        producer.produce(
            settings.topic_events,
            CODEC.encode(e),
            partition_key(e),
            partition=0,
            timestamp=e["event_time"],
        )
    assert producer.flush(30) == 0
    workers = Workers(settings, tmp_path)
    try:
        workers.start()
        aid = spike_alert_id(f"org_id={org}", spike)
        found = _wait_for(
            "the spike alert",
            workers,
            lambda: [a for a in _alerts(settings) if a["kind"] == "spend_spike"],
        )
        assert [a["alert_id"] for a in found] == [aid]
        assert found[0]["spent"] == 500 * CENT
    finally:
        workers.stop_all()


def test_an_alert_and_a_block_the_broker_refused_are_published_after_a_restart(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """Also fix: alerts and enforcement records count as sent only once the broker
    acknowledged them. Here the broker refuses them (the topics take no record over 200
    bytes): the worker stops without checkpointing them; once the topics take them again,
    the restarted worker publishes the alert and the block, each once."""
    settings = _unique_settings(kafka_settings)
    tiny = {"max.message.bytes": "200"}
    ensure_topics(
        settings,
        [
            TopicSpec(settings.topic_alerts, PARTITIONS, tiny),
            TopicSpec(settings.topic_enforcement, 1, {"cleanup.policy": "compact", **tiny}),
        ],
    )
    ensure_topics(settings, worker_topics(settings))
    org = f"ack-{uuid.uuid4().hex[:8]}"
    cap = budget_from_spec(
        {"id": f"{org}-cap", "scope": {"org": org}, "mode": "block", "limit_usd": "1.00"},
        now_ms=now_ms() - 86_400_000,
    )
    publish(settings, {cap.budget_id: cap})
    workers = Workers(settings, tmp_path)
    producer = TokenEventProducer(settings)
    try:
        first = workers.start()
        _spend(producer, org, "ana", 110 * CENT)
        first.wait(timeout=120)
        assert first.returncode != 0
        assert b"not delivered" in (tmp_path / "worker-0.log").read_bytes()
        client = AdminClient(settings.kafka_client_config())
        undo = [
            ConfigEntry("max.message.bytes", "", incremental_operation=AlterConfigOpType.DELETE)
        ]
        for topic in (settings.topic_alerts, settings.topic_enforcement):
            resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=undo)
            for future in client.incremental_alter_configs([resource]).values():
                future.result(timeout=30)
        workers.start()
        producer.watch_enforcement()
        block = _wait_for("the block", workers, lambda: _blocked(producer, org))
        assert block.spent == 110 * CENT
        got = _wait_for("the 100% alert", workers, lambda: _thresholds(settings, cap).get(100))
        assert got == 110 * CENT
        ids = [a["alert_id"] for a in _alerts(settings)]
        assert len(ids) == len(set(ids)) == 3  # 50, 80 and 100%, once each
    finally:
        workers.stop_all()
        producer.close()


def test_a_block_published_after_the_last_checkpoint_lifts_when_deleted_while_down(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """A worker blocks a scope and is killed before its next checkpoint (here: none, the
    interval is an hour); the budget is deleted while no worker runs. The restarted worker
    restored no block (the checkpoint never had it) and decided "not blocked" on the replay,
    so nothing lifted the block on the enforcement topic: blocked forever (found by the
    budget-truth property test, tests/unit/test_budget_truth_rows.py). Now lifted once the
    restarted stage 2 has replayed its partials."""
    settings = _unique_settings(kafka_settings)
    ensure_topics(settings, worker_topics(settings))
    org = f"down-{uuid.uuid4().hex[:8]}"
    cap = budget_from_spec(
        {"id": f"{org}-cap", "scope": {"org": org}, "mode": "block", "limit_usd": "1.00"},
        now_ms=now_ms() - 86_400_000,
    )
    publish(settings, {cap.budget_id: cap})
    workers = Workers(settings, tmp_path, extra={"WORKER_FLUSH_SECONDS": "3600"})
    producer = TokenEventProducer(settings)
    try:
        first = workers.start()
        producer.watch_enforcement()
        _spend(producer, org, "ana", 110 * CENT)
        _wait_for("blocked at $1.10 of $1", workers, lambda: _blocked(producer, org))
        workers.kill(first)
        publish(settings, {cap.budget_id: None})
        workers.start()
        sent = time.monotonic()
        _wait_for("lifted after the restart", workers, lambda: _blocked(producer, org) is None, 60)
        print(f"lifted {time.monotonic() - sent:.1f}s after the restart")
    finally:
        workers.stop_all()
        producer.close()
