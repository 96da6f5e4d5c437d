"""The query layer: report SQL over the rollups (exact for any range) and ``spendstream report``.

Its door names the time ranges only (what the sink's backfill shares with reports); the SQL
builder and reports need clickhouse-connect and are imported by the report command itself.
"""

from streams.query.ranges import RangeError, TimeRange, ceil_utc, floor_utc, resolve

__all__ = ["RangeError", "TimeRange", "ceil_utc", "floor_utc", "resolve"]
