"""``spendstream demo``: the main job on the embedded local stack, end to end.

Starts the local Kafka and ClickHouse, applies the migrations, sets two budgets, runs the sink
and a worker as the user would (``spendstream sink`` / ``spendstream worker``), produces
generated agent traffic through the SDK, then shows what ClickHouse holds and which breach
alerts arrived on the alerts topic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from streams.errors import SpendstreamError
from streams.generate import Shape, generate_events
from streams.sdk import TokenEventProducer
from streams.serde import AvroCodec
from streams.settings import Settings

DEMO_BUDGETS = (
    ["demo-org-0-day", "--scope", "org=org-0", "--period", "day", "--limit-usd", "150"],
    [
        "demo-team-block",
        "--scope",
        "team=org-1-team-0",
        "--period",
        "day",
        "--limit-usd",
        "40",
        "--mode",
        "block",
    ],
)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams", *args]


def _run(console: Console, *args: str) -> None:
    console.print(f"[dim]$ spendstream {' '.join(args)}[/dim]")
    subprocess.run(_cli(*args), check=True)


@contextlib.contextmanager
def _service(name: str, logs: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running spendstream command, stopped with SIGTERM (its clean drain) at the end."""
    log = (logs / f"demo-{name}.log").open("wb")
    proc = subprocess.Popen(_cli(*args), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait(
    what: str, check: Callable[[], bool], timeout: float, procs: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for proc in procs:
            if proc.poll() is not None:
                raise SpendstreamError(f"{proc.args!r} exited while {what}")
        if time.monotonic() > deadline:
            raise SpendstreamError(f"timed out after {timeout:.0f}s {what}")
        time.sleep(0.5)


def _read_alerts(settings: Settings) -> list[dict[str, object]]:
    codec = AvroCodec("budget_alert")
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"spendstream-demo-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    alerts: list[dict[str, object]] = []
    try:
        topic = settings.topic_alerts
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        while batch := consumer.consume(num_messages=10_000, timeout=2.0):
            alerts.extend(codec.decode(m.value()) for m in batch if m.error() is None)
    finally:
        consumer.close()
    return alerts


def _produce(settings: Settings, console: Console, count: int, shape: Shape) -> None:
    start = time.perf_counter()
    with TokenEventProducer(settings) as producer:
        for event in generate_events(count, seed=time.time_ns() % 2**32, shape=shape):
            producer.send(event)
    console.print(
        f"produced {count:,} events through the SDK in {time.perf_counter() - start:.1f}s "
        f"({producer.stats.delivered:,} acknowledged, {producer.stats.failed} failed)"
    )


def _wait_loaded(client: Any, rows: int, procs: list[subprocess.Popen[bytes]]) -> None:
    def loaded() -> bool:
        return int(client.query("SELECT count() FROM token_events").result_rows[0][0]) >= rows

    _wait("waiting for the sink to load every event", loaded, 300, procs)


def run_demo(settings: Settings, count: int, console: Console) -> None:
    from streams.clickhouse import connect
    from streams.local import stack

    for result in stack.up(settings):
        console.print(f"{result.name}: {result.action} at {result.endpoint}")
    _run(console, "migrate")
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    client = connect(settings, database=settings.clickhouse_database)
    before = int(client.query("SELECT count() FROM token_events").result_rows[0][0])

    with (
        _service("sink", logs, "sink") as sink,
        _service("worker", logs, "worker") as worker,
    ):
        procs = [sink, worker]
        half = count // 2
        now = int(time.time() * 1000)
        # the morning so far: events of the last four minutes, loaded before any budget exists
        _produce(settings, console, half, Shape(span_ms=240_000, start_ms=now - 240_000))
        _wait_loaded(client, before + half, procs)
        console.print(f"ClickHouse holds the first {half:,} events (service logs: {logs})")

        # budgets created now start from ClickHouse's spend so far; the stream counts from the
        # next minute on (see `spendstream budgets --help`)
        for budget in DEMO_BUDGETS:
            _run(console, "budgets", "set", *budget)
        counted_from = (int(time.time()) // 60 + 1) * 60
        console.print("waiting for the next minute, from which the budgets count the stream")
        time.sleep(max(0.0, counted_from - time.time()) + 1)
        now = int(time.time() * 1000)
        span = max(1_000, now - counted_from * 1000)
        _produce(settings, console, count - half, Shape(span_ms=span, start_ms=now - span))
        _wait_loaded(client, before + count, procs)
        console.print(f"ClickHouse holds all {count:,} events")
        _wait(
            "waiting for the budgets' threshold alerts",
            lambda: any(a["kind"] == "threshold_crossed" for a in _read_alerts(settings)),
            120,
            procs,
        )
        time.sleep(5)  # let the last alerts of the run arrive

    _run(console, "report", "spend", "--by", "org", "--range", "today")
    _run(console, "report", "tasks", "--range", "today")
    alerts = _read_alerts(settings)
    table = Table(title=f"{len(alerts)} alerts on {settings.topic_alerts}")
    for column in ("kind", "budget", "message"):
        table.add_column(column)
    for alert in sorted(alerts, key=lambda a: str(a["detected_at"])):
        table.add_row(str(alert["kind"]), str(alert["budget_id"] or ""), str(alert["message"]))
    console.print(table)


@click.command()
@click.option("--events", "count", default=20_000, show_default=True, help="events to generate")
def demo(count: int) -> None:
    """Run the whole pipeline on the local stack with generated agent traffic."""
    from streams.settings import load_settings

    settings = load_settings()
    console = Console()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_demo(settings, count, console)
    console.print(
        "[green]done[/green]: the stack is still running for you to explore "
        "(`spendstream report --help`); stop it with `spendstream local down`"
    )
