"""``spendstream alerts tail`` on the session's broker: what it shows, once, and its filters."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from confluent_kafka import Producer

from streams import events
from streams.alerts import pretty
from streams.processors.alerts import make_alert
from streams.serde import AvroCodec

ROOT = Path(__file__).resolve().parents[2]
CODEC = AvroCodec("budget_alert")


def _alert(alert_id: str, kind: str, org: str, team: str | None, budget: str | None, age_ms=0):
    return make_alert(
        kind,
        alert_id,
        events.now_ms() - age_ms,
        f"{kind} of {org}/{team} on {budget}",
        1_000_000_000,
        severity="critical",
        org_id=org,
        team_id=team,
        budget_id=budget,
    )


def _produce(settings, topic: str, alerts: list[dict], raw: list[bytes] = ()) -> None:
    producer = Producer(settings.kafka_client_config())
    for alert in alerts:
        stamp = int(alert["detected_at"])
        producer.produce(topic, CODEC.encode(alert), alert["alert_id"].encode(), timestamp=stamp)
    for value in raw:
        producer.produce(topic, value, b"junk")
    assert producer.flush(30) == 0


def _env(settings) -> dict[str, str]:
    bootstrap = settings.kafka_client_config()["bootstrap.servers"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")}
    return {**env, "PYTHONPATH": str(ROOT), "SPENDSTREAM_KAFKA_BOOTSTRAP": bootstrap}


def _tail(settings, topic: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", "alerts", "tail", "--topic", topic, *flags],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _ids(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["alert_id"] for line in done.stdout.splitlines()]


ALERTS = [
    _alert("t-acme-plat", "threshold_crossed", "acme", "platform", "plat-day"),
    _alert("t-acme-web", "threshold_crossed", "acme", "web", "web-day"),
    _alert("r-acme-plat", "runaway_session", "acme", "platform", None),
    _alert("t-umbr-plat", "threshold_crossed", "umbrella", "platform", "umbr-day"),
    _alert("s-old", "spend_spike", "acme", None, None, age_ms=2 * 3_600_000),
]


def test_tail_shows_every_alert_once_and_filters_them(kafka_settings, new_topic):
    topic = new_topic("tail.alerts", partitions=3)
    not_an_alert = b"\xc3\x01" + b"\x00" * 8 + b"whatever"
    _produce(kafka_settings, topic, [*ALERTS, ALERTS[0]], raw=[not_an_alert])  # a repeat

    everything = _tail(kafka_settings, topic, "--from-beginning", "--no-follow", "--json")
    assert sorted(_ids(everything)) == sorted(a["alert_id"] for a in ALERTS)
    assert "1 records were not alerts this version reads" in everything.stderr
    (shown,) = [json.loads(x) for x in everything.stdout.splitlines() if "t-acme-web" in x]
    assert shown["spent"] == 1_000_000_000 and shown["team_id"] == "web"

    def only(*flags: str) -> set[str]:
        return set(
            _ids(_tail(kafka_settings, topic, "--from-beginning", "--no-follow", "--json", *flags))
        )

    assert only("--org", "umbrella") == {"t-umbr-plat"}
    assert only("--team", "platform") == {"t-acme-plat", "r-acme-plat", "t-umbr-plat"}
    assert only("--team", "platform", "--org", "acme") == {"t-acme-plat", "r-acme-plat"}
    assert only("--budget", "plat-day", "--budget", "web-day") == {"t-acme-plat", "t-acme-web"}
    assert only("--kind", "runaway_session", "--kind", "spend_spike") == {"r-acme-plat", "s-old"}
    # --since: from the records stamped then on, and nothing detected before
    recent = set(_ids(_tail(kafka_settings, topic, "--since", "30m", "--no-follow", "--json")))
    assert recent == {a["alert_id"] for a in ALERTS} - {"s-old"}

    pretty_run = _tail(
        kafka_settings, topic, "--from-beginning", "--no-follow", "--org", "umbrella"
    )
    assert pretty_run.returncode == 0, pretty_run.stderr
    assert pretty_run.stdout.splitlines() == [pretty(ALERTS[3]).plain]


def test_tail_follows_new_alerts_only(kafka_settings, new_topic):
    topic = new_topic("tail.follow")
    _produce(kafka_settings, topic, ALERTS[:2])
    tail = subprocess.Popen(
        [sys.executable, "-m", "streams", "alerts", "tail", "--topic", topic, "--json"],
        env=_env(kafka_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in tail.stdout], daemon=True).start()
    try:
        # the tail starts at the end once it is assigned: send new alerts until one shows
        first = None
        for n in range(60):
            _produce(kafka_settings, topic, [_alert(f"new-{n}", "spend_spike", "acme", None, None)])
            try:
                first = json.loads(lines.get(timeout=1.0))
                break
            except queue.Empty:
                continue
        assert first is not None, "the tail printed nothing"
        assert first["alert_id"].startswith("new-")
        _produce(kafka_settings, topic, [_alert("last", "spend_spike", "acme", None, None)])
        shown = [first["alert_id"]]
        deadline = time.monotonic() + 30
        while "last" not in shown and time.monotonic() < deadline:
            try:
                shown.append(json.loads(lines.get(timeout=1.0))["alert_id"])
            except queue.Empty:
                continue
        assert shown[-1] == "last"
        assert not {"t-acme-plat", "t-acme-web"} & set(shown)  # raised before the tail began
    finally:
        tail.terminate()
        tail.wait(timeout=30)
