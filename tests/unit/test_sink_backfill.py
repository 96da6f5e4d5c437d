"""The backfill's SQL comes from the migration's own view, restricted to whole buckets."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from streams.clickhouse import Target
from streams.errors import MigrationError
from streams.migrate import Migration
from streams.sink.backfill import align, backfill, view_select

UTC = dt.UTC


def test_view_select_is_the_migration_select_with_a_range() -> None:
    select = view_select("spend_hourly", Target(database="db"))
    assert select.startswith("SELECT\n    toStartOfHour(event_time) AS hour,")
    assert (
        "FROM `db`.`token_events`\n"
        "WHERE event_time >= {start:DateTime64(3, 'UTC')} "
        "AND event_time < {end:DateTime64(3, 'UTC')}\n"
        "GROUP BY hour, org_id" in select
    )
    assert "uniqExactStateIf(session_id, session_id != '') AS sessions" in select


def test_a_later_migration_redefining_the_view_wins() -> None:
    first = Migration(
        1,
        "0001_a.sql",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.spend_daily_mv "
        "TO ${database}.spend_daily\nAS SELECT 1 AS old "
        "FROM ${database}.token_events\nGROUP BY old",
    )
    second = Migration(2, "0002_b.sql", first.template.replace("1 AS old", "2 AS new"))
    assert "2 AS new" in view_select("spend_daily", Target(), [first, second])
    with pytest.raises(MigrationError, match="no materialized view feeds spend_hourly"):
        view_select("spend_hourly", Target(), [first])


def test_align_widens_to_whole_buckets() -> None:
    start, end = (
        dt.datetime(2026, 3, 1, 10, 5, tzinfo=UTC),
        dt.datetime(2026, 3, 2, 7, 0, tzinfo=UTC),
    )
    assert align(start, end, dt.timedelta(hours=1)) == (
        dt.datetime(2026, 3, 1, 10, tzinfo=UTC),
        dt.datetime(2026, 3, 2, 7, tzinfo=UTC),
    )
    assert align(start, end, dt.timedelta(days=1)) == (
        dt.datetime(2026, 3, 1, tzinfo=UTC),
        dt.datetime(2026, 3, 3, tzinfo=UTC),
    )


def test_cluster_backfill_is_refused() -> None:
    now = dt.datetime.now(UTC)
    with pytest.raises(MigrationError, match="each shard"):
        backfill(None, Target(cluster="c"), "spend_daily", now, now)


def test_every_rollup_is_rebuilt_directly_or_by_cascade() -> None:
    from streams.migrate import load_migrations
    from streams.sink.backfill import CASCADES, ROLLUPS

    created = {
        m.group(1)
        for migration in load_migrations()
        for m in re.finditer(
            r"CREATE TABLE IF NOT EXISTS \$\{database\}\.(spend_\w+)", migration.template
        )
    }
    covered = set(ROLLUPS) | {name for names in CASCADES.values() for name in names}
    assert created == covered
