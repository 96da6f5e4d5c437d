"""The README's examples, run as a user would run them, against the session's Kafka.

Each example is taken from README.md by its ``<!-- readme-test: NAME -->`` marker and run in
a fresh Python process from the repository root. The SDK examples read their settings from
``SPENDSTREAM_*`` variables (pointed at fresh topics); the plain confluent-kafka examples get
the session's broker and topics in place of the literals they show.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streams import events
from streams.budgets import NANOS_PER_USD, Budget, parse_budgets_yaml
from streams.processors.alerts import make_alert, spike_alert_id, threshold_alert_id
from streams.processors.stage2 import enforcement_value
from streams.sdk import build_event
from streams.serde import AvroCodec, current
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def readme_block(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.findall(rf"<!-- readme-test: {name} -->\n```\w*\n(.*?)\n```", text, re.DOTALL)
    assert len(found) == 1, f"README.md needs exactly one block marked readme-test: {name}"
    return str(found[0])


def plain_client(code: str, settings: Settings, **topics: str) -> str:
    """The example with the session's Kafka connection and topics in place of its literals."""
    connection = ", ".join(f"{k!r}: {v!r}" for k, v in settings.kafka_client_config().items())
    shown = '"bootstrap.servers": "localhost:9092"'
    assert code.count(shown) == 1
    code = code.replace(shown, connection)
    for shown_topic, topic in topics.items():
        assert code.count(f'"{shown_topic}"') == 1, shown_topic
        code = code.replace(f'"{shown_topic}"', repr(topic))
    return code


def python_env(**variables: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **variables}


