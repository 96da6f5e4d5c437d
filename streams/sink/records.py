"""The second sink loop: the budgets (compacted) and alerts topics into ``budgets`` and
``budget_alerts``.

Low volume, so one simple loop: consume, decode, insert each table's rows with a deterministic
dedup token, commit. Re-reads after a crash are harmless: both tables are ReplacingMergeTrees
keyed by the record's identity (budget_id, alert_id) and read with FINAL.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from streams.clickhouse import Target
from streams.deadletter import DeadLetter
from streams.errors import DecodeError
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.sink.runner import deadletter_config

log = logging.getLogger(__name__)
UTC = dt.UTC


def _time(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=UTC)


def budget_row(value: dict[str, Any] | None, key: bytes | None, offset: int) -> dict[str, Any]:
    """A ``budgets`` row; ``value`` None is a tombstone deleting the budget of ``key``."""
    if value is None:
        epoch = _time(0)
        return {
            **dict.fromkeys(BUDGET_STRINGS, ""),
            "budget_id": (key or b"").decode(),
            "labels": {},
            "rolling_window_s": None,
            "limit_value": 0,
            "thresholds_pct": [],
            "forecast": False,
            "created_at": epoch,
            "updated_at": epoch,
            "kafka_offset": offset,
            "deleted": 1,
        }
    row = {name: value.get(name) or "" for name in BUDGET_STRINGS}
    row.update(
        labels=value.get("labels") or {},
        rolling_window_s=value.get("rolling_window_s"),
        limit_value=value["limit"],
        thresholds_pct=list(value.get("thresholds_pct") or []),
        forecast=bool(value.get("forecast")),
        created_at=_time(value["created_at"]),
        updated_at=_time(value["updated_at"]),
        kafka_offset=offset,
        deleted=0,
    )
    return row


BUDGET_STRINGS = (
    "budget_id", "description", "org_id", "team_id", "user_id", "project_id", "model", "client",
    "task_type", "period", "timezone", "unit", "mode",
)  # fmt: skip
ALERT_STRINGS = (
    "alert_id", "kind", "severity", "message", "budget_id", "org_id", "team_id", "user_id",
    "period", "timezone", "unit", "mode", "event_id", "session_id",
)  # fmt: skip
ALERT_TIMES = ("period_start", "period_end", "projected_breach_at", "event_time")


def alert_row(value: dict[str, Any], partition: int, offset: int) -> dict[str, Any]:
    row = {name: value.get(name) or "" for name in ALERT_STRINGS}
    row.update({name: _time(value.get(name)) for name in ALERT_TIMES})
    row.update(
        detected_at=_time(value["detected_at"]),
        scope=value.get("scope") or {},
        details=value.get("details") or {},
        spent=value["spent"],
        limit_value=value.get("limit"),
        threshold_pct=value.get("threshold_pct"),
        percent=value.get("percent"),
        projected=value.get("projected"),
        kafka_partition=partition,
        kafka_offset=offset,
    )
    return row


class RecordLoader:
    """Budgets and alerts topics into ClickHouse; ``run()`` until ``stop()``."""

    def __init__(self, settings: Settings, flush_seconds: float = 1.0) -> None:
        from streams.clickhouse import connect

        self.settings = settings
        self.target = Target.from_settings(settings)
        self.client = connect(settings, send_receive_timeout=60)
        self.consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"{settings.sink_group}-records",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
            logger=log,
        )
        self.deadletters = Producer(deadletter_config(settings), logger=log)
        self.flush_seconds = flush_seconds
        budgets, alerts = settings.topic_budgets, settings.topic_alerts
        self.routes: dict[str, tuple[str, AvroCodec]] = {
            budgets: ("budgets", AvroCodec("budget")),
            alerts: ("budget_alerts", AvroCodec("budget_alert")),
        }
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.consumer.subscribe(list(self.routes))
        rows: dict[str, list[dict[str, Any]]] = {table: [] for table, _ in self.routes.values()}
        ranges: dict[tuple[str, int], tuple[int, int]] = {}
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                for message in self.consumer.consume(num_messages=1000, timeout=0.2):
                    error = message.error()
                    if error is None:
                        self._handle(message, rows, ranges)
                    else:
                        log.warning("records: %s", error)
                if ranges and time.monotonic() - started >= self.flush_seconds:
                    self._flush(rows, ranges)
                    started = time.monotonic()
            if ranges:
                self._flush(rows, ranges)
        finally:
            self.consumer.close()
            self.deadletters.flush(10)
            self.client.close()

    def _handle(
        self,
        message: Message,
        rows: dict[str, list[dict[str, Any]]],
        ranges: dict[tuple[str, int], tuple[int, int]],
    ) -> None:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            return
        first = ranges.get((topic, partition), (offset, offset))[0]
        ranges[(topic, partition)] = (first, offset)
        table, codec = self.routes[topic]
        value = message.value()
        try:
            if table == "budgets":
                decoded = None if value is None else codec.decode(value)
                rows[table].append(budget_row(decoded, message.key(), offset))
            else:
                rows[table].append(alert_row(codec.decode(value), partition, offset))
        except (DecodeError, KeyError, TypeError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, DecodeError) else f"bad record: {exc!r}"
            letter = DeadLetter("decode", reason, "sink", topic, partition, offset)
            headers: list[tuple[str, str | bytes | None]] = list(letter.headers())
            self.deadletters.produce(
                self.settings.topic_deadletter, value=value, key=message.key(), headers=headers
            )

    def _flush(
        self,
        rows: dict[str, list[dict[str, Any]]],
        ranges: dict[tuple[str, int], tuple[int, int]],
    ) -> None:
        token = ",".join(f"{t}/{p}:{a}-{b}" for (t, p), (a, b) in sorted(ranges.items()))
        for table, batch in rows.items():
            if batch:
                columns = list(batch[0])
                data = [[row[c] for c in columns] for row in batch]
                self._retry(
                    functools.partial(
                        self.client.insert,
                        self.target.table(table),
                        data,
                        column_names=columns,
                        settings={"insert_deduplication_token": f"{token}/{table}"},
                    )
                )
        self.deadletters.flush(30)
        log.info("records: %s", {table: len(batch) for table, batch in rows.items()})
        offsets = [TopicPartition(t, p, b + 1) for (t, p), (_, b) in ranges.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("records: commit failed (re-reads replace their rows): %s", exc)
        for batch in rows.values():
            batch.clear()
        ranges.clear()

    def _retry(self, call: Callable[[], Any]) -> None:
        delay = 0.1
        while True:
            try:
                call()
                return
            except Exception as exc:
                if self._stop.is_set():
                    raise
                log.warning("records: clickhouse insert failed, retrying: %s", exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
