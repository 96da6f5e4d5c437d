"""A SIGTERMed worker stops within seconds while events keep arriving (found by the fault
runs' rebalance: faust waited for every fetched batch to be acked, and the worker acks a
batch only at its checkpoint, which never comes once the app stops: it hung until killed).
What it had not checkpointed is replayed by the next owner (tests/faults: `rebalance`)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.integration.worker_run import ready_worker

pytestmark = pytest.mark.integration


def test_sigterm_under_load_stops_the_worker_in_seconds(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    with ready_worker(kafka_settings, tmp_path, extra={"WORKER_SINK_CHECKS": "false"}) as run:
        for _ in range(40):  # 4 s of steady events: batches are always held for a checkpoint
            run.send([1000] * 20)
            time.sleep(0.1)
        started = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        run.producer.flush()
        run.proc.wait(timeout=45)  # it waited for ever before (killed by the fault run at 60 s)
        assert time.monotonic() - started < 45
        assert "wait_empty: Waiting for tasks" not in run.log.read_text(errors="ignore")
