"""The sink on the real Kafka and ClickHouse: exact totals in token_events and every rollup.

Each test loads 200,000 generated messages (1% re-sent duplicates, event times shuffled over
three days) and compares ClickHouse with the generator's ground truth: distinct events, every
token bucket and cost, per rollup key, and distinct sessions; across a crash between insert and
commit, repeated SIGKILLs of a `spendstream sink` process, and ClickHouse stopped for 30 s.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from streams import events
from streams.clickhouse import Target, connect
from streams.errors import SinkError
from streams.generate import Shape, generate_events
from streams.migrate import Migrator
from streams.pricing import default_catalog
from streams.sdk import TokenEventProducer
from streams.settings import Settings, env_name
from streams.sink.metrics import SinkMetrics
from streams.sink.rows import Block
from streams.sink.runner import Sink, Written
from streams.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration

MESSAGES = 200_000
DAY_MS = 86_400_000
DIMENSIONS = (
    "org_id", "team_id", "user_id", "project_id", "provider", "model", "client", "task_type",
    "status",
)  # fmt: skip
SUMS = (*events.TOKEN_FIELDS, "cost_nanos")


@dataclasses.dataclass
class Load:
    settings: Settings  # topic, group and database of this test
    sent: list[events.Event]


@pytest.fixture(scope="module")
def produced(stack_settings: Settings) -> tuple[str, list[events.Event]]:
    """200k messages on a 6-partition topic, produced once for every test of this module."""
    topic = f"test.sink.{uuid.uuid4().hex[:10]}"
    ensure_topics(stack_settings, [TopicSpec(topic, 6)])
    start = events.now_ms() - 3 * DAY_MS
    shape = Shape(orgs=3, start_ms=start, span_ms=3 * DAY_MS, duplicate_rate=0.01)
    sent = list(generate_events(MESSAGES, seed=7, shape=shape))
    with TokenEventProducer(stack_settings, topic=topic) as producer:
        for event in sent:
            producer.record(event)
    assert producer.stats.delivered == MESSAGES
    return topic, sent


@pytest.fixture
def load(
    stack_settings: Settings, new_topic: Callable[..., str], produced: tuple[str, list[Any]]
) -> Iterator[Load]:
    """The produced topic read by a fresh consumer group into a fresh, migrated database."""
    suffix = uuid.uuid4().hex[:8]
    topic, sent = produced
    settings = dataclasses.replace(
        stack_settings,
        topic_events=topic,
        topic_deadletter=new_topic("sink-dlq", partitions=1),
        clickhouse_database=f"sink_{suffix}",
        sink_group=f"sink-{suffix}",
        sink_batch_rows=10_000,
        sink_flush_seconds=0.3,
        sink_drain_seconds=10.0,
    )
    client = connect(settings)
    Migrator(client, Target.from_settings(settings)).migrate()
    yield Load(settings, sent)
    client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}`")
    client.close()


_truths: dict[int, dict[str, Any]] = {}
#: every rollup: its time column (expression for the truth) and its grouping columns
ROLLUPS = {
    "spend_hourly": ("hour", DIMENSIONS),
    "spend_daily": ("day", DIMENSIONS),
    "spend_user_hourly": ("hour", ("org_id", "team_id", "user_id")),
    "spend_user_daily": ("day", ("org_id", "team_id", "user_id")),
    "spend_team_hourly": ("hour", ("org_id", "team_id")),
    "spend_team_daily": ("day", ("org_id", "team_id")),
}


def ground_truth(sent: list[events.Event]) -> dict[str, Any]:
    """What ClickHouse must hold: first copy of each event_id, priced by the catalog."""
    if id(sent) in _truths:
        return _truths[id(sent)]
    catalog = default_catalog()
    unique: dict[str, events.Event] = {}
    for event in sent:
        unique.setdefault(event["event_id"], event)
    rollups: dict[str, dict[tuple[Any, ...], list[int]]] = {
        name: defaultdict(lambda: [0] * (len(SUMS) + 1)) for name in ROLLUPS
    }
    sessions: dict[str, set[str]] = defaultdict(set)
    totals = [0] * len(SUMS)
    for event in unique.values():
        cost = catalog.price(event).cost_nanos
        values = [event[f] for f in events.TOKEN_FIELDS] + [cost]
        times = {
            "hour": event["event_time"] // 3_600_000 * 3600,
            "day": event["event_time"] // DAY_MS,
        }
        for name, (time_column, dims) in ROLLUPS.items():
            row = rollups[name][(times[time_column], *(event[d] or "" for d in dims))]
            row[0] += 1
            for i, value in enumerate(values, 1):
                row[i] += value
        for i, value in enumerate(values):
            totals[i] += value
        if event["session_id"]:
            sessions[event["org_id"]].add(event["session_id"])
    truth = _truths[id(sent)] = {
        "events": len(unique),
        "totals": totals,
        "rollups": {name: {k: tuple(v) for k, v in rows.items()} for name, rows in rollups.items()},
        "sessions": {org: len(ids) for org, ids in sessions.items()},
    }
    return truth


def assert_exact(settings: Settings, sent: list[events.Event]) -> None:
    truth = ground_truth(sent)
    assert len(sent) - truth["events"] > 1000  # the load really re-sends ~1%
    client = connect(settings, database=settings.clickhouse_database)
    try:
        sums = ", ".join(f"sum({c})" for c in SUMS)
        row = client.query(f"SELECT count(), uniqExact(event_id), {sums} FROM token_events")
        count, distinct, *totals = row.result_rows[0]
        assert (count, distinct) == (truth["events"], truth["events"])
        assert list(totals) == truth["totals"]
        for table, (time_column, dims) in ROLLUPS.items():
            key = "toUnixTimestamp(hour)" if time_column == "hour" else "toUInt32(day)"
            query = (
                f"SELECT {key}, {', '.join(dims)}, sum(requests), "
                f"{', '.join(f'sum({c})' for c in SUMS)} FROM {table} "
                f"GROUP BY {key}, {', '.join(dims)}"
            )
            got = {
                tuple(r[: len(dims) + 1]): tuple(r[len(dims) + 1 :])
                for r in client.query(query).result_rows
            }
            assert got == truth["rollups"][table], f"{table} differs from the ground truth"
        for table in ("spend_hourly", "spend_team_daily"):
            sessions = dict(
                client.query(
                    f"SELECT org_id, uniqExactMerge(sessions) FROM {table} GROUP BY org_id"
                ).result_rows
            )
            assert sessions == truth["sessions"], table
    finally:
        client.close()


def wait_committed(settings: Settings, timeout: float = 180.0) -> None:
    """Until the sink's group has committed the end of every partition of the topic."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": settings.sink_group})
    try:
        topic = settings.topic_events
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts}
        deadline = time.monotonic() + timeout
        while True:
            try:
                committed = consumer.committed([TopicPartition(topic, p) for p in parts], 10)
            except KafkaException:  # coordinator still loading on a fresh broker
                committed = []
            if committed and all(tp.offset == ends[tp.partition] for tp in committed):
                return
            assert time.monotonic() < deadline, f"not committed: {committed} vs {ends}"
            time.sleep(0.2)
    finally:
        consumer.close()


