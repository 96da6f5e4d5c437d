"""Reports on the real ClickHouse against ground truth: any range, any zone, every report."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from streams import events
from streams.cli import main
from streams.clickhouse import Target, connect
from streams.generate import Shape, generate_events
from streams.migrate import Migrator
from streams.pricing import default_catalog
from streams.query.canonical import render_all
from streams.query.ranges import TimeRange, resolve
from streams.query.report import Reports
from streams.settings import Settings, env_name
from streams.sink.rows import Buffer
from streams.sink.store import EventStore

UTC = dt.UTC
NOW = dt.datetime.now(UTC)
SUMS = ("requests", "input_tokens", "cache_read_tokens", "output_tokens", "cost_nanos")


@dataclasses.dataclass
class Loaded:
    settings: Settings
    client: Any
    rows: list[dict[str, Any]]  # what was inserted: events with their cost


@pytest.fixture(scope="module")
def loaded(clickhouse_settings: Settings) -> Iterator[Loaded]:
    settings = dataclasses.replace(
        clickhouse_settings, clickhouse_database=f"report_{uuid.uuid4().hex[:8]}"
    )
    client = connect(settings, database=None)
    Migrator(client, Target.from_settings(settings)).migrate()
    now_ms = int(NOW.timestamp() * 1000)
    shape = Shape(orgs=2, start_ms=now_ms - 9 * 86_400_000, span_ms=9 * 86_400_000)
    buffer = Buffer()
    catalog = default_catalog()
    for i, event in enumerate(generate_events(30_000, seed=21, shape=shape)):
        buffer.add(event, catalog.price(event), partition=0, offset=i)
    block = buffer.take()
    EventStore(client, Target.from_settings(settings)).insert(block.to_arrow(), "report-load")
    yield Loaded(settings, client, block.rows)
    client.command(f"DROP DATABASE `{settings.clickhouse_database}`")
    client.close()


def expected(
    rows: list[dict[str, Any]], rng: TimeRange, dims: tuple[str, ...], **only: str
) -> dict:
    lo, hi = (int(t.timestamp() * 1000) for t in (rng.start, rng.end))
    out: dict[tuple, list[Any]] = defaultdict(lambda: [0] * len(SUMS) + [set()])
    for row in rows:
        if not lo <= row["event_time"] < hi or any(row[k] != v for k, v in only.items()):
            continue
        acc = out[tuple(row[d] or "" for d in dims)]
        acc[0] += 1
        for i, name in enumerate(SUMS[1:], 1):
            acc[i] += row[name]
        if row["session_id"]:
            acc[-1].add(row["session_id"])
    return {k: (*v[:-1], len(v[-1])) for k, v in out.items()}


def got(report: Any, dims: tuple[str, ...]) -> dict:
    return {tuple(r[d] for d in dims): (*(r[s] for s in SUMS), r["sessions"]) for r in report.rows}


@pytest.mark.parametrize(
    ("spec", "tz"),
    [
        ("7d", "UTC"),
        ("today", "Asia/Kolkata"),
        ("week", "Europe/Paris"),
        ("month", "America/New_York"),
    ],
)
def test_spend_by_org_and_model_matches_ground_truth(loaded: Loaded, spec: str, tz: str) -> None:
    rng = resolve(spec, tz, now=NOW)
    reports = Reports(loaded.client, Target.from_settings(loaded.settings))
    report = reports.spend(rng, ["org", "model"], limit=None, sessions=True)
    assert got(report, ("org_id", "model")) == expected(loaded.rows, rng, ("org_id", "model"))


def test_custom_minute_range_with_filter(loaded: Loaded) -> None:
    start = (NOW - dt.timedelta(days=4, minutes=13)).replace(tzinfo=None).isoformat()
    end = (NOW - dt.timedelta(hours=5, minutes=41)).replace(tzinfo=None).isoformat()
    rng = resolve(None, "UTC", start=start, end=end)
    team = loaded.rows[0]["team_id"]
    report = Reports(loaded.client, Target.from_settings(loaded.settings)).spend(
        rng, ["user", "task_type"], {"team": team}, limit=None, sessions=True
    )
    assert got(report, ("user_id", "task_type")) == expected(
        loaded.rows, rng, ("user_id", "task_type"), team_id=team
    )


def test_top_sessions_burn_rate_cache_and_tasks(loaded: Loaded) -> None:
    reports = Reports(loaded.client, Target.from_settings(loaded.settings))
    rng = resolve("24h", now=NOW)
    by_session = expected(loaded.rows, rng, ("session_id",))
    by_session.pop(("",), None)
    top = sorted(by_session.items(), key=lambda kv: (-kv[1][4], kv[0]))[:5]
    report = reports.top_sessions(rng, limit=5)
    assert [(r["session_id"], r["cost_nanos"]) for r in report.rows] == [
        (k[0], v[4]) for k, v in top
    ]

    burn = reports.burn_rate(24, "Asia/Kolkata", now=NOW)
    assert len(burn.rows) == 24
    whole = resolve(None, start=burn.rows[0]["hour"], end=NOW.isoformat())
    assert sum(r["cost_nanos"] for r in burn.rows) == expected(loaded.rows, whole, ())[()][4]

    month = resolve("7d", now=NOW)
    cache = {(r["provider"], r["model"]): r for r in reports.cache(month).rows}
    truth = expected(loaded.rows, month, ("provider", "model"))
    for key, row in cache.items():
        assert row["cache_read_tokens"] == truth[key][2]
        assert 0 <= row["hit_ratio"] <= 1
        assert row["net_saved_usd"] is not None  # every generated model is in the catalog
    tasks = reports.task_share(month)
    assert sum(r["requests"] for r in tasks.rows) == sum(v[0] for v in truth.values())
    assert abs(sum(r["cost_share"] for r in tasks.rows) - 1) < 0.001


def test_canonical_sql_files_run_and_agree(loaded: Loaded) -> None:
    end = NOW.replace(minute=0, second=0, microsecond=0)
    rng = TimeRange(end - dt.timedelta(hours=30), end, "30 whole hours", "UTC")
    params = {
        "start": rng.start.strftime("%Y-%m-%d %H:%M:%S"),
        "end": rng.end.strftime("%Y-%m-%d %H:%M:%S"),
        "limit": "10",
    }
    database = f"`{loaded.settings.clickhouse_database}`."
    for name, sql in render_all().items():
        sql = sql.replace("`spendstream`.", database).rstrip().rstrip(";")
        query_params = dict(params)
        if name == "top_sessions.sql":
            query_params = {k: v + (".000" if k != "limit" else "") for k, v in params.items()}
        result = loaded.client.query(sql, parameters=query_params)
        if name == "spend_by_org.sql":
            rows = {r[0]: (r[1], r[8]) for r in result.result_rows}
            truth = expected(loaded.rows, rng, ("org_id",))
            assert rows == {k[0]: (v[0], v[4]) for k, v in truth.items()}
        else:
            assert result.result_rows, name


def test_cli_json_and_csv(loaded: Loaded) -> None:
    env = {
        env_name("clickhouse_url"): loaded.settings.clickhouse_http_url,
        env_name("clickhouse_database"): loaded.settings.clickhouse_database,
    }
    runner = CliRunner()
    result = runner.invoke(
        main, ["report", "spend", "--by", "org", "--range", "7d", "--format", "json"], env=env
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert {r["org_id"] for r in rows} == {"org-0", "org-1"}
    assert all(isinstance(r["cost_nanos"], int) for r in rows)
    result = runner.invoke(main, ["report", "tasks", "--range", "7d", "--format", "csv"], env=env)
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.output)))
    assert {r["task_type"] for r in table} == {"agentic", "chat", "completion"}
    for command in (
        ["sessions"],
        ["burn-rate"],
        ["cache"],
        ["spend", "--by", "team,client", "--sessions"],
    ):
        result = runner.invoke(main, ["report", *command, "--tz", "Europe/Paris"], env=env)
        assert result.exit_code == 0, result.output
    bad = runner.invoke(main, ["report", "spend", "--by", "colour"], env=env)
    assert bad.exit_code == 1 and "unknown dimension 'colour'" in bad.output


def test_event_time_edges_are_exclusive(loaded: Loaded) -> None:
    """An event exactly at the range end is outside; at the start, inside."""
    row = loaded.rows[0]
    at = events.from_epoch_ms(row["event_time"])
    reports = Reports(loaded.client, Target.from_settings(loaded.settings))
    inside = reports.spend(TimeRange(at, at + dt.timedelta(milliseconds=1), "x", "UTC"), [])
    outside = reports.spend(TimeRange(at - dt.timedelta(minutes=1), at, "x", "UTC"), [])
    same_ms = sum(1 for r in loaded.rows if r["event_time"] == row["event_time"])
    assert inside.rows[0]["requests"] == same_ms
    assert (
        outside.rows[0]["requests"]
        == expected(loaded.rows, TimeRange(at - dt.timedelta(minutes=1), at, "x", "UTC"), ()).get(
            (), (0,)
        )[0]
    )
