"""``spendstream alerts tail``: the alerts topic in a terminal, pretty or as JSON lines."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from streams.alerts.format import as_json, pretty
from streams.alerts.tail import AlertFilter, AlertTail, alert_kinds, parse_since
from streams.settings import env_name


@click.group("alerts")
def alerts() -> None:
    """Follow the breach alerts on the alerts topic."""


@alerts.command("tail")
@click.option("--topic", envvar=env_name("topic_alerts"), help="Alerts topic.")
@click.option("--json", "as_json_lines", is_flag=True, help="One JSON object per line.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest alert kept.")
@click.option(
    "--since", help="Start at alerts raised this long ago (90s, 10m, 2h, 1d) or since an ISO time."
)
@click.option("--org", "orgs", multiple=True, help="Only this org (repeat for several).")
@click.option("--team", "teams", multiple=True, help="Only this team (repeat).")
@click.option("--budget", "budgets", multiple=True, help="Only this budget id (repeat).")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(alert_kinds()),
    help="Only this kind (repeat).",
)
@click.option(
    "--follow/--no-follow",
    default=True,
    show_default=True,
    help="Keep waiting for new alerts, or stop at the end of the topic.",
)
def tail_command(
    topic: str | None,
    as_json_lines: bool,
    from_beginning: bool,
    since: str | None,
    orgs: tuple[str, ...],
    teams: tuple[str, ...],
    budgets: tuple[str, ...],
    kinds: tuple[str, ...],
    follow: bool,
) -> None:
    """Print alerts as they are raised, each once (repeats of an alert_id are dropped).

    Without --from-beginning or --since, only alerts raised from now on. Filters combine
    with AND; a filter given several times matches any of its values. Ctrl-C stops.
    """
    from streams import events
    from streams.settings import load_settings

    settings = load_settings(topic_alerts=topic)
    since_ms = parse_since(since, events.now_ms()) if since else None
    where = AlertFilter.of(orgs, teams, budgets, kinds, since_ms)
    console = Console(highlight=False, soft_wrap=True)
    tail = AlertTail(settings, from_beginning=from_beginning, where=where)
    try:
        with tail:
            while follow or not tail.caught_up:
                for alert in tail.poll(timeout=0.5):
                    if as_json_lines:
                        click.echo(as_json(alert))
                    else:
                        console.print(pretty(alert))
                    sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    if tail.undecodable:
        click.echo(f"{tail.undecodable} records were not alerts this version reads", err=True)
