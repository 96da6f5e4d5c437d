"""What the sink asks of ClickHouse: which event_ids it already has, and a deduplicated insert.

One client per sink, created once; every call is a single HTTP request that either succeeds or
raises (the caller retries the SAME request, so a retry is always safe).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
from clickhouse_connect.driver.external import ExternalData

from streams.clickhouse import Target
from streams.settings import Settings


class EventStore:
    """token_events inserts and event_ids lookups for one database (or cluster)."""

    def __init__(self, client: Any, target: Target) -> None:
        self.client = client
        self.target = target
        self.events_table = target.table("token_events")
        self.ids_table = target.table("event_ids")
        # On a cluster the batch (external data) exists only here: GLOBAL ships it to shards.
        in_ = "GLOBAL IN" if target.cluster else "IN"
        self._lookup_sql = (
            f"SELECT toString(event_id) FROM {self.ids_table} "
            f"WHERE (hour, event_id) {in_} (SELECT hour, event_id FROM batch)"
        )
        # optimize_on_insert=0: the views' GROUP BY already leaves one row per rollup key in a
        # block, so merging equal keys again at insert is wasted work (measured: about a fifth
        # of the insert's time with the seven views, see docs/performance.md).
        self._insert_settings: dict[str, Any] = {"optimize_on_insert": 0}
        if target.cluster:
            # Distributed inserts must reach every shard before we commit offsets.
            self._insert_settings["distributed_foreground_insert"] = 1

    @classmethod
    def connect(cls, settings: Settings) -> EventStore:
        from streams.clickhouse import connect

        client = connect(settings, send_receive_timeout=60, autogenerate_session_id=False)
        return cls(client, Target.from_settings(settings))

    def existing(self, data: bytes) -> set[str]:
        """The event_ids among ``data`` (TSV: hour epoch seconds, id) that ClickHouse holds."""
        if not data:
            return set()
        batch = ExternalData(
            file_name="batch", data=data, fmt="TSV", structure="hour DateTime, event_id UUID"
        )
        result = self.client.query(self._lookup_sql, external_data=batch)
        return {row[0] for row in result.result_rows}

    def insert(self, table: pa.Table, token: str) -> int:
        """Insert ``table`` under ``token`` (a repeat of the same token is a no-op); its rows."""
        settings = {**self._insert_settings, "insert_deduplication_token": token}
        self.client.insert_arrow(self.events_table, table, settings=settings)
        return int(table.num_rows)

    def close(self) -> None:
        self.client.close()
