"""``spendstream local up | down | status``: the embedded Kafka + ClickHouse for development.

Flags that map to settings name their ``SPENDSTREAM_*`` variable (``--help`` shows it); a flag
given on the command line wins over the variable.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from streams.errors import SpendstreamError
from streams.local import stack
from streams.local._common import ServiceStatus
from streams.local.secure import secure_dir
from streams.settings import Settings, env_name, load_settings

F = TypeVar("F", bound=Callable[..., Any])


class _LocalGroup(click.Group):
    """Our errors as one clean line and exit code 1, also when this group runs on its own."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpendstreamError as exc:
            raise click.ClickException(str(exc)) from exc


def _settings_options(func: F) -> F:
    """The settings every ``local`` command reads: where the stack lives and its ports."""
    port = click.IntRange(1, 65535)
    options = [
        click.option(
            "--home",
            type=click.Path(file_okay=False, path_type=Path),
            envvar=env_name("home"),
            show_envvar=True,
            help="Folder holding the services' data, logs and pid files.",
        ),
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False, path_type=Path),
            envvar=env_name("cache_dir"),
            show_envvar=True,
            help="Folder of the downloaded Kafka jars (shared by every home).",
        ),
        click.option(
            "--kafka-port",
            "local_kafka_port",
            type=port,
            envvar=env_name("local_kafka_port"),
            show_envvar=True,
            help="Broker port on 127.0.0.1.",
        ),
        click.option(
            "--kafka-controller-port",
            "local_kafka_controller_port",
            type=port,
            envvar=env_name("local_kafka_controller_port"),
            show_envvar=True,
            help="KRaft controller port on 127.0.0.1.",
        ),
        click.option(
            "--clickhouse-http-port",
            "local_clickhouse_http_port",
            type=port,
            envvar=env_name("local_clickhouse_http_port"),
            show_envvar=True,
            help="ClickHouse HTTP port on 127.0.0.1.",
        ),
        click.option(
            "--clickhouse-tcp-port",
            "local_clickhouse_tcp_port",
            type=port,
            envvar=env_name("local_clickhouse_tcp_port"),
            show_envvar=True,
            help="ClickHouse native protocol port on 127.0.0.1.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _services_options(func: F) -> F:
    func = click.option(
        "--clickhouse/--no-clickhouse", "with_clickhouse", default=True, help="Include ClickHouse."
    )(func)
    func = click.option("--kafka/--no-kafka", "with_kafka", default=True, help="Include Kafka.")(
        func
    )
    return func


def _load(**overrides: Any) -> Settings:
    return load_settings(**overrides)


@click.group(cls=_LocalGroup)
def local() -> None:
    """The embedded local stack: a real Kafka broker and ClickHouse server on 127.0.0.1.

    Services whose external address is set (SPENDSTREAM_KAFKA_BOOTSTRAP,
    SPENDSTREAM_CLICKHOUSE_URL) are not started, only checked.
    """


@local.command()
@_settings_options
@_services_options
@click.option(
    "--kafka-heap",
    "local_kafka_heap",
    envvar=env_name("local_kafka_heap"),
    show_envvar=True,
    help="JVM heap of the broker, e.g. 1g.",
)
@click.option(
    "--secure/--no-secure",
    "local_secure",
    default=None,
    envvar=env_name("local_secure"),
    show_envvar=True,
    help="Kafka with SASL_SSL, SCRAM users and ACLs; ClickHouse with password users. "
    "Credentials are made once and written to <home>/secure/*.env.",
)
@click.option(
    "--timeout",
    "start_timeout_s",
    type=click.FloatRange(min=1),
    envvar=env_name("start_timeout_s"),
    show_envvar=True,
    help="Seconds to wait for each service to answer.",
)
def up(with_kafka: bool, with_clickhouse: bool, **overrides: Any) -> None:
    """Start the services (or reuse running ones) and wait until they answer.

    The first start downloads Kafka's jars with Maven into the cache folder.
    """
    settings = _load(**overrides)
    console = Console()
    for result in stack.up(settings, kafka=with_kafka, clickhouse=with_clickhouse):
        verb = {
            "started": "started",
            "reused": "already running, reused",
            "external": "external, reachable",
        }[result.action]
        console.print(
            f"[bold]{result.name}[/bold] {verb}: {result.endpoint} "
            f"({result.seconds:.1f}s){'; ' + result.detail if result.detail else ''}",
            highlight=False,
            soft_wrap=True,
        )
    if settings.local_secure:
        folder = secure_dir(settings)
        console.print(
            f"[bold]credentials[/bold] in {folder} (private): services.env (worker, sink, "
            "migrate, budgets), sdk.env (producers: write events, read enforcement), "
            f"reports.env (read-only); load one with `set -a; . {folder}/services.env; set +a`",
            highlight=False,
            soft_wrap=True,
        )


@local.command()
@_settings_options
@_services_options
def down(with_kafka: bool, with_clickhouse: bool, **overrides: Any) -> None:
    """Stop the local services (data is kept; external services are left alone)."""
    settings = _load(**overrides)
    _print_status(stack.down(settings, kafka=with_kafka, clickhouse=with_clickhouse), False)


@local.command()
@_settings_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool, **overrides: Any) -> None:
    """Show each service: running or stopped, pid, endpoint, log file and data folder."""
    settings = _load(**overrides)
    _print_status(stack.status(settings), as_json)


def _print_status(statuses: list[ServiceStatus], as_json: bool) -> None:
    if as_json:
        rows = [
            {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()}
            for s in statuses
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="spendstream local stack")
    for column in ("service", "state", "pid", "endpoint", "log", "data"):
        table.add_column(column, overflow="fold")
    colours = {"running": "green", "stopped": "yellow", "external": "cyan"}
    for s in statuses:
        colour = colours.get(s.state, "red")
        table.add_row(
            s.name,
            f"[{colour}]{s.state}[/{colour}]",
            str(s.pid or ""),
            s.endpoint,
            str(s.log_path or ""),
            str(s.data_path or ""),
        )
    Console().print(table)
