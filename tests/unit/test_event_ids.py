"""One event-id rule for the SDK, the worker and the sink: ``events.canonical_event_id``.

An id is accepted exactly when ClickHouse reads it as the same UUID (8-4-4-4-12 or 32 hex
digits, either case), and stored in the lowercase 8-4-4-4-12 form ClickHouse returns. The
36-character id with misplaced dashes that uuid.UUID takes (and ClickHouse refuses) stalled
the sink; here every layer refuses it alike, and the bounds on tokens and costs are the same
constants in the sink's batch check, its per-event check and the worker.
"""

from __future__ import annotations

import uuid

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import events as ev
from streams.errors import InvalidEventError
from streams.generate import generate_events
from streams.pricing import default_catalog
from streams.processors.stage1 import _id_array, id_bytes
from streams.sdk.producer import build_event
from streams.serde import AvroCodec
from streams.serde.codec import SINGLE_OBJECT_MAGIC
from streams.serde.columnar import ColumnarDecoder
from streams.sink import frames

CODEC = AvroCodec("token_event")
HEADER = SINGLE_OBJECT_MAGIC + CODEC.current.fingerprint
NOW = ev.now_ms()
HEX = "0f0e0d0c0b0a49088706050403020100"
CANON = "0f0e0d0c-0b0a-4908-8706-050403020100"

ACCEPTED = [CANON, CANON.upper(), HEX, HEX.upper(), "0F0e0D0c-0b0A-4908-8706-050403020100"]
REFUSED = [
    "0f0e0d0c0-b0a-4908-8706-050403020100",  # 36 characters, dashes misplaced (the stall)
    "0f0e0d0c0b0a-4908-8706-0504-03020100",
    "0f0e-0d0c-0b0a-4908-8706-050403020100",  # 37: an extra dash uuid.UUID ignores
    "{" + CANON + "}",
    "{" + HEX + "}",
    "urn:uuid:" + CANON,
    "0x" + HEX,
    HEX.replace("0", "_", 1),
    "0f0e0d0c_0b0a_4908_8706_050403020100",
    "+" + HEX[1:],
    " " + CANON,
    CANON + " ",
    CANON + "\n",
    CANON[:-1],
    HEX + "0",
    "g" + HEX[1:],
    "\uff10" + HEX[1:],  # a full-width digit
    "",
    "not-a-uuid",
]


def _frame(events: list[dict]) -> pl.DataFrame:
    frame = ColumnarDecoder(CODEC.current).decode([CODEC.encode(e)[len(HEADER) :] for e in events])
    assert frame is not None
    return frame


def _sink_accepts(ids: list[str]) -> list[bool]:
    """What the sink does with each id: its batch check, else its per-event check."""
    (base,) = generate_events(1, seed=3)
    batch = [dict(base, event_id=i) for i in ids]
    sure = _frame(batch).select(frames.surely_valid(NOW + ev.MAX_FUTURE_MS)).to_series()
    decoded = [CODEC.decode(CODEC.encode(e)) for e in batch]
    return [ok or not ev.problems(e, NOW) for ok, e in zip(sure.to_list(), decoded, strict=True)]


def _worker_accepts(ids: list[str]) -> list[bool]:
    return _id_array(pl.Series(ids, dtype=pl.String))[1].tolist()


def test_every_layer_accepts_exactly_the_spellings_clickhouse_reads() -> None:
    forms = ACCEPTED + REFUSED
    expected = [True] * len(ACCEPTED) + [False] * len(REFUSED)
    assert [ev.canonical_event_id(f) is not None for f in forms] == expected
    assert _worker_accepts(forms) == expected
    assert _sink_accepts(forms) == expected
    for form in ACCEPTED:
        assert ev.canonical_event_id(form) == CANON
        assert id_bytes(form) == uuid.UUID(CANON).bytes.rstrip(b"\x00")
        (event,) = generate_events(1, seed=4)
        assert build_event(dict(event, event_id=form))["event_id"] == CANON  # sent canonical
    for form in REFUSED:
        with pytest.raises(InvalidEventError, match="event_id"):
            id_bytes(form)
        (event,) = generate_events(1, seed=4)
        with pytest.raises(InvalidEventError, match="event_id"):
            build_event(dict(event, event_id=form))


