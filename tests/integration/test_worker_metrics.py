"""The worker's /metrics (hop histograms an operator reads alert latency from) and /healthz, on
a real worker process with real traffic."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streams.budgets import budget_from_spec
from streams.events import now_ms
from streams.local._common import free_ports
from streams.settings import Settings
from tests.integration.worker_run import ready_worker

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
    budget = budget_from_spec(
        {"id": "m", "scope": {"org": "acme"}, "period": "day", "limit_usd": "0.5", "mode": "block"},
        now_ms=now_ms() - 86_400_000,
    )
    extra = {"METRICS_PORT": str(port), "WORKER_SINK_CHECKS": "false"}
    with ready_worker(kafka_settings, tmp_path, extra=extra, budgets={"m": budget}) as run:
        base = f"http://127.0.0.1:{port}"
        run.send(100_000_000 * (1 + i % 2) for i in range(20))
        deadline = time.monotonic() + 90
        hops: dict[str, float] = {}
        while time.monotonic() < deadline:
            run.workers.assert_alive()
            status, body = _get(base + "/metrics")
            hops = _hops(body.decode())
            if all(hops.get(h) for h in ("appended_to_alert", "alert_ack", "appended_to_block")):
                break
            time.sleep(0.5)
        for hop in (
            "appended_to_fetched",
            "events_received",
            "events_buffered",
            "events_queued",
            "stage1",
            "partials_in_flight",
            "partials_received",
            "partials_buffered",
            "partials_queued",
            "stage2",
            "appended_to_alert",
            "appended_to_block",
            "alert_ack",
            "block_ack",
            "loop_lag",
        ):
            assert hops.get(hop, 0) > 0, (hop, hops)
        status, body = _get(base + "/healthz")
        assert status == 200
        assert json.loads(body)["ok"] is True
        assert _get(base + "/nothing")[0] == 404


def test_healthz_fails_when_the_worker_stops_making_progress(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """A real stall, no signal: the partials topic is deleted under a running worker, so its
    producer has no leader for what stage 1 sends (the stall of issue 13 had the same
    symptom) and stage 1 stops while events keep arriving. /healthz must turn 503 within a
    few stall periods while the process lives on (the liveness probe then restarts it)."""
    from confluent_kafka.admin import AdminClient

    from streams.worker import partials_topic

    (port,) = free_ports(1)
    extra = {"METRICS_PORT": str(port), "WORKER_SINK_CHECKS": "false", "WORKER_STALL_S": "5"}
    with ready_worker(kafka_settings, tmp_path, extra=extra) as run:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        counted = 0.0
        while time.monotonic() < deadline and not counted:
            run.workers.assert_alive()
            run.send([1000] * 20)
            try:
                status, body = _get(base + "/metrics")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
                continue
            for line in body.decode().splitlines():
                if line.startswith('spendstream_worker_events_total{outcome="counted"}'):
                    counted = float(line.rsplit(" ", 1)[1])
            time.sleep(0.5)
        assert counted, "the worker never counted an event"
        status, body = _get(base + "/healthz")
        assert status == 200, body

        admin = AdminClient(run.settings.kafka_client_config())
        admin.delete_topics([partials_topic(run.settings)])[partials_topic(run.settings)].result(30)
        found: tuple[int, bytes] = (0, b"")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            run.workers.assert_alive()
            run.send([1000] * 20)
            found = _get(base + "/healthz")
            if found[0] == 503:
                break
            time.sleep(1)
        status, body = found
        assert status == 503, body
        reasons = json.loads(body)["stalled"]
        assert any("no progress" in r or "not acknowledged" in r for r in reasons), reasons
        run.workers.assert_alive()  # alive and stalled: only the probe would notice
