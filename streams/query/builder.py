"""SQL for the reports: exact over any range, reading rollups wherever whole hours or days fit.

A range ``[start, end)`` is cut into pieces: whole UTC days from ``spend_daily``, whole hours
from ``spend_hourly``, and the partial hours at either edge from ``token_events`` (see
``plan_pieces``); the pieces are summed in one query. Every value travels as a server-side
parameter (``{name:Type}``); identifiers come only from the fixed tables below.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Final, Literal

from streams.clickhouse import Target
from streams.errors import SpendstreamError
from streams.query.ranges import ceil_utc, floor_utc

UTC = dt.UTC
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)

#: report dimension -> column (the rollups' grouping columns)
DIMENSIONS: Final = {
    "org": "org_id",
    "team": "team_id",
    "user": "user_id",
    "project": "project_id",
    "provider": "provider",
    "model": "model",
    "client": "client",
    "task_type": "task_type",
    "status": "status",
}
#: summed measures, named alike in token_events (raw expression) and in the rollups
MEASURES: Final = (
    ("requests", "count()"),
    ("input_tokens", "sum(input_tokens)"),
    ("cache_read_tokens", "sum(cache_read_tokens)"),
    ("cache_write_5m_tokens", "sum(cache_write_5m_tokens)"),
    ("cache_write_1h_tokens", "sum(cache_write_1h_tokens)"),
    ("output_tokens", "sum(output_tokens)"),
    ("reasoning_tokens", "sum(reasoning_tokens)"),
    ("cost_nanos", "sum(cost_nanos)"),
    ("unpriced_requests", "countIf(cost_source = 'unpriced')"),
)
RAW_SESSIONS: Final = "uniqExactStateIf(session_id, session_id != '')"
#: rollup families, narrowest first: (columns they keep, hourly table, daily table)
LEVELS: Final = (
    (frozenset({"org_id", "team_id"}), "spend_team_hourly", "spend_team_daily"),
    (frozenset({"org_id", "team_id", "user_id"}), "spend_user_hourly", "spend_user_daily"),
    (frozenset(DIMENSIONS.values()), "spend_hourly", "spend_daily"),
)

Source = Literal["raw", "hourly", "daily"]


class QueryError(SpendstreamError):
    """A report request that cannot be turned into SQL (unknown dimension, bad limit...)."""


@dataclasses.dataclass(frozen=True)
class Query:
    sql: str
    parameters: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Piece:
    source: Source
    start: dt.datetime
    end: dt.datetime


def plan_pieces(start: dt.datetime, end: dt.datetime, days: bool = True) -> list[Piece]:
    """Cover ``[start, end)`` exactly: days, then hours, then raw edges; empty pieces dropped."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    first_hour, last_hour = ceil_utc(start, HOUR), floor_utc(end, HOUR)
    if first_hour >= last_hour:
        return [Piece("raw", start, end)]
    pieces = [Piece("raw", start, first_hour)]
    first_day, last_day = ceil_utc(first_hour, DAY), floor_utc(last_hour, DAY)
    if days and first_day < last_day:
        pieces += [
            Piece("hourly", first_hour, first_day),
            Piece("daily", first_day, last_day),
            Piece("hourly", last_day, last_hour),
        ]
    else:
        pieces.append(Piece("hourly", first_hour, last_hour))
    pieces.append(Piece("raw", last_hour, end))
    return [p for p in pieces if p.start < p.end]


def _format(value: dt.datetime, source: Source) -> str:
    value = value.astimezone(UTC)
    if source == "daily":
        return value.strftime("%Y-%m-%d")
    if source == "hourly":
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


_TIME: Final = {
    "raw": ("event_time", "DateTime64(3, 'UTC')"),
    "hourly": ("hour", "DateTime('UTC')"),
    "daily": ("day", "Date"),
}
_BUCKET: Final = {"raw": "toStartOfHour(event_time)", "hourly": "hour"}


