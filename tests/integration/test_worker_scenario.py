"""A scripted stretch of a day for three orgs, through real `spendstream worker` processes
beside a real `spendstream sink`.

Ground truth is known by construction: reported costs, one intentional runaway session, one
intentional spend spike, a block-mode team, a budget created mid-stream whose earlier spend
the worker reads from ClickHouse once the sink has written it, a late event older than the
worker's id memory (its dedup is asked of ClickHouse), re-sent duplicates and garbage. The
records carry their arrival times (the events topic uses CreateTime here, so that two and a
half hours of traffic arrive in seconds, each record stamped as if it had arrived live). The
worker must raise exactly the expected alerts (checked by their deterministic ids, read with
kcat as an outside client), also when SIGKILLed and restarted in the middle, and two workers
must give the same result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from streams.budgets import Budget, budget_from_spec, publish
from streams.clickhouse import Target, connect
from streams.deadletter import DeadLetter
from streams.errors import DecodeError
from streams.events import from_epoch_ms, now_ms, partition_key
from streams.migrate import Migrator
from streams.processors.alerts import (
    forecast_alert_id,
    runaway_alert_id,
    spike_alert_id,
    threshold_alert_id,
)
from streams.processors.periods import MINUTE_MS, calendar_period
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics
from streams.worker import partials_topic, worker_topics

pytestmark = pytest.mark.integration

CODEC = AvroCodec("token_event")
ALERTS = AvroCodec("budget_alert")
ROLLUPS = AvroCodec("rollup_1m")
PARTITIONS = 4
USD = 1_000_000_000
CENT = USD // 100


def _noon_zone(now: int) -> str:
    """A fixed-offset zone where it is about noon now, so that the scripted hours and their
    day and month periods never straddle a local midnight whenever the test runs."""
    hour = from_epoch_ms(now).hour
    offset = 12 - hour  # local = utc + offset; Etc/GMT signs are inverted
    offset = max(-12, min(12, offset if offset <= 12 else offset - 24))
    return "UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def _event(t: int, org: str, team: str, user: str, cost: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_time": t,
        "org_id": org,
        "team_id": team,
        "user_id": user,
        "project_id": None,
        "api_key_id": None,
        "session_id": None,
        "turn": None,
        "client": "claude-code",
        "task_type": "agentic",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "input_tokens": 1000,
        "cache_read_tokens": 0,
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 0,
        "output_tokens": 100,
        "reasoning_tokens": 0,
        "cost_nanos": cost,
        "status": "ok",
        "labels": {},
    }
    base.update(fields)
    return base


Message = tuple[bytes | None, bytes, int]  # key, value, arrival (the record's timestamp)


@dataclasses.dataclass
class Scenario:
    settings: Settings
    budgets: list[Budget]  # known from the start
    later: Budget  # published once the first part is counted: it starts from ClickHouse
    first: list[Message]  # produced before the budget appears (and before the crash)
    second: list[Message]
    expected: dict[str, str]  # alert id -> kind
    dead_expected: dict[str, int]  # dead-letter kind -> count
    unique: int  # valid events once each: what ClickHouse must hold


def build_scenario(settings: Settings) -> Scenario:
    sfx = settings.worker_id[-8:]  # ClickHouse is shared by the session's tests: own orgs
    acme, bolt, cove = f"acme-{sfx}", f"bolt-{sfx}", f"cove-{sfx}"
    now = now_ms()
    zone = _noon_zone(now)
    start = now - 150 * MINUTE_MS
    start -= start % MINUTE_MS
    day = calendar_period(now, "day", zone)
    assert day.start <= start, "the scripted hours must lie inside one local day"

    events: list[dict[str, Any]] = []
    # steady traffic: every minute for 150 minutes, 2 events per org, fixed costs
    for m in range(150):
        t = start + m * MINUTE_MS + 1_000
        events.append(_event(t, acme, f"{acme}-web", "ana", 40 * CENT))
        events.append(_event(t + 500, acme, f"{acme}-data", "bo", 20 * CENT))
        events.append(_event(t + 1_000, bolt, f"{bolt}-platform", "cy", 30 * CENT))
        events.append(_event(t + 1_500, bolt, f"{bolt}-ml", "di", 10 * CENT))
        events.append(_event(t + 2_000, cove, f"{cove}-core", "ed", 25 * CENT))
    # cove spends 20x its usual minute once (spike), at minute 100
    spike_minute = start + 100 * MINUTE_MS
    events.extend(
        _event(spike_minute + 5_000 + i, cove, f"{cove}-core", "ed", 50 * CENT) for i in range(20)
    )
    # a runaway agent session in acme: context re-sent and growing every turn
    session = "sess-runaway"
    for turn in range(1, 13):
        events.append(
            _event(
                start + (40 + turn) * MINUTE_MS + 7_000,
                acme,
                f"{acme}-web",
                "ana",
                1 * CENT,
                session_id=session,
                turn=turn,
                input_tokens=20_000 * turn,
                cache_read_tokens=20_000 * turn,
            )
        )
    events.sort(key=lambda e: e["event_time"])
    # probes on one partition (same session key): late events, one older than the worker's
    # id memory (10 minutes): the worker asks ClickHouse whether the sink kept it
    probe_t = start + 120 * MINUTE_MS
    probe = [
        _event(probe_t, bolt, f"{bolt}-ml", "di", 1, session_id="probe", turn=1),
        _event(probe_t - 20 * MINUTE_MS, bolt, f"{bolt}-ml", "di", 1, session_id="probe", turn=2),
        _event(probe_t - 2 * MINUTE_MS, bolt, f"{bolt}-ml", "di", 1, session_id="probe", turn=3),
    ]
    messages: list[Message] = []
    probe_index = next(i for i, e in enumerate(events) if e["event_time"] > probe_t + MINUTE_MS)
    ordered = events[:probe_index] + probe + events[probe_index:]
    arrival = 0
    for e in ordered:
        # each record arrives 1.5 s after its event, in order (the late probes: when sent)
        arrival = max(arrival, e["event_time"] + 1_500)
        messages.append((partition_key(e), CODEC.encode(e), arrival))
    # re-sent duplicates (same key, same bytes) spread through the stream, one of them re-sent
    # only after the id left the worker's memory
    for i in range(0, len(ordered), 37):
        dup = ordered[i]
        at = min(len(messages), i + 3)
        messages.insert(at, (partition_key(dup), CODEC.encode(dup), messages[at - 1][2]))
    messages.insert(300, (b"garbage", b"\xc3\x01not-avro-at-all", messages[299][2]))
    bad = _event(start + 50 * MINUTE_MS, acme, "a", "b", 1, input_tokens=-5)
    messages.insert(500, (b"bad", CODEC.encode(bad), messages[499][2]))
    created = start + 110 * MINUTE_MS + 30_000  # cove's budget appears after most spend
    half = next(i for i, m in enumerate(messages) if m[2] > created)
    old = ordered[5]  # re-sent an hour later: in ClickHouse already, not in memory
    messages.insert(half + 100, (partition_key(old), CODEC.encode(old), messages[half + 99][2]))

    # budgets (limits chosen from the known totals: every valid event counts, late ones too)
    spend: dict[str, int] = {}
    for e in ordered:
        spend[e["org_id"]] = spend.get(e["org_id"], 0) + e["cost_nanos"]
        spend[e["team_id"]] = spend.get(e["team_id"], 0) + e["cost_nanos"]
    long_ago = start - 40 * 24 * 60 * MINUTE_MS
    acme_budget = budget_from_spec(
        {
            "id": "acme-day",
            "scope": {"org": acme},
            "period": "day",
            "timezone": zone,
            "limit_usd": str(spend[acme] * 100 // 90 / USD),
            "forecast": True,
        },
        now_ms=long_ago,
    )
    bolt_budget = budget_from_spec(
        {
            "id": "bolt-platform-block",
            "scope": {"org": bolt, "team": f"{bolt}-platform"},
            "period": "month",
            "timezone": zone,
            "mode": "block",
            "limit_usd": str(spend[f"{bolt}-platform"] * 100 // 120 / USD),
        },
        now_ms=long_ago,
    )
    cove_budget = budget_from_spec(
        {
            "id": "cove-month",
            "scope": {"org": cove},
            "period": "month",
            "timezone": zone,
            "limit_usd": str(spend[cove] * 100 // 85 / USD),
        },
        now_ms=created,
    )

    month = calendar_period(now, "month", zone)

    def threshold(budget: Budget, start: int, pct: int) -> str:
        return threshold_alert_id(budget.budget_id, budget.definition_version, start, pct)

    expected = {
        threshold(acme_budget, day.start, 50): "threshold_crossed",
        threshold(acme_budget, day.start, 80): "threshold_crossed",
        forecast_alert_id("acme-day", acme_budget.definition_version, day.start): (
            "forecast_breach"
        ),
        threshold(bolt_budget, month.start, 50): "threshold_crossed",
        threshold(bolt_budget, month.start, 80): "threshold_crossed",
        threshold(bolt_budget, month.start, 100): "threshold_crossed",
        threshold(cove_budget, month.start, 50): "threshold_crossed",
        threshold(cove_budget, month.start, 80): "threshold_crossed",
        runaway_alert_id(acme, session, "context_growth"): "runaway_session",
        spike_alert_id(f"org_id={cove}", spike_minute): "spend_spike",
    }
    return Scenario(
        settings=settings,
        budgets=[acme_budget, bolt_budget],
        later=cove_budget,
        first=messages[:half],
        second=messages[half:],
        expected=expected,
        dead_expected={"decode": 1, "invalid": 1},
        unique=len(ordered),
    )


# ---------------------------------------------------------------------------- running workers


def _unique_settings(base: Settings) -> Settings:
    run = uuid.uuid4().hex[:8]
    return dataclasses.replace(
        base.with_topic_prefix(f"test.w{run}"),
        kafka_bootstrap=base.kafka_client_config()["bootstrap.servers"],
        clickhouse_url=base.clickhouse_http_url,
        event_partitions=PARTITIONS,
        worker_id=f"test-worker-{run}",
        sink_group=f"test-sink-{run}",
        worker_flush_seconds=0.5,
    )


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")}
    values = {
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLICKHOUSE_URL": settings.clickhouse_url,
        "CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "TOPIC_EVENTS": settings.topic_events,
        "TOPIC_DEADLETTER": settings.topic_deadletter,
        "TOPIC_ALERTS": settings.topic_alerts,
        "TOPIC_ROLLUPS": settings.topic_rollups,
        "TOPIC_BUDGETS": settings.topic_budgets,
        "TOPIC_ENFORCEMENT": settings.topic_enforcement,
        "EVENT_PARTITIONS": str(settings.event_partitions),
        "WORKER_ID": settings.worker_id,
        "WORKER_FLUSH_SECONDS": str(settings.worker_flush_seconds),
        "SINK_GROUP": settings.sink_group,
        "SINK_FLUSH_SECONDS": "0.2",
        "LOG_LEVEL": "INFO",
    }
    env.update({f"SPENDSTREAM_{k}": str(v) for k, v in values.items() if v is not None})
    return env


class Workers:
    def __init__(self, settings: Settings, logs: Path, extra: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.logs = logs
        self.extra = {f"SPENDSTREAM_{k}": v for k, v in (extra or {}).items()}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_paths: list[Path] = []  # procs[i]'s output

    def start(self, command: str = "worker") -> subprocess.Popen[bytes]:
        path = self.logs / f"{command}-{len(self.procs)}.log"
        self.log_paths.append(path)
        log = open(path, "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-c", "from streams.cli import main; main()", command],
            env={**_env(self.settings), **self.extra},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
        """Until faust logs "Worker ready" (partitions assigned, tables recovered): events
        sent before may wait out a rebalance, which a test's own deadline then pays for."""
        log = self.log_paths[self.procs.index(proc)]
        deadline = time.monotonic() + timeout
        while "Worker ready" not in log.read_text(errors="ignore"):
            self.assert_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready after {timeout:.0f} s: see {log}")
            time.sleep(0.5)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def assert_alive(self) -> None:
        for proc in self.procs:
            if proc.returncode is None and proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}: see {self.logs}")


