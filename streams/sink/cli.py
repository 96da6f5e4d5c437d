"""``spendstream sink``: run the ClickHouse sink until SIGTERM/SIGINT, then drain and exit."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from streams.settings import env_name


@click.command("sink")
@click.option("--topic", envvar=env_name("topic_events"), help="Token events topic.")
@click.option("--group", envvar=env_name("sink_group"), help="Consumer group id.")
@click.option("--batch-rows", type=int, envvar=env_name("sink_batch_rows"), help="Rows per insert.")
@click.option(
    "--flush-seconds", type=float, envvar=env_name("sink_flush_seconds"), help="Max batch age."
)
@click.option("--metrics-port", type=int, envvar=env_name("metrics_port"), help="0: no metrics.")
@click.option(
    "--records/--no-records", default=True, help="Also load the budgets and alerts topics."
)
def sink_command(
    topic: str | None,
    group: str | None,
    batch_rows: int | None,
    flush_seconds: float | None,
    metrics_port: int | None,
    records: bool,
) -> None:
    """Load token events from Kafka into ClickHouse exactly once (run `migrate` first)."""
    from streams.clickhouse import check_reachable
    from streams.errors import LocalStackError
    from streams.settings import load_settings
    from streams.sink.metrics import serve_metrics
    from streams.sink.records import RecordLoader
    from streams.sink.runner import Sink
    from streams.topics import ensure_topics, standard_topics

    settings = load_settings(
        topic_events=topic,
        sink_group=group,
        sink_batch_rows=batch_rows,
        sink_flush_seconds=flush_seconds,
        metrics_port=metrics_port,
    )
    wanted = {settings.topic_events, settings.topic_deadletter}
    if records:
        wanted |= {settings.topic_budgets, settings.topic_alerts}
    ensure_topics(settings, [s for s in standard_topics(settings) if s.name in wanted])
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.metrics_host)
    while True:  # ClickHouse down at start: wait for it, as the running sink does
        try:
            check_reachable(settings, timeout=30)
            break
        except LocalStackError as exc:
            click.echo(f"sink: waiting for ClickHouse: {exc}", err=True)
    sink = Sink(settings)
    loader = RecordLoader(settings) if records else None
    loader_thread = threading.Thread(target=loader.run, daemon=True) if loader else None

    def stop(_signum: int, _frame: FrameType | None) -> None:
        sink.stop()
        if loader is not None:
            loader.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"sink: {settings.topic_events} -> ClickHouse {settings.clickhouse_database}")
    if loader_thread is not None:
        loader_thread.start()
    sink.run()
    if loader_thread is not None:
        loader_thread.join(settings.sink_drain_seconds)
    click.echo("sink: drained and stopped")