def count_rows(settings: Settings) -> int:
    client = connect(settings, database=settings.clickhouse_database)
    try:
        return int(client.command("SELECT count() FROM token_events"))
    finally:
        client.close()


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


def test_200k_events_with_resent_duplicates_are_exact(load: Load) -> None:
    sink = SinkThread(load.settings)
    try:
        wait_committed(load.settings)
    finally:
        sink.stop()
    assert sink.error is None
    assert_exact(load.settings, load.sent)
    truth = ground_truth(load.sent)
    assert sink.metric("spendstream_sink_rows_inserted_total") == truth["events"]
    assert sink.metric("spendstream_sink_messages_total", outcome="duplicate") == (
        MESSAGES - truth["events"]
    )


class CrashAfterInsert(Sink):
    """Inserts its first blocks, then dies before committing their offsets."""

    def _commit(self, block: Block, written: Written) -> None:
        raise RuntimeError("simulated crash between insert and commit")


def test_crash_between_insert_and_commit_counts_nothing_twice(load: Load) -> None:
    crashing = SinkThread(load.settings, CrashAfterInsert)
    crashing.thread.join(60)
    assert isinstance(crashing.error, RuntimeError)
    inserted_before = count_rows(load.settings)
    assert inserted_before > 0  # its rows are in ClickHouse, its offsets are not committed
    sink = SinkThread(load.settings)
    try:
        wait_committed(load.settings)
    finally:
        sink.stop()
    assert sink.error is None
    assert_exact(load.settings, load.sent)


