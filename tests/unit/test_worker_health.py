"""/healthz turns unhealthy when a partition with records to read makes no progress."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.settings import Settings
from streams.worker import Worker
from streams.worker.worker import _PartitionSlot


class Consumer:
    def __init__(self, high: dict[TP, int]) -> None:
        self.high = high

    def highwater(self, tp: TP) -> int | None:
        return self.high.get(tp)


def _worker(stall_s: float) -> Worker:
    worker = Worker(Settings.from_env({}, worker_stall_s=stall_s, event_partitions=2))
    return worker


def test_a_partition_with_lag_and_no_progress_makes_the_worker_unhealthy(monkeypatch: Any) -> None:
    worker = _worker(stall_s=30)
    events = worker.settings.topic_events
    tps = [TP(events, 0), TP(events, 1)]
    monkeypatch.setattr(worker, "_assigned", lambda topic: tps if topic == events else [])
    fresh = _PartitionSlot(0, SimpleNamespace(applied=99))
    fresh.last_batch_at = time.monotonic()
    stuck = _PartitionSlot(1, SimpleNamespace(applied=9))
    stuck.last_batch_at = time.monotonic() - 60
    worker.stage1 = {0: fresh, 1: stuck}
    worker._check_health(Consumer({tps[0]: 100, tps[1]: 50}))
    ok, details = worker.health()
    assert not ok
    assert details["stalled"] == [f"{events}[1]: lag 40, idle 60s"]
    # caught up: no lag, however long it has been idle
    worker._check_health(Consumer({tps[0]: 100, tps[1]: 10}))
    assert worker.health()[0] is True
