"""Report query latency on a large token_events: month-to-date spend per org, top users 24 h.

    python -m loadtest.bench_queries --events 100000000

Runs against the local stack (started if needed) or SPENDSTREAM_CLICKHOUSE_URL. Loads N
synthetic events straight into ``token_events`` of a dedicated database with
``INSERT ... SELECT FROM numbers()`` in chunks (far faster than through Kafka; the views on
token_events detached meanwhile), builds the rollups of the last ``--rollup-days`` days (35:
every day the measured queries read) with ``backfill`` day by day (the views' own SELECT; the
per-user and per-team rollups fill through their cascades), then times each
report query (the exact SQL ``spendstream report`` runs) ``--runs`` times and prints medians.
``--reuse`` keeps an already loaded database (same name, same N) instead of loading again;
rollup days already built are skipped (an interrupted build resumes).

The synthetic shape: 60 days up to now, 10,000 users in 20 orgs (one org has half of them),
10 teams per org; each user keeps one coding tool; 60% of events are agentic, in sessions of 20
turns 45 s apart with one model and one project each; chat events pick a model each; 3% errors;
token counts and costs pseudo-random per event.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import statistics
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.machine import Machine, decode_rate, sample_values
from streams.clickhouse import Target, connect
from streams.local import stack
from streams.migrate import Migrator
from streams.query.ranges import resolve
from streams.query.report import Reports
from streams.settings import Settings
from streams.sink.backfill import backfill

CHUNK = 10_000_000
DAYS = 60

LOAD_SQL = """
INSERT INTO {table} (event_id, event_time, org_id, team_id, user_id, project_id, api_key_id,
    session_id, turn, client, task_type, provider, model, input_tokens, cache_read_tokens,
    cache_write_5m_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, cost_nanos,
    cost_source, price_version, status, labels, kafka_partition, kafka_offset)
SELECT
    generateUUIDv4(number) AS event_id,
    now64(3) - toIntervalMillisecond(
        if(agentic, u % ({days} * 86400000) + (number % 20) * 45000, h % ({days} * 86400000))
    ) AS event_time,
    concat('org-', toString(if(user_n < 5000, 0, 1 + user_n % 19))) AS org_id,
    concat(org_id, '-team-', toString(intDiv(user_n, 7) % 10)) AS team_id,
    concat(team_id, '-user-', toString(user_n)) AS user_id,
    concat(team_id, '-proj-', toString(if(u % 5 = 0, bitShiftRight(u, 8), uh) % 4)) AS project_id,
    concat(team_id, '-key') AS api_key_id,
    if(agentic, concat('s-', toString(unit)), '') AS session_id,
    if(agentic, toUInt32(number % 20 + 1), NULL) AS turn,
    ['claude-code', 'copilot', 'cursor', 'custom-agent'][1 + uh % 4] AS client,
    if(agentic, 'agentic', ['chat', 'completion'][1 + bitShiftRight(h, 44) % 2]) AS task_type,
    ['anthropic', 'anthropic', 'anthropic', 'openai', 'openai', 'gcp.gemini'][1 + m] AS provider,
    ['claude-sonnet-4-5', 'claude-opus-4-5', 'claude-haiku-4-5', 'gpt-5', 'gpt-5-mini',
     'gemini-2.5-pro'][1 + m] AS model,
    100 + bitShiftRight(h, 8) % 3000 AS input_tokens,
    if(agentic, bitShiftRight(h, 12) % 60000, 0) AS cache_read_tokens,
    if(agentic, bitShiftRight(h, 20) % 4000, 0) AS cache_write_5m_tokens,
    0 AS cache_write_1h_tokens,
    20 + bitShiftRight(h, 28) % 2000 AS output_tokens,
    bitShiftRight(h, 36) % 20 AS reasoning_tokens,
    (input_tokens * 3000 + cache_read_tokens * 300 + output_tokens * 15000) AS cost_nanos,
    'catalog' AS cost_source,
    'bench' AS price_version,
    if(bitShiftRight(h, 50) % 100 < 3, 'error', 'ok') AS status,
    map('repo', concat('repo-', toString(uh % 10))) AS labels,
    toUInt32(number % 6) AS kafka_partition,
    number AS kafka_offset
