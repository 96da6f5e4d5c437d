"""``spendstream backfill``: rebuild a rollup from ``token_events`` for a time range.

The rollups are fed by views from the moment they exist (never ``POPULATE``); this rebuilds a
range after the fact, e.g. a rollup added by a later migration or one repaired after an
incident: delete the range from the rollup, then insert the view's own SELECT restricted to
the range. The SELECT is taken from the migration that created the view, so it cannot drift;
the rollups fed by views on the rebuilt one (per user, per team) are cleared with it and
refilled by the rebuild's insert.

Rows that the sink inserts into the range WHILE it is rebuilt may be counted twice or not at
all: rebuild ranges that still receive events with the sink stopped.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import click

from streams.clickhouse import Target
from streams.errors import MigrationError
from streams.migrate import Migration, load_migrations, render
from streams.pricing import PriceCatalog, default_catalog
from streams.query import ceil_utc, floor_utc
from streams.sink.reprice import RepriceReport, reprice

ROLLUPS = {
    "spend_hourly": ("hour", dt.timedelta(hours=1)),
    "spend_daily": ("day", dt.timedelta(days=1)),
}
#: rollups fed by views on a rollup: cleared with it, refilled by its rebuild
CASCADES = {
    "spend_hourly": ("spend_user_hourly", "spend_team_hourly"),
    "spend_daily": ("spend_user_daily", "spend_team_daily"),
}
_VIEW = re.compile(r"CREATE MATERIALIZED VIEW IF NOT EXISTS `?\w+`?\.`?(\w+)`?", re.IGNORECASE)


def view_select(rollup: str, target: Target, migrations: list[Migration] | None = None) -> str:
    """The SELECT of the (last) view feeding ``rollup``, with a range filter on event_time."""
    found = None
    for migration in migrations or load_migrations():
        for statement in render(migration.template, Target(database=target.database)):
            match = _VIEW.search(statement)
            if match and match.group(1) == f"{rollup}_mv":
                found = statement
    if found is None:
        raise MigrationError(f"no materialized view feeds {rollup}")
    select = found[found.index("AS SELECT") + 3 :]
    source = f"FROM `{target.database}`.token_events"
    if source not in select or "\nGROUP BY" not in select:
        raise MigrationError(f"cannot restrict the view of {rollup} to a range")
    select = select.replace(source, f"FROM {target.table('token_events')}", 1)
    return select.replace(
        "\nGROUP BY",
        "\nWHERE event_time >= {start:DateTime64(3, 'UTC')} "
        "AND event_time < {end:DateTime64(3, 'UTC')}\nGROUP BY",
        1,
    )


def align(
    start: dt.datetime, end: dt.datetime, step: dt.timedelta
) -> tuple[dt.datetime, dt.datetime]:
    """Widen ``[start, end)`` to whole rollup buckets (UTC)."""
    return floor_utc(start, step), ceil_utc(end, step)


def backfill(
    client: Any,
    target: Target,
    rollup: str,
    start: dt.datetime,
    end: dt.datetime,
    clear: bool = True,
) -> int:
    """Replace ``rollup`` rows in the (aligned) range by a rebuild; returns rollup rows written.

    ``clear=False`` skips the deletes: only for ranges known to be empty (a first build).
    """
    if target.cluster:
        raise MigrationError("backfill runs on one server; on a cluster run it on each shard")
    column, step = ROLLUPS[rollup]
    start, end = align(start, end, step)
    fmt = "%Y-%m-%d" if column == "day" else "%Y-%m-%d %H:%M:%S"
    table = target.table(rollup)
    param_type = "Date" if column == "day" else "DateTime('UTC')"
    for name in (*CASCADES[rollup], rollup) if clear else ():
        client.command(
            f"ALTER TABLE {target.table(name)} DELETE WHERE {column} >= {{lo:{param_type}}} "
            f"AND {column} < {{hi:{param_type}}}",
            parameters={"lo": start.strftime(fmt), "hi": end.strftime(fmt)},
            settings={"mutations_sync": 2},
        )
    select = view_select(rollup, target)
    bounds = {
        "start": start.strftime("%Y-%m-%d %H:%M:%S.000"),
        "end": end.strftime("%Y-%m-%d %H:%M:%S.000"),
    }
    # a fresh token: this insert must never be mistaken for an earlier identical block
    summary = client.command(
        f"INSERT INTO {table} {select}",
        parameters=bounds,
        settings={"insert_deduplication_token": f"backfill-{uuid.uuid4()}"},
    )
    written = getattr(summary, "written_rows", None)
    return int(written) if written is not None else -1


def reprice_and_rebuild(
    client: Any, target: Target, catalog: PriceCatalog, start: dt.datetime, end: dt.datetime
) -> RepriceReport:
    """``--reprice``: price the range's stored events again, then rebuild every rollup of
    the range if any row changed."""
    report = reprice(client, target, catalog, start, end)
    if report.changes:
        for name in ROLLUPS:
            report.rollups[name] = backfill(client, target, name, start, end)
    return report


@click.command("backfill")
@click.option("--rollup", type=click.Choice([*ROLLUPS, "all"]), default="all")
@click.option("--from", "start", required=True, help="UTC start (ISO), widened to the bucket.")
@click.option("--to", "end", required=True, help="UTC end (ISO, exclusive), widened.")
@click.option(
    "--reprice",
    "reprice_rows",
    is_flag=True,
    help="First price the range's stored events again with the current catalog (new "
    "price_version where the price changed, e.g. a model that was unpriced), then rebuild.",
)
def backfill_command(rollup: str, start: str, end: str, reprice_rows: bool) -> None:
    """Rebuild rollup rows for a range from token_events (stop the sink for live ranges)."""
    from streams.clickhouse import connect
    from streams.query import resolve
    from streams.settings import load_settings

    settings = load_settings()
    rng = resolve(None, "UTC", start=start, end=end)
    target = Target.from_settings(settings)
    client = connect(settings)
    try:
        if reprice_rows:
            report = reprice_and_rebuild(client, target, default_catalog(), rng.start, rng.end)
            for line in report.lines():
                click.echo(line)
            if report.changes:
                return  # the rollups were rebuilt with the new prices
        for name in ROLLUPS if rollup == "all" else [rollup]:
            written = backfill(client, target, name, rng.start, rng.end)
            lo, hi = align(rng.start, rng.end, ROLLUPS[name][1])
            click.echo(f"{name}: rebuilt {lo.isoformat()} .. {hi.isoformat()} ({written} rows)")
    finally:
        client.close()
