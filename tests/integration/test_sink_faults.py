"""The sink under hostile input and faults (issue 13's sink rows), on the real Kafka and ClickHouse.

Each test reads its own small topic into its own migrated database: ids ClickHouse cannot
parse, rows ClickHouse refuses, the broker's clock, shutdown and rebalances with an insert in
flight, dedup through the views, the metrics address, SIGTERM while stuck, SIGKILL and restart.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
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
CODEC = AvroCodec("token_event")


@dataclasses.dataclass
class Env:
    settings: Settings
    client: Any  # clickhouse-connect client on the test's database

    def count(self, where: str = "1") -> int:
        return int(self.client.command(f"SELECT count() FROM token_events WHERE {where}"))

    def produce(self, values: list[tuple[bytes | None, bytes | None, int | None]]) -> None:
        """(key, value, CreateTime or None) per message, in order."""
        producer = Producer(self.settings.kafka_client_config())
        for key, value, stamp in values:
            extra = {"timestamp": stamp} if stamp is not None else {}
            producer.produce(self.settings.topic_events, value, key, **extra)
        assert producer.flush(30) == 0


def make_env(
    stack_settings: Settings,
    new_topic: Callable[..., str],
    partitions: int = 2,
    topic_config: dict[str, str] | None = None,
    **changes: Any,
) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        stack_settings,
        topic_events=new_topic("faults", partitions=partitions, config=topic_config),
        topic_deadletter=new_topic("faults-dlq", partitions=1),
        clickhouse_database=f"faults_{suffix}",
        sink_group=f"faults-{suffix}",
        sink_flush_seconds=0.2,
        sink_drain_seconds=5.0,
        **changes,
    )
    admin = connect(settings)
    Migrator(admin, Target.from_settings(settings)).migrate()
    client = connect(settings, database=settings.clickhouse_database)
    try:
        yield Env(settings, client)
    finally:
        client.close()
        admin.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}`")
        admin.close()


@pytest.fixture
def env(stack_settings: Settings, new_topic: Callable[..., str]) -> Iterator[Env]:
    yield from make_env(stack_settings, new_topic)


class SinkThread:
    """An in-process sink on its own thread, with its own metrics registry."""

    def __init__(self, settings: Settings, sink_type: type[Sink] = Sink) -> None:
        self.registry = CollectorRegistry()
        self.sink = sink_type(settings, metrics=SinkMetrics(self.registry))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sink.run()
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout: float = 60.0) -> None:
        self.sink.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the sink did not stop"

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def wait_committed(settings: Settings, timeout: float = 60.0) -> None:
    """Until the sink's group has committed the end of every partition of its topic."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": settings.sink_group})
    try:
        topic = settings.topic_events
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts}
        deadline = time.monotonic() + timeout
        while True:
            try:
                committed = consumer.committed([TopicPartition(topic, p) for p in parts], 10)
            except KafkaException:
                committed = []
            if committed and all(tp.offset == ends[tp.partition] for tp in committed):
                return
            assert time.monotonic() < deadline, f"not committed: {committed} vs {ends}"
            time.sleep(0.2)
    finally:
        consumer.close()


