"""What a budget created mid-period starts from: its scope's spend so far, read from ClickHouse."""

from __future__ import annotations

from typing import Any

from streams.budgets.model import Budget
from streams.clickhouse import Target, connect
from streams.settings import Settings

#: budget scope field -> token_events column (nullable scope values are stored as '')
_SCOPE_COLUMNS = {
    "org_id": "org_id",
    "team_id": "team_id",
    "user_id": "user_id",
    "project_id": "project_id",
    "model": "model",
    "client": "client",
    "task_type": "task_type",
}


def baseline_query(
    budget: Budget,
    start: int,
    until: int,
    bucket_ms: int = 0,
    *,
    partition: int | None = None,
    before_offset: int | None = None,
    table: str = "token_events",
) -> tuple[str, dict[str, Any]]:
    """SQL + parameters: cost and tokens of ``budget``'s scope with start <= event_time < until.

    One row ``(start, cost, tokens)``; with ``bucket_ms``, one row per bucket of that length
    counted from ``start`` (what a rolling window needs: its baseline slides out bucket by
    bucket). With ``partition`` and ``before_offset``: only the rows the sink read from that
    events partition before that offset (a budget version's baseline: stage 1 counts the
    rest). Rows are summed as stored, as every report and rollup sums them.
    """
    params: dict[str, Any] = {"start": start, "until": until}
    where = [
        "event_time >= fromUnixTimestamp64Milli({start:Int64}, 'UTC')",
        "event_time < fromUnixTimestamp64Milli({until:Int64}, 'UTC')",
    ]
    if partition is not None:
        params["partition"] = partition
        where.append("kafka_partition = {partition:UInt32}")
    if before_offset is not None:
        params["before"] = before_offset
        where.append("kafka_offset < {before:UInt64}")
    for field, column in _SCOPE_COLUMNS.items():
        value = getattr(budget, field)
        if value is not None:
            params[field] = value
            where.append(f"{column} = {{{field}:String}}")
    for index, (name, value) in enumerate(sorted(budget.labels.items())):
        params[f"lk{index}"], params[f"lv{index}"] = name, value
        where.append(f"labels[{{lk{index}:String}}] = {{lv{index}:String}}")
    if bucket_ms > 0:
        params["bucket"] = bucket_ms
        bucket = (
            "{start:Int64} + intDiv(toUnixTimestamp64Milli(event_time) - {start:Int64},"
            " {bucket:Int64}) * {bucket:Int64}"
        )
    else:
        bucket = "{start:Int64}"
    sql = (
        f"SELECT {bucket} AS bucket, toInt64(sum(cost_nanos)),"
        " toInt64(sum(input_tokens + cache_read_tokens + cache_write_5m_tokens"
        " + cache_write_1h_tokens + output_tokens))"
        f" FROM {table} WHERE {' AND '.join(where)}"
        " GROUP BY bucket ORDER BY bucket"
    )
    return sql, params


def read_baseline(
    settings: Settings,
    budget: Budget,
    start: int,
    until: int,
    bucket_ms: int = 0,
    *,
    partition: int | None = None,
    before_offset: int | None = None,
) -> list[tuple[int, int, int]]:
    """(bucket start, cost nano-USD, tokens) already spent in [start, until) for the scope
    (the Distributed table on a cluster)."""
    table = Target.from_settings(settings).table("token_events")
    sql, params = baseline_query(
        budget,
        start,
        until,
        bucket_ms,
        partition=partition,
        before_offset=before_offset,
        table=table,
    )
    client = connect(settings, database=settings.clickhouse_database)
    try:
        rows = client.query(sql, parameters=params).result_rows
    finally:
        client.close()
    return [(int(b), int(c or 0), int(t or 0)) for b, c, t in rows]
