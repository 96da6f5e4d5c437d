"""``kill -USR1`` on a real worker: its threads and tasks reach its log, with no frame's local
variables (mode's dump printed them all, and a credential handed to a client sits in some), and
the worker goes on (tests/unit/test_worker_dumps.py has the leak itself)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.integration.worker_run import ready_worker

pytestmark = pytest.mark.integration


def test_usr1_dumps_tasks_without_locals_and_the_worker_goes_on(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    with ready_worker(kafka_settings, tmp_path, extra={"WORKER_SINK_CHECKS": "false"}) as run:
        run.send([1000] * 20)
        run.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline and "TASK " not in text:
            time.sleep(0.5)
            text = run.log.read_text(errors="ignore")
        assert "TASK " in text and "THREAD " in text
        assert "LOCAL VARIABLES" not in text
        run.send([1000] * 20)
        time.sleep(1)
        assert run.proc.poll() is None
