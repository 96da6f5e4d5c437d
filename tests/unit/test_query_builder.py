"""Report SQL builders (exact SQL), range planning and time-zone ranges. Nothing running."""

from __future__ import annotations

import datetime as dt

import pytest

from streams.clickhouse import Target
from streams.migrate import clickhouse_dir
from streams.query.builder import Builder, Piece, QueryError, plan_pieces
from streams.query.canonical import render_all
from streams.query.ranges import RangeError, resolve

UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_plan_pieces_cover_the_range_exactly_with_rollups_inside() -> None:
    start, end = at(2026, 3, 1, 10, 17, 5), at(2026, 3, 4, 7, 2)
    assert plan_pieces(start, end) == [
        Piece("raw", start, at(2026, 3, 1, 11)),
        Piece("hourly", at(2026, 3, 1, 11), at(2026, 3, 2)),
        Piece("daily", at(2026, 3, 2), at(2026, 3, 4)),
        Piece("hourly", at(2026, 3, 4), at(2026, 3, 4, 7)),
        Piece("raw", at(2026, 3, 4, 7), end),
    ]
    assert plan_pieces(start, end, days=False) == [
        Piece("raw", start, at(2026, 3, 1, 11)),
        Piece("hourly", at(2026, 3, 1, 11), at(2026, 3, 4, 7)),
        Piece("raw", at(2026, 3, 4, 7), end),
    ]


def test_plan_pieces_small_and_aligned_ranges() -> None:
    assert plan_pieces(at(2026, 3, 1, 10, 5), at(2026, 3, 1, 10, 50)) == [
        Piece("raw", at(2026, 3, 1, 10, 5), at(2026, 3, 1, 10, 50))
    ]
    assert plan_pieces(at(2026, 3, 1), at(2026, 3, 3)) == [
        Piece("daily", at(2026, 3, 1), at(2026, 3, 3))
    ]


def test_spend_sql_is_exact_and_parameterised() -> None:
    query = Builder(Target(database="db")).spend(
        at(2026, 3, 1, 10, 30),
        at(2026, 3, 1, 12),
        by=["team"],
        filters={"org": "o'1"},
        limit=5,
        sessions=True,
    )
    sums = (
        "sum(requests) AS requests, sum(input_tokens) AS input_tokens, "
        "sum(cache_read_tokens) AS cache_read_tokens, "
        "sum(cache_write_5m_tokens) AS cache_write_5m_tokens, "
        "sum(cache_write_1h_tokens) AS cache_write_1h_tokens, "
        "sum(output_tokens) AS output_tokens, sum(reasoning_tokens) AS reasoning_tokens, "
        "sum(cost_nanos) AS cost_nanos, sum(unpriced_requests) AS unpriced_requests"
    )
    raw = (
        "count() AS requests, sum(input_tokens) AS input_tokens, "
        "sum(cache_read_tokens) AS cache_read_tokens, "
        "sum(cache_write_5m_tokens) AS cache_write_5m_tokens, "
        "sum(cache_write_1h_tokens) AS cache_write_1h_tokens, "
        "sum(output_tokens) AS output_tokens, sum(reasoning_tokens) AS reasoning_tokens, "
        "sum(cost_nanos) AS cost_nanos, countIf(cost_source = 'unpriced') AS unpriced_requests"
    )
    assert query.sql == (
        f"SELECT team_id, {sums}, uniqExactMerge(sessions) AS sessions\n"
        "FROM (\n"
        f"    SELECT team_id, {raw}, uniqExactStateIf(session_id, session_id != '') AS sessions\n"
        "    FROM `db`.`token_events`\n"
        "    WHERE event_time >= {p0_start:DateTime64(3, 'UTC')} "
        "AND event_time < {p0_end:DateTime64(3, 'UTC')} AND org_id = {f_org_id:String}\n"
        "    GROUP BY team_id\n"
        "    UNION ALL\n"
        f"    SELECT team_id, {sums}, uniqExactMergeState(sessions) AS sessions\n"
        "    FROM `db`.`spend_team_hourly`\n"
        "    WHERE hour >= {p1_start:DateTime('UTC')} AND hour < {p1_end:DateTime('UTC')} "
        "AND org_id = {f_org_id:String}\n"
        "    GROUP BY team_id\n"
        ")\n"
        "GROUP BY team_id\n"
        "ORDER BY cost_nanos DESC, team_id\n"
        "LIMIT {limit:UInt32}"
    )
    assert query.parameters == {
        "f_org_id": "o'1",  # a value, never spliced into the SQL
        "p0_start": "2026-03-01 10:30:00.000",
        "p0_end": "2026-03-01 11:00:00.000",
        "p1_start": "2026-03-01 11:00:00",
        "p1_end": "2026-03-01 12:00:00",
        "limit": "5",
    }


