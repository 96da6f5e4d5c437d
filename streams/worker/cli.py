"""``spendstream worker``: run the stream worker."""

from __future__ import annotations

import dataclasses

import click

from streams.settings import env_name, load_settings
from streams.worker.config import WorkerConfig
from streams.worker.sinkview import SinkView
from streams.worker.worker import Worker


@click.command("worker")
@click.option(
    "--worker-id",
    envvar=env_name("worker_id"),
    help="consumer group / app id (workers with the same id share the partitions)",
)
@click.option("--web/--no-web", default=False, help="also serve faust's web UI")
def worker_command(worker_id: str | None, web: bool) -> None:
    """Run the stream worker: windows, budgets, alerts (stop with Ctrl-C or SIGTERM)."""
    settings = load_settings(worker_id=worker_id)
    config = dataclasses.replace(WorkerConfig.from_settings(settings), web=web)
    view = SinkView(settings) if settings.worker_sink_checks else None
    worker = Worker(settings, config, sink_view=view)
    worker.run()
