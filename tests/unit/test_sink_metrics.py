"""The sink's Prometheus endpoint binds where SPENDSTREAM_METRICS_HOST says, loopback by default."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client import CollectorRegistry

from streams.settings import Settings
from streams.sink.metrics import SinkMetrics, serve_metrics


def test_metrics_bind_loopback_by_default() -> None:
    settings = Settings.from_env({})
    assert settings.metrics_host == "127.0.0.1"
    registry = CollectorRegistry()
    SinkMetrics(registry).rows_inserted.inc(3)
    server = serve_metrics(0, settings.metrics_host, registry)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"  # before: prometheus_client's default, 0.0.0.0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert b"spendstream_sink_rows_inserted_total 3.0" in reply.read()
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_bind_the_configured_address() -> None:
    settings = Settings.from_env({"SPENDSTREAM_METRICS_HOST": "0.0.0.0"})
    server = serve_metrics(0, settings.metrics_host, CollectorRegistry())
    try:
        assert server.server_address[0] == "0.0.0.0"
        assert server.socket.family == socket.AF_INET
    finally:
        server.shutdown()
        server.server_close()
