"""The token_events columns the sink writes, as Arrow and polars see them."""

from __future__ import annotations

from typing import Final

import polars as pl
import pyarrow as pa  # type: ignore[import-untyped]

from streams.events import TOKEN_FIELDS

STRING_COLUMNS: Final = (
    "org_id",
    "team_id",
    "user_id",
    "project_id",
    "api_key_id",
    "session_id",
)

#: token_events columns the sink writes (ingested_at is the server's DEFAULT).
ARROW_SCHEMA: Final = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        *((name, pa.string()) for name in STRING_COLUMNS),
        ("turn", pa.uint32()),
        ("client", pa.string()),
        ("task_type", pa.string()),
        ("provider", pa.string()),
        ("model", pa.string()),
        *((name, pa.uint64()) for name in TOKEN_FIELDS),
        ("cost_nanos", pa.uint64()),
        ("cost_source", pa.string()),
        ("price_version", pa.string()),
        ("status", pa.string()),
        ("labels", pa.map_(pa.string(), pa.string())),
        ("kafka_partition", pa.uint32()),
        ("kafka_offset", pa.uint64()),
    ]
)

MS_PER_HOUR: Final = 3_600_000


def to_arrow(frame: pl.DataFrame) -> pa.Table:
    """Rows (``insert_frame``'s shape) as an Arrow table of exactly ARROW_SCHEMA."""
    table = frame.select(ARROW_SCHEMA.names).to_arrow()
    labels = table.column("labels").combine_chunks()
    entries = labels.values
    as_map = pa.MapArray.from_arrays(
        labels.offsets.cast(pa.int32()),
        entries.field("key").cast(pa.string()),
        entries.field("value").cast(pa.string()),
    )
    arrays = [
        as_map if name == "labels" else table.column(name).cast(field.type)
        for name, field in zip(ARROW_SCHEMA.names, ARROW_SCHEMA, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)
