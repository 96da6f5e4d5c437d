"""`spendstream backfill` rebuilds a rollup range from token_events, idempotently."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from click.testing import CliRunner

from streams import events
from streams.cli import main
from streams.clickhouse import Target, connect
from streams.generate import Shape, generate_events
from streams.migrate import Migrator
from streams.pricing import default_catalog
from streams.settings import Settings, env_name
from streams.sink.rows import Buffer
from streams.sink.store import EventStore

TOTALS = "SELECT sum(requests), sum(cost_nanos), uniqExactMerge(sessions) FROM {}"
RAW = "SELECT count(), sum(cost_nanos), uniqExactIf(session_id, session_id != '') FROM token_events"


def test_backfill_rebuilds_a_lost_range_exactly(clickhouse_settings: Settings) -> None:
    settings = dataclasses.replace(
        clickhouse_settings, clickhouse_database=f"bf_{uuid.uuid4().hex[:8]}"
    )
    admin = connect(settings)
    Migrator(admin, Target.from_settings(settings)).migrate()
    client = connect(settings, database=settings.clickhouse_database)
    start = events.now_ms() - 3 * 86_400_000
    buffer, catalog = Buffer(), default_catalog()
    for i, event in enumerate(
        generate_events(5000, seed=9, shape=Shape(start_ms=start, span_ms=2 * 86_400_000))
    ):
        buffer.add(event, catalog.price(event), 0, i)
    EventStore(client, Target.from_settings(settings)).insert(buffer.take().to_arrow(), "bf")
    truth = client.query(RAW).result_rows[0]
    # lose part of the hourly rollup, then rebuild it (twice: the second run changes nothing)
    cut = dt.datetime.fromtimestamp(start / 1000 + 86_400, tz=dt.UTC).replace(
        minute=0, second=0, microsecond=0
    )
    client.command(
        "ALTER TABLE spend_hourly DELETE WHERE hour >= {cut:DateTime('UTC')}",
        parameters={"cut": cut.strftime("%Y-%m-%d %H:%M:%S")},
        settings={"mutations_sync": 2},
    )
    assert client.query(TOTALS.format("spend_hourly")).result_rows[0] != truth
    env = {
        env_name("clickhouse_url"): settings.clickhouse_http_url,
        env_name("clickhouse_database"): settings.clickhouse_database,
    }
    lo = (cut - dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M")
    hi = dt.datetime.now(dt.UTC).isoformat()
    for _ in range(2):
        result = CliRunner().invoke(main, ["backfill", "--from", lo, "--to", hi], env=env)
        assert result.exit_code == 0, result.output
        assert "spend_hourly: rebuilt" in result.output and "spend_daily: rebuilt" in result.output
        for rollup in ("spend_hourly", "spend_user_hourly", "spend_team_hourly"):
            assert client.query(TOTALS.format(rollup)).result_rows[0] == truth, rollup
        for rollup in ("spend_daily", "spend_user_daily", "spend_team_daily"):
            assert client.query(TOTALS.format(rollup)).result_rows[0][:2] == truth[:2], rollup
    client.close()
    admin.command(f"DROP DATABASE `{settings.clickhouse_database}`")
    admin.close()