def _produce(
    settings: Settings, messages: list[Message] | list[tuple[bytes | None, bytes]]
) -> None:
    """(key, value[, arrival]): with an arrival, the record carries it (CreateTime topics)."""
    producer = Producer(
        {**settings.kafka_client_config(), "enable.idempotence": True, "linger.ms": 5}
    )
    for key, value, *arrival in messages:
        stamp = {"timestamp": arrival[0]} if arrival else {}
        producer.produce(settings.topic_events, value=value, key=key, **stamp)
    assert producer.flush(30) == 0


def _lag(settings: Settings, topic: str, group: str) -> int:
    """Uncommitted messages of ``group`` on ``topic``; -1 while the coordinator is busy."""
    try:
        return sum(_lags(settings, topic, group).values())
    except KafkaException:
        return -1


def _lags(settings: Settings, topic: str, group: str) -> dict[int, int]:
    consumer = Consumer(
        {**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False}
    )
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.event_partitions)]
        committed = consumer.committed(parts, timeout=10)
        lags = {}
        for tp in committed:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=10
            )
            lags[tp.partition] = high - (tp.offset if tp.offset >= 0 else 0)
        return lags
    finally:
        consumer.close()


def _ends(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "t-ends"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(settings.event_partitions)
        }
    finally:
        consumer.close()


