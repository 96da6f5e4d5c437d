"""aiokafka's fetched records for the batch topics, without a Python object per record.

aiokafka parses a fetched record batch in C, then wraps every record in a Python
``ConsumerRecord`` through a generator, one ``next()`` at a time: ~0.9 us per record against
~0.25 us for the C records alone (measured here, 225-byte events). The worker's batch topics
(streams/worker/) read only ``offset``, ``key``, ``value`` and ``timestamp`` of each record, which
the C records have, so for those topics ``FetchResult.getall`` returns the C records of each
producer batch in one step. Every other topic, and every case this does not cover (a
``max_records`` limit, read_committed isolation), takes aiokafka's own path unchanged.

This replaces two classes in ``aiokafka.consumer.fetcher`` (its ``Fetcher`` builds them by
module-level name): aiokafka is pinned exactly and tests/unit/test_aiokafka_internals.py fails
loudly if an upgrade changes what this relies on.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.consumer import fetcher as fetcher_mod
from aiokafka.structs import TopicPartition

#: the aiokafka version this module was checked against
AIOKAFKA_VERSION = "0.14.0"
_READ_UNCOMMITTED = 0  # aiokafka.util.READ_UNCOMMITTED
#: topics whose records stay aiokafka's C records (``install`` adds to it)
_fast_topics: set[str] = set()


class FetchedBatch(list[Any]):
    """One partition's fetched records, with when the client received and handed them over
    (UTC seconds): the fetch hops of the worker's histograms (streams/worker/metrics.py)."""

    __slots__ = ("received", "taken")

    def __init__(self, records: list[Any], received: float, taken: float) -> None:
        super().__init__(records)
        self.received = received
        self.taken = taken


class BatchTopicRecords(fetcher_mod.PartitionRecords):
    """``PartitionRecords`` that can also hand over everything fetched at once (``drain``)."""

    next_fetch_offset: int

    def fast(self) -> bool:
        tp: TopicPartition = self._tp
        return tp.topic in _fast_topics and self._isolation_level == _READ_UNCOMMITTED

    def drain(self) -> list[Any]:
        """Every record at or after the fetch position, as aiokafka's C records; the same
        records, offsets and next fetch offset as iterating ``_unpack_records``."""
        out: list[Any] = []
        records = self._records
        position = self.next_fetch_offset
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                raise kafka_errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
            if not batch.is_control_batch:
                found = list(batch)
                if found and found[0].offset < position:  # a batch begun before the position
                    found = [r for r in found if r.offset >= position]
                out.extend(found)
            position = batch.next_offset
        self.next_fetch_offset = position
        return out


class BatchTopicFetchResult(fetcher_mod.FetchResult):
    _partition_records: Any

    def getall(self, max_records: int | None = None) -> list[Any]:
        records = self._partition_records
        if not (max_records is None and isinstance(records, BatchTopicRecords) and records.fast()):
            return list(super().getall(max_records))
        if not self.check_assignment(self._topic_partition) or not self.has_more():
            return []
        found = records.drain()
        self._update_position()
        self._partition_records = None
        # aiokafka stamps a FetchResult (monotonic) when the fetch response is parsed
        now = time.time()
        created: float = getattr(self, "_created", time.monotonic())
        return FetchedBatch(found, now - (time.monotonic() - created), now)


def install(topics: set[str]) -> None:
    """Use the C records for ``topics`` from now on, in this process (idempotent)."""
    _fast_topics.update(topics)
    fetcher_mod.PartitionRecords = BatchTopicRecords
    fetcher_mod.FetchResult = BatchTopicFetchResult
