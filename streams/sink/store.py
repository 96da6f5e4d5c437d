"""What the sink asks of ClickHouse: which event_ids it already has, and a deduplicated insert.

One client per sink, created once; every call is a single HTTP request that either succeeds or
raises (the caller retries the SAME request, so a retry is always safe).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
from clickhouse_connect.driver.external import ExternalData

from streams.clickhouse import Target
from streams.errors import SinkError
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
        # Dedup explicitly, in token_events AND in every view fed from it: the default of
        # deduplicate_blocks_in_dependent_materialized_views was off in some 24.x-25.x
        # releases, where a retried block was dropped from token_events but pushed again
        # through every rollup. check_dedup() proves at start-up that the server does it.
        self._insert_settings: dict[str, Any] = {
            "optimize_on_insert": 0,
            "insert_deduplicate": 1,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
        }
        if target.cluster:
            # Distributed inserts must reach every shard before we commit offsets.
            self._insert_settings["distributed_foreground_insert"] = 1

    @classmethod
    def connect(cls, settings: Settings, timeout: float = 60) -> EventStore:
        """A store on its own client; ``timeout`` bounds each request (connect and answer)."""
        from streams.clickhouse import connect

        client = connect(
            settings,
            send_receive_timeout=timeout,
            connect_timeout=min(10.0, timeout),
            autogenerate_session_id=False,
        )
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

    def insert(self, table: pa.Table, token: str, query_id: str | None = None) -> int:
        """Insert ``table`` under ``token`` (a repeat of the same token is a no-op); its rows.

        ``query_id`` names the request on the server, so that a drain can wait for it or
        kill it (``running``, ``kill``)."""
        settings = {**self._insert_settings, "insert_deduplication_token": token}
        if query_id is not None:
            settings["query_id"] = query_id
        self.client.insert_arrow(self.events_table, table, settings=settings)
        return int(table.num_rows)

    def check_dedup(self, probe_id: str) -> None:
        """Insert one probe row twice under one dedup token, as a retry does, and count it in
        the probe table and in the view fed from it (migration 0008); SinkError unless both
        hold it once: on such a server every retried block would count twice in the rollups.
        """
        # local tables also on a cluster: the check is about the server the sink talks to
        probe = f"`{self.target.database}`.`sink_dedup_probe`"
        view = f"`{self.target.database}`.`sink_dedup_probe_view`"
        settings = {**self._insert_settings, "insert_deduplication_token": probe_id}
        for _ in range(2):
            self.client.insert(probe, [[probe_id]], column_names=["probe_id"], settings=settings)
        counts = self.client.query(
            f"SELECT (SELECT count() FROM {probe} WHERE probe_id = {{p:String}}), "
            f"(SELECT sum(rows) FROM {view} WHERE probe_id = {{p:String}})",
            parameters={"p": probe_id},
        ).result_rows[0]
        stored, viewed = int(counts[0]), int(counts[1])
        if (stored, viewed) != (1, 1):
            raise SinkError(
                "ClickHouse does not deduplicate a retried insert through materialized views "
                f"(a block inserted twice under one token: {stored} row(s) in the table, "
                f"{viewed} in its view; 1 and 1 expected): retried blocks would count twice "
                "in every rollup. Allow the settings insert_deduplicate and "
                "deduplicate_blocks_in_dependent_materialized_views (the sink sets both to 1) "
                "and check that every view's target table has a deduplication window "
                "(clickhouse/migrations)."
            )

    def running(self, prefix: str) -> list[str]:
        """query_ids of the queries on the server that start with ``prefix``."""
        result = self.client.query(
            "SELECT query_id FROM system.processes WHERE startsWith(query_id, {p:String})",
            parameters={"p": prefix},
        )
        return [row[0] for row in result.result_rows]

    def kill(self, query_ids: list[str]) -> None:
        """Cancel ``query_ids`` and return once the server has stopped them (KILL ... SYNC)."""
        if query_ids:
            self.client.command(
                "KILL QUERY WHERE query_id IN {ids:Array(String)} SYNC",
                parameters={"ids": query_ids},
            )

    def close(self) -> None:
        self.client.close()