def read_dead_letters(settings: Settings, expected: int, timeout: float = 30.0) -> list[Any]:
    """(key, value, DeadLetter) of the dead-letter topic: ``expected`` of them, then 1 s more."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"read-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    topic = settings.topic_deadletter
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(m for m in consumer.consume(100, 0.5) if m.error() is None)
        out.extend(m for m in consumer.consume(100, 1.0) if m.error() is None)
    finally:
        consumer.close()
    return [(m.key(), m.value(), DeadLetter.from_headers(m.headers())) for m in out]


# -- row 1: ids ClickHouse cannot parse ------------------------------------------------------


def _misplace_dash(event_id: str) -> str:
    """36 characters that uuid.UUID accepts and ClickHouse refuses."""
    return event_id[:8] + event_id[9] + "-" + event_id[10:]


def test_ids_clickhouse_cannot_parse_are_dead_lettered_and_the_sink_goes_on(env: Env) -> None:
    good = list(generate_events(400, seed=11))
    messages: list[tuple[bytes | None, bytes | None, int | None]] = []
    bad_keys: set[bytes] = set()
    for i, event in enumerate(good):
        messages.append((f"good-{i}".encode(), CODEC.encode(event), None))
        if i % 40 == 0:  # ten misplaced-dash ids among them
            bad = dict(event, event_id=_misplace_dash(str(uuid.uuid4())))
            uuid.UUID(bad["event_id"])  # what the sink used to accept
            key = f"bad-{i}".encode()
            bad_keys.add(key)
            messages.append((key, CODEC.encode(bad), None))
    # other spellings ClickHouse reads of ids already sent: stored once, in canonical form
    for event in good[:5]:
        messages.append(
            (b"upper", CODEC.encode(dict(event, event_id=event["event_id"].upper())), None)
        )
        hexed = event["event_id"].replace("-", "")
        messages.append((b"hex", CODEC.encode(dict(event, event_id=hexed)), None))
    env.produce(messages)
    sink = SinkThread(env.settings)
    try:
        wait_committed(env.settings)  # did not stall on the ids ClickHouse refuses
        assert sink.thread.is_alive() and sink.error is None
    finally:
        sink.stop()
    assert sink.error is None
    assert env.count() == len(good)
    stored = {
        r[0] for r in env.client.query("SELECT toString(event_id) FROM token_events").result_rows
    }
    assert stored == {e["event_id"] for e in good}
    dead = read_dead_letters(env.settings, len(bad_keys))
    assert {key for key, _, _ in dead} == bad_keys
    for _, _, letter in dead:
        assert letter.kind == "invalid" and "is not a UUID" in letter.reason, letter.reason
    assert sink.metric("spendstream_sink_deadlettered_total", kind="invalid") == len(bad_keys)


# -- row 7: the broker's clock ---------------------------------------------------------------


@pytest.fixture
def create_time_env(stack_settings: Settings, new_topic: Callable[..., str]) -> Iterator[Env]:
    yield from make_env(
        stack_settings, new_topic, topic_config={"message.timestamp.type": "CreateTime"}
    )


def test_the_future_bound_uses_each_records_broker_timestamp(create_time_env: Env) -> None:
    env = create_time_env
    now = events.now_ms()
    hour = 3_600_000
    base = list(generate_events(40, seed=12))
    # (event_time, record timestamp, valid by the record's clock: what the worker decides)
    cases = [
        (now + 5 * 60_000, now - hour, False),  # 65 min after its record: invalid, as appended
        (now + 20 * 60_000, now + 15 * 60_000, True),  # 5 min after its record: valid
        (now - 3 * hour, now - 2 * hour, True),  # a replayed backlog, valid when appended
        (now - 2 * hour + 11 * 60_000, now - 2 * hour, False),
    ]
    messages: list[tuple[bytes | None, bytes | None, int | None]] = []
    expected_ok: set[str] = set()
    expected_dead: set[bytes] = set()
    for i, event in enumerate(base):
        event_time, stamp, ok = cases[i % len(cases)]
        changed = dict(event, event_time=event_time)
        assert (not events.problems(changed, stamp)) == ok  # the worker's rule
        key = f"case-{i}".encode()
        messages.append((key, CODEC.encode(changed), stamp))
        if ok:
            expected_ok.add(event["event_id"])
        else:
            expected_dead.add(key)
    env.produce(messages)
    sink = SinkThread(env.settings)
    try:
        wait_committed(env.settings)
    finally:
        sink.stop()
    assert sink.error is None
    stored = {
        r[0] for r in env.client.query("SELECT toString(event_id) FROM token_events").result_rows
    }
    assert stored == expected_ok
    dead = read_dead_letters(env.settings, len(expected_dead))
    assert {key for key, _, _ in dead} == expected_dead
    assert all("in the future" in letter.reason for _, _, letter in dead)
