"""The ``spendstream demo`` command: the plan, the run under the live display, the summary.

Ctrl-C (or SIGTERM) at any point stops the run's processes and threads in order and exits
130 (143) with one line, no traceback; the local stack stays up.
"""

from __future__ import annotations

import datetime as dt
import signal
import sys
from types import FrameType

import click
from rich.console import Console
from rich.table import Table

from streams.demo.plan import plan_demo


class _Stopped(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, like Ctrl-C's KeyboardInterrupt."""


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Stopped()


@click.command()
@click.option(
    "--seconds",
    default=40.0,
    show_default=True,
    type=click.FloatRange(min=10),
    help="How long the traffic runs.",
)
@click.option("--rate", default=200.0, show_default=True, help="Load events per second.")
@click.option("--seed", default=1, show_default=True, help="Seed of the generated traffic.")
def demo(seconds: float, rate: float, seed: int) -> None:
    """Run the whole pipeline on the local stack: live traffic with a runaway agent and a
    team hitting its block-mode budget, under a live display; then the ground-truth check
    and a PNG chart of the spend."""
    from streams.demo.run import quiet_logs, report_rows, run_demo, summary_lines
    from streams.settings import load_settings

    settings = load_settings()
    console = Console(highlight=False)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = settings.home / "demo" / stamp
    log_path = settings.home / "logs" / "demo.log"
    plan = plan_demo(seconds, seed, rate)
    console.print(
        f"[bold]spendstream demo[/bold]: {seconds:.0f}s of traffic ({rate:.0f} events/s of "
        "chat load, a runaway agent, a team under a block-mode budget); "
        f"logs in {log_path}, results in {out_dir}"
    )
    previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        with quiet_logs(log_path):
            outcome = run_demo(settings, plan, console, out_dir)
            spend = report_rows(outcome)
    except KeyboardInterrupt as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up already ran
        code = 143 if isinstance(exc, _Stopped) else 130
        console.print(
            f"[yellow]stopped[/yellow]: every process of the run was stopped; the local stack "
            f"is still up (`spendstream local down` stops it); logs in {log_path}"
        )
        sys.exit(code)
    finally:
        signal.signal(signal.SIGTERM, previous)

    table = Table(title=f"spend per team in ClickHouse ({outcome.settings.clickhouse_database})")
    table.add_column("team")
    table.add_column("USD", justify="right")
    for team, nanos in spend.items():
        cents = (nanos + 5_000_000) // 10_000_000  # to the nearest cent, as `report` shows it
        table.add_row(team, f"{cents // 100:,}.{cents % 100:02d}")
    console.print(table)
    for line in summary_lines(outcome, plan):
        console.print(line, soft_wrap=True)
    console.print(f"chart: [bold]{outcome.chart}[/bold]")
    timings = ", ".join(f"{k.removesuffix('_s')} {v:.0f}s" for k, v in outcome.timings.items())
    console.print(f"took {timings}")
    console.print(
        f"explore this run: set -a; . {outcome.out_dir / 'demo.env'}; set +a; then "
        "`spendstream report spend --by team --range today`, "
        "`spendstream alerts tail --from-beginning`; the stack stays up "
        "(`spendstream local down` stops it)",
        soft_wrap=True,
    )
    if not outcome.ok:
        raise click.ClickException(f"the demo did not show what it should; see {log_path}")
