"""The sink loop: consume, decode, price, insert once, then commit.

One thread consumes and decodes into a Buffer; when it is due (rows or age) it becomes a Block
that a writer thread looks up (which event_ids ClickHouse already has), filters and inserts
with a deterministic dedup token, retrying the SAME request until it succeeds. Offsets are
committed only after that, so a crash anywhere re-reads messages whose rows the lookup then
drops. At most two blocks are in flight (the second one's lookup and Arrow conversion overlap
the first one's insert; it leaves out the ids of the first, in memory) and one buffer
filling: when all are full the assigned partitions are paused (consume() keeps being called,
so the group keeps us), which bounds memory while ClickHouse is down or slow. Offsets are
committed block by block in consumption order.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import polars as pl
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams import events
from streams.deadletter import DeadLetter
from streams.errors import DecodeError, SinkError
from streams.pricing import SOURCE_UNPRICED, PriceCatalog, default_catalog
from streams.serde import AvroCodec
from streams.serde.columnar import ColumnarDecoder
from streams.settings import Settings
from streams.sink import frames
from streams.sink.metrics import SinkMetrics
from streams.sink.rows import Block, Buffer
from streams.sink.store import EventStore

log = logging.getLogger(__name__)
T = TypeVar("T")

CONSUME_BATCH = 5_000
POLL_SECONDS = 0.1
LAG_EVERY_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 5.0
#: blocks being written at once: the next block's lookup and Arrow conversion overlap the
#: insert before it (memory: this many blocks plus the one filling)
MAX_IN_FLIGHT = 2


def consumer_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        **settings.kafka_client_config(),
        "group.id": settings.sink_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # librdkafka's prefetch is the only other buffer: bound it too.
        "queued.max.messages.kbytes": 32_768,
    }
    if settings.sink_instance_id:
        config["group.instance.id"] = settings.sink_instance_id
    return config


def deadletter_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "compression.type": "lz4",
    }


class _Job:
    """One block on the writer thread (a daemon: a drain that times out does not wait for it)."""

    def __init__(self, block: Block, work: Callable[[Block, threading.Event], int | None]) -> None:
        self.block = block
        self.cancel = threading.Event()
        self.inserted: int | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._work = work
        self.thread = threading.Thread(target=self._run, name="sink-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.inserted = self._work(self.block, self.cancel)
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self.error = exc
        finally:
            self.done.set()


class Sink:
    """Kafka token events into ClickHouse, exactly once in effect (see clickhouse/README.md)."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: EventStore | None = None,
        metrics: SinkMetrics | None = None,
        catalog: PriceCatalog | None = None,
    ) -> None:
        self.settings = settings
        self.topic = settings.topic_events
        self.codec = AvroCodec("token_event")
        self.columnar = ColumnarDecoder(self.codec.current)
        self.catalog = catalog or default_catalog()
        self.pricer = frames.FramePricer(self.catalog)
        self.metrics = metrics or SinkMetrics()
        self.store = store or EventStore.connect(settings)
        self.consumer = Consumer(consumer_config(settings), logger=log)
        self.deadletters = Producer(deadletter_config(settings), logger=log)
        self.buffer = Buffer()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._stop = threading.Event()
        self._paused = False
        self._failed = False
        self._delivery_errors: list[str] = []
        self._next_lag = 0.0
        self._last_error_log = 0.0

    # -- control -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to drain and return (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """Consume until ``stop()``; then drain within ``sink_drain_seconds`` and close."""
        self.consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self._stop.is_set():
                self.step()
            self._drain(self.settings.sink_drain_seconds)
        except BaseException:
            # Commit nothing more: a later block's offsets would skip the one that failed.
            self._failed = True
            self._abandon()
            raise
        finally:
            self.consumer.close()
            self.deadletters.flush(5)
            self.store.close()

    def step(self) -> None:
        """One round: reap a finished insert, consume a batch, maybe hand the buffer over."""
        self._reap()
        timeout = POLL_SECONDS
        if self._paused and self._jobs:
            # nothing to fetch until the oldest insert in flight is done: wake when it is
            self._jobs[0].done.wait(POLL_SECONDS)
            self._reap()
            timeout = 0
        messages = self.consumer.consume(num_messages=CONSUME_BATCH, timeout=timeout)
        if messages:
            self._handle_batch(messages, events.now_ms())
            self.deadletters.poll(0)
        if self._due():
            self._hand_over()
        if time.monotonic() >= self._next_lag:
            self._update_lag()

    # -- consuming -----------------------------------------------------------------------------

    def _handle_batch(self, messages: list[Message], now_ms: int) -> None:
        """Messages in the current schema decode as one block of columns (serde/columnar.py);
        the rest, and every message of a block that does not decode exactly, one by one.

        The future bound is judged against each record's broker timestamp (``now_ms`` only
        when a record has none), as the worker does: a replayed backlog keeps its verdicts."""
        header = self.columnar.message_header
        size = len(header)
        bodies: list[bytes] = []
        batch: list[Message] = []
        partitions: list[int] = []
        offsets: list[int] = []
        stamps: list[int] = []
        for message in messages:
            value = message.value()
            if value is not None and value[:size] == header and message.error() is None:
                bodies.append(value[size:])
                batch.append(message)
                partitions.append(message.partition())  # type: ignore[arg-type]
                offsets.append(message.offset())  # type: ignore[arg-type]
                stamps.append(broker_time_ms(message, now_ms))
            else:
                self._handle(message, broker_time_ms(message, now_ms))
        if not batch:
            return
        frame = self.columnar.decode(bodies)
        if frame is None:
            for message, stamp in zip(batch, stamps, strict=True):
                self._handle(message, stamp)
            return
        self.buffer.note_many(partitions, offsets)
        limits = pl.lit(pl.Series("limit", stamps, dtype=pl.Int64) + events.MAX_FUTURE_MS)
        valid = frame.select(frames.surely_valid(limits)).to_series()
        if not valid.all():
            unsure = valid.not_().arg_true().to_list()
            for index, event in zip(unsure, frames.as_events(frame[unsure]), strict=True):
                self._check_and_add(batch[index], event, stamps[index], noted=True)
            keep = valid.arg_true().to_list()
            frame = frame[keep]
            partitions = [partitions[i] for i in keep]
            offsets = [offsets[i] for i in keep]
        priced = self.pricer.price(frame)
        if priced is None:  # a cost beyond UInt64: priced one by one (and refused) below
            kept = valid.arg_true().to_list()
            for index, event in zip(kept, frames.as_events(frame), strict=True):
                self._add_event(event, batch[index], noted=True)
            return
        unpriced = int((priced["cost_source"] == SOURCE_UNPRICED).sum())
        if unpriced:
            self.metrics.unpriced.inc(unpriced)
        self.buffer.add_frame(frames.insert_frame(priced, partitions, offsets))

    def _handle(self, message: Message, broker_ms: int) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                if error.fatal():
                    raise SinkError(f"fatal Kafka error: {error}")
                log.warning("kafka: %s", error)
            return
        try:
            event = self.codec.decode(message.value())
        except DecodeError as exc:
            self._dead_letter(message, "decode", exc.reason)
            return
        self._check_and_add(message, event, broker_ms)

    def _check_and_add(
        self, message: Message, event: events.Event, broker_ms: int, *, noted: bool = False
    ) -> None:
        """Validate ``event`` against the clock of its record (``broker_ms``), then add it."""
        if not events.surely_valid(event, broker_ms + events.MAX_FUTURE_MS):
            found = events.problems(event, broker_ms)
            if found:
                self._dead_letter(message, "invalid", "; ".join(found), noted=noted)
                return
        self._add_event(event, message, noted=noted)

    def _add_event(self, event: events.Event, message: Message, *, noted: bool = False) -> None:
        price = self.catalog.price(event)
        if price.cost_nanos > events.MAX_COST_NANOS:  # the worker's bound (stage 1)
            reason = (
                f"priced cost {price.cost_nanos} nano-USD is above the bound of "
                f"{events.MAX_COST_NANOS:,} ($10,000) per request"
            )
            self._dead_letter(message, "invalid", reason, noted=noted)
            return
        if price.source == SOURCE_UNPRICED:
            self.metrics.unpriced.inc()
        self.buffer.add(event, price, *_position(message), noted=noted)

    def _dead_letter(
        self, message: Message, kind: str, reason: str, *, noted: bool = False
    ) -> None:
        partition, offset = _position(message)
        self.buffer.dead_letter(partition, offset, kind, noted=noted)
        headers: list[tuple[str, str | bytes | None]] = list(
            DeadLetter(kind, reason, "sink", self.topic, partition, offset).headers()
        )
        while True:
            try:
                self.deadletters.produce(
                    self.settings.topic_deadletter,
                    value=message.value(),
                    key=message.key(),
                    headers=headers,
                    on_delivery=self._delivered,
                )
                break
            except BufferError:
                self.deadletters.poll(0.5)

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(str(error))

    def _due(self) -> bool:
        size = len(self.buffer)
        if size == 0:
            return False
        return (
            size >= self.settings.sink_batch_rows
            or self.buffer.age() >= self.settings.sink_flush_seconds
        )

    def _hand_over(self) -> None:
        if len(self._jobs) >= MAX_IN_FLIGHT:
            # Keep filling while the writers work; stop fetching only once the buffer is full.
            if len(self.buffer) >= self.settings.sink_batch_rows:
                self._pause(True)
            return
        self._start(self.buffer.take())
        self._pause(False)

    def _start(self, block: Block) -> None:
        """Write ``block`` on its own thread. Its lookup may run before the insert of the block
        still in flight lands, so the ids of that block are dropped from it here, in memory."""
        if self._jobs:
            block = block.without(self._jobs[-1].block)
        self._jobs.append(_Job(block, self._write))

    def _pause(self, paused: bool) -> None:
        if paused == self._paused:
            return
        assignment = self.consumer.assignment()
        if assignment:
            (self.consumer.pause if paused else self.consumer.resume)(assignment)
        self._paused = paused
        self.metrics.paused.set(1 if paused else 0)

    # -- writing (writer thread) ---------------------------------------------------------------

    def _write(self, block: Block, cancel: threading.Event) -> int | None:
        """Lookup, filter, insert; the number of rows inserted, None when cancelled."""
        keys = block.lookup_tsv()
        existing = self._retry(
            lambda: self.store.existing(keys), self.metrics.lookup_seconds, cancel
        )
        if existing is None:
            return None
        keep = block.keep(existing)
        if not keep:
            return 0
        table = block.to_arrow(keep)
        token = block.token(self.topic, keep)
        return self._retry(
            lambda: self.store.insert(table, token), self.metrics.insert_seconds, cancel
        )

    def _retry(self, call: Callable[[], T], latency: Any, cancel: threading.Event) -> T | None:
        """``call()`` until it succeeds (backoff up to 5 s); None once cancelled."""
        delay = 0.1
        while not cancel.is_set():
            started = time.monotonic()
            try:
                result = call()
            except Exception as exc:
                self.metrics.clickhouse_errors.inc()
                if time.monotonic() - self._last_error_log > 30:
                    self._last_error_log = time.monotonic()
                    log.warning("clickhouse unavailable, retrying: %s", _short(exc))
                cancel.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            latency.observe(time.monotonic() - started)
            return result
        return None

    # -- committing ----------------------------------------------------------------------------

    def _reap(self) -> None:
        """Commit finished blocks in consumption order: a block done early waits for the ones
        before it, so no commit ever passes a block that is not in ClickHouse."""
        while self._jobs and self._jobs[0].done.is_set():
            job = self._jobs.popleft()
            if job.error is not None:
                raise SinkError(f"sink writer failed: {job.error!r}") from job.error
            if job.inserted is None:  # cancelled: nothing after it may be committed either
                self._abandon()
                return
            self._commit(job.block, job.inserted)

    def _commit(self, block: Block, inserted: int) -> None:
        if self.deadletters.flush(30) > 0 or self._delivery_errors:
            raise SinkError(f"dead-letter delivery failed: {self._delivery_errors[:3]}")
        offsets = [TopicPartition(self.topic, p, last + 1) for p, (_, last) in block.ranges.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Typically a rebalance: the new owner re-reads these and the lookup drops them.
            log.warning("offset commit failed (rows are in, re-reads will be dropped): %s", exc)
        dead = sum(block.dead.values())
        self.metrics.rows_inserted.inc(inserted)
        self.metrics.messages.labels("inserted").inc(inserted)
        self.metrics.messages.labels("duplicate").inc(block.messages - dead - inserted)
        self.metrics.messages.labels("deadletter").inc(dead)
        for kind, count in block.dead.items():
            self.metrics.deadlettered.labels(kind).inc(count)

    def _drain(self, timeout: float) -> None:
        """Finish the blocks in flight, then the buffer, within ``timeout``; else drop them.

        Dropping is safe: nothing was committed, so the next owner re-reads those messages.
        """
        deadline = time.monotonic() + timeout
        if len(self.buffer):
            self._start(self.buffer.take())
        finished = self._finish(deadline)
        if not finished:
            log.warning(
                "drain timed out after %.0fs: uncommitted messages will be re-read", timeout
            )
        self._abandon()

    def _finish(self, deadline: float) -> bool:
        while self._jobs:
            if not self._jobs[0].done.wait(max(0.0, deadline - time.monotonic())):
                return False
            self._reap()
        return True

    def _abandon(self) -> None:
        """Forget uncommitted work; a writer still retrying stops at its next attempt."""
        for job in self._jobs:
            job.cancel.set()
        self._jobs.clear()
        self.buffer.clear()
        self._paused = False
        self.metrics.paused.set(0)

    # -- rebalances ----------------------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [p.partition for p in partitions])
        self._abandon()

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._failed:
            self._abandon()
            return
        log.info("revoked %s: draining", [p.partition for p in partitions])
        self._drain(self.settings.sink_drain_seconds)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("lost %s: dropping uncommitted work", [p.partition for p in partitions])
        self._abandon()

    def _update_lag(self) -> None:
        self._next_lag = time.monotonic() + LAG_EVERY_SECONDS
        try:
            assignment = self.consumer.assignment()
            for tp in self.consumer.position(assignment):
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    self.metrics.lag.labels(str(tp.partition)).set(max(0, high - tp.offset))
        except KafkaException as exc:
            log.debug("lag not available: %s", exc)


def broker_time_ms(message: Message, default: int) -> int:
    """The record's broker timestamp (the events topic uses LogAppendTime), else ``default``."""
    kind, stamp = message.timestamp()
    return stamp if kind != TIMESTAMP_NOT_AVAILABLE and stamp > 0 else default


def _position(message: Message) -> tuple[int, int]:
    partition, offset = message.partition(), message.offset()
    if partition is None or offset is None:  # set on every consumed message
        raise SinkError("consumed a message without partition or offset")
    return partition, offset


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"
