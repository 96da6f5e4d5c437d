"""``spendstream report``: spend, top sessions, burn rate, cache, task share, unpriced."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from streams.query.builder import DIMENSIONS
from streams.settings import env_name

FILTERS = ("org", "team", "user", "project", "provider", "model", "client", "task_type")


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    """Range, time zone, filters and output format, shared by every report."""
    options = [
        click.option("--range", "range_", default=None, help="today | week | month | 7d | 24h"),
        click.option("--from", "start", help="Range start (ISO date/time; naive = --tz)."),
        click.option("--to", "end", help="Range end, exclusive (default: now)."),
        click.option("--tz", envvar=env_name("timezone"), help="Time zone of the range."),
        click.option(
            "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table"
        ),
        *(
            click.option(f"--{name.replace('_', '-')}", name, help=f"Only this {name}.")
            for name in FILTERS
        ),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def _run(fmt: str, build: Callable[[Any, Any], Any], **kw: Any) -> None:
    from streams.clickhouse import Target, connect
    from streams.query.ranges import resolve
    from streams.query.report import Reports
    from streams.settings import load_settings

    settings = load_settings()
    tz = kw.pop("tz") or settings.timezone
    rng = resolve(kw.pop("range_"), tz, start=kw.pop("start"), end=kw.pop("end"))
    filters = {name: kw.pop(name) for name in FILTERS if kw.get(name)}
    for name in FILTERS:
        kw.pop(name, None)
    # the read-only user when one is configured: a report never needs to write
    client = connect(settings.for_reports(), database=settings.clickhouse_database)
    try:
        report = build(Reports(client, Target.from_settings(settings)), (rng, filters, tz))
    finally:
        client.close()
    if fmt == "json":
        click.echo(report.to_json())
    elif fmt == "csv":
        click.echo(report.to_csv(), nl=False)
    else:
        report.print_table()


@click.group("report")
def report() -> None:
    """Spend reports from ClickHouse (rollups where they fit, exact for any range)."""


@report.command("spend")
@click.option("--by", default="org", help=f"Comma list of: {', '.join(DIMENSIONS)}.")
@click.option("--limit", type=int, default=50)
@click.option("--sessions", is_flag=True, help="Also count distinct sessions (slower).")
@_common
def spend(by: str, limit: int, sessions: bool, fmt: str, **kw: Any) -> None:
    """Spend and tokens grouped by any dimensions (default: month to date by org)."""
    dims = [d.strip() for d in by.split(",") if d.strip()]
    _run(fmt, lambda r, a: r.spend(a[0], dims, a[1], limit, sessions), **kw)


@report.command("sessions")
@click.option("--limit", type=int, default=10)
@_common
def sessions(limit: int, fmt: str, **kw: Any) -> None:
    """The most expensive sessions (default: last 24 hours)."""
    kw["range_"] = kw["range_"] or (None if kw["start"] else "24h")
    _run(fmt, lambda r, a: r.top_sessions(a[0], a[1], limit), **kw)


@report.command("burn-rate")
@click.option("--hours", type=int, default=24)
@_common
def burn_rate(hours: int, fmt: str, **kw: Any) -> None:
    """Spend per hour over the last N hours (default 24)."""
    kw["range_"] = kw["range_"] or "24h"
    _run(fmt, lambda r, a: r.burn_rate(hours, a[2], a[1]), **kw)


@report.command("cache")
@_common
def cache(fmt: str, **kw: Any) -> None:
    """Prompt-cache hit ratio and savings per model (default: month to date)."""
    _run(fmt, lambda r, a: r.cache(a[0], a[1]), **kw)


@report.command("tasks")
@_common
def tasks(fmt: str, **kw: Any) -> None:
    """Agentic vs chat: cost and request share per task type (default: month to date)."""
    _run(fmt, lambda r, a: r.task_share(a[0], a[1]), **kw)


@report.command("unpriced")
@_common
def unpriced(fmt: str, **kw: Any) -> None:
    """Models the catalog could not price, with request and token counts (default: month)."""
    _run(fmt, lambda r, a: r.unpriced(a[0], a[1]), **kw)
