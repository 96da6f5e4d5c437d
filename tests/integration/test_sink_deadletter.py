"""Malformed messages of every kind go to the dead-letter topic; the sink keeps running."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from streams import events
from streams.clickhouse import Target, connect
from streams.deadletter import DeadLetter
from streams.generate import generate_events
from streams.migrate import Migrator
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.sink.metrics import SinkMetrics
from streams.sink.runner import Sink

pytestmark = pytest.mark.integration


def malformed(codec: AvroCodec, good: dict[str, Any]) -> list[tuple[str, bytes | None, str]]:
    """(kind, value, expected reason fragment) for each way a message can be bad."""
    valid = codec.encode(good)

    def invalid(**changes: Any) -> bytes:
        return codec.encode({**good, "event_id": str(uuid.uuid4()), **changes})

    return [
        ("decode", b"\x7fnot avro at all", "unknown framing byte"),
        ("decode", b"", "empty message"),
        ("decode", None, "empty message"),
        ("decode", b"\xc3\x01" + b"\x00" * 8 + valid[10:], "unknown schema fingerprint"),
        ("decode", b"\xc3\x01\x01", "truncated single-object header"),
        ("decode", valid[:40], "truncated"),
        ("decode", valid + b"\x00\x00", "trailing bytes"),
        ("decode", b"\x00\x00\x00\x00\x07" + valid[10:], "unknown Confluent schema id 7"),
        ("invalid", invalid(input_tokens=-5), "input_tokens is negative"),
        ("invalid", invalid(event_time=events.now_ms() + 86_400_000), "in the future"),
        ("invalid", invalid(event_id="not-a-uuid"), "is not a UUID"),
        ("invalid", invalid(org_id=" "), "org_id is missing or empty"),
        ("invalid", invalid(output_tokens=1, reasoning_tokens=5), "reasoning_tokens exceed"),
        ("invalid", invalid(cost_nanos=-1), "cost_nanos must be a non-negative"),
    ]


def test_every_malformed_kind_is_dead_lettered_with_its_reason(
    stack_settings: Settings, new_topic: Callable[..., str]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        stack_settings,
        topic_events=new_topic("sink-bad", partitions=2),
        topic_deadletter=new_topic("sink-bad-dlq", partitions=1),
        clickhouse_database=f"dlq_{suffix}",
        sink_group=f"dlq-{suffix}",
        sink_flush_seconds=0.2,
    )
    client = connect(settings)
    Migrator(client, Target.from_settings(settings)).migrate()
    codec = AvroCodec("token_event")
    good = list(generate_events(300, seed=3))
    bad = malformed(codec, good[0])
    producer = Producer(settings.kafka_client_config())
    expected: dict[bytes, tuple[str, bytes | None, str]] = {}
    for i, event in enumerate(good):
        producer.produce(settings.topic_events, codec.encode(event), f"good-{i}".encode())
        if i % 20 == 0 and bad:  # bad messages spread among good ones
            kind, value, reason = bad.pop()
            key = f"bad-{len(expected)}".encode()
            expected[key] = (kind, value, reason)
            producer.produce(settings.topic_events, value, key)
    assert not bad
    producer.flush(30)

    registry = CollectorRegistry()
    sink = Sink(settings, metrics=SinkMetrics(registry))
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    try:
        dead = read_topic(settings, settings.topic_deadletter, len(expected))
        deadline = time.monotonic() + 60
        while (
            client.command(f"SELECT count() FROM `{settings.clickhouse_database}`.token_events")
            < 300
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert thread.is_alive()  # the sink never crashed on input
    finally:
        sink.stop()
        thread.join(30)
    assert len(dead) == len(expected)
    by_kind: dict[str, int] = {}
    for key, value, headers in dead:
        kind, original, reason = expected[key]
        letter = DeadLetter.from_headers(headers)
        assert (value or b"") == (original or b"")  # the original bytes, untouched
        assert (letter.kind, letter.stage, letter.topic) == (kind, "sink", settings.topic_events)
        assert reason in letter.reason, (reason, letter.reason)
        assert letter.partition >= 0 and letter.offset >= 0
        by_kind[kind] = by_kind.get(kind, 0) + 1
    for kind, count in by_kind.items():
        assert (
            registry.get_sample_value("spendstream_sink_deadlettered_total", {"kind": kind})
            == count
        )
    assert (
        client.command(f"SELECT count() FROM `{settings.clickhouse_database}`.token_events") == 300
    )
    client.command(f"DROP DATABASE `{settings.clickhouse_database}`")
    client.close()


def read_topic(settings: Settings, topic: str, expected: int) -> list[tuple[bytes, Any, Any]]:
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"read-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[tuple[bytes, Any, Any]] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.5):
                if message.error() is None:
                    out.append((message.key(), message.value(), message.headers()))
        out.extend((m.key(), m.value(), m.headers()) for m in consumer.consume(100, 1.0))
    finally:
        consumer.close()
    return out
