"""Writing budgets to their compacted topic: the changes an apply makes, and publishing them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import Producer

from streams.budgets.model import Budget
from streams.budgets.view import budget_topics
from streams.errors import SpendstreamError
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.topics import ensure_topics


def _producer(settings: Settings) -> Producer:
    config = dict(settings.kafka_client_config())
    config.update({"enable.idempotence": True, "acks": "all"})
    return Producer(config)


def publish(
    settings: Settings, changes: Mapping[str, Budget | None], timeout: float = 30.0
) -> None:
    """Write budgets (None: delete) and wait until the broker has them all."""
    ensure_topics(settings, budget_topics(settings))
    codec = AvroCodec("budget")
    producer = _producer(settings)
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(f"{msg.key()!r}: {err}")

    for budget_id, budget in changes.items():
        value = None if budget is None else codec.encode(budget.to_record())
        producer.produce(
            settings.topic_budgets, value=value, key=budget_id.encode(), on_delivery=delivered
        )
    remaining = producer.flush(timeout)
    if remaining or failures:
        raise SpendstreamError(f"budgets not all written: {failures or f'{remaining} pending'}")


def plan_apply(
    current: list[Budget], wanted: list[Budget], prune: bool, now: int
) -> dict[str, Budget | None]:
    """Changes that make the topic equal ``wanted``: new, changed (created_at kept), pruned."""
    have = {b.budget_id: b for b in current}
    changes: dict[str, Budget | None] = {}
    for budget in wanted:
        old = have.get(budget.budget_id)
        if old is not None and old.same_definition(budget):
            continue
        record = budget.to_record()
        record["created_at"] = old.created_at if old is not None else now
        record["updated_at"] = now
        changes[budget.budget_id] = Budget.from_record(record)
    if prune:
        keep = {b.budget_id for b in wanted}
        changes.update({bid: None for bid in have if bid not in keep})
    return changes
