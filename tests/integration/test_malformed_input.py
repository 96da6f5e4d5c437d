"""Issue 13, deliverable 2 on the real stack: every kind of malformed message, among valid
events, read by a running worker and sink, in one large backlog (the columnar paths) and one
message at a time. Each malformed message reaches the dead-letter topic once from each stage
with its kind and reason; every valid event is counted by the worker (a budget whose limit is
their exact total alerts at 100% with that total) and stored by the sink once; neither
process stops."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

from test_sink_deadletter import malformed
from test_worker_scenario import (
    ALERTS,
    CENT,
    CODEC,
    Workers,
    _event,
    _produce,
    _read_all,
    _unique_settings,
    _wait_caught_up,
)

from streams import events
from streams.budgets import budget_from_spec, publish
from streams.clickhouse import Target, connect
from streams.deadletter import DeadLetter
from streams.events import now_ms, partition_key
from streams.migrate import Migrator
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker import worker_topics


def _turn_beyond_32_bits(good: dict[str, Any]) -> bytes:
    """A valid encoding whose int ``turn`` is a 10-byte varint (fastavro read it as a long)."""
    event = dict(good, event_id=str(uuid.uuid4()), turn=7)
    encoded, without = CODEC.encode(event), CODEC.encode({**event, "turn": None})
    at = next(i for i, (a, b) in enumerate(zip(encoded, without, strict=False)) if a != b)
    assert encoded[at : at + 2] == b"\x02\x0e"
    return encoded[: at + 1] + b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01" + encoded[at + 2 :]


def _bad_messages(good: dict[str, Any]) -> list[tuple[str, bytes | None, str]]:
    """(kind, value, reason fragment): the sink test's kinds and the bounds, the 32-bit
    overflow and an id that uuid.UUID takes and ClickHouse does not."""

    def invalid(**changes: Any) -> bytes:
        return CODEC.encode({**good, "event_id": str(uuid.uuid4()), **changes})

    dashes = str(uuid.uuid4())
    return [
        *malformed(CODEC, good),
        ("decode", _turn_beyond_32_bits(good), "is not a 32-bit int"),
        ("invalid", invalid(input_tokens=events.MAX_TOKENS + 1), "above the bound"),
        ("invalid", invalid(cost_nanos=events.MAX_COST_NANOS + 1), "above the bound"),
        ("invalid", invalid(event_id=dashes[:8] + dashes[9] + "-" + dashes[10:]), "not a UUID"),
    ]


def test_every_malformed_message_is_dead_lettered_by_each_stage_and_nothing_stops(
    stack_settings: Settings, tmp_path: Path
) -> None:
    base = _unique_settings(stack_settings)
    settings = dataclasses.replace(base, clickhouse_database=f"malformed_{uuid.uuid4().hex[:8]}")
    admin = connect(settings)
    Migrator(admin, Target.from_settings(settings)).migrate()
    ensure_topics(settings, worker_topics(settings))
    org = f"bad-{uuid.uuid4().hex[:8]}"
    now = now_ms()
    good = [_event(now - 60_000 + i * 20, org, "t", "ana", CENT + i) for i in range(1_600)]
    total = sum(e["cost_nanos"] for e in good)
    cap = budget_from_spec(
        {"id": f"{org}-month", "scope": {"org": org}, "limit_usd": f"{total / 1e9:.9f}"},
        now_ms=now - 3 * 86_400_000,  # made days ago: counted by the stream from the start
    )
    assert cap.limit == total
    publish(settings, {cap.budget_id: cap})
    expected: dict[bytes, tuple[str, str]] = {}

    def messages(part: list[dict[str, Any]], tag: str) -> list[tuple[bytes | None, bytes]]:
        out: list[tuple[bytes | None, bytes]] = []
        bad = _bad_messages(part[0])
        step = len(part) // len(bad)
        for i, event in enumerate(part):
            out.append((partition_key(event), CODEC.encode(event)))
            if i % step == 0 and bad:
                kind, value, reason = bad.pop()
                key = f"{tag}-{len(expected)}".encode()
                expected[key] = (kind, reason)
                out.append((key, value))  # type: ignore[arg-type]
        assert not bad
        return out

    backlog = messages(good[:1_200], "backlog")
    trickle = messages(good[1_200:], "trickle")
    _produce(settings, backlog)  # read as large batches once the worker and sink start
    workers = Workers(settings, tmp_path)
    try:
        worker = workers.start()
        workers.start("sink")
        workers.wait_ready(worker)
        for message in trickle:  # one message at a time
            _produce(settings, [message])
        _wait_caught_up(settings, workers)
        client = connect(settings, database=settings.clickhouse_database)
        try:
            deadline = time.monotonic() + 120
            stored = 0
            while time.monotonic() < deadline:
                workers.assert_alive()
                stored = int(client.command("SELECT count() FROM token_events"))
                if stored >= len(good):
                    break
                time.sleep(0.5)
            time.sleep(2)  # nothing more arrives
            assert int(client.command("SELECT count() FROM token_events")) == len(good)
            assert int(client.command("SELECT uniqExact(event_id) FROM token_events")) == len(good)
            assert int(client.command("SELECT sum(cost_nanos) FROM token_events")) == total
        finally:
            client.close()
        hundred: list[dict[str, Any]] = []
        deadline = time.monotonic() + 90
        while not hundred and time.monotonic() < deadline:
            workers.assert_alive()
            hundred = [
                a
                for a in (
                    ALERTS.decode(m.value()) for m in _read_all(settings, settings.topic_alerts)
                )
                if a["budget_id"] == cap.budget_id and a["threshold_pct"] == 100
            ]
            time.sleep(0.5)
        assert [a["spent"] for a in hundred] == [total]  # every valid event counted once
        letters: dict[tuple[bytes, str], list[DeadLetter]] = {}
        for m in _read_all(settings, settings.topic_deadletter):
            letter = DeadLetter.from_headers(m.headers())
            letters.setdefault((m.key(), letter.stage), []).append(letter)
        workers.assert_alive()  # neither stopped on its input
    finally:
        workers.stop_all()
        admin.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}`")
        admin.close()
    want = {(key, stage) for key in expected for stage in ("worker", "sink")}
    assert set(letters) == want, sorted(want ^ set(letters))
    for (key, stage), found in letters.items():
        kind, reason = expected[key]
        assert len(found) == 1, (key, stage, found)
        assert found[0].kind == kind, (key, stage, found[0].kind, found[0].reason)
        assert reason in found[0].reason, (key, stage, found[0].reason)
