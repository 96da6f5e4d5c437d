"""A backlog brings hundreds of thousands of new ids between two stage-1 checkpoints: they go
to the changelog in records the broker takes (a record past its message.max.bytes, 1 MB by
default, is refused and the ids were lost unnoticed: after a restart a re-sent event of that
stretch counted twice), and a restore gets every one of them back."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.processors.dedup import HOUR_MS, ID_DTYPE
from streams.settings import Settings
from streams.worker import Worker

BROKER_MESSAGE_MAX = 1_048_588  # Kafka's message.max.bytes default
MINUTE = 29_000_000 * 60_000


class Table:
    """The two parts of a faust Table the checkpoint uses: its data and its changelog."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.sent: list[tuple[bytes, bytes | None]] = []

    def send_changelog(self, partition: int, key: bytes, value: bytes | None, **_: Any) -> None:
        self.sent.append((key, value))


def _worker(table: Table, monkeypatch: Any) -> Worker:
    worker = Worker(Settings.from_env({}, event_partitions=1))
    worker.table1 = table
    monkeypatch.setattr(worker, "_ack", lambda slot: None)
    return worker


def test_a_backlogs_ids_checkpoint_in_records_the_broker_takes_and_restore_whole(
    monkeypatch: Any,
) -> None:
    ids = np.unique(np.frombuffer(np.random.default_rng(7).bytes(16 * 200_000), dtype=ID_DTYPE))
    table = Table()
    worker = _worker(table, monkeypatch)
    slot = worker._slot1(0)
    slot.processor.memory.add(MINUTE, ids[:150_000])
    slot.processor.memory.add(MINUTE + 60_000, ids[150_000:])
    worker._checkpoint1(slot)
    assert max(len(value) for _, value in table.sent if value) < BROKER_MESSAGE_MAX

    restored = _worker(table, monkeypatch)._slot1(0)
    hours = np.full(ids.size, MINUTE // HOUR_MS, dtype=np.int64)
    assert restored.processor.memory.contains(ids, hours).all()


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.integers(0, 10**9), st.integers(0, 300), max_size=8),
    st.integers(1, 40),
)
def test_pieces_hold_every_id_once_in_order_within_the_limit(
    minutes: dict[int, int], limit_ids: int
) -> None:
    from streams.worker.worker import split_id_chunks

    ids = [[m, bytes([n % 256]) * 16 * n] for m, n in sorted(minutes.items()) if n]
    pieces = split_id_chunks(ids, limit=16 * limit_ids)
    assert all(sum(len(p) for _, p in piece) <= 16 * limit_ids for piece in pieces)
    assert all(len(p) % 16 == 0 and p for piece in pieces for _, p in piece)
    flat: dict[int, bytes] = {}
    for piece in pieces:
        for minute, part in piece:
            flat[minute] = flat.get(minute, b"") + part
    assert flat == {m: p for m, p in ids}
