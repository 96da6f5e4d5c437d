"""``spendstream budgets``: create, list, delete and apply budgets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from streams.budgets.model import Budget, BudgetError, budget_from_spec, parse_budgets_yaml
from streams.budgets.publish import plan_apply, publish
from streams.budgets.view import read_budgets
from streams.events import now_ms
from streams.processors.alerts import format_amount
from streams.settings import load_settings


def _describe(budget: Budget) -> dict[str, Any]:
    record = budget.to_record()
    record["limit_text"] = format_amount(budget.limit, budget.unit)
    return record


@click.group("budgets")
def budgets_cli() -> None:
    """Create, list and delete budgets (the compacted budgets topic)."""


@budgets_cli.command("set")
@click.argument("budget_id")
@click.option("--scope", "scopes", multiple=True, help="field=value, e.g. team=platform (repeat)")
@click.option("--period", type=click.Choice(["day", "week", "month", "rolling"]), default="month")
@click.option("--window", help="rolling window length, e.g. 6h (period rolling)")
@click.option(
    "--timezone", "tz", default="UTC", show_default=True, help="IANA zone of calendar periods"
)
@click.option("--limit-usd", help="limit in USD, e.g. 500 or 12.50")
@click.option("--limit-tokens", help="limit in tokens, e.g. 20M")
@click.option(
    "--thresholds", default="50,80,100", show_default=True, help="percents, comma separated"
)
@click.option("--mode", type=click.Choice(["alert", "block"]), default="alert", show_default=True)
@click.option("--forecast/--no-forecast", default=False, help="alert on projected breach")
@click.option("--description")
def set_cmd(
    budget_id: str,
    scopes: tuple[str, ...],
    period: str,
    window: str | None,
    tz: str,
    limit_usd: str | None,
    limit_tokens: str | None,
    thresholds: str,
    mode: str,
    forecast: bool,
    description: str | None,
) -> None:
    """Create or update one budget."""

    settings = load_settings()
    scope: dict[str, str] = {}
    for item in scopes:
        field, sep, value = item.partition("=")
        if not sep or not value:
            raise click.BadParameter(f"expected field=value, got {item!r}", param_hint="--scope")
        scope[field.strip()] = value.strip()
    spec: dict[str, Any] = {
        "id": budget_id,
        "scope": scope,
        "period": period,
        "timezone": tz,
        "mode": mode,
        "forecast": forecast,
        "description": description,
    }
    if window:
        spec["window"] = window
    if limit_usd is not None:
        spec["limit_usd"] = limit_usd
    if limit_tokens is not None:
        spec["limit_tokens"] = limit_tokens
    try:
        spec["thresholds"] = [int(t) for t in thresholds.split(",") if t.strip()]
        wanted = budget_from_spec(spec)
    except (BudgetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    changes = plan_apply(read_budgets(settings), [wanted], prune=False, now=now_ms())
    publish(settings, changes)
    click.echo(f"{budget_id}: {'saved' if changes else 'unchanged'}")


@budgets_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_cmd(as_json: bool) -> None:
    """Show every budget."""

    for budget in read_budgets(load_settings()):
        if as_json:
            click.echo(json.dumps(_describe(budget), sort_keys=True))
        else:
            scope = ", ".join(f"{k}={v}" for k, v in budget.scope.items()) or "*"
            period = budget.period + (
                f" {budget.rolling_window_s}s"
                if budget.period == "rolling"
                else f" {budget.timezone}"
            )
            columns = [
                budget.budget_id,
                scope,
                period,
                format_amount(budget.limit, budget.unit),
                ",".join(map(str, budget.thresholds_pct)) + "%",
                budget.mode + (" +forecast" if budget.forecast else ""),
            ]
            click.echo("\t".join(columns))


@budgets_cli.command("delete")
@click.argument("budget_ids", nargs=-1, required=True)
def delete_cmd(budget_ids: tuple[str, ...]) -> None:
    """Delete budgets (tombstones on the compacted topic)."""

    settings = load_settings()
    known = {b.budget_id for b in read_budgets(settings)}
    missing = [b for b in budget_ids if b not in known]
    if missing:
        raise click.ClickException(f"no such budget: {', '.join(missing)}")
    publish(settings, {b: None for b in budget_ids})
    click.echo(f"deleted {len(budget_ids)}")


@budgets_cli.command("apply")
@click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
)
@click.option("--prune", is_flag=True, help="also delete budgets missing from the file")
@click.option("--dry-run", is_flag=True, help="show the changes only")
def apply_cmd(path: Path, prune: bool, dry_run: bool) -> None:
    """Make the budgets equal to a YAML file (budgets: [...])."""

    try:
        wanted = parse_budgets_yaml(path.read_text())
    except BudgetError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = load_settings()
    changes = plan_apply(read_budgets(settings), wanted, prune=prune, now=now_ms())
    for budget_id, budget in sorted(changes.items()):
        click.echo(f"{'delete' if budget is None else 'set'} {budget_id}")
    if not dry_run and changes:
        publish(settings, changes)
    click.echo(f"{len(changes)} change(s){' (dry run)' if dry_run else ''}")
