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
import dataclasses
import fcntl
import hashlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
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
from streams.sink import failures, frames
from streams.sink.failures import Failure
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
#: part of the drain bound kept for cancelling inserts still in flight (KILL QUERY ... SYNC)
KILL_RESERVE_SECONDS = 5.0
#: dead-letter kind of rows ClickHouse refused (the reason is ClickHouse's own)
REJECTED = "rejected"


def consumer_config(settings: Settings, instance_id: str | None = None) -> dict[str, Any]:
    """The sink's consumer: a static member (``instance_id``) with a short session, so that a
    restarted sink gets its partitions back at once and a dead one loses them in seconds."""
    session_ms = int(settings.sink_session_timeout_s * 1000)
    config: dict[str, Any] = {
        **settings.kafka_client_config(),
        "group.id": settings.sink_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # librdkafka's prefetch is the only other buffer: bound it too.
        "queued.max.messages.kbytes": 32_768,
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": max(500, session_ms // 4),
    }
    instance_id = instance_id or settings.sink_instance_id
    if instance_id:
        config["group.instance.id"] = instance_id
    return config


class InstanceSlot:
    """A stable static-membership id for a sink whose settings name none:
    ``<hostname>-sink-<n>``, n the lowest slot of this host and group that no running sink
    holds (an flock the kernel releases when the process dies). A sink restarted after a crash
    gets the same id, so the broker hands it the same partitions without a rebalance; two sinks
    on one host get different ids. In Kubernetes the hostname is the pod name."""

    def __init__(self, settings: Settings) -> None:
        scope = hashlib.blake2b(settings.sink_group.encode(), digest_size=6).hexdigest()
        folder = settings.home / "sink-slots" / scope
        folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0] or "localhost"
        n = 0
        while True:
            handle = open(folder / f"{n}.lock", "a")  # noqa: SIM115 - held for the sink's life
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                n += 1
                continue
            break
        self._handle = handle
        self.instance_id = f"{host}-sink-{n}"

    def release(self) -> None:
        self._handle.close()


def deadletter_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "compression.type": "lz4",
    }