class WriterFailsOnSecondBlock(Sink):
    """The writer of its second block raises (a bug, say) after the first block committed."""

    blocks = 0
    failed: Block | None = None

    def _write(self, block: Block, cancel: threading.Event) -> Written | None:
        self.blocks += 1
        if self.blocks == 2:
            self.failed = block
            raise RuntimeError("simulated writer bug")
        return super()._write(block, cancel)


def test_a_failed_block_is_never_skipped_by_a_later_commit(load: Load) -> None:
    failing = SinkThread(load.settings, WriterFailsOnSecondBlock)
    failing.thread.join(120)
    assert isinstance(failing.error, SinkError)  # the sink stops instead of going on
    failed = failing.sink.failed
    assert failed is not None
    consumer = Consumer(
        {**load.settings.kafka_client_config(), "group.id": load.settings.sink_group}
    )
    try:
        topic = load.settings.topic_events
        committed = consumer.committed([TopicPartition(topic, p) for p in failed.ranges], 30)
    finally:
        consumer.close()
    for tp in committed:  # nothing at or past the failed block's first offset was committed
        assert tp.offset <= failed.ranges[tp.partition][0], (tp, failed.ranges)


def _sink_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        env_name("kafka_bootstrap"): settings.kafka_client_config()["bootstrap.servers"],
        env_name("clickhouse_url"): settings.clickhouse_http_url,
        env_name("clickhouse_database"): settings.clickhouse_database,
        env_name("topic_events"): settings.topic_events,
        env_name("topic_deadletter"): settings.topic_deadletter,
        env_name("sink_group"): settings.sink_group,
        env_name("sink_instance_id"): "sink-under-test",
        env_name("sink_batch_rows"): "5000",
        env_name("sink_flush_seconds"): "0.2",
        env_name("log_level"): "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from streams.cli import main; main()", "sink"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sigkilled_five_times_at_random_points_still_exact(load: Load) -> None:
    rng = random.Random(5)
    unique = len({e["event_id"] for e in load.sent})
    kills = 0
    for round_ in range(1, 6):
        process = _sink_process(load.settings)
        target = unique * round_ // 7  # kill points spread over the load
        deadline = time.monotonic() + 120
        while count_rows(load.settings) < target:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "the sink made no progress"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        kills += 1
    assert kills == 5
    process = _sink_process(load.settings)
    try:
        wait_committed(load.settings)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0  # SIGTERM: drained and exited cleanly
    assert_exact(load.settings, load.sent)


def test_clickhouse_stopped_30s_mid_load_sink_waits_and_catches_up(
    load: Load, local_clickhouse: Any
) -> None:
    sink = SinkThread(load.settings)
    try:
        deadline = time.monotonic() + 120
        while count_rows(load.settings) < 40_000:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        local_clickhouse.down()
        time.sleep(30)
        assert sink.thread.is_alive() and sink.error is None
        assert sink.metric("spendstream_sink_paused") == 1  # waiting, memory bounded
        local_clickhouse.up()
        wait_committed(load.settings)
    finally:
        sink.stop()
    assert sink.error is None
    assert sink.metric("spendstream_sink_clickhouse_errors_total") > 0
    assert_exact(load.settings, load.sent)
