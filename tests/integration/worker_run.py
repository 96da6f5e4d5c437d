"""One worker process on topics of its own, started and ready, with a producer to feed it: what
test_worker_metrics.py and test_worker_shutdown.py share (built on test_worker_scenario's
Workers, which every worker test starts its processes with)."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from streams.budgets import Budget, publish
from streams.sdk import TokenEventProducer
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker import worker_topics
from tests.integration.test_worker_scenario import Workers, _unique_settings


@dataclasses.dataclass
class ReadyWorker:
    settings: Settings
    workers: Workers
    proc: subprocess.Popen[bytes]
    producer: TokenEventProducer
    log: Path

    def send(self, costs: Iterable[int]) -> None:
        """One event of acme/t/u a cost (nano-USD, as the client reported it), flushed."""
        for cost in costs:
            self.producer.record(
                org_id="acme",
                team_id="t",
                user_id="u",
                client="c",
                provider="anthropic",
                model="claude-sonnet-4-5",
                event_id=str(uuid.uuid4()),
                cost_nanos=cost,
            )
        self.producer.flush()


@contextlib.contextmanager
def ready_worker(
    kafka_settings: Settings,
    logs: Path,
    extra: Mapping[str, str] | None = None,
    budgets: Mapping[str, Budget] | None = None,
) -> Iterator[ReadyWorker]:
    """A worker (SPENDSTREAM_ ``extra`` settings, ``budgets`` published before it starts) that
    has logged "Worker ready"; stopped, with its producer closed, on leaving."""
    settings = _unique_settings(kafka_settings)
    ensure_topics(settings, worker_topics(settings))
    if budgets:
        publish(settings, dict(budgets))
    workers = Workers(settings, logs, extra=dict(extra or {}))
    producer = TokenEventProducer(settings)
    try:
        proc = workers.start()
        workers.wait_ready(proc)
        yield ReadyWorker(settings, workers, proc, producer, workers.log_paths[-1])
    finally:
        workers.stop_all()
        producer.close()
