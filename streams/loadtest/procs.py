"""Real `spendstream worker` / `spendstream sink` processes and a load process for one run.

A run gets its own topics, consumer groups, worker id and ClickHouse database on a shared
stack (``run_settings``), so several runs and tests never see each other's data. ``Procs``
starts, signals and stops the processes (their logs in one folder); ``wait_drained`` waits
until the sink and the workers have committed everything produced so far.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams import budgets as budgets_room  # its publish() shares a module's name
from streams.budgets import Budget
from streams.clickhouse import Target, connect, quote_identifier
from streams.migrate import Migrator
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker import partials_topic, worker_topics


def run_settings(base: Settings, partitions: int = 4, run: str | None = None) -> Settings:
    """``base`` with this run's own topics, groups, worker id and database."""
    run = run or uuid.uuid4().hex[:8]
    return dataclasses.replace(
        base.with_topic_prefix(f"run.{run}"),
        kafka_bootstrap=base.kafka_client_config()["bootstrap.servers"],
        clickhouse_url=base.clickhouse_http_url,
        clickhouse_database=f"run_{run}",
        event_partitions=partitions,
        worker_id=f"run-worker-{run}",
        sink_group=f"run-sink-{run}",
        worker_flush_seconds=0.5,
    )


def prepare(settings: Settings, budgets: Iterable[Budget] = ()) -> None:
    """Migrate the run's database, create its topics, publish its budgets."""
    client = connect(settings)
    try:
        Migrator(client, Target.from_settings(settings)).migrate()
    finally:
        client.close()
    ensure_topics(settings, worker_topics(settings))
    found = {b.budget_id: b for b in budgets}
    if found:
        budgets_room.publish(settings, found)


def drop(settings: Settings) -> None:
    client = connect(settings)
    try:
        client.command(f"DROP DATABASE IF EXISTS {quote_identifier(settings.clickhouse_database)}")
    finally:
        client.close()


def env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a service process of this run (SPENDSTREAM_* from ``settings``)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")}
    values = {
        "HOME": str(settings.home),
        "CACHE_DIR": str(settings.cache_dir),
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLICKHOUSE_URL": settings.clickhouse_url,
        "CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "TOPIC_EVENTS": settings.topic_events,
        "TOPIC_DEADLETTER": settings.topic_deadletter,
        "TOPIC_ALERTS": settings.topic_alerts,
        "TOPIC_ROLLUPS": settings.topic_rollups,
        "TOPIC_BUDGETS": settings.topic_budgets,
        "TOPIC_ENFORCEMENT": settings.topic_enforcement,
        "EVENT_PARTITIONS": str(settings.event_partitions),
        "WORKER_ID": settings.worker_id,
        "WORKER_FLUSH_SECONDS": str(settings.worker_flush_seconds),
        "SINK_GROUP": settings.sink_group,
        "SINK_FLUSH_SECONDS": "0.2",
        "LOG_LEVEL": "INFO",
    }
    out.update({f"SPENDSTREAM_{k}": str(v) for k, v in values.items() if v is not None})
    out.update({f"SPENDSTREAM_{k}": v for k, v in extra.items()})
    return out


@dataclasses.dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stopped: bool = False  # SIGSTOPped

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class Procs:
    """The run's processes; ``start('worker'|'sink')``, ``load(...)``, signals, ``stop_all``.

    ``start_new_session``: each process in its own session, so a terminal's Ctrl-C reaches
    only the caller, which then stops them (``stop_all``) in order.
    """

    start_new_session = False

    def __init__(self, settings: Settings, logs: Path, **extra: str) -> None:
        self.settings = settings
        self.logs = logs
        self.extra = extra
        self.all: list[Proc] = []
        logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, argv: list[str], **extra: str) -> Proc:
        log = self.logs / f"{name}-{len(self.all)}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                argv,
                env=env(self.settings, **{**self.extra, **extra}),
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=self.start_new_session,
            )
        proc = Proc(name, popen, log)
        self.all.append(proc)
        return proc

    def start(self, command: str, **extra: str) -> Proc:
        """``extra``: SPENDSTREAM_* of this process only (without the prefix)."""
        return self._spawn(
            command,
            [sys.executable, "-c", "from streams.cli import main; main()", command],
            **extra,
        )

    def spawn(self, name: str, argv: list[str], **extra: str) -> Proc:
        """Any other process of the run (a load generator), in the run's environment."""
        return self._spawn(name, argv, **extra)

    def load(self, ledger: Path, rate: float, count: int, seed: int = 1, prefix: str = "f") -> Proc:
        argv = [sys.executable, "-m", "streams.loadtest.load", "--ledger", str(ledger)]
        argv += ["--rate", str(rate), "--count", str(count), "--seed", str(seed)]
        return self._spawn("load", [*argv, "--prefix", prefix])

    def running(self, name: str) -> list[Proc]:
        return [p for p in self.all if p.name == name and p.alive]

    @staticmethod
    def signal(proc: Proc, sig: signal.Signals) -> None:
        if proc.alive:
            proc.popen.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.popen.wait(timeout=30)
        proc.stopped = sig == signal.SIGSTOP

    def stop_all(self, timeout: float = 30.0) -> None:
        for proc in self.all:
            if proc.alive:
                if proc.stopped:
                    proc.popen.send_signal(signal.SIGCONT)
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.all:
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=30)

    def assert_alive(self, *names: str) -> None:
        for proc in self.all:
            if proc.name in names and proc.popen.returncode is None and not proc.alive:
                raise AssertionError(
                    f"{proc.name} exited with {proc.popen.returncode}; log {proc.log}"
                )

    def wait(self, proc: Proc, timeout: float) -> int:
        try:
            return proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{proc.name} still running after {timeout}s") from exc


def ends(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "run-ends"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(settings.event_partitions)
        }
    finally:
        consumer.close()


def committed(settings: Settings, topic: str, group: str) -> dict[int, int]:
    consumer = Consumer(
        {**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False}
    )
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.event_partitions)]
        return {tp.partition: max(0, tp.offset) for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def wait_drained(
    settings: Settings, procs: Procs | None = None, timeout: float = 180.0, workers: bool = True
) -> None:
    """Until the sink (and the workers) committed what the topics held when this was called:
    the events, then the partials the workers published about them."""
    deadline = time.monotonic() + timeout
    waits = [(settings.topic_events, settings.sink_group)]
    if workers:
        waits += [
            (settings.topic_events, settings.worker_id),
            (partials_topic(settings), settings.worker_id),
        ]
    for topic, group in waits:
        target = ends(settings, topic)
        found: dict[int, int] | None = None
        while True:
            if procs is not None:
                procs.assert_alive("worker", "sink")
            try:
                found = committed(settings, topic, group)
            except KafkaException:  # the coordinator is busy: ask again
                found = None
            if found is not None and all(found[p] >= end for p, end in target.items()):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{group} not drained in {timeout}s on {topic}: committed {found}, end {target}"
                )
            time.sleep(0.5)
