"""The worker's /metrics (hop histograms an operator reads alert latency from) and /healthz, on
a real worker process with real traffic."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from streams.budgets import budget_from_spec, publish
from streams.events import now_ms
from streams.local._common import free_ports
from streams.sdk import TokenEventProducer
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker import worker_topics
from tests.integration.test_worker_scenario import Workers, _unique_settings

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _hops(text: str) -> dict[str, float]:
    """hop -> observation count, from the Prometheus text format."""
    found = {}
    for line in text.splitlines():
        if line.startswith("spendstream_worker_hop_seconds_count{"):
            hop = line.split('hop="', 1)[1].split('"', 1)[0]
            found[hop] = float(line.rsplit(" ", 1)[1])
    return found


def test_metrics_show_every_hop_of_an_alert_and_health_is_ok(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    settings = _unique_settings(kafka_settings)
    ensure_topics(settings, worker_topics(settings))
    budget = budget_from_spec(
        {"id": "m", "scope": {"org": "acme"}, "period": "day", "limit_usd": "0.5", "mode": "block"},
        now_ms=now_ms() - 86_400_000,
    )
    publish(settings, {"m": budget})
    workers = Workers(
        settings, tmp_path, extra={"METRICS_PORT": str(port), "WORKER_SINK_CHECKS": "false"}
    )
    producer = TokenEventProducer(settings)
    try:
        workers.start()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            workers.assert_alive()
            try:
                status, _ = _get(base + "/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        for i in range(20):
            producer.record(
                org_id="acme",
                team_id="t",
                user_id="u",
                client="c",
                provider="anthropic",
                model="claude-sonnet-4-5",
                event_id=str(uuid.uuid4()),
                cost_nanos=100_000_000 * (1 + i % 2),
            )
        producer.flush()
        hops: dict[str, float] = {}
        while time.monotonic() < deadline:
            workers.assert_alive()
            status, body = _get(base + "/metrics")
            hops = _hops(body.decode())
            if all(hops.get(h) for h in ("appended_to_alert", "alert_ack", "appended_to_block")):
                break
            time.sleep(0.5)
        for hop in (
            "appended_to_fetched",
            "stage1",
            "partials_in_flight",
            "stage2",
            "appended_to_alert",
            "appended_to_block",
            "alert_ack",
            "block_ack",
        ):
            assert hops.get(hop, 0) > 0, (hop, hops)
        status, body = _get(base + "/healthz")
        assert status == 200
        assert json.loads(body)["ok"] is True
        assert _get(base + "/nothing")[0] == 404
    finally:
        workers.stop_all()
        producer.close()