def sdk_env(settings: Settings, **variables: str) -> dict[str, str]:
    """The SDK examples' settings: the session's broker, and the topics given."""
    bootstrap = settings.kafka_client_config()["bootstrap.servers"]
    return python_env(SPENDSTREAM_KAFKA_BOOTSTRAP=bootstrap, **variables)


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def read_topic(settings: Settings, topic: str, expected: int) -> list[Any]:
    """Every message of ``topic`` (one partition), waiting for ``expected`` of them."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"readme-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    found: list[Any] = []
    deadline = time.monotonic() + 60
    try:
        while len(found) < expected and time.monotonic() < deadline:
            found.extend(m for m in consumer.consume(100, timeout=0.5) if not m.error())
        found.extend(m for m in consumer.consume(100, timeout=1.0) if not m.error())
    finally:
        consumer.close()
    return found


def test_the_sdk_example_records_the_event_it_shows(kafka_settings, new_topic):
    topic = new_topic("readme.events")
    done = run(readme_block("producer"), sdk_env(kafka_settings, SPENDSTREAM_TOPIC_EVENTS=topic))
    assert done.returncode == 0, done.stderr

    (msg,) = read_topic(kafka_settings, topic, 1)
    event = AvroCodec("token_event").decode(msg.value())
    assert msg.key() == b"sess-4f1c"
    assert events.problems(event) == []
    assert (event["org_id"], event["team_id"], event["user_id"]) == ("acme", "platform", "ada")
    assert (event["input_tokens"], event["cache_read_tokens"]) == (1_200, 48_000)
    assert (event["output_tokens"], event["reasoning_tokens"]) == (900, 300)
    assert event["labels"] == {"repo": "billing", "ticket": "FIN-42"}


def test_the_otel_example_subtracts_cached_tokens(kafka_settings, new_topic):
    topic = new_topic("readme.otel")
    done = run(readme_block("otel"), sdk_env(kafka_settings, SPENDSTREAM_TOPIC_EVENTS=topic))
    assert done.returncode == 0, done.stderr

    (msg,) = read_topic(kafka_settings, topic, 1)
    event = AvroCodec("token_event").decode(msg.value())
    assert msg.key() == b"conv-7"
    assert (event["provider"], event["model"], event["task_type"]) == ("openai", "gpt-5", "chat")
    assert (event["input_tokens"], event["cache_read_tokens"]) == (2_000, 8_000)
    assert event["output_tokens"] == 500


def test_the_plain_avro_producer_writes_what_spendstream_reads(kafka_settings, new_topic):
    topic = new_topic("readme.avro")
    code = plain_client(
        readme_block("avro-producer"), kafka_settings, **{"spendstream.events": topic}
    )
    done = run(code, python_env())
    assert done.returncode == 0, done.stderr

    (msg,) = read_topic(kafka_settings, topic, 1)
    value = msg.value()
    assert value[:10] == b"\xc3\x01" + current("token_event").fingerprint
    event = AvroCodec("token_event").decode(value)  # the sink's and the worker's decoder
    assert events.problems(event) == []
    assert msg.key() == events.partition_key(event) == b"s-42"
    assert (event["input_tokens"], event["cache_write_5m_tokens"], event["labels"]) == (
        1_200,
        0,
        {},
    )


def test_the_byte_dump_is_the_encoding_of_the_event_it_describes():
    lines = readme_block("bytes").splitlines()
    shown = bytes.fromhex(" ".join(line[:37] for line in lines))
    event = build_event(
        event_id="7d3c5f0e-2b1a-4c8e-9f6d-0a1b2c3d4e5f",
        event_time=1_796_030_100_000,
        org_id="acme",
        team_id="platform",
        user_id="ada",
        session_id="s-42",
        turn=3,
        client="claude-code",
        task_type="agentic",
        provider="anthropic",
        model="claude-sonnet-4-5",
        input_tokens=1_200,
        cache_read_tokens=48_000,
        output_tokens=900,
    )
    assert shown == AvroCodec("token_event").encode(event)
    assert len(shown) == 135  # as the README says


def test_the_budgets_yaml_example_is_a_valid_budgets_file():
    budgets = {b.budget_id: b for b in parse_budgets_yaml(readme_block("budgets-yaml"))}
    assert set(budgets) == {"platform-opus", "billing-repo", "acme-burst"}
    opus = budgets["platform-opus"]
    assert (opus.team_id, opus.model, opus.mode, opus.forecast) == (
        "platform",
        "claude-opus-4-5",
        "block",
        True,
    )
    assert (opus.limit, opus.timezone) == (5_000 * NANOS_PER_USD, "Europe/Paris")
    assert budgets["billing-repo"].labels == {"repo": "billing"}
    assert (budgets["billing-repo"].unit, budgets["billing-repo"].limit) == ("tokens", 500_000_000)
    assert budgets["acme-burst"].rolling_window_s == 6 * 3600


def _alert(kind: str, alert_id: str, message: str, severity: str) -> bytes:
    record = make_alert(kind, alert_id, events.now_ms(), message, 1, severity=severity)
    return AvroCodec("budget_alert").encode(record)


def test_the_alert_consumer_prints_each_alert_once(kafka_settings, new_topic):
    topic = new_topic("readme.alerts")
    crossed = threshold_alert_id("platform-opus", "0123456789abcdef", 1_796_000_000_000, 100)
    spike = spike_alert_id("org_id=acme", 1_796_030_100_000)
    first = _alert("threshold_crossed", crossed, "budget platform-opus reached 100%", "critical")
    unknown = _alert("runaway_session", "x" * 32, "written with another schema", "critical")
    other_version = b"\xc3\x01" + b"\x00" * 8 + unknown[10:]  # a fingerprint it does not know
    producer = Producer(kafka_settings.kafka_client_config())
    for value, key in (
        (first, crossed),
        (other_version, "x" * 32),
        (first, crossed),  # the same alert again, e.g. after a worker restart
        (_alert("spend_spike", spike, "org acme spent $40 in one minute", "warning"), spike),
    ):
        producer.produce(topic, value, key.encode())
    assert producer.flush(30) == 0

    code = plain_client(readme_block("consumer"), kafka_settings, **{"spendstream.alerts": topic})
    consumer = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in consumer.stdout], daemon=True).start()
    printed = []
    try:
        # the example runs until stopped: take what it printed for the three alerts it was sent
        while len(printed) < 2:
            printed.append(lines.get(timeout=60).strip())
        time.sleep(1.0)  # anything printed after the last alert would be a repeat
        while not lines.empty():
            printed.append(lines.get().strip())
    except queue.Empty:
        pass
    finally:
        consumer.kill()
        _, errors = consumer.communicate(timeout=30)
    assert printed == [
        "threshold_crossed critical budget platform-opus reached 100%",
        "spend_spike warning org acme spent $40 in one minute",
    ], errors


def test_the_alert_decoder_example_prints_new_alerts(kafka_settings, new_topic):
    topic = new_topic("readme.decoder")
    code = plain_client(
        readme_block("alerts-decoder"), kafka_settings, **{"spendstream.alerts": topic}
    )
    consumer = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in consumer.stdout], daemon=True).start()
    producer = Producer(kafka_settings.kafka_client_config())
    printed = None
    try:
        # a new group starts at the end of the topic: send until its assignment has happened
        for n in range(60):
            record = make_alert(
                "threshold_crossed",
                f"crossed-{n}",
                events.now_ms(),
                "budget plat-day reached 100%",
                1,
                team_id="platform",
                budget_id="plat-day",
            )
            producer.produce(topic, AvroCodec("budget_alert").encode(record), f"{n}".encode())
            assert producer.flush(30) == 0
            try:
                printed = lines.get(timeout=1.0).strip()
                break
            except queue.Empty:
                continue
    finally:
        consumer.kill()
        _, errors = consumer.communicate(timeout=30)
    assert printed == "threshold_crossed platform plat-day budget plat-day reached 100%", errors


def _block(kafka_settings, new_topic, model: str) -> str:
    """A fresh enforcement topic holding the worker's block state of one budget on ``model``."""
    topic = new_topic("readme.enforcement", config={"cleanup.policy": "compact"})
    budget = Budget(
        budget_id="platform-opus",
        period="month",
        limit=5_000 * NANOS_PER_USD,
        team_id="platform",
        model=model,
        mode="block",
    )
    now = events.now_ms()
    value = enforcement_value(budget, True, now + 3_600_000, budget.limit, now - 60_000, now)
    producer = Producer(kafka_settings.kafka_client_config())
    producer.produce(topic, value, budget.budget_id.encode())
    assert producer.flush(30) == 0
    return topic


def test_the_check_example_stops_a_blocked_request_only(kafka_settings, new_topic):
    code = readme_block("check")
    blocked = _block(kafka_settings, new_topic, "claude-opus-4-5")
    done = run(code, sdk_env(kafka_settings, SPENDSTREAM_TOPIC_ENFORCEMENT=blocked))
    assert done.returncode == 1
    assert "RuntimeError: budget platform-opus is used up until" in done.stderr

    other_model = _block(kafka_settings, new_topic, "claude-sonnet-4-5")
    done = run(code, sdk_env(kafka_settings, SPENDSTREAM_TOPIC_ENFORCEMENT=other_model))
    assert done.returncode == 0, done.stderr


def test_every_marked_example_is_tested():
    marked = set(re.findall(r"<!-- readme-test: ([\w-]+) -->", (ROOT / "README.md").read_text()))
    source = Path(__file__).read_text()
    assert marked == set(re.findall(r'readme_block\("([\w-]+)"\)', source))