class Builder:
    """Report SQL for one database (or, in cluster mode, its Distributed tables)."""

    def __init__(self, target: Target | None = None) -> None:
        target = target or Target()
        self.raw = target.table("token_events")
        self.levels = [
            (columns, {"hourly": target.table(hourly), "daily": target.table(daily)})
            for columns, hourly, daily in LEVELS
        ]

    def tables_for(self, columns: set[str]) -> dict[str, str]:
        """The narrowest rollup family keeping every grouped or filtered column, plus raw."""
        for kept, tables in self.levels:
            if columns <= kept:
                return {"raw": self.raw, **tables}
        raise QueryError(f"no rollup keeps {sorted(columns)}")

    # -- spend ---------------------------------------------------------------------------------

    def spend(
        self,
        start: dt.datetime,
        end: dt.datetime,
        by: Sequence[str] = (),
        filters: Mapping[str, str] | None = None,
        limit: int | None = None,
        bucket_hours: bool = False,
        days: bool = True,
        sessions: bool = False,
    ) -> Query:
        """Requests, every token bucket and cost per ``by`` over the range.

        ``sessions`` adds exact distinct sessions: merging the rollups' uniqExact states is
        most of the cost of a coarse query (measured 5 ms -> 120 ms), so it is asked for.

        ``bucket_hours`` adds an ``hour`` column (UTC hour start) and never reads the daily
        rollup; the burn rate uses it. ``days=False`` reads hours only.
        """
        columns = [self._dimension(name) for name in by]
        params: dict[str, str] = {}
        where = self._filters(filters or {}, params)
        pieces = plan_pieces(start, end, days=days and not bucket_hours)
        filtered = {self._dimension(name) for name in filters or {}}
        tables = self.tables_for(set(columns) | filtered)
        selects = []
        for i, piece in enumerate(pieces):
            selects.append(
                self._piece(piece, i, columns, where, params, bucket_hours, tables, sessions)
            )
        keys = (["hour"] if bucket_hours else []) + columns
        outer = [*keys]
        outer += [f"sum({name}) AS {name}" for name, _ in MEASURES]
        if sessions:
            outer.append("uniqExactMerge(sessions) AS sessions")
        union = "\n    UNION ALL\n".join(selects)
        sql = f"SELECT {', '.join(outer)}\nFROM (\n{union}\n)"
        if keys:
            sql += f"\nGROUP BY {', '.join(keys)}"
            order = ["hour"] if bucket_hours else ["cost_nanos DESC", *columns]
            sql += f"\nORDER BY {', '.join(order)}"
        if limit is not None:
            sql += "\nLIMIT {limit:UInt32}"
            params["limit"] = str(self._limit(limit))
        return Query(sql, params)

    def _piece(
        self,
        piece: Piece,
        index: int,
        columns: Sequence[str],
        where: str,
        params: dict[str, str],
        bucket_hours: bool,
        tables: Mapping[str, str],
        sessions: bool,
    ) -> str:
        time_column, time_type = _TIME[piece.source]
        lo, hi = f"p{index}_start", f"p{index}_end"
        params[lo] = _format(piece.start, piece.source)
        params[hi] = _format(piece.end, piece.source)
        keys = list(columns)
        if bucket_hours:
            keys.insert(0, f"{_BUCKET[piece.source]} AS hour" if piece.source == "raw" else "hour")
        if piece.source == "raw":
            measures = [f"{expr} AS {name}" for name, expr in MEASURES]
            state = f"{RAW_SESSIONS} AS sessions"
        else:
            measures = [f"sum({name}) AS {name}" for name, _ in MEASURES]
            state = "uniqExactMergeState(sessions) AS sessions"
        if sessions:
            measures.append(state)
        group = [k.split(" AS ")[-1] for k in keys]
        sql = (
            f"    SELECT {', '.join(keys + measures)}\n"
            f"    FROM {tables[piece.source]}\n"
            f"    WHERE {time_column} >= {{{lo}:{time_type}}}"
            f" AND {time_column} < {{{hi}:{time_type}}}{where}"
        )
        if group:
            sql += f"\n    GROUP BY {', '.join(group)}"
        return sql

    # -- sessions ------------------------------------------------------------------------------

    def top_sessions(
        self,
        start: dt.datetime,
        end: dt.datetime,
        filters: Mapping[str, str] | None = None,
        limit: int = 10,
    ) -> Query:
        """The most expensive sessions active in the range (raw events: sessions are many)."""
        params = {"start": _format(start, "raw"), "end": _format(end, "raw")}
        where = self._filters(filters or {}, params)
        params["limit"] = str(self._limit(limit))
        sql = (
            "SELECT session_id, any(org_id) AS org, any(user_id) AS user, "
            "any(client) AS tool, count() AS requests, max(turn) AS turns, "
            "sum(input_tokens + cache_read_tokens + cache_write_5m_tokens "
            "+ cache_write_1h_tokens) AS prompt_tokens, sum(output_tokens) AS output_tokens, "
            "sum(cost_nanos) AS cost_nanos, min(event_time) AS first_seen, "
            "max(event_time) AS last_seen\n"
            f"FROM {self.raw}\n"
            "WHERE event_time >= {start:DateTime64(3, 'UTC')} "
            "AND event_time < {end:DateTime64(3, 'UTC')} AND session_id != ''"
            f"{where}\n"
            "GROUP BY session_id\n"
            "ORDER BY cost_nanos DESC, session_id\n"
            "LIMIT {limit:UInt32}"
        )
        return Query(sql, params)

    # -- unpriced -------------------------------------------------------------------------------

    def unpriced(
        self, start: dt.datetime, end: dt.datetime, filters: Mapping[str, str] | None = None
    ) -> Query:
        """Requests and tokens the catalog could not price, per (provider, model): raw events
        (the rollups count unpriced requests but not their tokens apart)."""
        params = {"start": _format(start, "raw"), "end": _format(end, "raw")}
        where = self._filters(filters or {}, params)
        sql = (
            "SELECT provider, model, count() AS requests, "
            "sum(input_tokens + cache_read_tokens + cache_write_5m_tokens "
            "+ cache_write_1h_tokens) AS prompt_tokens, sum(output_tokens) AS output_tokens, "
            "sum(reasoning_tokens) AS reasoning_tokens, uniqExact(org_id) AS orgs, "
            "min(event_time) AS first_seen, max(event_time) AS last_seen\n"
            f"FROM {self.raw}\n"
            "WHERE event_time >= {start:DateTime64(3, 'UTC')} "
            "AND event_time < {end:DateTime64(3, 'UTC')} AND cost_source = 'unpriced'"
            f"{where}\n"
            "GROUP BY provider, model\n"
            "ORDER BY requests DESC, provider, model"
        )
        return Query(sql, params)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _dimension(name: str) -> str:
        try:
            return DIMENSIONS[name]
        except KeyError:
            raise QueryError(f"unknown dimension {name!r}: use {', '.join(DIMENSIONS)}") from None

    def _filters(self, filters: Mapping[str, str], params: dict[str, str]) -> str:
        clauses = []
        for name, value in sorted(filters.items()):
            column = self._dimension(name)
            params[f"f_{column}"] = value
            clauses.append(f" AND {column} = {{f_{column}:String}}")
        return "".join(clauses)

    @staticmethod
    def _limit(limit: int) -> int:
        if not 1 <= limit <= 100_000:
            raise QueryError(f"limit {limit} must be between 1 and 100000")
        return limit
