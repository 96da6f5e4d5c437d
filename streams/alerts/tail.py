"""Reading the alerts topic as a person does: from now on, from the beginning or from a time,
filtered, each alert once.

``AlertTail`` assigns every partition of the alerts topic itself (no consumer group, nothing
committed: a tail never moves anyone's offsets), decodes with the same decoder as everything
else (``AvroCodec("budget_alert")``, every released version) and drops repeats of an
``alert_id`` (alerts are at-least-once). An alert it cannot decode is counted and logged,
never fatal.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from streams.errors import DecodeError, SpendstreamError
from streams.serde import AvroCodec, current
from streams.settings import Settings

log = logging.getLogger(__name__)
#: librdkafka's own lines go through Python logging (never straight onto a terminal)
kafka_log = logging.getLogger("streams.alerts.librdkafka")

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
#: repeats of this many most recent alert ids are dropped
DEDUP_MEMORY = 100_000


def alert_kinds() -> tuple[str, ...]:
    """The kinds the current BudgetAlert schema knows, in its order."""
    for field in current("budget_alert").raw["fields"]:
        if field["name"] == "kind":
            return tuple(field["type"]["symbols"])
    raise SpendstreamError("budget_alert schema has no kind field")


def parse_since(text: str, now_ms: int) -> int:
    """``--since``: a duration back from now (``90s``, ``10m``, ``2h``, ``1d``) or an ISO time
    (``2026-12-02T07:00``; naive means UTC). Returns UTC epoch milliseconds."""
    found = _DURATION.match(text)
    if found:
        return now_ms - int(found.group(1)) * _UNIT_MS[found.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise SpendstreamError(
            f"--since {text!r}: give a duration (90s, 10m, 2h, 1d) or an ISO time "
            "(2026-12-02T07:00, naive = UTC)"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _values(values: Iterable[str] | None) -> frozenset[str]:
    return frozenset(v for v in values or () if v)


@dataclasses.dataclass(frozen=True)
class AlertFilter:
    """Which alerts to show. Each non-empty set must match (AND); values in a set are OR."""

    orgs: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()
    budgets: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    since_ms: int | None = None  # detected at or after

    @classmethod
    def of(
        cls,
        orgs: Iterable[str] | None = None,
        teams: Iterable[str] | None = None,
        budgets: Iterable[str] | None = None,
        kinds: Iterable[str] | None = None,
        since_ms: int | None = None,
    ) -> AlertFilter:
        return cls(_values(orgs), _values(teams), _values(budgets), _values(kinds), since_ms)

    def matches(self, alert: Mapping[str, Any]) -> bool:
        scope = alert.get("scope") or {}
        if self.orgs and (alert.get("org_id") or scope.get("org_id")) not in self.orgs:
            return False
        if self.teams and (alert.get("team_id") or scope.get("team_id")) not in self.teams:
            return False
        if self.budgets and alert.get("budget_id") not in self.budgets:
            return False
        if self.kinds and alert.get("kind") not in self.kinds:
            return False
        return self.since_ms is None or int(alert.get("detected_at") or 0) >= self.since_ms


class AlertTail:
    """Follows the alerts topic; ``poll()`` returns the new matching alerts, oldest first.

    Starts at the end of every partition (only alerts raised from now on), at the beginning
    (``from_beginning``), or at the first record stamped at or after ``since_ms``.
    ``caught_up`` turns true once every partition was read to the end it had when opened.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        from_beginning: bool = False,
        since_ms: int | None = None,
        where: AlertFilter | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.topic_alerts
        self.from_beginning = from_beginning
        self.where = where or AlertFilter()
        if since_ms is not None and (self.where.since_ms is None or since_ms > self.where.since_ms):
            self.where = dataclasses.replace(self.where, since_ms=since_ms)
        self.undecodable = 0
        self.repeats = 0
        self._codec = AvroCodec("budget_alert")
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._consumer: Consumer | None = None
        self._pending: set[int] = set()

    def open(self, timeout: float = 30.0) -> AlertTail:
        config: dict[str, Any] = {
            **self.settings.kafka_client_config(),
            # never joined (partitions are assigned), never committed: a label only
            "group.id": f"spendstream-alerts-tail-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "logger": kafka_log,
        }
        consumer = Consumer(config)
        try:
            meta = consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                reason = meta.error if meta is not None and meta.error else "no partitions"
                raise SpendstreamError(f"cannot read alerts topic {self.topic}: {reason}")
            parts = sorted(meta.partitions)
            if self.from_beginning:
                start = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts]
            elif self.where.since_ms is not None:
                asked = [TopicPartition(self.topic, p, self.where.since_ms) for p in parts]
                found = consumer.offsets_for_times(asked, timeout=timeout)
                start = [
                    TopicPartition(
                        self.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END
                    )
                    for tp in found
                ]
            else:
                start = [TopicPartition(self.topic, p, OFFSET_END) for p in parts]
            consumer.assign(start)
        except KafkaException as exc:
            consumer.close()
            raise SpendstreamError(f"cannot read alerts topic {self.topic}: {exc}") from exc
        except BaseException:
            consumer.close()
            raise
        self._pending = set(parts)
        self._consumer = consumer
        return self

    @property
    def caught_up(self) -> bool:
        return self._consumer is not None and not self._pending

    def poll(self, timeout: float = 0.5, max_records: int = 1_000) -> list[dict[str, Any]]:
        """The matching alerts that arrived since the last call (waits up to ``timeout``)."""
        if self._consumer is None:
            self.open()
        assert self._consumer is not None
        found: list[dict[str, Any]] = []
        for msg in self._consumer.consume(num_messages=max_records, timeout=timeout):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._pending.discard(msg.partition())
                else:
                    log.warning("reading %s: %s", self.topic, error)
                continue
            try:
                alert = self._codec.decode(msg.value())
            except DecodeError as exc:
                self.undecodable += 1
                log.warning(
                    "%s[%s]@%s is not a BudgetAlert this version reads: %s",
                    self.topic,
                    msg.partition(),
                    msg.offset(),
                    exc,
                )
                continue
            if self._repeat(str(alert["alert_id"])):
                self.repeats += 1
                continue
            if self.where.matches(alert):
                found.append(alert)
        return found

    def _repeat(self, alert_id: str) -> bool:
        if alert_id in self._seen:
            self._seen.move_to_end(alert_id)
            return True
        self._seen[alert_id] = None
        if len(self._seen) > DEDUP_MEMORY:
            self._seen.popitem(last=False)
        return False

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> AlertTail:
        return self.open() if self._consumer is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()
