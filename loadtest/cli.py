"""``spendstream loadtest``: run a scenario end to end, list the scenarios.

Run from a source checkout (loadtest/ is not part of the installed package):

    spendstream loadtest run --scenario smoke
    spendstream loadtest run --scenario steady --compare --out loadtest/results/steady
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from loadtest import scenario as scenarios


@click.group("loadtest")
def loadtest() -> None:
    """Drive the whole pipeline at a rate, measure it, check it against a ledger."""


@loadtest.command("scenarios")
def list_scenarios() -> None:
    """The scenarios in loadtest/scenarios/ and what each does."""
    for name in scenarios.names():
        s = scenarios.load(name)
        click.echo(f"{name:10} {s.seconds:5.0f} s  {s.description}")


@loadtest.command("run")
@click.option(
    "--scenario",
    "name",
    default="smoke",
    show_default=True,
    help="a name from `spendstream loadtest scenarios`, or a YAML file",
)
@click.option("--rate", type=float, default=None, help="events/s (all agents together)")
@click.option("--duration", type=float, default=None, help="seconds of load")
@click.option("--workers", type=int, default=None)
@click.option("--sinks", type=int, default=None)
@click.option("--agents", type=int, default=None, help="producer processes")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="results folder (default loadtest/results/SCENARIO-TIME)",
)
@click.option("--compare", is_flag=True, help="also measure the limits (Kafka's tools, ...)")
def run_command(
    name: str,
    rate: float | None,
    duration: float | None,
    workers: int | None,
    sinks: int | None,
    agents: int | None,
    out: Path | None,
    compare: bool,
) -> None:
    """Run a scenario; exits 1 unless the checker found nothing wrong."""
    from loadtest.report import write_report
    from loadtest.run import interrupt_handler, results_dir, run
    from streams.loadtest.display import LiveDisplay

    try:
        chosen = scenarios.load(name).with_overrides(
            rate=rate, duration_s=duration, workers=workers, sinks=sinks, agents=agents
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    folder = out or results_dir(chosen.name)
    compare_fn = None
    if compare:
        from loadtest.compare import compare_all

        compare_fn = compare_all
    interrupt_handler()
    click.echo(f"loadtest {chosen.name}: results in {folder}")
    with LiveDisplay(f"loadtest {chosen.name}") as display:
        results = run(chosen, folder, display=display, compare=compare_fn)
    report = write_report(folder, results)
    click.echo(results["check_summary"])
    click.echo(f"report: {report}")
    sys.exit(0 if results["check_ok"] and results["ledger_totals_agree"] else 1)
