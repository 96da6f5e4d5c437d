"""The producer SDK against the real broker: exact counts, an outside client, a broker restart."""

import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams import events
from streams.generate import Shape, generate_events
from streams.sdk import TokenEventProducer
from streams.serde import AvroCodec

pytestmark = pytest.mark.integration


def read_all(settings, topic, expected, timeout=120.0):
    """Every message of ``topic`` from the start, decoded, by a consumer of our own group."""
    codec = AvroCodec("token_event")
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"verify-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                assert msg.error() is None, msg.error()
                out.append((msg.key(), codec.decode(msg.value())))
        # nothing beyond what we expect may arrive
        out.extend((m.key(), codec.decode(m.value())) for m in consumer.consume(1000, 2.0))
    finally:
        consumer.close()
    return out


def test_100k_events_exact_and_kcat_agrees(kafka_settings, new_topic):
    topic = new_topic("events", partitions=6)
    sent = list(generate_events(100_000, seed=11, shape=Shape(orgs=1)))
    failures = []
    with TokenEventProducer(
        kafka_settings, topic=topic, on_error=lambda i, r: failures.append(i)
    ) as p:
        for event in sent:
            p.record(event)
    assert failures == []
    assert p.stats.delivered == 100_000
    assert p.stats.failed == 0

    got = read_all(kafka_settings, topic, 100_000)
    assert len(got) == 100_000
    assert Counter(e["event_id"] for _, e in got) == Counter(e["event_id"] for e in sent)
    for field in events.TOKEN_FIELDS:
        assert sum(e[field] for _, e in got) == sum(e[field] for e in sent), field
    assert sum(e["cost_nanos"] or 0 for _, e in got) == sum(e["cost_nanos"] or 0 for e in sent)
    assert all(key == events.partition_key(e) for key, e in got)

    # one org, yet every partition carries a share of it
    consumer = Consumer({**kafka_settings.kafka_client_config(), "group.id": "wm"})
    sizes = [consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in range(6)]
    consumer.close()
    assert sum(sizes) == 100_000
    assert min(sizes) > 100_000 / 6 * 0.7

    # kcat, an independent client (librdkafka C CLI), sees the same messages and keys
    bootstrap = kafka_settings.kafka_client_config()["bootstrap.servers"]
    result = subprocess.run(
        ["kcat", "-C", "-b", bootstrap, "-t", topic, "-e", "-q", "-f", "%k\n"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    kcat_keys = Counter(result.stdout.decode().splitlines())
    assert sum(kcat_keys.values()) == 100_000
    assert kcat_keys == Counter(events.partition_key(e).decode() for e in sent)


def test_broker_restart_mid_production_loses_and_duplicates_nothing(
    kafka_settings, new_topic, local_kafka
):
    topic = new_topic("restart", partitions=3)
    sent = list(generate_events(30_000, seed=12))
    restarted = threading.Event()

    def bounce():
        local_kafka.down()
        time.sleep(2)
        local_kafka.up()
        restarted.set()

    with TokenEventProducer(kafka_settings, topic=topic) as p:
        for i, event in enumerate(sent):
            p.record(event)
            if i == 10_000:
                p.flush(30)
                bouncer = threading.Thread(target=bounce)
                bouncer.start()
                time.sleep(0.5)  # the broker is going down while we keep recording
        bouncer.join(timeout=180)
        assert restarted.is_set()
        assert p.flush(120) == 0
    assert p.stats.failed == 0
    assert p.stats.delivered == 30_000

    got = read_all(kafka_settings, topic, 30_000)
    ids = Counter(e["event_id"] for _, e in got)
    assert len(got) == 30_000, "lost or duplicated across the broker restart"
    assert set(ids) == {e["event_id"] for e in sent}
    assert max(ids.values()) == 1