def _wait_caught_up(settings: Settings, workers: Workers, timeout: float = 150) -> None:
    """Until the workers committed everything produced so far: the events, then the partials
    published about them (workers keep publishing partition clocks: no lag 0 to wait for)."""
    deadline = time.monotonic() + timeout
    for topic in (settings.topic_events, partials_topic(settings)):
        ends = _ends(settings, topic)
        committed: dict[int, int] | None = None
        while True:
            workers.assert_alive()
            try:
                committed = _committed(settings, topic, settings.worker_id)
            except KafkaException:  # the coordinator is busy: ask again
                committed = None
            if committed is not None and all(committed[p] >= end for p, end in ends.items()):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker not caught up in {timeout}s on {topic}: committed {committed}, "
                    f"produced {ends}; logs in {workers.logs}"
                )
            time.sleep(1)


def _committed(settings: Settings, topic: str, group: str) -> dict[int, int]:
    consumer = Consumer(
        {**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False}
    )
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.event_partitions)]
        return {tp.partition: max(0, tp.offset) for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def _wait_for_progress(settings: Settings, workers: Workers, produced: int) -> None:
    """Until the worker has committed some of what was produced (then it is mid-stream)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        workers.assert_alive()
        if 0 <= _lag(settings, settings.topic_events, settings.worker_id) < produced:
            return
        time.sleep(0.2)
    raise AssertionError(f"worker made no progress; logs in {workers.logs}")


def _kcat(settings: Settings, topic: str) -> list[str]:
    """Keys on ``topic`` as seen by kcat, an independent Kafka client."""
    out = subprocess.run(
        [
            "kcat",
            "-b",
            settings.kafka_bootstrap or "",
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k\n",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return [line for line in out.stdout.decode().splitlines() if line]


def _read_all(settings: Settings, topic: str) -> list[Any]:
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"t-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    found: list[Any] = []
    idle = time.monotonic()
    while time.monotonic() - idle < 4:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        found.append(msg)
        idle = time.monotonic()
    consumer.close()
    return found


@pytest.fixture
def scenario(stack_settings: Settings, clickhouse_client: Any) -> Scenario:
    settings = _unique_settings(stack_settings)
    Migrator(clickhouse_client, Target.from_settings(settings)).migrate()
    # the records keep the arrival times the test gives them (see the module docstring)
    ensure_topics(
        settings,
        [TopicSpec(settings.topic_events, PARTITIONS, {"message.timestamp.type": "CreateTime"})],
    )
    ensure_topics(settings, worker_topics(settings))
    built = build_scenario(settings)
    publish(settings, {b.budget_id: b for b in built.budgets})
    return built


def _first_part(s: Scenario, workers: Workers) -> None:
    """Produce up to the mid-stream budget, wait until it is counted, then publish it."""
    _produce(s.settings, s.first)
    _wait_caught_up(s.settings, workers)
    publish(s.settings, {s.later.budget_id: s.later})


def _check(s: Scenario, workers: Workers) -> dict[str, str]:
    _wait_caught_up(s.settings, workers)
    time.sleep(3)  # stage 2 publishes right after its batch; leave margin for the last alerts
    keys = _kcat(s.settings, s.settings.topic_alerts)
    assert len(keys) == len(set(keys)), f"duplicated alerts: {sorted(keys)}"
    alerts = {
        m.key().decode(): ALERTS.decode(m.value())
        for m in _read_all(s.settings, s.settings.topic_alerts)
    }
    assert set(alerts) == set(keys)
    seen = {aid: a["kind"] for aid, a in alerts.items()}
    missing = {k: v for k, v in s.expected.items() if k not in seen}
    extra = {k: (alerts[k]["kind"], alerts[k]["message"]) for k in seen if k not in s.expected}
    assert not missing and not extra, f"missing {missing}; unexpected {extra}"
    dead: dict[str, int] = {}
    for msg in _read_all(s.settings, s.settings.topic_deadletter):
        letter = DeadLetter.from_headers(msg.headers())
        dead[f"{letter.stage}:{letter.kind}"] = dead.get(f"{letter.stage}:{letter.kind}", 0) + 1
    # the worker and the sink each dead-letter what they cannot use, the same records
    assert dead == {
        f"{stage}:{kind}": n for kind, n in s.dead_expected.items() for stage in ("worker", "sink")
    }
    blocks = {
        m.key().decode(): json.loads(m.value())
        for m in _read_all(s.settings, s.settings.topic_enforcement)
        if m.value()
    }
    assert set(blocks) == {"bolt-platform-block"}
    assert blocks["bolt-platform-block"]["blocked"] is True
    _check_rollups(s)
    rows = _count_rows(s.settings)
    assert rows == s.unique, f"ClickHouse holds {rows} events, {s.unique} sent once each"
    return seen


def _count_rows(settings: Settings) -> int:
    client = connect(settings, database=settings.clickhouse_database)
    try:
        found = client.query(
            "SELECT count() FROM token_events WHERE org_id LIKE {suffix:String}",
            parameters={"suffix": f"%-{settings.worker_id[-8:]}"},
        )
        return int(found.result_rows[0][0])
    finally:
        client.close()


def _check_rollups(s: Scenario) -> None:
    """Closed 1-minute windows and late events reached the rollups topic, once per key: the
    rows of every event older than the last windows still open add up exactly."""
    rows: dict[bytes, dict[str, Any]] = {}
    for msg in _read_all(s.settings, s.settings.topic_rollups):
        rows[msg.key()] = ROLLUPS.decode(msg.value())  # a replay re-sends rows under one key
    valid: dict[str, dict[str, Any]] = {}
    for _, value, _ in s.first + s.second:
        try:
            event = CODEC.decode(value)
        except DecodeError:
            continue
        if event["input_tokens"] >= 0:
            valid.setdefault(event["event_id"], event)
    newest = max(e["event_time"] for e in valid.values())
    closed = [e for e in valid.values() if e["event_time"] < newest - 8 * MINUTE_MS]
    requests = sum(r["requests"] for r in rows.values())
    assert len(closed) <= requests <= len(valid)
    assert sum(r["requests"] for r in rows.values() if r["segment"].startswith("late:")) >= 1
    assert {r["org_id"] for r in rows.values()} <= {e["org_id"] for e in valid.values()}


def test_scripted_day_exact_alerts_through_sigkill(scenario: Scenario, tmp_path: Path) -> None:
    workers = Workers(scenario.settings, tmp_path)
    try:
        workers.start("sink")
        proc = workers.start()
        _first_part(scenario, workers)
        _produce(scenario.settings, scenario.second[: len(scenario.second) // 2])
        _wait_for_progress(scenario.settings, workers, len(scenario.second) // 2)
        workers.kill(proc)
        _produce(scenario.settings, scenario.second[len(scenario.second) // 2 :])
        workers.start()
        _check(scenario, workers)
    finally:
        workers.stop_all()


def test_two_workers_give_the_same_alerts(scenario: Scenario, tmp_path: Path) -> None:
    workers = Workers(scenario.settings, tmp_path)
    try:
        workers.start("sink")
        workers.start()
        workers.start()
        _first_part(scenario, workers)
        _produce(scenario.settings, scenario.second)
        _check(scenario, workers)
    finally:
        workers.stop_all()
