"""The sink under hostile input and faults (issue 13's sink rows), on the real Kafka and ClickHouse.

Each test reads its own small topic into its own migrated database: ids ClickHouse cannot
parse, rows ClickHouse refuses, the broker's clock, shutdown and rebalances with an insert in
flight, dedup through the views, the metrics address, SIGTERM while stuck, SIGKILL and restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import signal
import subprocess
import sys
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
from streams.errors import SinkError
from streams.generate import generate_events
from streams.local._common import free_ports
from streams.migrate import Migrator
from streams.serde import AvroCodec
from streams.settings import Settings, env_name
from streams.sink.metrics import SinkMetrics
from streams.sink.runner import Sink
from streams.sink.store import EventStore
from tests.integration.test_sink_exactly_once import ROLLUPS

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


# -- row 1 (continued): rows ClickHouse refuses, errors that cannot get better ---------------


def test_rows_clickhouse_refuses_are_dead_lettered_and_the_rest_stored_once(env: Env) -> None:
    # A value our validator accepts and this table refuses: ClickHouse's own verdict (code 469)
    env.client.command("ALTER TABLE token_events ADD CONSTRAINT refuse CHECK model != 'refuse-me'")
    good = list(generate_events(300, seed=21))
    messages: list[tuple[bytes | None, bytes | None, int | None]] = []
    bad_keys: set[bytes] = set()
    for i, event in enumerate(good):
        messages.append((f"good-{i}".encode(), CODEC.encode(event), None))
        if i % 100 == 50:
            key = f"bad-{i}".encode()
            bad = dict(event, event_id=str(uuid.uuid4()), model="refuse-me")
            assert not events.problems(bad, events.now_ms())
            bad_keys.add(key)
            messages.append((key, CODEC.encode(bad), None))
    env.produce(messages)
    sink = SinkThread(env.settings)
    try:
        wait_committed(env.settings)  # before: the insert was retried forever
        assert sink.thread.is_alive() and sink.error is None
    finally:
        sink.stop()
    assert sink.error is None
    assert env.count() == len(good)
    assert env.count("model = 'refuse-me'") == 0
    assert int(env.client.command("SELECT uniqExact(event_id) FROM token_events")) == len(good)
    # the bisection's retries reached no rollup twice
    assert int(env.client.command("SELECT sum(requests) FROM spend_hourly")) == len(good)
    dead = read_dead_letters(env.settings, len(bad_keys))
    assert {key for key, _, _ in dead} == bad_keys
    for _, value, letter in dead:
        assert letter.kind == "rejected" and letter.stage == "sink"
        assert "469 (VIOLATED_CONSTRAINT)" in letter.reason and "refuse-me" in letter.reason
        assert "http://" not in letter.reason
        assert CODEC.decode(value)["model"] == "refuse-me"  # the original bytes
    assert sink.metric("spendstream_sink_deadlettered_total", kind="rejected") == len(bad_keys)


def test_an_error_retrying_cannot_fix_stops_the_sink_with_one_clear_error(env: Env) -> None:
    env.client.command("RENAME TABLE token_events TO token_events_elsewhere")
    env.produce([(b"k", CODEC.encode(e), None) for e in generate_events(20, seed=22)])
    sink = SinkThread(env.settings)
    sink.thread.join(60)  # before: retried forever
    assert not sink.thread.is_alive()
    assert isinstance(sink.error, SinkError)
    message = str(sink.error)
    assert "ClickHouse refused the sink's insert" in message and "error 60" in message
    assert "spendstream migrate" in message
    assert "http://" not in message


# -- row 3: dedup of a retried block through the views ---------------------------------------


def test_every_insert_dedups_through_the_views_and_startup_checks_the_server(env: Env) -> None:
    store = EventStore.connect(env.settings)
    try:
        assert store._insert_settings["insert_deduplicate"] == 1
        assert store._insert_settings["deduplicate_blocks_in_dependent_materialized_views"] == 1
        store.check_dedup(f"ok-{uuid.uuid4()}")  # this server dedups through the views
        # a server where the views are not deduplicated (the default of some 24.x-25.x
        # releases): a retried block is counted twice in the view, and the check says so
        store._insert_settings["deduplicate_blocks_in_dependent_materialized_views"] = 0
        with pytest.raises(SinkError, match="does not deduplicate a retried insert"):
            store.check_dedup(f"off-{uuid.uuid4()}")
    finally:
        store.close()


# -- row 2: shutdown or rebalance while an insert is in flight -------------------------------

#: a slow insert: ClickHouse checks a table's constraints on each block before the table or any
#: view gets it, so while these sleep nothing of the insert is stored (and KILL QUERY stops a
#: sleep); 8 x 2.5 s is far past the drain bound of 5 s
SLOW_CONSTRAINTS = 8
SLOW_SECONDS = 2.5


def _inserts_running(client: Any, database: str) -> list[tuple[str, float]]:
    """(query_id, seconds running) of the inserts into ``database``.token_events now."""
    rows = client.query(
        "SELECT query_id, elapsed FROM system.processes WHERE query_kind = 'Insert' "
        "AND position(query, {db:String}) > 0 AND position(query, 'token_events') > 0",
        parameters={"db": database},
    ).result_rows
    return [(row[0], float(row[1])) for row in rows]


class WatchedSink(Sink):
    """A real sink that, at its first lookup after each assignment, asks ClickHouse (on a
    client of the test's) which inserts into token_events are running that started before
    that assignment: none may be, or such an insert of the previous owner can land after the
    lookup under another dedup token. (Inserts started since, by any sink, are of the new
    generation: each sink's own partitions.)"""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.at_first_lookup: list[list[str]] = []
        self.assigned: list[list[int]] = []
        self._assigned_at = 0.0
        self._fresh = threading.Event()
        self._watch = connect(settings)
        lookup = self.store.existing

        def existing(data: bytes) -> set[str]:
            if self._fresh.is_set():
                self._fresh.clear()
                since = time.monotonic() - self._assigned_at
                running = _inserts_running(self._watch, settings.clickhouse_database)
                # 0.5 s for the two clocks; the old owner's insert started seconds earlier
                self.at_first_lookup.append([q for q, took in running if took > since + 0.5])
            return lookup(data)

        self.store.existing = existing  # type: ignore[method-assign]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_assign(consumer, partitions)
        self.assigned.append([p.partition for p in partitions])
        if partitions:
            self._assigned_at = time.monotonic()
            self._fresh.set()


def _wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("handover", ["shutdown", "rebalance"])
def test_partitions_change_hands_only_after_the_insert_in_flight_is_gone(
    env: Env, handover: str
) -> None:
    """Before: the drain gave up at its bound and released the partitions with the insert
    still running on ClickHouse; the next owner's lookup did not see its rows, inserted them
    under its own token, and the old insert landed after: every row twice in token_events and
    in every rollup. Now the drain kills its inserts and waits until system.processes shows
    none (and each new owner kills what another sink left running before its lookup)."""
    first = list(generate_events(200, seed=27))
    second = list(generate_events(200, seed=28))
    env.produce([(f"a{i}".encode(), CODEC.encode(e), None) for i, e in enumerate(first)])
    for i in range(SLOW_CONSTRAINTS):
        env.client.command(
            f"ALTER TABLE token_events ADD CONSTRAINT slow{i} CHECK sleep({SLOW_SECONDS}) = 0"
        )
    watch = connect(env.settings)
    db = env.settings.clickhouse_database
    old = SinkThread(env.settings, WatchedSink)
    new: SinkThread | None = None
    try:
        _wait_until("an insert in flight", lambda: bool(_inserts_running(watch, db)), 60)
        in_flight = _inserts_running(watch, db)
        started = time.monotonic()
        if handover == "shutdown":
            old.stop()
            stopped = time.monotonic() - started
            assert stopped < env.settings.sink_drain_seconds + 5.0, stopped
            env.produce([(f"b{i}".encode(), CODEC.encode(e), None) for i, e in enumerate(second)])
            new = SinkThread(env.settings, WatchedSink)
            sinks = [new]
        else:
            assert isinstance(old.sink, WatchedSink)
            before = len(old.sink.assigned)
            env.produce([(f"b{i}".encode(), CODEC.encode(e), None) for i, e in enumerate(second)])
            new = SinkThread(env.settings, WatchedSink)
            sinks = [old, new]
            watched = (old.sink, new.sink)

            def both_assigned() -> bool:
                mine, theirs = (w.assigned for w in watched if isinstance(w, WatchedSink))
                return len(mine) > before and bool(mine[-1]) and bool(theirs and theirs[-1])

            # the old owner was revoked (and drained), then each got a partition
            _wait_until("both assigned", both_assigned, 90)
        # from here on inserts may be quick: the one in flight keeps the metadata it started with
        for i in range(SLOW_CONSTRAINTS):
            env.client.command(f"ALTER TABLE token_events DROP CONSTRAINT slow{i}")
        wait_committed(env.settings, timeout=120)
        for sink in sinks:
            sink.stop()
            assert sink.error is None, sink.error
        # an insert the old owner left running lands when its sleeps end: wait for it
        _wait_until("no insert running", lambda: not _inserts_running(watch, db), 60)
        lookups = [
            seen
            for s in (old, new)
            if s is not None and isinstance(s.sink, WatchedSink)
            for seen in s.sink.at_first_lookup
        ]
    finally:
        for sink in (old, new):
            if sink is not None and sink.thread.is_alive():
                sink.sink.stop()
                sink.thread.join(60)
        with contextlib.suppress(Exception):
            for i in range(SLOW_CONSTRAINTS):
                env.client.command(f"ALTER TABLE token_events DROP CONSTRAINT IF EXISTS slow{i}")
        watch.close()
    total = len(first) + len(second)
    counts = {
        "token_events": env.count(),
        "distinct event_ids": int(
            env.client.command("SELECT uniqExact(event_id) FROM token_events")
        ),
        **{t: int(env.client.command(f"SELECT sum(requests) FROM {t}")) for t in ROLLUPS},
    }
    print(
        f"\n{handover} with an insert in flight ({in_flight}): rows {counts}; running inserts "
        f"at each first lookup after an assignment: {lookups}; load {os.getloadavg()}"
    )
    assert counts == dict.fromkeys(counts, total), counts
    assert lookups and all(not running for running in lookups), lookups


# -- rows 2, 4, 5: the metrics address; SIGTERM while ClickHouse is paused mid-insert ---------


def _sink_process(settings: Settings, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        env_name("home"): str(settings.home),
        env_name("kafka_bootstrap"): settings.kafka_client_config()["bootstrap.servers"],
        env_name("clickhouse_url"): settings.clickhouse_http_url,
        env_name("clickhouse_database"): settings.clickhouse_database,
        env_name("topic_events"): settings.topic_events,
        env_name("topic_deadletter"): settings.topic_deadletter,
        env_name("sink_group"): settings.sink_group,
        env_name("sink_flush_seconds"): "0.2",
        env_name("sink_drain_seconds"): str(settings.sink_drain_seconds),
        env_name("log_level"): "INFO",
        **{env_name(k): v for k, v in extra.items()},
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from streams.cli import main; main()", "sink", "--no-records"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _listening(port: int) -> set[str]:
    """The local addresses listening on TCP ``port`` (from /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as table:
            for line in table.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    if len(address) == 8:
                        found.add(str(ipaddress.IPv4Address(bytes.fromhex(address)[::-1])))
                    else:
                        found.add(address)
    return found


def _wait_rows(env: Env, expected: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while env.count() < expected:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode() if process.stderr else "died")
        assert time.monotonic() < deadline, f"{env.count()} of {expected} rows"
        time.sleep(0.1)


def test_sigterm_with_clickhouse_paused_mid_insert_stops_within_the_drain_bound(
    env: Env, local_clickhouse: Any
) -> None:
    (port,) = free_ports(1)
    first = list(generate_events(200, seed=23))
    env.produce([(f"a{i}".encode(), CODEC.encode(e), None) for i, e in enumerate(first)])
    process = _sink_process(env.settings, metrics_port=str(port))
    paused = False
    try:
        _wait_rows(env, len(first), process, 90)
        assert _listening(port) == {"127.0.0.1"}  # row 4: loopback unless told otherwise
        pid = local_clickhouse.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # a network pause: requests hang, nothing is refused
        paused = True
        second = list(generate_events(200, seed=24))
        env.produce([(f"b{i}".encode(), CODEC.encode(e), None) for i, e in enumerate(second)])
        time.sleep(2.0)  # the next block's fence, lookup or insert now hangs on ClickHouse
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        bound = env.settings.sink_drain_seconds + 5.0  # the drain, then closing
        try:
            process.wait(bound)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {bound:.0f} s after SIGTERM") from None
        took = time.monotonic() - started
        print(
            f"\nSIGTERM with ClickHouse paused: stopped in {took:.1f} s "
            f"(drain bound {env.settings.sink_drain_seconds:.0f} s), load {os.getloadavg()}"
        )
    finally:
        if paused:
            os.kill(local_clickhouse.pid() or 0, signal.SIGCONT)
        if process.poll() is None:
            process.kill()
            process.wait(10)
    # the next owner (after ClickHouse is back) stores the rest, each event once
    sink = SinkThread(env.settings)
    try:
        wait_committed(env.settings, timeout=90)
    finally:
        sink.stop()
    assert sink.error is None
    assert env.count() == len(first) + len(second)
    assert int(env.client.command("SELECT sum(requests) FROM spend_hourly")) == env.count()


# -- row 6: a SIGKILLed sink restarted resumes its partitions within seconds ------------------


@pytest.fixture
def three_partitions(stack_settings: Settings, new_topic: Callable[..., str]) -> Iterator[Env]:
    yield from make_env(stack_settings, new_topic, partitions=3)


def test_a_sigkilled_sink_restarted_resumes_its_partitions_within_seconds(
    three_partitions: Env,
) -> None:
    env = three_partitions
    first = list(generate_events(150, seed=25))
    env.produce([(f"a{i}".encode(), CODEC.encode(e), None) for i, e in enumerate(first)])
    process = _sink_process(env.settings)  # no instance id set: the default
    try:
        _wait_rows(env, len(first), process, 90)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        second = list(generate_events(150, seed=26))
        env.produce([(f"b{i}".encode(), CODEC.encode(e), None) for i, e in enumerate(second)])
        started = time.monotonic()
        process = _sink_process(env.settings)
        # before: ~85 s with three partitions waiting for the dead member's session to expire
        _wait_rows(env, len(first) + len(second), process, 40)
        took = time.monotonic() - started
        print(
            f"\nSIGKILLed sink restarted: all partitions consumed again {took:.1f} s after "
            f"the restart (process start included), load {os.getloadavg()}"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert env.count() == len(first) + len(second)
