"""Prometheus metrics of the sink; one set per registry (tests pass their own registry)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)


class SinkMetrics:
    """rows/s is ``rate(spendstream_sink_rows_inserted_total[1m])``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.rows_inserted = Counter(
            "spendstream_sink_rows_inserted",
            "Rows inserted into token_events",
            registry=registry,
        )
        self.messages = Counter(
            "spendstream_sink_messages",
            "Messages consumed, by outcome",
            ["outcome"],  # inserted | duplicate | deadletter
            registry=registry,
        )
        self.deadlettered = Counter(
            "spendstream_sink_deadlettered",
            "Messages sent to the dead-letter topic, by kind",
            ["kind"],
            registry=registry,
        )
        self.unpriced = Counter(
            "spendstream_sink_unpriced",
            "Events with a model missing from the catalog",
            registry=registry,
        )
        self.insert_seconds = Histogram(
            "spendstream_sink_insert_seconds",
            "Latency of one successful insert into ClickHouse",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.lookup_seconds = Histogram(
            "spendstream_sink_lookup_seconds",
            "Latency of the event_id dedup lookup of one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.clickhouse_errors = Counter(
            "spendstream_sink_clickhouse_errors",
            "Failed ClickHouse requests (each is retried)",
            registry=registry,
        )
        self.lag = Gauge(
            "spendstream_sink_lag",
            "Messages behind the partition end",
            ["partition"],
            registry=registry,
        )
        self.paused = Gauge(
            "spendstream_sink_paused",
            "1 while consumption is paused (ClickHouse behind)",
            registry=registry,
        )


def serve_metrics(port: int, host: str, registry: CollectorRegistry | None = None) -> Any:
    """Serve ``registry`` on ``host:port`` (SPENDSTREAM_METRICS_HOST, loopback by default: the
    Helm chart sets 0.0.0.0 for the cluster's scrapers); the server, for ``shutdown()``."""
    server, _thread = start_http_server(
        port, addr=host, registry=REGISTRY if registry is None else registry
    )
    return server
