"""The rows of one future insert: decoded events, their prices, and the offsets they came from.

Pure (no I/O) so that batch building is unit-tested without Kafka or ClickHouse. Rows are
appended to per-column lists as they are consumed and each list becomes one Arrow array at
the insert (measured ~25% cheaper per event than a dict per row and ``from_pylist``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import pyarrow as pa  # type: ignore[import-untyped]

from streams.events import TOKEN_FIELDS, Event
from streams.pricing import Price

_STRINGS: Final = (
    "org_id",
    "team_id",
    "user_id",
    "project_id",
    "api_key_id",
    "session_id",
)

#: token_events columns the sink writes (ingested_at is the server's DEFAULT).
ARROW_SCHEMA: Final = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        *((name, pa.string()) for name in _STRINGS),
        ("turn", pa.uint32()),
        ("client", pa.string()),
        ("task_type", pa.string()),
        ("provider", pa.string()),
        ("model", pa.string()),
        *((name, pa.uint64()) for name in TOKEN_FIELDS),
        ("cost_nanos", pa.uint64()),
        ("cost_source", pa.string()),
        ("price_version", pa.string()),
        ("status", pa.string()),
        ("labels", pa.map_(pa.string(), pa.string())),
        ("kafka_partition", pa.uint32()),
        ("kafka_offset", pa.uint64()),
    ]
)

MS_PER_HOUR: Final = 3_600_000


def canonical_event_id(raw: str) -> str:
    """The lowercase 36-character form ClickHouse returns, so that lookups compare equal."""
    if len(raw) == 36:
        return raw.lower()
    return str(uuid.UUID(raw))


#: token_events columns the sink computes (in Buffer.add's order), and those taken from the
#: event as it is
_COMPUTED_COLUMNS: Final = (
    "event_id",
    "cost_nanos",
    "cost_source",
    "price_version",
    "kafka_partition",
    "kafka_offset",
)
_EVENT_COLUMNS: Final = tuple(n for n in ARROW_SCHEMA.names if n not in _COMPUTED_COLUMNS)
_ARROW_TYPES: Final = tuple(ARROW_SCHEMA.field(name).type for name in ARROW_SCHEMA.names)


def _rows(columns: dict[str, list[Any]]) -> list[Event]:
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


@dataclasses.dataclass
class Block:
    """Rows ready to insert plus the Kafka positions they cover (all consumed messages).

    Rows are kept as columns (one list per token_events column, in ARROW_SCHEMA order):
    appending to them while consuming and converting each list once costs ~25% less CPU per
    event than building a dict per row and converting the rows (measured).

    ``ranges`` maps partition -> (first, last) offset of every message read for this block,
    dead-lettered and duplicate ones included: committing ``last + 1`` is safe once the rows
    are in ClickHouse (and dead letters delivered).
    """

    columns: dict[str, list[Any]]
    hours: list[int]  # the UTC hour (epoch seconds) of each row, for the dedup lookup
    ranges: dict[int, tuple[int, int]]
    messages: int
    dead: dict[str, int]  # dead-lettered messages by kind

    @property
    def rows(self) -> list[Event]:
        """The rows as dicts (for tests and diagnostics; the insert path uses the columns)."""
        return _rows(self.columns)

    def __len__(self) -> int:
        return len(self.hours)

    def keys(self) -> list[tuple[int, str]]:
        """(hour in epoch seconds, event_id) of every row: what the dedup lookup asks for."""
        return list(zip(self.hours, self.columns["event_id"], strict=True))

    def token(self, topic: str, keep: Sequence[int]) -> str:
        """Deterministic insert_deduplication_token: the positions covered and the rows kept.

        A retry of the same prepared rows sends the same token (ClickHouse drops it, in
        token_events and in every view target); a different selection of rows from the same
        offsets (after a crash, the lookup may keep fewer) gets a different one.
        """
        digest = hashlib.blake2b(digest_size=8)
        partitions, offsets = self.columns["kafka_partition"], self.columns["kafka_offset"]
        for index in keep:
            digest.update(f"{partitions[index]}:{offsets[index]};".encode())
        spans = ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(self.ranges.items()))
        return f"{topic}/{spans}/{len(keep)}/{digest.hexdigest()}"

    def to_arrow(self, keep: Sequence[int] | None = None) -> pa.Table:
        arrays = [
            pa.array(values, type=kind)
            for values, kind in zip(self.columns.values(), _ARROW_TYPES, strict=True)
        ]
        table = pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)
        if keep is not None and len(keep) != len(self):
            table = table.take(pa.array(keep, type=pa.int64()))
        return table


class Buffer:
    """Accumulates consumed messages until the next insert; one per sink, reused."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in ARROW_SCHEMA.names}
        self.hours: list[int] = []
        self.ranges: dict[int, tuple[int, int]] = {}
        self.messages = 0
        self.dead: dict[str, int] = {}
        self._ids: set[str] = set()
        self.started: float | None = None
        columns = self.columns
        self._appends = [(columns[name].append, name) for name in _EVENT_COLUMNS]
        self._computed = tuple(columns[name].append for name in _COMPUTED_COLUMNS)

    @property
    def rows(self) -> list[Event]:
        return _rows(self.columns)

    def __len__(self) -> int:
        return self.messages

    def age(self, now: float | None = None) -> float:
        if self.started is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.started

    def note(self, partition: int, offset: int) -> None:
        """Record that a message was consumed (whatever became of it)."""
        if self.started is None:
            self.started = time.monotonic()
        self.messages += 1
        span = self.ranges.get(partition)
        self.ranges[partition] = (offset, offset) if span is None else (span[0], offset)

    def dead_letter(self, partition: int, offset: int, kind: str) -> None:
        self.note(partition, offset)
        self.dead[kind] = self.dead.get(kind, 0) + 1

    def add(self, event: Event, price: Price, partition: int, offset: int) -> bool:
        """Add a valid event; False (and nothing added) when its id is already in the buffer."""
        self.note(partition, offset)
        event_id = canonical_event_id(event["event_id"])
        if event_id in self._ids:
            return False
        self._ids.add(event_id)
        for append, name in self._appends:
            append(event[name])
        add_id, add_cost, add_source, add_version, add_partition, add_offset = self._computed
        add_id(event_id)
        add_cost(price.cost_nanos)
        add_source(price.source)
        add_version(price.price_version)
        add_partition(partition)
        add_offset(offset)
        self.hours.append((event["event_time"] // MS_PER_HOUR) * 3600)
        return True

    def take(self) -> Block:
        """Hand the contents over as a Block and start empty."""
        block = Block(self.columns, self.hours, self.ranges, self.messages, self.dead)
        self.clear()
        return block
