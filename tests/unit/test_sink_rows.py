"""Batch building of the sink (pure): offsets covered, in-batch duplicates, tokens, Arrow rows."""

from __future__ import annotations

import datetime as dt

from streams.generate import generate_events
from streams.pricing import Price
from streams.sink.rows import ARROW_SCHEMA, Buffer, canonical_event_id

PRICE = Price(1234, "v1:model@2025-01-01", "catalog")


def sample(n: int = 5) -> list[dict]:
    return list(generate_events(n, seed=1))


def test_ranges_cover_every_consumed_message_and_duplicates_are_dropped() -> None:
    buffer = Buffer()
    first, second = sample(2)
    assert buffer.add(dict(first), PRICE, partition=0, offset=10)
    assert buffer.add(dict(second), PRICE, partition=1, offset=3)
    buffer.dead_letter(partition=0, offset=11, kind="decode")
    assert not buffer.add(dict(first), PRICE, partition=0, offset=12)  # re-sent copy
    block = buffer.take()
    assert len(buffer) == 0 and buffer.rows == []
    assert block.ranges == {0: (10, 12), 1: (3, 3)}
    assert block.messages == 4 and block.dead == {"decode": 1}
    assert [r["kafka_offset"] for r in block.rows] == [10, 3]


def test_rows_carry_price_and_position() -> None:
    buffer = Buffer()
    (event,) = sample(1)
    buffer.add(dict(event), PRICE, partition=2, offset=7)
    row = buffer.take().rows[0]
    assert (row["cost_nanos"], row["cost_source"], row["price_version"]) == (
        1234,
        "catalog",
        "v1:model@2025-01-01",
    )
    assert (row["kafka_partition"], row["kafka_offset"]) == (2, 7)


def test_token_is_deterministic_and_depends_on_the_rows_kept() -> None:
    buffer = Buffer()
    for i, event in enumerate(sample(4)):
        buffer.add(dict(event), PRICE, partition=i % 2, offset=100 + i)
    block = buffer.take()
    token = block.token("events", [0, 1, 2, 3])
    assert token == block.token("events", [0, 1, 2, 3])
    assert token.startswith("events/0:100-102,1:101-103/4/")
    assert block.token("events", [0, 1, 2]) != token


def test_keys_are_hour_and_canonical_id() -> None:
    buffer = Buffer()
    (event,) = sample(1)
    upper = dict(event, event_id=event["event_id"].upper())
    buffer.add(upper, PRICE, partition=0, offset=0)
    block = buffer.take()
    ((hour, event_id),) = block.keys()
    assert event_id == event["event_id"]
    assert hour == event["event_time"] // 3_600_000 * 3600
    assert canonical_event_id(event["event_id"].replace("-", "").upper()) == event["event_id"]


def test_arrow_table_matches_the_insert_schema() -> None:
    buffer = Buffer()
    events_ = sample(3)
    for i, event in enumerate(events_):
        buffer.add(dict(event), PRICE, partition=0, offset=i)
    table = buffer.take().to_arrow([0, 2])
    assert table.schema == ARROW_SCHEMA
    assert table.num_rows == 2
    first = table.to_pylist()[0]
    assert first["event_time"] == dt.datetime.fromtimestamp(
        events_[0]["event_time"] / 1000, tz=dt.UTC
    )
    assert first["labels"] == list(events_[0]["labels"].items())


def test_lookup_and_insert_use_the_distributed_tables_on_a_cluster() -> None:
    from streams.clickhouse import Target
    from streams.sink.store import EventStore

    single = EventStore(None, Target(database="db"))
    assert single.events_table == "`db`.`token_events`"
    assert single._lookup_sql.endswith("(hour, event_id) IN (SELECT hour, event_id FROM batch)")
    cluster = EventStore(None, Target(database="db", cluster="c"))
    assert cluster.events_table == "`db`.`token_events_all`"
    assert "FROM `db`.`event_ids_all` WHERE (hour, event_id) GLOBAL IN" in cluster._lookup_sql
