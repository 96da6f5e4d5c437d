"""What the sink has written: its committed offsets, and the rows ClickHouse holds.

The worker asks it two things, both only after the sink's consumer group has committed past
the offset in question (the sink commits an offset only once its rows are in ClickHouse, so
the answer can no longer change):

* the baseline of a budget version: its scope's spend at offsets before the version's split;
* whether the sink inserted a given record (an event older than the worker's id memory): if
  it did, the record is not a duplicate, whatever the horizon; if it did not, it was one.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.budgets import read_baseline
from streams.clickhouse import Target, connect
from streams.errors import SpendstreamError
from streams.processors.periods import HOUR_MS
from streams.processors.stage1 import Lookup
from streams.processors.stage2 import BaselineRequest
from streams.settings import Settings

log = logging.getLogger(__name__)

#: how long a read of the sink's committed offsets is reused
COMMITTED_TTL_S = 0.2


class SinkView:
    """The sink's progress (committed offsets of its group) and lookups in ClickHouse."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.target = Target.from_settings(settings)
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None
        self._committed: dict[int, int] = {}
        self._read_at = 0.0
        self._client: Any = None
        self._counted_sql = (
            f"SELECT kafka_offset FROM {self.target.table('token_events')} "
            "WHERE org_id IN {orgs:Array(String)} "
            "AND toStartOfHour(event_time) IN {hours:Array(DateTime('UTC'))} "
            "AND event_id IN {ids:Array(UUID)} AND kafka_partition = {partition:UInt32}"
        )

    def committed(self, partition: int) -> int:
        """The sink's committed offset on ``partition`` of the events topic (0: none yet)."""
        with self._lock:
            if time.monotonic() - self._read_at > COMMITTED_TTL_S:
                self._read()
            return self._committed.get(partition, 0)

    def _read(self) -> None:
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    **self.settings.kafka_client_config(),
                    "group.id": self.settings.sink_group,
                    "enable.auto.commit": False,
                }
            )
        parts = [
            TopicPartition(self.settings.topic_events, p)
            for p in range(self.settings.event_partitions)
        ]
        try:
            found = self._consumer.committed(parts, timeout=10)
        except KafkaException as exc:
            raise SpendstreamError(f"cannot read the sink's committed offsets: {exc}") from exc
        self._committed = {tp.partition: max(0, tp.offset) for tp in found}
        self._read_at = time.monotonic()

    def counted(self, partition: int, lookups: Sequence[Lookup]) -> set[int]:
        """The offsets among ``lookups`` whose record the sink inserted into token_events."""
        if not lookups:
            return set()
        params = {
            "orgs": sorted({x.org_id for x in lookups}),
            "hours": sorted(
                {
                    dt.datetime.fromtimestamp(x.event_time // HOUR_MS * 3600, tz=dt.UTC)
                    for x in lookups
                }
            ),
            "ids": sorted({x.event_id for x in lookups}),
            "partition": partition,
        }
        with self._lock:
            if self._client is None:
                # no session: the pool's threads query at the same time
                self._client = connect(
                    self.settings, send_receive_timeout=60, autogenerate_session_id=False
                )
            client = self._client
        rows = client.query(self._counted_sql, parameters=params).result_rows
        wanted = {x.offset for x in lookups}
        return {int(r[0]) for r in rows} & wanted

    def baseline(self, request: BaselineRequest) -> list[tuple[int, int, int]]:
        return read_baseline(
            self.settings,
            request.budget,
            request.start,
            request.until,
            request.bucket_ms,
            partition=request.partition,
            before_offset=request.split,
        )

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            if self._client is not None:
                self._client.close()
                self._client = None
