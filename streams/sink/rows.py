"""The rows of one future insert: decoded events, their prices, and the offsets they came from.

Pure (no I/O) so that batch building is unit-tested without Kafka or ClickHouse. Rows stay
columns from the decode to the insert: whole batches arrive as polars frames
(streams/sink/frames.py), the rare per-message rows as column lists turned into one more frame.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import polars as pl
import pyarrow as pa  # type: ignore[import-untyped]

from streams import events
from streams.errors import SinkError
from streams.events import TOKEN_FIELDS, Event
from streams.pricing import Price
from streams.sink.columns import ARROW_SCHEMA, MS_PER_HOUR, STRING_COLUMNS, to_arrow


def canonical_event_id(raw: str) -> str:
    """``events.canonical_event_id`` of an id validation accepted (so lookups compare equal)."""
    found = events.canonical_event_id(raw)
    if found is None:  # validation refuses these before rows are built
        raise SinkError(f"event_id {raw[:80]!r} is not a UUID ClickHouse reads")
    return found


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


#: the polars types of ARROW_SCHEMA's columns, for rows built one by one
POLARS_SCHEMA: Final[dict[str, Any]] = {
    "event_id": pl.String,
    "event_time": pl.Datetime("ms", "UTC"),
    **{name: pl.String for name in STRING_COLUMNS},
    "turn": pl.UInt32,
    "client": pl.String,
    "task_type": pl.String,
    "provider": pl.String,
    "model": pl.String,
    **{name: pl.UInt64 for name in TOKEN_FIELDS},
    "cost_nanos": pl.UInt64,
    "cost_source": pl.String,
    "price_version": pl.String,
    "status": pl.String,
    "labels": pl.List(pl.Struct({"key": pl.String, "value": pl.String})),
    "kafka_partition": pl.UInt32,
    "kafka_offset": pl.UInt64,
    "hour": pl.Int64,
}


@dataclasses.dataclass
class Block:
    """Rows ready to insert plus the Kafka positions they cover (all consumed messages).

    ``frame`` holds one row per distinct event_id: ARROW_SCHEMA's columns plus ``hour`` (the
    UTC hour in epoch seconds, which the dedup lookup asks by).

    ``ranges`` maps partition -> (first, last) offset of every message read for this block,
    dead-lettered and duplicate ones included: committing ``last + 1`` is safe once the rows
    are in ClickHouse (and dead letters delivered).
    """

    frame: pl.DataFrame
    ranges: dict[int, tuple[int, int]]
    messages: int
    dead: dict[str, int]  # dead-lettered messages by kind

    @property
    def rows(self) -> list[Event]:
        """The rows as dicts, event_time in epoch ms and labels a dict (tests, diagnostics)."""
        rows = self.frame.with_columns(pl.col("event_time").dt.epoch("ms")).to_dicts()
        for row in rows:
            row["labels"] = {entry["key"]: entry["value"] for entry in row["labels"]}
            del row["hour"]
        return rows

    def __len__(self) -> int:
        return self.frame.height

    def keys(self) -> list[tuple[int, str]]:
        """(hour in epoch seconds, event_id) of every row: what the dedup lookup asks for."""
        return list(
            zip(self.frame["hour"].to_list(), self.frame["event_id"].to_list(), strict=True)
        )

    def lookup_tsv(self, rows: Sequence[int] | None = None) -> bytes:
        """The keys (of ``rows``, else all) as TSV (hour, event_id), the lookup's external table."""
        frame = self.frame if rows is None or len(rows) == len(self) else self.frame[list(rows)]
        return (
            frame.select("hour", "event_id")
            .write_csv(separator="\t", include_header=False)
            .encode()
        )

    def without(self, other: Block) -> Block:
        """This block minus the rows whose event_id ``other`` has (same positions covered)."""
        if not len(other) or not len(self):
            return self
        frame = self.frame.filter(
            ~pl.col("event_id").is_in(other.frame.get_column("event_id").implode())
        )
        return dataclasses.replace(self, frame=frame)

    def keep(self, existing: set[str]) -> list[int]:
        """Positions of the rows whose event_id is not among ``existing``."""
        if not existing:
            return list(range(len(self)))
        absent = ~self.frame["event_id"].is_in(list(existing))
        return absent.arg_true().to_list()

    def token(self, topic: str, keep: Sequence[int]) -> str:
        """Deterministic insert_deduplication_token: the positions covered and the rows kept.

        A retry of the same prepared rows sends the same token (ClickHouse drops it, in
        token_events and in every view target); a different selection of rows from the same
        offsets (after a crash, the lookup may keep fewer) gets a different one.
        """
        kept = self.frame[list(keep)] if len(keep) != len(self) else self.frame
        digest = hashlib.blake2b(digest_size=8)
        digest.update(kept["kafka_partition"].cast(pl.Int64).to_numpy().tobytes())
        digest.update(kept["kafka_offset"].cast(pl.Int64).to_numpy().tobytes())
        spans = ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(self.ranges.items()))
        return f"{topic}/{spans}/{len(keep)}/{digest.hexdigest()}"

    def to_arrow(self, keep: Sequence[int] | None = None) -> pa.Table:
        frame = self.frame
        if keep is not None and len(keep) != len(self):
            frame = frame[list(keep)]
        return to_arrow(frame)


