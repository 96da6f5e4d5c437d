"""Stage 1 gives the same output whether a batch is decoded as columns or record by record."""

from __future__ import annotations

import random

import polars as pl

from loadtest.bench_stage1 import Rec
from loadtest.bench_worker import _budgets, budget_specs
from streams.events import now_ms
from streams.generate import Shape, generate_events
from streams.pricing import default_catalog
from streams.processors.stage1 import (
    COLUMNAR_MIN_BATCH,
    EVENT_FIELDS,
    PartitionAggregator,
    Stage1Config,
    _labels,
    label_key,
)
from streams.serde import AvroCodec
from streams.serde.columnar import ColumnarDecoder

CODEC = AvroCodec("token_event")


def _records(n: int) -> tuple[list[Rec], Shape]:
    span = max(1, n * 20)
    shape = Shape(span_ms=span, start_ms=now_ms() - span, duplicate_rate=0.02)
    events = sorted(generate_events(n, seed=11, shape=shape), key=lambda e: e["event_time"])
    rng = random.Random(3)
    values = [CODEC.encode(e) for e in events]
    for i in rng.sample(range(n), 12):  # invalid values, still valid Avro
        values[i] = CODEC.encode(dict(events[i], input_tokens=-1, labels={"a": "1", "b": "2"}))
    values[40] = values[40][:-3]  # truncated: the block refuses, every record decoded alone
    values[41] = b"\x00\x00\x00\x00\x07" + values[41][10:]  # Confluent framing, unknown id
    values[42] = None
    values[1500] = b"\x00\x00\x00\x00\x07" + values[1500][10:]  # in a block that decodes
    values[1501] = None
    return [Rec(i, b"k", v) for i, v in enumerate(values)], shape


def _run(records: list[Rec], shape: Shape, columnar: bool) -> tuple[list, int]:
    calls = 0

    def decode(value: bytes | None) -> dict:
        nonlocal calls
        calls += 1
        return CODEC.decode(value)

    agg = PartitionAggregator(
        0,
        decode,
        default_catalog(),
        _budgets(budget_specs(shape)),
        Stage1Config(),
        now_ms=lambda: shape.start_ms + shape.span_ms,  # the same clock in both runs
        columnar=ColumnarDecoder(CODEC.current) if columnar else None,
    )
    outputs = []
    for i in range(0, len(records), 700):
        out = agg.process(records[i : i + 700])
        outputs.append(
            (
                out.budget_partials,
                out.org_partials,
                out.announces,
                out.lookups,
                out.rollups,
                [a | {"created_at": 0} for a in out.alerts],
                [(d.record.offset, d.kind, d.reason) for d in out.dead],
                out.counted,
                out.duplicates,
            )
        )
    outputs.append(agg.snapshot())
    return outputs, calls


def test_columnar_batches_equal_record_by_record() -> None:
    records, shape = _records(3_000)
    assert ColumnarDecoder(CODEC.current).columns == EVENT_FIELDS
    assert COLUMNAR_MIN_BATCH <= 700
    by_record, decoded_alone = _run(records, shape, columnar=False)
    by_column, decoded_in_fallback = _run(records, shape, columnar=True)
    assert by_column == by_record
    dead = [d for out in by_record[:-1] for d in out[6]]
    assert {kind for _, kind, _ in dead} == {"decode", "invalid"}
    assert {offset for offset, kind, _ in dead if kind == "decode"} == {40, 41, 42, 1500, 1501}
    # record by record only: the batch with the truncated record, the two odd records, and
    # the last batch (200 records, under COLUMNAR_MIN_BATCH); plus, either way, the 12 invalid
    # events once more to write their reasons
    invalid = 12
    assert decoded_alone == len(records) + invalid
    assert decoded_in_fallback == 700 + 2 + 200 + invalid


def test_labels_as_scope_key_parts() -> None:
    column = pl.Series(
        [[{"key": "a", "value": "1"}], [], [{"key": "b", "value": "2"}, {"key": "c", "value": "3"}]]
    )
    assert _labels(column, True) == [(("a", "1"),), (), (("b", "2"), ("c", "3"))]
    assert _labels(column[:1], True) == [(("a", "1"),)]
    assert _labels(column[2:], True) == [(("b", "2"), ("c", "3"))]
    assert _labels(column, False) == [None, None, None]
    assert [label_key(d) for d in ({"a": "1"}, {}, {"c": "3", "b": "2"})] == _labels(column, True)