def test_sessions_are_merged_only_when_asked() -> None:
    query = Builder().spend(at(2026, 3, 1), at(2026, 3, 2, 1, 30), by=["org"])
    assert "sessions" not in query.sql
    assert query.sql.startswith("SELECT org_id, sum(requests) AS requests,")


def test_cluster_mode_reads_distributed_tables() -> None:
    query = Builder(Target(cluster="c")).spend(at(2026, 3, 1), at(2026, 3, 2, 1, 30), by=["model"])
    assert "`spendstream`.`spend_daily_all`" in query.sql
    assert "`spendstream`.`spend_hourly_all`" in query.sql
    assert "`spendstream`.`token_events_all`" in query.sql


def test_the_narrowest_rollup_with_every_column_is_read() -> None:
    start, end = at(2026, 3, 1), at(2026, 3, 3)
    assert "`spendstream`.`spend_team_daily`" in Builder().spend(start, end, ["org"]).sql
    by_user = Builder().spend(start, end, ["user"], {"team": "t"}).sql
    assert "`spendstream`.`spend_user_daily`" in by_user
    by_model = Builder().spend(start, end, ["team"], {"model": "m"}).sql
    assert "`spendstream`.`spend_daily`" in by_model


def test_top_sessions_sql() -> None:
    query = Builder().top_sessions(at(2026, 3, 1), at(2026, 3, 2), {"user": "u"}, limit=3)
    assert "FROM `spendstream`.`token_events`\n" in query.sql
    assert "AND session_id != '' AND user_id = {f_user_id:String}\n" in query.sql
    assert query.sql.endswith(
        "GROUP BY session_id\nORDER BY cost_nanos DESC, session_id\nLIMIT {limit:UInt32}"
    )
    assert query.parameters["start"] == "2026-03-01 00:00:00.000"


def test_unknown_dimension_and_bad_limit_are_refused() -> None:
    with pytest.raises(QueryError, match="unknown dimension"):
        Builder().spend(at(2026, 3, 1), at(2026, 3, 2), by=["org; DROP TABLE x"])
    with pytest.raises(QueryError, match="unknown dimension"):
        Builder().spend(at(2026, 3, 1), at(2026, 3, 2), filters={"nope": "x"})
    with pytest.raises(QueryError, match="limit"):
        Builder().top_sessions(at(2026, 3, 1), at(2026, 3, 2), limit=0)


def test_canonical_sql_files_match_the_builder() -> None:
    folder = clickhouse_dir() / "queries"
    rendered = render_all()
    assert sorted(p.name for p in folder.glob("*.sql")) == sorted(rendered)
    for name, text in rendered.items():
        assert (folder / name).read_text() == text, (
            f"regenerate {name}: python -m streams.query.canonical"
        )


NOW = dt.datetime(2026, 3, 29, 10, 15, tzinfo=UTC)  # a Sunday, the day Paris moves to CEST


def test_named_ranges_start_at_local_midnight() -> None:
    today = resolve("today", "Europe/Paris", now=NOW)
    assert (today.start, today.end) == (at(2026, 3, 28, 23), NOW)  # CET midnight
    week = resolve("week", "Europe/Paris", now=NOW)
    assert week.start == at(2026, 3, 22, 23)  # Monday 23 March, 00:00 CET
    month = resolve("month", "Asia/Tokyo", now=NOW)
    assert month.start == at(2026, 2, 28, 15)  # 1 March 00:00 JST
    assert resolve("mtd", "UTC", now=NOW).start == at(2026, 3, 1)


def test_last_n_and_custom_ranges() -> None:
    assert resolve("7d", now=NOW).start == NOW - dt.timedelta(days=7)
    assert resolve("last:24h", now=NOW).start == NOW - dt.timedelta(hours=24)
    custom = resolve(None, "America/New_York", start="2026-03-01", end="2026-03-02T12:00", now=NOW)
    assert (custom.start, custom.end) == (at(2026, 3, 1, 5), at(2026, 3, 2, 17))
    aware = resolve(None, "Asia/Tokyo", start="2026-03-01T00:00:00+00:00", now=NOW)
    assert (aware.start, aware.end) == (at(2026, 3, 1), NOW)


def test_bad_ranges_are_refused() -> None:
    for spec in ("fortnight", "0d"):
        with pytest.raises(RangeError):
            resolve(spec, now=NOW)
    with pytest.raises(RangeError, match="unknown time zone"):
        resolve("today", "Mars/Olympus", now=NOW)
    with pytest.raises(RangeError, match="empty range"):
        resolve(None, start="2026-03-02", end="2026-03-01", now=NOW)
