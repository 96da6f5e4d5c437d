"""The sink's column-at-a-time functions pinned equal to their per-event twins."""

from __future__ import annotations

import pytest

from streams import events as ev
from streams.generate import generate_events
from streams.pricing import default_catalog
from streams.serde import AvroCodec
from streams.serde.codec import SINGLE_OBJECT_MAGIC
from streams.serde.columnar import ColumnarDecoder
from streams.sink import frames
from streams.sink.rows import ARROW_SCHEMA, Buffer

CODEC = AvroCodec("token_event")
HEADER = SINGLE_OBJECT_MAGIC + CODEC.current.fingerprint
NOW = ev.now_ms()


def _frame(events: list[dict]):
    frame = ColumnarDecoder(CODEC.current).decode([CODEC.encode(e)[len(HEADER) :] for e in events])
    assert frame is not None
    return frame


def _odd_events() -> list[dict]:
    base = list(generate_events(40, seed=5))
    odd = [
        {"event_id": base[0]["event_id"].upper()},
        {"event_id": base[1]["event_id"].replace("-", "")},  # valid UUID, not canonical
        {"event_id": "not-a-uuid"},
        {"org_id": "   "},
        {"team_id": "\x1c"},  # whitespace to str.strip(), not to a regex \s
        {"user_id": "ü"},
        {"project_id": " "},
        {"session_id": ""},
        {"api_key_id": "\t"},
        {"event_time": 10},
        {"event_time": NOW + ev.MAX_FUTURE_MS + 60_000},
        {"input_tokens": -1},
        {"reasoning_tokens": 10, "output_tokens": 5},
        {"cost_nanos": -3},
        {"turn": 0},
        {"model": "no-such-model", "cost_nanos": None},
        {
            "provider": "openai",
            "model": "gpt-5",
            "cost_nanos": None,
            "event_time": 1_600_000_000_000,
        },
        {
            "model": "gemini-2.5-pro",
            "provider": "gcp.gemini",
            "cost_nanos": None,
            "input_tokens": 150_000,
            "cache_read_tokens": 100_000,
        },
        {
            "model": "claude-sonnet-4-5",
            "provider": "anthropic",
            "cost_nanos": None,
            "input_tokens": 300_000,
            "output_tokens": 9,
            "reasoning_tokens": 9,
        },
        {"cost_nanos": 0},
    ]
    return base + [dict(base[i % len(base)], **change) for i, change in enumerate(odd)]


def test_surely_valid_matches_the_per_event_check_and_is_never_wrong() -> None:
    events = _odd_events()
    frame = _frame(events)
    column = frame.select(frames.surely_valid(NOW + ev.MAX_FUTURE_MS)).to_series().to_list()
    decoded = [CODEC.decode(CODEC.encode(e)) for e in events]
    for ok, event in zip(column, decoded, strict=True):
        if ok:
            assert ev.problems(event, NOW) == [], event
    assert sum(column) == sum(ev.surely_valid(e, NOW + ev.MAX_FUTURE_MS) for e in decoded) - 1
    # the one difference: "ü" is valid but has no visible ASCII character, so it is asked


def test_prices_match_the_catalog_row_by_row() -> None:
    catalog = default_catalog()
    events = [e for e in _odd_events() if not ev.problems(e, NOW)]
    assert any(e["cost_nanos"] is None for e in events)
    priced = frames.FramePricer(catalog).price(_frame(events))
    assert priced is not None
    got = priced.select("cost_nanos", "cost_source", "price_version").rows()
    expected = [
        (p.cost_nanos, p.source, p.price_version)
        for p in (catalog.price(CODEC.decode(CODEC.encode(e))) for e in events)
    ]
    assert got == expected
    assert {source for _, source, _ in got} == {"reported", "catalog", "unpriced"}
    assert any(">" in version for _, _, version in got)  # a long-context tier was used


def test_a_cost_beyond_uint64_is_handed_back() -> None:
    (event,) = generate_events(1, seed=2)
    huge = dict(
        event,
        provider="anthropic",
        model="claude-opus-4-5",
        cost_nanos=None,
        output_tokens=(1 << 62),
        reasoning_tokens=0,
    )
    assert frames.FramePricer(default_catalog()).price(_frame([huge])) is None


def test_batch_rows_equal_the_per_event_rows() -> None:
    catalog = default_catalog()
    mask = frames.surely_valid(NOW + ev.MAX_FUTURE_MS)
    candidates = _odd_events()
    sure = _frame(candidates).select(mask).to_series().to_list()
    events = [e for e, ok in zip(candidates, sure, strict=True) if ok]  # what the sink batches
    frame = frames.FramePricer(catalog).price(_frame(events))
    assert frame is not None
    batch = Buffer()
    batch.note_many([3] * len(events), list(range(len(events))))
    batch.add_frame(frames.insert_frame(frame, [3] * len(events), list(range(len(events)))))
    single = Buffer()
    for offset, event in enumerate(events):
        decoded = CODEC.decode(CODEC.encode(event))
        single.add(decoded, catalog.price(decoded), 3, offset)
    a, b = batch.take(), single.take()
    assert a.rows == b.rows
    assert a.keys() == b.keys()
    assert a.ranges == b.ranges and a.messages == b.messages
    assert a.token("t", [0, 2, 5]) == b.token("t", [0, 2, 5])
    table = a.to_arrow([1, 2])
    assert table.schema == ARROW_SCHEMA
    assert table.equals(b.to_arrow([1, 2]))


def test_duplicate_ids_across_frames_keep_the_first() -> None:
    catalog = default_catalog()
    events = list(generate_events(3, seed=9))
    buffer = Buffer()
    for offsets in ([0, 1, 2], [3, 4, 5]):
        frame = frames.FramePricer(catalog).price(_frame(events))
        assert frame is not None
        buffer.note_many([0, 0, 0], offsets)
        buffer.add_frame(frames.insert_frame(frame, [0, 0, 0], offsets))
    block = buffer.take()
    assert [r["kafka_offset"] for r in block.rows] == [0, 1, 2]
    assert block.messages == 6 and block.ranges == {0: (0, 5)}
    assert block.keep({events[1]["event_id"]}) == [0, 2]
    assert block.lookup_tsv().decode().splitlines()[0].split("\t")[1] == events[0]["event_id"]


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_buffers(n: int) -> None:
    buffer = Buffer()
    for i, event in enumerate(generate_events(n, seed=4)):
        buffer.add(event, default_catalog().price(event), 0, i)
    block = buffer.take()
    assert len(block) == n and block.to_arrow().num_rows == n


def test_a_block_without_the_ids_of_the_block_in_flight() -> None:
    catalog = default_catalog()
    events = list(generate_events(4, seed=12))
    first, second = Buffer(), Buffer()
    for i, event in enumerate(events[:2]):
        first.add(event, catalog.price(event), 0, i)
    for i, event in enumerate(events[1:]):  # events[1] re-sent in the next block
        second.add(event, catalog.price(event), 0, 10 + i)
    a, b = first.take(), second.take()
    rest = b.without(a)
    assert [r["event_id"] for r in rest.rows] == [e["event_id"] for e in events[2:]]
    assert rest.ranges == b.ranges and rest.messages == b.messages == 3
    assert b.without(Buffer().take()) is b
