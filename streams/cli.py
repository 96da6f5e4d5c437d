"""The ``spendstream`` command line: assembles the commands of every room (click, as faust uses).

Each command is imported when it runs, not when ``spendstream`` starts: a command whose extra
is not installed says which one to install, in one line, and the others still work. Every flag
that maps to a setting declares its ``SPENDSTREAM_*`` variable as ``envvar`` so that ``--help``
names it; values given on the command line win over the environment.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from streams import __version__
from streams.errors import MissingExtraError, SpendstreamError

#: command name -> (module, attribute, extra that brings its packages, short help)
COMMANDS: dict[str, tuple[str, str, str | None, str]] = {
    "local": ("streams.local.cli", "local", "local", "Run the embedded Kafka and ClickHouse."),
    "migrate": ("streams.migrate", "migrate_command", "sink", "Apply ClickHouse migrations."),
    "sink": ("streams.sink.cli", "sink_command", "sink", "Kafka -> ClickHouse, exactly once."),
    "report": ("streams.query.cli", "report", "sink", "Spend reports from ClickHouse."),
    "backfill": (
        "streams.sink.backfill",
        "backfill_command",
        "sink",
        "Rebuild the rollups of a time range.",
    ),
    "worker": ("streams.worker.cli", "worker_command", "worker", "Run the stream worker."),
    "budgets": ("streams.budgets.cli", "budgets_cli", None, "Create, list and delete budgets."),
    "demo": ("streams.demo", "demo", "all", "Run the demo on the embedded local stack."),
    "prices": ("streams.pricing.cli", "prices", None, "Show, quote and sync the price catalog."),
    "alerts": ("streams.alerts.cli", "alerts", None, "Follow the alerts topic (alerts tail)."),
    # loadtest/ lives in the source checkout, beside streams/ (it starts the local stack)
    "loadtest": (
        "loadtest.cli",
        "loadtest",
        None,
        "Run a load-test scenario end to end (from a source checkout).",
    ),
}


class SpendstreamGroup(click.Group):
    """Loads commands lazily and turns our errors into one clean line and exit code 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attribute, extra, summary = entry
        try:
            command: click.Command = getattr(importlib.import_module(module_name), attribute)
        except ImportError as exc:
            if isinstance(exc, MissingExtraError) or extra is None:
                error = exc
            else:
                missing = exc.name or "a package"
                error = MissingExtraError(
                    f"`spendstream {cmd_name}` needs {missing}, which comes with an extra: "
                    f"pip install 'spendstream[{extra}]'"
                )
            return _unavailable(cmd_name, summary, error)
        _show_envvars(command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpendstreamError as exc:
            raise click.ClickException(str(exc)) from exc


def _unavailable(name: str, summary: str, error: Exception) -> click.Command:
    """A stand-in for a command that cannot be imported: it says why when run."""

    def fail() -> None:
        raise click.ClickException(str(error))

    return click.Command(
        name,
        callback=fail,
        help=f"{summary} (unavailable: {error})",
        short_help=f"{summary} (needs an extra)",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


@click.group(cls=SpendstreamGroup)
@click.version_option(__version__, prog_name="spendstream")
def main() -> None:
    """spendstream: real-time AI token spend, budgets and alerts on Kafka and ClickHouse."""


def _show_envvars(command: click.Command) -> None:
    """Every flag backed by a SPENDSTREAM_* variable names it in --help, whoever declared it."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            param.show_envvar = True
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _show_envvars(sub)
