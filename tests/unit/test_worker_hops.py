"""The worker's fetch hops: a stamped batch is split into received, buffered and queued."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from streams.worker.fetch import FetchedBatch
from streams.worker.metrics import WorkerMetrics
from streams.worker.worker import _observe_fetch


def _count_and_sum(metrics: WorkerMetrics, hop: str) -> tuple[float, float]:
    text = generate_latest(metrics.registry).decode()
    found = {}
    for line in text.splitlines():
        for kind in ("count", "sum"):
            if line.startswith(f'spendstream_worker_hop_seconds_{kind}{{hop="{hop}"}}'):
                found[kind] = float(line.split()[-1])
    return found["count"], found["sum"]


def test_a_stamped_batch_is_timed_hop_by_hop() -> None:
    metrics = WorkerMetrics()
    now = time.time()
    batch = FetchedBatch([object()], received=now - 0.3, taken=now - 0.1)
    _observe_fetch(metrics.hops, "events", batch, int((now - 0.5) * 1000))
    for hop, expected in (
        ("events_received", 0.2),
        ("events_buffered", 0.2),
        ("events_queued", 0.1),
    ):
        count, total = _count_and_sum(metrics, hop)
        assert count == 1
        assert abs(total - expected) < 0.05, (hop, total)
    assert _count_and_sum(metrics, "partials_received") == (0, 0)


def test_an_unstamped_batch_is_not_timed() -> None:
    metrics = WorkerMetrics()
    _observe_fetch(metrics.hops, "partials", [object()], int(time.time() * 1000))
    assert _count_and_sum(metrics, "partials_received") == (0, 0)
