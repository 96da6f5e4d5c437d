"""A SIGTERMed worker stops within seconds while events keep arriving (found by the fault
runs' rebalance: faust waited for every fetched batch to be acked, and the worker acks a
batch only at its checkpoint, which never comes once the app stops: it hung until killed).
What it had not checkpointed is replayed by the next owner (tests/faults: `rebalance`)."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from streams.sdk import TokenEventProducer
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker import worker_topics
from tests.integration.test_worker_scenario import Workers, _unique_settings

pytestmark = pytest.mark.integration


def test_sigterm_under_load_stops_the_worker_in_seconds(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = _unique_settings(kafka_settings)
    ensure_topics(settings, worker_topics(settings))
    workers = Workers(settings, tmp_path, extra={"WORKER_SINK_CHECKS": "false"})
    producer = TokenEventProducer(settings)
    try:
        proc = workers.start()
        log = tmp_path / "worker-0.log"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "Worker ready" not in log.read_text(errors="ignore"):
            workers.assert_alive()
            time.sleep(0.5)
        for _ in range(40):  # 4 s of steady events: batches are always held for a checkpoint
            for _ in range(20):
                producer.record(
                    org_id="acme",
                    team_id="t",
                    user_id="u",
                    client="c",
                    provider="anthropic",
                    model="claude-sonnet-4-5",
                    event_id=str(uuid.uuid4()),
                    cost_nanos=1000,
                )
            time.sleep(0.1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        producer.flush()
        proc.wait(timeout=45)  # it waited for ever before (killed by the fault run at 60 s)
        assert time.monotonic() - started < 45
        assert "wait_empty: Waiting for tasks" not in log.read_text(errors="ignore")
    finally:
        workers.stop_all()
        producer.close()