class _Refused(Exception):
    """ClickHouse refused the data of one insert (a bad-data error code): bisect it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class Written:
    """What became of one block: rows inserted, and rows ClickHouse refused (dead-lettered)."""

    inserted: int = 0
    rejected: int = 0


class _Job:
    """One block on the writer thread (a daemon: a drain that times out does not wait for it)."""

    def __init__(
        self, block: Block, work: Callable[[Block, threading.Event], Written | None]
    ) -> None:
        self.block = block
        self.cancel = threading.Event()
        self.inserted: Written | None = None
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
        # kills and checks during a drain: short timeouts, so a stalled server cannot hold the
        # drain past its bound (the writer's client waits up to 60 s for an insert)
        self.control = EventStore.connect(settings, timeout=_kill_reserve(settings))
        # Every insert's query_id says whose it is and which partitions its rows came from:
        # ``<prefix><partitions>/<sink id>/<n>``. A drain kills this sink's own; a new owner
        # kills another sink's still running on its partitions before its lookup (fence).
        scope = hashlib.blake2b(f"{settings.sink_group}/{self.topic}".encode(), digest_size=6)
        self.query_prefix = f"spendstream-sink/{scope.hexdigest()}/"
        self.sink_id = uuid.uuid4().hex[:12]
        self._queries = 0
        self._query_lock = threading.Lock()
        self._rejects: Consumer | None = None
        self.slot = None if settings.sink_instance_id else InstanceSlot(settings)
        self.instance_id = self.slot.instance_id if self.slot else settings.sink_instance_id
        self.consumer = Consumer(consumer_config(settings, self.instance_id), logger=log)
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
        try:
            self._retry(
                lambda _q: self.store.check_dedup(f"{self.sink_id}-{uuid.uuid4().hex}"),
                None,
                self._stop,
                "dedup check",
            )
            self.consumer.subscribe(
                [self.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
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
            if self._rejects is not None:
                self._rejects.close()
            self.store.close()
            self.control.close()
            if self.slot is not None:
                self.slot.release()

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

    def _write(self, block: Block, cancel: threading.Event) -> Written | None:
        """Fence, lookup, filter, insert; what was written, None when cancelled."""
        written = Written()
        parts = sorted(block.ranges)
        if not self._retry(lambda _q: self._fence(parts), None, cancel, "fence"):
            return None
        keep = self._absent(block, list(range(len(block))), cancel)
        if keep is None:
            return None
        if keep and not self._insert(block, keep, cancel, written):
            return None
        return written

    def _absent(self, block: Block, rows: list[int], cancel: threading.Event) -> list[int] | None:
        """The positions among ``rows`` whose event_id ClickHouse does not hold yet."""
        keys = block.lookup_tsv(rows)
        existing = self._retry(
            lambda _q: self.store.existing(keys), self.metrics.lookup_seconds, cancel, "lookup"
        )
        if existing is None:
            return None
        absent = set(block.keep(existing))
        return [i for i in rows if i in absent]

    def _insert(
        self, block: Block, keep: list[int], cancel: threading.Event, written: Written
    ) -> bool:
        """Insert rows ``keep``; rows ClickHouse refuses are found by bisection and
        dead-lettered, the rest stored. False when cancelled."""
        table = block.to_arrow(keep)
        token = block.token(self.topic, keep)
        parts = ".".join(str(p) for p in sorted(block.ranges))
        try:
            inserted = self._retry(
                lambda qid: self.store.insert(table, token, qid),
                self.metrics.insert_seconds,
                cancel,
                "insert",
                refusable=True,
                parts=parts,
            )
        except _Refused as exc:
            if len(keep) == 1:
                self._reject(block, keep[0], exc.reason)
                written.rejected += 1
                return True
            # A refused insert of several internal blocks may have stored the first ones:
            # each half asks again which of its ids are in.
            half = len(keep) // 2
            for part in (keep[:half], keep[half:]):
                absent = self._absent(block, part, cancel)
                if absent is None:
                    return False
                if absent and not self._insert(block, absent, cancel, written):
                    return False
            return True
        if inserted is None:
            return False
        written.inserted += inserted
        return True

    def _reject(self, block: Block, row: int, reason: str) -> None:
        """Dead-letter the message of ``row`` (read again from Kafka: the value and key as
        they were), kind ``rejected`` with ClickHouse's reason."""
        partition = int(block.frame["kafka_partition"][row])
        offset = int(block.frame["kafka_offset"][row])
        log.warning("clickhouse refused the row at %s/%s: %s", partition, offset, reason)
        if self._rejects is None:
            self._rejects = Consumer(
                {
                    **self.settings.kafka_client_config(),
                    "group.id": f"{self.settings.sink_group}-rejects",
                    "enable.auto.commit": False,
                },
                logger=log,
            )
        self._rejects.assign([TopicPartition(self.topic, partition, offset)])
        deadline = time.monotonic() + 30
        while True:
            message = self._rejects.poll(1.0)
            if message is not None and message.error() is None and message.offset() == offset:
                break
            if time.monotonic() > deadline:
                raise SinkError(f"could not read back the refused message {partition}/{offset}")
        headers: list[tuple[str, str | bytes | None]] = list(
            DeadLetter(REJECTED, reason, "sink", self.topic, partition, offset).headers()
        )
        self.deadletters.produce(
            self.settings.topic_deadletter,
            value=message.value(),
            key=message.key(),
            headers=headers,
            on_delivery=self._delivered,
        )

    def _query_id(self, parts: str) -> str:
        with self._query_lock:
            self._queries += 1
            return f"{self.query_prefix}{parts}/{self.sink_id}/{self._queries}"

    def _fence(self, partitions: Sequence[int]) -> bool:
        """Kill inserts of OTHER sinks still running on ``partitions`` (a previous owner that
        died or stalled with an insert in flight) and wait until the server shows none: only
        then may this sink's lookup ask which rows are in."""
        wanted = set(partitions)
        for _ in range(50):
            foreign = [q for q in self.store.running(self.query_prefix) if self._foreign(q, wanted)]
            if not foreign:
                return True
            log.warning("cancelling %d insert(s) of a previous owner: %s", len(foreign), foreign)
            self.store.kill(foreign)
        raise SinkError(f"inserts of a previous owner keep running: {foreign}")

    def _foreign(self, query_id: str, partitions: set[int]) -> bool:
        fields = query_id[len(self.query_prefix) :].split("/")
        if len(fields) != 3 or fields[1] == self.sink_id:
            return False
        return bool(partitions & {int(p) for p in fields[0].split(".") if p.isdigit()})

    def _retry(
        self,
        call: Callable[[str | None], T],
        latency: Any,
        cancel: threading.Event,
        what: str,
        *,
        refusable: bool = False,
        parts: str | None = None,
    ) -> T | None:
        """``call(query_id)`` until it succeeds, retrying transient failures only (backoff up
        to 5 s); None once cancelled. Refused data raises _Refused (if ``refusable``), any
        other failure SinkError: retrying cannot get past it."""
        delay = 0.1
        while not cancel.is_set():
            started = time.monotonic()
            query_id = self._query_id(parts) if parts is not None else None
            try:
                result = call(query_id)
            except SinkError:
                raise
            except Exception as exc:
                self.metrics.clickhouse_errors.inc()
                kind = failures.classify(exc)
                if kind is Failure.BAD_DATA and refusable:
                    raise _Refused(failures.reason(exc)) from exc
                if kind is not Failure.TRANSIENT:
                    hint = (
                        " (run `spendstream migrate` first)"
                        if failures.error_code(exc) in (60, 81)  # UNKNOWN_TABLE, _DATABASE
                        else ""
                    )
                    raise SinkError(
                        f"ClickHouse refused the sink's {what} (not retried, it cannot get "
                        f"better by itself): {failures.reason(exc)}{hint}"
                    ) from exc
                if time.monotonic() - self._last_error_log > 30:
                    self._last_error_log = time.monotonic()
                    log.warning("clickhouse unavailable, retrying %s: %s", what, _short(exc))
                cancel.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            if latency is not None:
                latency.observe(time.monotonic() - started)
            return result
        return None

    # -- committing ----------------------------------------------------------------------------

    def _reap(self) -> None:
        """Commit finished blocks in consumption order: a block done early waits for the ones
        before it, so no commit ever passes a block that is not in ClickHouse."""
        while self._jobs and self._jobs[0].done.is_set():
            job = self._jobs.popleft()
            if isinstance(job.error, SinkError):
                raise job.error
            if job.error is not None:
                raise SinkError(f"sink writer failed: {job.error!r}") from job.error
            if job.inserted is None:  # cancelled: nothing after it may be committed either
                self._abandon()
                return
            self._commit(job.block, job.inserted)

    def _commit(self, block: Block, written: Written) -> None:
        if self.deadletters.flush(30) > 0 or self._delivery_errors:
            raise SinkError(f"dead-letter delivery failed: {self._delivery_errors[:3]}")
        offsets = [TopicPartition(self.topic, p, last + 1) for p, (_, last) in block.ranges.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Typically a rebalance: the new owner re-reads these and the lookup drops them.
            log.warning("offset commit failed (rows are in, re-reads will be dropped): %s", exc)
        inserted = written.inserted
        dead = sum(block.dead.values()) + written.rejected
        self.metrics.rows_inserted.inc(inserted)
        self.metrics.messages.labels("inserted").inc(inserted)
        self.metrics.messages.labels("duplicate").inc(block.messages - dead - inserted)
        self.metrics.messages.labels("deadletter").inc(dead)
        for kind, count in block.dead.items():
            self.metrics.deadlettered.labels(kind).inc(count)
        if written.rejected:
            self.metrics.deadlettered.labels(REJECTED).inc(written.rejected)

    def _drain(self, timeout: float) -> None:
        """Finish the blocks in flight, then the buffer, within ``timeout``; else drop them.

        Dropping is safe: nothing was committed, so the next owner re-reads those messages.
        """
        deadline = time.monotonic() + timeout
        if len(self.buffer):
            self._start(self.buffer.take())
        finished = self._finish(deadline - _kill_reserve(self.settings))
        if not finished:
            log.warning(
                "drain timed out after %.0fs: uncommitted messages will be re-read", timeout
            )
            self._cancel_in_flight(deadline)
        self._abandon()

    def _cancel_in_flight(self, deadline: float) -> None:
        """Stop the writers and kill this sink's inserts still running on the server, until
        system.processes shows none (KILL QUERY ... SYNC): only then is it certain that no
        insert of ours lands after the next owner's lookup. When the server does not answer
        before ``deadline`` the partitions go anyway (the bound holds); the next owner then
        kills what is left before its first lookup (``_fence``)."""
        for job in self._jobs:
            job.cancel.set()
        mine = f"{self.query_prefix}"
        while time.monotonic() < deadline:
            try:
                running = [q for q in self.control.running(mine) if f"/{self.sink_id}/" in q]
                if not running:
                    log.info("no insert of this sink is running any more")
                    return
                self.control.kill(running)
            except Exception as exc:
                log.warning("could not cancel inserts in flight: %s", _short(exc))
                time.sleep(0.2)
        log.error(
            "inserts of this sink may still be running on ClickHouse (no answer within the "
            "drain bound): the next owner of its partitions cancels them before its lookup"
        )

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
        log.info("assigned %s (member %s)", [p.partition for p in partitions], self.instance_id)
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


def _kill_reserve(settings: Settings) -> float:
    """The end of the drain bound kept for cancelling inserts (also each control request's
    timeout, so that a server that does not answer cannot hold the drain past its bound)."""
    return min(KILL_RESERVE_SECONDS, settings.sink_drain_seconds / 2)


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
