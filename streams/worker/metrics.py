"""The worker's Prometheus metrics: where an alert's time goes, hop by hop, and its progress.

An event's way to an alert: appended to the events topic (the broker's timestamp) -> fetched
by stage 1 -> stage 1 -> partials pack sent -> fetched by stage 2 -> stage 2 -> alert (or
block) handed to the producer -> acknowledged by the broker. Each hop is a histogram of
``spendstream_worker_hop_seconds{hop=...}``, observed once per batch (the batch's newest
record: what a single probe event sees) or per alert, so the cost stays off the per-event path.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: the hops, in the order an event meets them
HOPS: Final = (
    "appended_to_fetched",  # broker append -> stage 1 has the batch (the next three hops)
    "events_received",  # broker append of a batch's newest event -> its fetch response parsed
    "events_buffered",  # fetch response parsed -> handed to faust (aiokafka's buffer)
    "events_queued",  # handed to faust -> stage 1 has it (faust's queue, the event loop)
    "stage1",  # stage 1's work on a batch
    "partials_in_flight",  # partials pack sent -> stage 2 has it (the next three hops)
    "partials_received",  # broker append of a batch's newest pack -> its fetch response parsed
    "partials_buffered",  # fetch response parsed -> handed to faust
    "partials_queued",  # handed to faust -> stage 2 has it
    "stage2",  # stage 2's work on a batch
    "appended_to_alert",  # broker append of the newest event -> its alert handed over
    "appended_to_block",  # the same for a block-state record
    "alert_ack",  # alert handed over -> the broker acknowledged it
    "block_ack",  # block-state record handed over -> acknowledged
    "checkpoint",  # one partition's checkpoint (snapshot and changelog writes)
    "rollup_chunk",  # encoding and handing over one chunk of rollup rows (blocks the loop)
    "loop_lag",  # how late a 10 ms sleep of the event loop wakes (a blocked loop delays all)
)
BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.175,
    0.25,
    0.35,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class WorkerMetrics:
    """One registry per worker (tests build several in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.hop = Histogram(
            "spendstream_worker_hop_seconds",
            "Time an event's way to its alert spends in each hop",
            ["hop"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.hops = {name: self.hop.labels(name) for name in HOPS}
        self.events = Counter(
            "spendstream_worker_events_total",
            "Records of the events topic by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.outcomes = {
            name: self.events.labels(name)
            for name in ("counted", "duplicate", "dead", "deferred", "skipped")
        }
        self.alerts = Counter(
            "spendstream_worker_alerts_total", "Alerts published", ["kind"], registry=self.registry
        )
        self.lag = Gauge(
            "spendstream_worker_lag",
            "Records not processed yet, per owned partition",
            ["topic", "partition"],
            registry=self.registry,
        )
        self.waiting = Gauge(
            "spendstream_worker_pending",
            "Deferred events waiting for the sink, and baselines waiting for it",
            ["what"],
            registry=self.registry,
        )
        self.healthy = Gauge(
            "spendstream_worker_healthy",
            "1 while the worker makes progress",
            registry=self.registry,
        )