def test_the_accepted_spellings_are_those_clickhouse_reads_as_the_canonical_id() -> None:
    import chdb

    forms = ACCEPTED + REFUSED
    literals = ", ".join("'" + f.replace("\\", "\\\\").replace("'", "\\'") + "'" for f in forms)
    result = chdb.query(
        f"SELECT toString(toUUIDOrNull(x)) FROM (SELECT arrayJoin([{literals}]) AS x)", "CSV"
    )
    read = [line.strip('"') for line in result.data().splitlines()]
    assert read == [CANON] * len(ACCEPTED) + ["\\N"] * len(REFUSED)


_ID_CHARS = st.sampled_from(list("0123456789abcdefABCDEF-{}_+ xXg:\t"))


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(_ID_CHARS, min_size=30, max_size=40),
        st.uuids().map(str),
        st.uuids().map(lambda u: u.hex.upper()),
        st.tuples(st.uuids(), st.integers(0, 35), st.integers(0, 35)).map(
            lambda t: _move_dash(str(t[0]), t[1], t[2])
        ),
    )
)
def test_worker_and_sink_agree_on_any_id(raw: str) -> None:
    expected = ev.canonical_event_id(raw) is not None
    assert _worker_accepts([raw]) == [expected]
    assert _sink_accepts([raw]) == [expected]
    if expected:
        assert _id_array(pl.Series([raw]))[0][0] == uuid.UUID(raw).bytes.rstrip(b"\x00")


def _move_dash(text: str, source: int, target: int) -> str:
    dashes = [i for i, c in enumerate(text) if c == "-"]
    chars = list(text)
    removed = chars.pop(dashes[source % len(dashes)])
    chars.insert(target, removed)
    return "".join(chars)


def test_token_and_cost_bounds_are_the_same_in_the_batch_check() -> None:
    (base,) = generate_events(1, seed=6)
    over = [
        dict(base, input_tokens=ev.MAX_TOKENS + 1),
        dict(base, output_tokens=ev.MAX_TOKENS + 1, reasoning_tokens=0),
        dict(base, cache_read_tokens=ev.MAX_TOKENS + 1),
        dict(base, cost_nanos=ev.MAX_COST_NANOS + 1),
    ]
    at = [dict(base, input_tokens=ev.MAX_TOKENS), dict(base, cost_nanos=ev.MAX_COST_NANOS)]
    sure = _frame(over + at).select(frames.surely_valid(NOW + ev.MAX_FUTURE_MS)).to_series()
    assert sure.to_list() == [False] * len(over) + [True] * len(at)
    assert all(ev.problems(e, NOW) for e in over)
    assert not any(ev.problems(e, NOW) for e in at)


def test_a_priced_cost_above_the_bound_is_handed_back_as_the_worker_refuses_it() -> None:
    (event,) = generate_events(1, seed=2)
    costly = dict(
        event,
        provider="anthropic",
        model="claude-opus-4-5",
        cost_nanos=None,
        output_tokens=ev.MAX_TOKENS,
        reasoning_tokens=0,
        input_tokens=ev.MAX_TOKENS,
    )
    catalog = default_catalog()
    assert catalog.price(costly).cost_nanos > ev.MAX_COST_NANOS  # within the token bounds
    assert not ev.problems(costly, NOW)
    assert frames.FramePricer(catalog).price(_frame([costly])) is None


def test_the_future_bound_is_judged_per_row_against_each_records_clock() -> None:
    (base,) = generate_events(1, seed=8)
    t = NOW - 86_400_000  # appended a day ago, valid then: a backlog replayed now
    rows = [dict(base, event_time=t + 60_000), dict(base, event_time=t + ev.MAX_FUTURE_MS + 1)]
    limits = pl.lit(pl.Series([t, t], dtype=pl.Int64) + ev.MAX_FUTURE_MS)
    assert _frame(rows).select(frames.surely_valid(limits)).to_series().to_list() == [True, False]