FROM (
    SELECT number, h, agentic, unit, u, user_n, cityHash64(user_n) AS uh,
        toUInt8(bitShiftRight(u, 16) % 6) AS m
    FROM (
        SELECT number, h, agentic, unit, u, u % 10000 AS user_n
        FROM (
            SELECT number, h, agentic, unit, cityHash64(unit, 7) AS u
            FROM (
                SELECT number, h, h % 10 < 6 AS agentic,
                    if(agentic, intDiv(number, 20), number) AS unit
                FROM (SELECT number, cityHash64(number) AS h FROM numbers({first}, {count}))
            )
        )
    )
)
"""


VIEWS_ON_EVENTS = ("event_ids_mv", "spend_hourly_mv", "spend_daily_mv")
ROLLUP_TABLES = (
    "spend_hourly",
    "spend_daily",
    "spend_user_hourly",
    "spend_user_daily",
    "spend_team_hourly",
    "spend_team_daily",
)


def load(client: Any, target: Target, events: int) -> float:
    """Insert ``events`` rows in chunks with the views on token_events detached; seconds."""
    started = time.perf_counter()
    for view in VIEWS_ON_EVENTS:
        client.command(f"DETACH TABLE `{target.database}`.`{view}`")
    try:
        _insert(client, target, events, started)
    finally:
        for view in VIEWS_ON_EVENTS:
            client.command(f"ATTACH TABLE `{target.database}`.`{view}`")
    return time.perf_counter() - started


def build_rollups(client: Any, target: Target, days: int) -> float:
    """Build the rollups of the last ``days`` days with ``backfill``, one day at a time (the
    views' own SELECT; per-user and per-team rollups fill through their cascades). Days
    already built are skipped, so an interrupted run resumes. Returns seconds."""
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    day = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC) - dt.timedelta(days=days)
    while day <= now:
        nxt = day + dt.timedelta(days=1)
        for rollup, column in (("spend_hourly", "toDate(hour)"), ("spend_daily", "day")):
            built = client.command(
                f"SELECT count() FROM {target.table(rollup)} WHERE {column} = {{d:Date}}",
                parameters={"d": day.strftime("%Y-%m-%d")},
            )
            if not int(built):
                backfill(client, target, rollup, day, nxt, clear=False)
        print(f"rollups of {day.date()} built ({time.perf_counter() - started:,.0f} s)", flush=True)
        day = nxt
    return time.perf_counter() - started


def _insert(client: Any, target: Target, events: int, started: float) -> None:
    for first in range(0, events, CHUNK):
        count = min(CHUNK, events - first)
        sql = LOAD_SQL.format(
            table=target.table("token_events"), days=DAYS, first=first, count=count
        )
        client.command(sql, settings={"deduplicate_insert": "disable"})
        done = first + count
        rate = done / (time.perf_counter() - started)
        print(f"loaded {done:,} / {events:,} ({rate:,.0f} rows/s)", flush=True)


def timed(run: Any, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000_000)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--database", default=None, help="default: bench_queries_<events>")
    parser.add_argument("--reuse", action="store_true", help="keep a loaded database")
    parser.add_argument(
        "--rollup-days",
        type=int,
        default=35,
        help="days of rollups to build (the measured queries read at most the last 31)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    machine = Machine()
    base = Settings.from_env()
    stack.up(base, kafka=False)
    name = args.database or f"bench_queries_{args.events}"
    settings = dataclasses.replace(base, clickhouse_database=name)
    target = Target.from_settings(settings)
    admin = connect(settings)
    loaded = 0
    if args.reuse:
        exists = admin.command(
            "SELECT count() FROM system.tables WHERE database = {d:String} "
            "AND name = 'token_events'",
            parameters={"d": name},
        )
        if int(str(exists)):
            loaded = int(str(admin.command(f"SELECT count() FROM {target.table('token_events')}")))
    load_seconds = None
    if loaded != args.events:
        admin.command(f"DROP DATABASE IF EXISTS `{name}`")
        Migrator(admin, target).migrate()
        load_seconds = load(admin, target, args.events)
    rollup_seconds = build_rollups(admin, target, args.rollup_days)
    for rollup in ROLLUP_TABLES:
        admin.command(f"OPTIMIZE TABLE {target.table(rollup)} FINAL")
    sizes = {
        str(table): int(rows)
        for table, rows in admin.query(
            "SELECT name, toUInt64(total_rows) FROM system.tables WHERE database = {d:String} "
            "AND total_rows IS NOT NULL",
            parameters={"d": name},
        ).result_rows
    }
    client = connect(settings, database=name)
    reports = Reports(client, target)
    cases = {
        "month-to-date spend per org": lambda: reports.spend(resolve("month"), ["org"]),
        "top 10 users, last 24 h": lambda: reports.spend(resolve("24h"), ["user"], limit=10),
        "top 10 sessions, last 24 h (raw)": lambda: reports.top_sessions(resolve("24h")),
        "burn rate, 24 h": lambda: reports.burn_rate(24),
    }
    figures: dict[str, Any] = {
        "events": sizes.get("token_events"),
        "rollup_rows": {k: v for k, v in sizes.items() if k.startswith("spend_")},
        "load_seconds": None if load_seconds is None else round(load_seconds, 1),
        "rollup_build_seconds": round(rollup_seconds, 1),
        "rollup_days": args.rollup_days,
        "queries_ms": {},
    }
    for label, run in cases.items():
        run()  # warm-up
        times = timed(run, args.runs)
        figures["queries_ms"][label] = {
            "median": round(statistics.median(times), 1),
            "p90": round(sorted(times)[int(0.9 * (len(times) - 1))], 1),
        }
    client.close()
    admin.close()
    # no broker here: the calibration is the fastavro decode loop alone; a query's time is
    # also given as the number of events that loop decodes meanwhile (compares across machines)
    machine.calibrated(decode_rate(sample_values()), "decode")
    figures["machine"] = machine.finish().as_dict()
    for stats in figures["queries_ms"].values():
        stats["median_in_decodes"] = round(stats["median"] / 1000 * (machine.calibration or 0))
    if args.json:
        print(json.dumps(figures))
        return
    print(machine.text())
    table = Table(title=f"report queries on {figures['events']:,} events ({args.runs} runs)")
    table.add_column("query")
    table.add_column("median ms", justify="right")
    table.add_column("p90 ms", justify="right")
    table.add_column("median in events decoded", justify="right")
    for label, stats in figures["queries_ms"].items():
        table.add_row(
            label, str(stats["median"]), str(stats["p90"]), f"{stats['median_in_decodes']:,}"
        )
    Console().print(table)
    Console().print(
        f"rollup rows: {figures['rollup_rows']}; load seconds: {figures['load_seconds']}"
    )


if __name__ == "__main__":
    main()
