"""The faust fast path: one faust message per fetched partition batch, faust's acks and commits.

faust hands every message to a stream on its own: the usual per-event agent ran at 1.1-1.7k
events/s in the runs of docs/performance.md. Here the consumer's fetch step yields ONE faust
message per fetched partition batch for the worker's batch topics (``BatchConsumer.getmany``);
agents, acks, commits, Tables and changelogs are still faust's. Other topics (changelogs
during recovery) keep the per-message path. Below faust, aiokafka hands those batches over as
its C records, without a Python object per record (``streams.worker.fetch``), and faust's
commit step finds the acked run without Python work per offset (``BatchConsumer._new_offset``).

These classes override faust-streaming internals: it is pinned exactly and
tests/unit/test_faust_internals.py fails loudly if an upgrade changes what they rely on.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, cast

import faust
import numpy as np
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from faust.types.tuples import ConsumerMessage

log = logging.getLogger(__name__)

#: faust-streaming internals this module relies on; tests/unit/test_faust_internals.py pins them.
FAUST_VERSION = "0.15.3"

#: longest a fetch waits at the broker for new data. faust hard-codes 1500 ms, and aiokafka
#: fetches only partitions with nothing buffered, so a long poll on idle partitions (e.g. the
#: partials) held back each hop by up to 1.5 s: alert p50 2.5 s at 10k events/s, 0.15 s at 50.
FETCH_MAX_WAIT_MS = 50
_VALUE = operator.attrgetter("value")


class BatchConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread with a short fetch wait (see FETCH_MAX_WAIT_MS)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
        return consumer


class BatchConsumer(aiokafka_driver.Consumer):
    """aiokafka consumer whose fetch step yields one message per partition batch.

    For topics in ``app.batch_topics`` the yielded ConsumerMessage has the offset of the LAST
    record and ``value`` = the list of aiokafka records. The offsets before the last are
    registered as a gap (``Consumer._add_gap``), as faust does for a compacted topic, so
    acking the batch message commits the whole batch.
    """

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as exc:  # as faust does: retried on the next fetch
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        batch_topics: set[str] = getattr(self.app, "batch_topics", set())
        singles: dict[TP, Any] = {}
        for tp, batch in records.items():
            if not batch:
                continue
            if tp.topic not in batch_topics:
                singles[tp] = batch
                continue
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                return
            if (
                active_partitions is None
                or tp in active_partitions
                or tp in self._buffered_partitions
            ):
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                first, last = batch[0].offset, batch[-1].offset
                if last > first and self.app.topics.acks_enabled_for(tp.topic):
                    # the offsets before the last are acked with it; faust's drain loop
                    # would add this gap too, except after a read offset of 0 (falsy there)
                    await self._add_gap(tp, first, last - 1)
                yield tp, self._to_batch_message(tp, batch)
        if singles:
            for tp, record in self.scheduler.iterate(singles):
                if not self.flow_active or self.app.consumer_generation_id != generation_id:
                    break
                if (
                    active_partitions is None
                    or tp in active_partitions
                    or tp in self._buffered_partitions
                ):
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    yield tp, self._to_message(tp, record)

    async def wait_empty(self) -> None:
        """faust's wait for every fetched message to be acked, skipped while stopping (see
        ``SpendApp._stop_consumer``): then faust commits what is acked and stops."""
        if self.should_stop or getattr(self.app, "_stopping_consumer", False):
            return
        await super().wait_empty()

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        """faust's ``Consumer._new_offset`` without Python work per offset, and without its
        crawl.

        faust expands the gaps (here every offset of a batch but the last) into the acked
        offsets, then commits their first run of consecutive numbers. Its drain loop also
        registers a gap up to and including each batch's last offset, which is acked too: one
        duplicate per batch, and a duplicate ends faust's run. So faust committed ONE batch
        per commit tick (1 s): at 200 events/s the worker's committed offsets fell minutes
        behind what it had processed and checkpointed (the fault runs' worker "stall":
        tests/faults/README.md), and a restart replayed all of it. Here the offsets are
        deduplicated (and those below the committed offset dropped) before the run is found
        with numpy. tests/unit/test_faust_internals.py compares with faust's on many cases.
        """
        acked = self._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gap_for_tp = self._gap[tp]
        if gap_for_tp:  # as faust does
            candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
            if candidates:
                stuff_to_add: list[int] = []
                for entry in candidates:
                    stuff_to_add.extend(range(entry.begin, entry.end))
                new_max_offset = max(stuff_to_add[-1], max_offset + 1)
                acked.extend(stuff_to_add)
                gap_for_tp.chop(0, new_max_offset)
        values = np.unique(np.array(acked, dtype=np.int64))  # sorted, each offset once
        committed_offset = self._committed_offset[tp]
        index = self._acked_index[tp]
        if committed_offset:
            stale = values < committed_offset  # committed already
            if stale.any():
                values = values[~stale]
                index.difference_update([o for o in index if o < committed_offset])
        if not values.size:
            acked.clear()
            return None
        if committed_offset and int(values[0]) - committed_offset > 1:
            acked[:] = values.tolist()
            return None
        first = int(values[0])
        breaks = np.flatnonzero(np.diff(values) != 1)
        run = int(breaks[0]) + 1 if breaks.size else int(values.size)
        last = int(values[run - 1])
        acked[:] = values[run:].tolist()
        index.difference_update([o for o in index if first <= o <= last])
        return last + 1

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets, and batch partitions WITHOUT one to their start.

        aiokafka seeks only partitions whose committed offset is > 0 and leaves the others
        at their fetch position. Records fetched while a rebalance or table recovery ends are
        dropped by faust (flow stopped, generation changed) and then re-read from the
        committed offset; a partition with nothing committed yet was never re-read and
        stalled. Re-reading it from the start is safe: stage 1 skips offsets at or below its
        restored checkpoint and stage 2 keeps the newest partial per source.
        """
        committed = await super().seek_to_committed()
        batch_topics: set[str] = getattr(self.app, "batch_topics", set())
        fresh = [tp for tp, offset in committed.items() if tp.topic in batch_topics and not offset]
        if fresh:
            earliest = await self.earliest_offsets(*fresh)
            for tp in fresh:
                start = earliest.get(tp) or 0
                log.debug(
                    "%s[%d]: nothing committed yet, reading from %d", tp.topic, tp.partition, start
                )
                await self._seek(tp, start)
        return committed

    def _to_batch_message(self, tp: TP, batch: list[Any]) -> ConsumerMessage:
        last = batch[-1]  # aiokafka's C record (streams/worker/fetch.py) or a ConsumerRecord
        return ConsumerMessage(
            tp.topic,
            tp.partition,
            last.offset,
            last.timestamp / 1000.0 if last.timestamp is not None else 0.0,
            last.timestamp_type,
            [],
            None,
            cast(Any, batch),
            None,
            0,
            sum(map(len, filter(None, map(_VALUE, batch)))),
            tp,
            generation_id=self.app.consumer_generation_id,
        )


