"""The ``spendstream`` command line (click, as faust uses).

Every flag that maps to a setting declares its ``SPENDSTREAM_*`` variable as ``envvar`` so that
``--help`` names it; values given on the command line win over the environment.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from streams import __version__
from streams.errors import SettingsError, SpendstreamError
from streams.settings import Settings


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment plus CLI overrides, as a click error when invalid."""
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return settings


class SpendstreamGroup(click.Group):
    """Turns our errors into one clean line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpendstreamError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=SpendstreamGroup)
@click.version_option(__version__, prog_name="spendstream")
def main() -> None:
    """spendstream: real-time AI token spend, budgets and alerts on Kafka and ClickHouse."""


def _register() -> None:
    from streams.app import worker_command
    from streams.budgets import budgets_cli
    from streams.demo import demo
    from streams.local.cli import local
    from streams.migrate import migrate_command
    from streams.query.cli import report
    from streams.sink.backfill import backfill_command
    from streams.sink.cli import sink_command

    main.add_command(local)
    main.add_command(migrate_command)
    main.add_command(sink_command)
    main.add_command(report)
    main.add_command(backfill_command)
    main.add_command(worker_command)
    main.add_command(budgets_cli)
    main.add_command(demo)
    _show_envvars(main)


def _show_envvars(command: click.Command) -> None:
    """Every flag backed by a SPENDSTREAM_* variable names it in --help, whoever declared it."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            param.show_envvar = True
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _show_envvars(sub)


_register()
