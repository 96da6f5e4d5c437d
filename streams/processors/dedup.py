"""The event ids one partition counted recently, 16 bytes each, for exact duplicate checks.

A duplicate is a re-send: the same 128-bit event_id with an event_time in the same UTC hour
(the sink's rule, ClickHouse ``event_ids`` keyed by (hour, event_id)). Ids are kept per event
minute as sorted arrays of 16-byte values (numpy ``S16``), so memory is 16 bytes per id plus a
few arrays per minute, and a whole batch is checked with one binary search per array. Minutes
older than the memory window are dropped; events that old are checked against ClickHouse by
the worker instead (see stage1.PartitionAggregator.resolve).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np

from streams.processors.periods import HOUR_MS

#: numpy's 16-byte strings: sortable, searchable; trailing zero bytes are padding, which keeps
#: distinct 16-byte values distinct
ID_DTYPE: Final = np.dtype("S16")
#: a minute's arrays are merged into one when it has more than this many
MERGE_AT: Final = 4


class DedupMemory:
    """Sorted arrays of ids per event minute; ``contains`` answers a batch at once."""

    __slots__ = ("_minutes", "_unsaved")

    def __init__(self) -> None:
        self._minutes: dict[int, list[np.ndarray]] = {}
        #: ids added since the last ``take_unsaved``, for incremental checkpoints
        self._unsaved: list[tuple[int, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(a.size for arrays in self._minutes.values() for a in arrays)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for arrays in self._minutes.values() for a in arrays)

    def contains(self, ids: np.ndarray, hours: np.ndarray) -> np.ndarray:
        """For each id (S16) with its event hour (epoch hours): kept with a minute of that hour."""
        found = np.zeros(ids.size, dtype=bool)
        if not self._minutes or not ids.size:
            return found
        by_hour: dict[int, list[np.ndarray]] = {}
        for minute, arrays in self._minutes.items():
            by_hour.setdefault(minute // HOUR_MS, []).extend(arrays)
        for hour in np.unique(hours).tolist():
            candidates = by_hour.get(hour)
            if not candidates:
                continue
            where = np.flatnonzero(hours == hour)
            wanted = ids[where]
            hit = np.zeros(where.size, dtype=bool)
            for kept in candidates:
                at = np.searchsorted(kept, wanted)
                at[at == kept.size] = 0
                hit |= kept[at] == wanted
            found[where] = hit
        return found

    def add(self, minute: int, ids: Sequence[bytes] | np.ndarray) -> None:
        """Keep ``ids`` (16-byte values, new ones) as seen in ``minute``."""
        array = np.sort(np.asarray(ids, dtype=ID_DTYPE))
        if not array.size:
            return
        self._insert(minute, array)
        self._unsaved.append((minute, array))

    def _insert(self, minute: int, array: np.ndarray) -> None:
        arrays = self._minutes.setdefault(minute, [])
        arrays.append(array)
        if len(arrays) > MERGE_AT:
            self._minutes[minute] = [np.sort(np.concatenate(arrays))]

    def expire(self, before_minute: int) -> None:
        """Forget the minutes before ``before_minute``."""
        for minute in [m for m in self._minutes if m < before_minute]:
            del self._minutes[minute]

    def take_unsaved(self) -> list[list[object]]:
        """Ids added since the last call, as [[minute, packed bytes], ...] (msgpack-able)."""
        merged: dict[int, list[np.ndarray]] = {}
        for minute, array in self._unsaved:
            merged.setdefault(minute, []).append(array)
        self._unsaved = []
        return [[m, np.concatenate(a).tobytes()] for m, a in sorted(merged.items())]

    def load(self, chunks: Iterable[Sequence[object]], from_minute: int) -> None:
        """Add checkpointed chunks (``take_unsaved``'s shape), skipping minutes already expired."""
        for minute, packed in chunks:
            if int(minute) < from_minute:  # type: ignore[call-overload]
                continue
            ids = np.frombuffer(packed, dtype=ID_DTYPE)  # type: ignore[call-overload]
            self._insert(int(minute), np.sort(ids))  # type: ignore[call-overload]