class Buffer:
    """Accumulates consumed messages until the next insert; one per sink, reused.

    Whole decoded batches arrive as frames (``add_frame``); events that took the per-message
    path (another schema version or framing, or rows the batch check was not sure of) are
    appended to column lists (``add``) and become one more frame at ``take``.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in POLARS_SCHEMA}
        self.frames: list[pl.DataFrame] = []
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
        return Block(self._frame(), {}, 0, {}).rows

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
        self._widen(partition, offset, offset)

    def _widen(self, partition: int, low: int, high: int) -> None:
        span = self.ranges.get(partition)
        if span is None:
            self.ranges[partition] = (low, high)
        elif low < span[0] or high > span[1]:
            self.ranges[partition] = (min(span[0], low), max(span[1], high))

    def note_many(self, partitions: Sequence[int], offsets: Sequence[int]) -> None:
        """``note`` for a whole batch (per partition once, not per message)."""
        if not offsets:
            return
        if self.started is None:
            self.started = time.monotonic()
        self.messages += len(offsets)
        parts = np.asarray(partitions, dtype=np.int64)
        offs = np.asarray(offsets, dtype=np.int64)
        for partition in np.unique(parts).tolist():
            chosen = offs[parts == partition]
            self._widen(partition, int(chosen.min()), int(chosen.max()))

    def dead_letter(self, partition: int, offset: int, kind: str, *, noted: bool = False) -> None:
        if not noted:
            self.note(partition, offset)
        self.dead[kind] = self.dead.get(kind, 0) + 1

    def add(
        self, event: Event, price: Price, partition: int, offset: int, *, noted: bool = False
    ) -> bool:
        """Add a valid event; False (and nothing added) when its id is already in the buffer."""
        if not noted:
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
        self.columns["hour"].append((event["event_time"] // MS_PER_HOUR) * 3600)
        return True

    def add_frame(self, frame: pl.DataFrame) -> None:
        """Add rows in ``frames.insert_frame``'s shape (their messages are noted apart)."""
        if frame.height:
            self.frames.append(frame)

    def _frame(self) -> pl.DataFrame:
        columns = dict(self.columns)
        columns["event_time"] = [
            dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC) for ms in columns["event_time"]
        ]
        columns["labels"] = [
            [{"key": k, "value": v} for k, v in labels.items()] for labels in columns["labels"]
        ]
        single = pl.DataFrame(columns, schema=POLARS_SCHEMA)
        frames = [single, *self.frames] if single.height else self.frames
        if not frames:
            return single
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
        return frame.unique(subset="event_id", keep="first", maintain_order=True)

    def take(self) -> Block:
        """Hand the contents over as a Block and start empty."""
        block = Block(self._frame(), self.ranges, self.messages, self.dead)
        self.clear()
        return block
