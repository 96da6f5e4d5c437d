"""The batch decoder against fastavro: same values, and every body it cannot be sure of refused.

Also pins what it relies on in polars (``read_avro``, marked unstable): if an upgrade changes
it, these fail loudly; re-check streams/serde/columnar.py before moving the pin.
"""

from __future__ import annotations

import random

import polars as pl
import pytest

from streams.generate import generate_events
from streams.serde import AvroCodec
from streams.serde.codec import SINGLE_OBJECT_MAGIC
from streams.serde.columnar import ColumnarDecoder, _varint_size, _zigzag_varint

CODEC = AvroCodec("token_event")
HEADER = SINGLE_OBJECT_MAGIC + CODEC.current.fingerprint


def _bodies(n: int, seed: int = 1) -> tuple[list[dict], list[bytes]]:
    events = list(generate_events(n, seed=seed))
    return events, [CODEC.encode(e)[len(HEADER) :] for e in events]


def _as_dicts(frame: pl.DataFrame) -> list[dict]:
    rows = frame.with_columns(pl.col("task_type", "status").cast(pl.String)).to_dicts()
    for row in rows:
        row["labels"] = {entry["key"]: entry["value"] for entry in row["labels"]}
    return rows


def test_pinned_polars_version() -> None:
    assert pl.__version__ == "2.1.0", "re-check streams/serde/columnar.py, then move the pin"


def test_decodes_like_fastavro() -> None:
    events, bodies = _bodies(3_000)
    # edge values: empty and several labels, nulls, negative and huge longs, long strings
    extra = [
        dict(events[0], labels={}, project_id=None, session_id=None, turn=None, cost_nanos=None),
        dict(events[1], labels={"a": "1", "b" * 70: "c" * 9000}, input_tokens=-5),
        dict(events[2], output_tokens=(1 << 63) - 1, reasoning_tokens=-(1 << 63), turn=2**31 - 1),
        dict(events[3], org_id="é" * 40, status="cancelled", task_type="embedding"),
    ]
    bodies += [CODEC.encode(e)[len(HEADER) :] for e in extra]
    frame = ColumnarDecoder(CODEC.current).decode(bodies)
    assert frame is not None
    assert _as_dicts(frame) == [CODEC.decode(HEADER + b) for b in bodies]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b + b"\x00", id="trailing-byte"),
        pytest.param(lambda b: b[:-1], id="truncated"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b"\xff" * 8, id="garbage"),
    ],
)
def test_a_body_of_the_wrong_length_refuses_the_batch(damage) -> None:
    _, bodies = _bodies(50)
    bodies[17] = damage(bodies[17])
    assert ColumnarDecoder(CODEC.current).decode(bodies) is None


def test_an_out_of_range_union_branch_refuses_the_batch() -> None:
    """polars reads any non-zero branch of [null, X] as X; fastavro refuses the body."""
    events, _ = _bodies(1)
    event = dict(events[0], org_id="o", team_id="t", user_id="u")
    body = bytearray(CODEC.encode(event)[len(HEADER) :])
    position = 1 + 36 + len(_zigzag_varint(event["event_time"])) + 3 * 2  # project_id's branch
    assert body[position] == 2
    body[position] = 4
    with pytest.raises(Exception):  # noqa: B017, PT011
        CODEC.decode(HEADER + bytes(body))
    assert ColumnarDecoder(CODEC.current).decode([bytes(body)]) is None


def test_random_corruption_is_never_accepted_where_fastavro_refuses() -> None:
    rng = random.Random(7)
    _, bodies = _bodies(400)
    decoder = ColumnarDecoder(CODEC.current)
    refused = 0
    for body in bodies:
        damaged = bytearray(body)
        damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        frame = decoder.decode([bytes(damaged)])
        try:
            expected = CODEC.decode(HEADER + bytes(damaged))
        except Exception:
            expected = None
        if frame is None:
            refused += 1
        else:
            assert expected is not None and _as_dicts(frame) == [expected]
    assert refused > 0


def test_varint_sizes() -> None:
    import numpy as np

    values = [0, -1, 63, -64, 64, -65, 8191, 8192, (1 << 63) - 1, -(1 << 63)]
    sizes = _varint_size(np.array(values, dtype=np.int64)).tolist()
    assert sizes == [len(_zigzag_varint(v)) for v in values]


def test_polars_runs_one_thread_unless_told_otherwise() -> None:
    import os

    import streams  # noqa: F401  (sets the default before polars is imported)

    expected = int(os.environ["POLARS_MAX_THREADS"])
    assert pl.thread_pool_size() == expected