async def track_topic(client: Any, topic: str) -> None:
    """Make aiokafka's client ``client`` keep ``topic`` in every metadata update.

    While aiokafka's client tracks no topic, a metadata update (the periodic refresh, or one
    after a broken connection) fetches every topic, and ``send`` to a topic it then knows
    does not add it to the topics it asks for (``_wait_on_metadata`` returns early). Once
    another topic is tracked, every update asks for the tracked topics only and replaces the
    whole partition map: the untracked topic's partitions vanish, a batch for it not yet
    sent has no leader, and the sender asks for metadata again and again, never for that
    topic, until the batch expires (faust: 20 minutes): issue 13's stall, as far as found
    (tests/faults/README.md, tests/integration/test_producer_metadata.py,
    tests/unit/test_aiokafka_internals.py).
    """
    if topic not in client._topics:
        await client.add_topic(topic)


class TrackingProducer(aiokafka_driver.Producer):
    """faust's aiokafka producer; every topic it sends to is tracked first (``track_topic``)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        await track_topic(self._ensure_producer().client, topic)
        return await super().send(
            topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
        )


class BatchTransport(aiokafka_driver.Transport):
    Consumer: ClassVar[type] = BatchConsumer
    Producer: ClassVar[type] = TrackingProducer


class BatchTopic(faust.Topic):
    """A topic whose events carry a list of raw records (no per-message deserialization)."""

    @property
    def queue(self) -> Any:
        """The agent's buffer, NOT emptied when faust resumes flow (unlike a plain Topic's).

        faust clears every channel on ``flow_control.resume()``, expecting a seek to the
        committed offsets to re-read what was dropped; but at the end of table recovery it
        seeks first and resumes after, so batches fetched in between were dropped for good
        (the worker then stalled after a restart). Kept batches are safe: batches of an older
        consumer generation are skipped by the stream, and re-reads are idempotent (stage 1
        skips offsets it already applied; stage 2 keeps the newest partial per source).
        """
        if self._queue is None:
            maxsize = self.maxsize
            if maxsize is None:
                maxsize = self.app.conf.stream_buffer_maxsize
            self._queue = self.app.FlowControlQueue(maxsize=maxsize, clear_on_resume=False)
        return self._queue

    def _compile_decode(self) -> None:
        create_event = self.app.create_event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return create_event(None, message.value, [], message)

        self.decode = decode  # type: ignore[method-assign]


class SpendApp(faust.App):
    """faust.App using BatchTransport for consuming."""

    batch_topics: set[str]

    async def _stop_consumer(self) -> None:
        """faust's, without waiting for every fetched message to be acked.

        The worker acks a batch only at the checkpoint that holds it, and no checkpoint comes
        once the app stops: faust's wait (``stream_wait_empty``) then never ended, and a
        SIGTERMed worker hung until killed (found by the fault runs' rebalance). What is not
        acked is replayed from the last commit by the next owner, as after a SIGKILL;
        rebalances still wait (``BatchConsumer.wait_empty``).
        """
        self._stopping_consumer = True
        await super()._stop_consumer()

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)
