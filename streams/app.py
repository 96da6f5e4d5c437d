"""The faust worker: partition-batch fast path, exact two-stage budget totals, alerts.

Why it is built this way (see ../shared/notes/performance.md):

* faust hands every message to a stream on its own (~80 us of framework per event). Here the
  consumer's fetch step yields ONE faust message per fetched partition batch for the events
  and partials topics (``BatchConsumer.getmany``); agents, acks, commits, Tables and
  changelogs are still faust's. Other topics (changelogs during recovery) keep the
  per-message path. Below faust, aiokafka hands those batches over as its C records, without a
  Python object per record (streams/fetch.py), and faust's commit step finds the acked run
  without Python work per offset (``BatchConsumer._new_offset``).
* Work is accumulated in plain dicts (streams/processors/) and state is written behind: each
  partition's whole state is checkpointed atomically into a changelog-backed Table every
  ``worker_flush_seconds``, never once per event. A batch is acked only after the checkpoint
  that contains it is written, so committed offsets never run ahead of saved state, and
  events at or below a restored checkpoint's offset are skipped on replay: a SIGKILL and
  restart counts every event exactly once.
* Org and team totals are exact although an org spans every partition: stage 1 publishes
  cumulative per-partition partials keyed by budget id; stage 2 keeps the newest partial of
  each source partition and sums them (idempotent under replays and rebalances).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import itertools
import logging
import operator
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, ClassVar, cast

import click
import faust
import msgspec
import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams import fetch
from streams.budgets import BudgetView, StaticBudgets, budget_topics
from streams.deadletter import DeadLetter
from streams.pricing import default_catalog
from streams.processors import checkpoint
from streams.processors.budgets import Budget
from streams.processors.stage1 import (
    PartitionAggregator,
    Stage1Config,
    Stage1Output,
    rollup_rows,
)
from streams.processors.stage2 import BaselineRequest, BudgetTotals, Stage2Config, Stage2Output
from streams.serde import AvroCodec
from streams.serde.columnar import ColumnarDecoder
from streams.settings import Settings, env_name
from streams.topics import TopicSpec, ensure_topics

log = logging.getLogger(__name__)

#: faust-streaming internals this module relies on; tests/unit/test_faust_internals.py pins them.
FAUST_VERSION = "0.15.3"


# ============================================================================ faust fast path


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

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        """faust's ``Consumer._new_offset``, same result, without Python work per offset.

        faust expands the gaps (here every offset of a batch but the last) into the acked
        offsets, then finds their first run of consecutive numbers with a Python lambda per
        offset (1.3 % of the stage-1 agent's CPU, profiling loadtest/bench_worker.py). numpy finds
        the same run: it ends at a gap or at a duplicate (faust's gap also holds the acked
        offset, so duplicates are common). tests/unit/test_faust_internals.py compares both on
        many cases.
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
        acked.sort()
        committed_offset = self._committed_offset[tp]
        if committed_offset and acked[0] - committed_offset > 1:
            return None
        first = acked[0]
        breaks = np.flatnonzero(np.diff(np.array(acked, dtype=np.int64)) != 1)
        run = int(breaks[0]) + 1 if breaks.size else len(acked)
        last = acked[run - 1]
        del acked[:run]
        index = self._acked_index[tp]
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
        last = batch[-1]  # aiokafka's C record (streams/fetch.py) or a ConsumerRecord
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


class BatchTransport(aiokafka_driver.Transport):
    Consumer: ClassVar[type] = BatchConsumer


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

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


# ============================================================================ configuration


def broker_settings(settings: Settings) -> dict[str, Any]:
    """faust/aiokafka connection settings from our librdkafka-style settings (SASL/TLS)."""
    config = settings.kafka_client_config()
    servers = config["bootstrap.servers"].split(",")
    out: dict[str, Any] = {"broker": [f"aiokafka://{s.strip()}" for s in servers]}
    protocol = settings.kafka_security_protocol
    context: ssl.SSLContext | None = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_tls_ca) if settings.kafka_tls_ca else None
        )
        if settings.kafka_tls_cert and settings.kafka_tls_key:
            context.load_cert_chain(str(settings.kafka_tls_cert), str(settings.kafka_tls_key))
    if protocol.startswith("SASL"):
        out["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=settings.kafka_sasl_password.reveal() if settings.kafka_sasl_password else "",
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    elif context is not None:
        out["broker_credentials"] = faust.SSLCredentials(context)
    return out


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    stage1: Stage1Config = dataclasses.field(default_factory=Stage1Config)
    stage2: Stage2Config = dataclasses.field(default_factory=Stage2Config)
    flush_interval_s: float = 1.0
    publish_rollups: bool = True
    #: also run the faust web server (off: workers need no HTTP port)
    web: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        return cls(
            stage1=Stage1Config(allowed_lateness_ms=settings.allowed_lateness_s * 1000),
            flush_interval_s=settings.worker_flush_seconds,
        )


def partials_topic(settings: Settings) -> str:
    return f"{settings.worker_id}-budget-partials"


def worker_topics(settings: Settings) -> list[TopicSpec]:
    parts = settings.event_partitions
    return [
        TopicSpec(settings.topic_events, parts, {"compression.type": "producer"}),
        TopicSpec(settings.topic_deadletter, parts, {"retention.ms": str(30 * 86_400_000)}),
        TopicSpec(settings.topic_alerts, parts),
        TopicSpec(settings.topic_rollups, parts),
        TopicSpec(partials_topic(settings), parts, {"retention.ms": str(7 * 86_400_000)}),
        *budget_topics(settings),
    ]


# ============================================================================ alert log


class AlertLog:
    """Ids of every alert already on the alerts topic: the last guard against duplicates.

    Stage state remembers what it alerted, but a worker killed between publishing an alert
    and checkpointing would raise it again when replaying; reading the topic's ids on every
    (re)assignment closes that gap. Alerts are few, so reading them all is cheap.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ids: set[str] = set()
        self.generation: int | None = None

    def load(self, timeout: float = 30.0) -> int:
        config = dict(self.settings.kafka_client_config())
        config.update({"group.id": "spendstream-alert-log", "enable.auto.commit": False})
        consumer = Consumer(config)
        topic = self.settings.topic_alerts
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
            if meta is None or meta.error is not None:
                return 0
            ends: dict[int, int] = {}
            parts = []
            for p in meta.partitions:
                tp = TopicPartition(topic, p, OFFSET_BEGINNING)
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
                if high > low:
                    ends[p] = high
                    parts.append(tp)
            if not parts:
                return 0
            consumer.assign(parts)
            deadline = time.monotonic() + timeout
            while ends and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=1000, timeout=0.2):
                    if msg.error():
                        continue
                    key = msg.key()
                    if key:
                        self.ids.add(key.decode())
                    offset, partition = msg.offset(), msg.partition()
                    if offset is None or partition is None:
                        continue
                    if offset + 1 >= ends.get(partition, 0):
                        ends.pop(partition, None)
            return len(self.ids)
        except KafkaException as exc:
            log.warning("could not read alert ids from %s: %s", topic, exc)
            return len(self.ids)
        finally:
            consumer.close()


# ============================================================================ the worker


_msgpack_encode = msgspec.msgpack.Encoder().encode
#: most partials in one message of the partials topic (also the sequence-number stride)
PACK_MAX = 4096
_msgpack_decode = msgspec.msgpack.Decoder().decode
#: rollup rows sent per turn of the sender task, and the pause after each turn: a minute
#: closing releases tens of thousands of rows at once (their Avro encoding alone measured
#: ~6 us each), and sending them in one go stalled every agent, and so the alerts, for a
#: second or more (measured at 10k events/s). Paced, the agents run between chunks.
ROLLUP_CHUNK = 250
ROLLUP_PAUSE_S = 0.005


@dataclasses.dataclass
class _PartitionSlot:
    """Working state of one owned partition plus the batch events not yet checkpointed."""

    partition: int
    processor: Any
    epoch: int = 0
    held: list[Any] = dataclasses.field(default_factory=list)
    inflight: int = 0
    dd_chunks: list[list[int]] = dataclasses.field(default_factory=list)  # [epoch, max minute]
    #: closed 1-minute windows' rows not yet sent (lazy), and rows sent but not acknowledged
    rollups: collections.deque[Iterator[dict[str, Any]]] = dataclasses.field(
        default_factory=collections.deque
    )
    rollups_unacked: int = 0


class Worker:
    """Builds the faust app and moves data between topics, Tables and the pure processors."""

    def __init__(
        self,
        settings: Settings,
        config: WorkerConfig | None = None,
        budgets: BudgetView | StaticBudgets | None = None,
        baseline_reader: Any = None,
    ) -> None:
        self.settings = settings
        self.config = config or WorkerConfig.from_settings(settings)
        self.budgets: BudgetView | StaticBudgets = budgets or BudgetView(settings)
        self.baseline_reader = baseline_reader
        self.event_codec = AvroCodec("token_event")
        self.columnar = ColumnarDecoder(self.event_codec.current)
        self.alert_codec = AvroCodec("budget_alert")
        self.rollup_codec = AvroCodec("rollup_1m")
        self.catalog = default_catalog()
        self.alert_log = AlertLog(settings)
        self.stage1: dict[int, _PartitionSlot] = {}
        self.stage2: dict[int, _PartitionSlot] = {}
        self.stats = dict.fromkeys(
            ("events", "dead", "duplicates", "alerts", "partials", "rollup_errors"), 0
        )
        self._rollups_waiting = asyncio.Event()
        self._rollup_producer: Producer | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------------ app

    def _build_app(self) -> SpendApp:
        s = self.settings
        parts = s.event_partitions
        app = SpendApp(
            s.worker_id,
            store="memory://",
            # faust's default is ./<id>-data in whatever directory the worker was started from
            datadir=s.home / "worker" / s.worker_id,
            value_serializer="raw",
            key_serializer="raw",
            topic_partitions=parts,
            topic_replication_factor=s.replication_factor,
            topic_allow_declare=True,
            web_enabled=self.config.web,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=1.0,
            # a SIGKILLed worker's partitions move to the survivors within ~10 s, not 60
            broker_session_timeout=10.0,
            broker_heartbeat_interval=3.0,
            stream_buffer_maxsize=16,
            producer_linger_ms=2,
            producer_max_request_size=4 * 1024 * 1024,
            # bigger fetches, bigger batches: per-batch work (stage 2's partials, polars calls)
            # is shared by more events. 1/4/8 MiB: 103k/115k/127k events/s catching up, peak
            # RSS 525/722/831 MB (6 partitions, loadtest/bench_worker.py, one run each)
            consumer_max_fetch_size=s.worker_fetch_mib * 1024 * 1024,
            producer_acks=-1,
            table_cleanup_interval=3600.0,
            **broker_settings(s),
        )
        app.batch_topics = {s.topic_events, partials_topic(s)}
        fetch.install(app.batch_topics)
        events_topic = BatchTopic(
            app, topics=[s.topic_events], key_serializer="raw", value_serializer="raw"
        )
        partials = BatchTopic(
            app, topics=[partials_topic(s)], key_serializer="raw", value_serializer="raw"
        )
        self.table1 = app.Table("stage1-state", partitions=parts, key_type=bytes, value_type=bytes)
        self.table2 = app.Table("stage2-state", partitions=parts, key_type=bytes, value_type=bytes)

        async def stage1_agent(stream: Any) -> None:
            async for event in stream.noack().events():
                await self.on_events_batch(event)

        async def stage2_agent(stream: Any) -> None:
            async for event in stream.noack().events():
                await self.on_partials_batch(event)

        app.agent(events_topic, name="stage1")(stage1_agent)
        app.agent(partials, name="stage2")(stage2_agent)

        async def checkpoint_timer() -> None:
            await self.checkpoint_all()

        app.timer(self.config.flush_interval_s, name="checkpoint")(checkpoint_timer)
        app.task(self._rollup_sender)

        async def on_revoked(sender: Any, revoked: Iterable[TP], **_: Any) -> None:
            self.on_revoked(revoked)

        app.on_partitions_revoked.connect(cast(Any, on_revoked))

        return app

    def _prepare(self) -> None:
        # faust creates its data directory, but not the folders above it
        self.app.conf.datadir.parent.mkdir(parents=True, exist_ok=True)
        ensure_topics(self.settings, worker_topics(self.settings))
        if isinstance(self.budgets, BudgetView):
            self.budgets.start()

    # ------------------------------------------------------------------ stage 1

    def _slot1(self, partition: int) -> _PartitionSlot:
        slot = self.stage1.get(partition)
        if slot is None:
            processor = PartitionAggregator(
                partition,
                self.event_codec.decode,
                self.catalog,
                self.budgets,
                self.config.stage1,
                columnar=self.columnar,
            )
            slot = _PartitionSlot(partition, processor)
            prefix = f"{partition}"
            items = self._table_items(self.table1, prefix)
            found = checkpoint.decode_latest(prefix, items)
            if found is not None:
                slot.epoch, state = found
                processor.restore(state["stage"])
                slot.dd_chunks = [list(c) for c in state["dd"]]
                for epoch, _ in slot.dd_chunks:
                    raw = items.get(f"{prefix}|dd|{epoch}")
                    if raw:
                        processor.load_ids(_msgpack_decode(raw))
                log.info(
                    "stage1 partition %d restored at offset %d (checkpoint %d)",
                    partition,
                    processor.applied,
                    slot.epoch,
                )
            self.stage1[partition] = slot
        return slot

    async def _ensure_alert_log(self) -> None:
        generation = self.app.consumer_generation_id
        if self.alert_log.generation != generation:
            loop = asyncio.get_running_loop()
            count = await loop.run_in_executor(None, self.alert_log.load)
            self.alert_log.generation = generation
            log.debug("alert log: %d alert ids known", count)

    async def on_events_batch(self, event: Any) -> None:
        message = event.message
        await self._ensure_alert_log()
        slot = self._slot1(message.partition)
        processor: PartitionAggregator = slot.processor
        out = processor.process(message.value)
        slot.held.append(event)
        self.stats["events"] += out.counted
        self.stats["duplicates"] += out.duplicates
        await self._publish_stage1(slot, out)

    async def _publish_stage1(self, slot: _PartitionSlot, out: Stage1Output) -> None:
        s = self.settings
        producer = self.app.producer
        topic = partials_topic(s)
        # one message per stage-2 partition per batch (not one per budget): the partition is
        # a function of the budget id / org, so each budget's partials meet in one place
        packs: dict[int, list[dict[str, Any]]] = {}
        for partial in out.partials:
            target = zlib.crc32(partial["id"].encode()) % s.event_partitions
            packs.setdefault(target, []).append(partial)
        for target, pack in packs.items():
            for i in range(0, len(pack), PACK_MAX):
                await producer.send(
                    topic, None, _msgpack_encode(pack[i : i + PACK_MAX]), target, None, None
                )
        self.stats["partials"] += len(out.partials)
        if out.rollup_windows and self.config.publish_rollups:
            slot.rollups.extend(rollup_rows(*window) for window in out.rollup_windows)
            self._rollups_waiting.set()
        for dead in out.dead:
            record = dead.record
            letter = DeadLetter(
                dead.kind,
                dead.reason,
                "worker",
                s.topic_events,
                slot.partition,
                record.offset,
            )
            await producer.send(
                s.topic_deadletter,
                record.key,
                record.value,
                None,
                None,
                letter.headers(),
            )
        self.stats["dead"] += len(out.dead)
        if out.alerts:
            await self._send_alerts(slot, out.alerts)

    async def _send_alerts(self, slot: _PartitionSlot, alerts: list[dict[str, Any]]) -> None:
        """Publish and wait for the broker before the state that remembers them is saved."""
        producer = self.app.producer
        topic = self.settings.topic_alerts
        slot.inflight += 1
        try:
            pending = []
            for alert in alerts:
                aid = alert["alert_id"]
                if aid in self.alert_log.ids:
                    continue
                self.alert_log.ids.add(aid)
                fut = await producer.send(
                    topic, aid.encode(), self.alert_codec.encode(alert), None, None, None
                )
                pending.append(fut)
                log.info("alert %s %s: %s", alert["kind"], aid, alert["message"])
            for fut in pending:
                await fut
            self.stats["alerts"] += len(pending)
        finally:
            slot.inflight -= 1

    async def _rollup_sender(self) -> None:
        """Sends the rollup backlogs a chunk at a time, letting the agents run in between.

        Rows go through a librdkafka producer (faust's aiokafka producer hashes each key in
        pure Python, measured 8.7 us): a minute closes tens of thousands of rows. A partition's
        checkpoint waits until its rows are acknowledged, so a crash cannot lose rows whose
        windows the saved state has already closed (replays re-send them: same keys).
        """
        while True:
            await self._rollups_waiting.wait()
            self._rollups_waiting.clear()
            for slot in list(self.stage1.values()):
                while slot.rollups and self.stage1.get(slot.partition) is slot:
                    self._send_rollup_chunk(slot)
                    await asyncio.sleep(ROLLUP_PAUSE_S)

    @property
    def rollup_producer(self) -> Producer:
        if self._rollup_producer is None:
            self._rollup_producer = Producer(
                {
                    **self.settings.kafka_client_config(),
                    "enable.idempotence": True,
                    "linger.ms": 20,
                    "compression.type": "lz4",
                },
                logger=log,
            )
        return self._rollup_producer

    def _send_rollup_chunk(self, slot: _PartitionSlot) -> None:
        producer = self.rollup_producer
        topic = self.settings.topic_rollups
        encode = self.rollup_codec.encode
        backlog = slot.rollups

        def delivered(error: KafkaError | None, _message: Any) -> None:
            slot.rollups_unacked -= 1
            if error is not None:
                self.stats["rollup_errors"] += 1
                log.error("rollup row not delivered to %s: %s", topic, error)

        chunk: list[dict[str, Any]] = []
        while backlog and len(chunk) < ROLLUP_CHUNK:
            before = len(chunk)
            chunk.extend(itertools.islice(backlog[0], ROLLUP_CHUNK - before))
            if len(chunk) - before < ROLLUP_CHUNK - before:
                backlog.popleft()  # that window is exhausted
        for row in chunk:
            key = (
                f"{row['window_start']}|{row['org_id']}|{row['team_id']}|{row['user_id']}"
                f"|{row['model']}|{row['source_partition']}|{row['revision']}"
            )
            value = encode(row)
            slot.rollups_unacked += 1
            while True:
                try:
                    producer.produce(topic, value, key.encode(), on_delivery=delivered)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    producer.poll(0.05)
        producer.poll(0)

    # ------------------------------------------------------------------ stage 2

    def _slot2(self, partition: int) -> _PartitionSlot:
        slot = self.stage2.get(partition)
        if slot is None:
            processor = BudgetTotals(self.budgets, self.config.stage2)
            slot = _PartitionSlot(partition, processor)
            prefix = f"{partition}"
            found = checkpoint.decode_latest(prefix, self._table_items(self.table2, prefix))
            if found is not None:
                slot.epoch, state = found
                processor.restore(state["stage"])
            self.stage2[partition] = slot
        return slot

    async def on_partials_batch(self, event: Any) -> None:
        message = event.message
        await self._ensure_alert_log()
        slot = self._slot2(message.partition)
        processor: BudgetTotals = slot.processor
        decoded: list[tuple[int, Any]] = []
        for record in message.value:
            try:
                pack = _msgpack_decode(record.value)
            except (msgspec.DecodeError, TypeError) as exc:  # internal topic: should not happen
                log.error("unreadable partials at offset %d: %s", record.offset, exc)
                continue
            # a sequence number per partial: the record offset, then the position in the pack
            decoded.extend((record.offset * PACK_MAX + i, m) for i, m in enumerate(pack))
        needed = processor.baselines_needed(m for _, m in decoded)
        if needed:
            await self._load_baselines(processor, needed)
        out = processor.process(decoded)
        slot.held.append(event)
        await self._publish_stage2(slot, out)

    async def _load_baselines(self, processor: BudgetTotals, needed: list[BaselineRequest]) -> None:
        loop = asyncio.get_running_loop()
        for request in needed:
            budget = request.budget
            rows: list[tuple[int, int, int]] = []
            if self.baseline_reader is not None:
                try:
                    rows = await loop.run_in_executor(
                        None,
                        self.baseline_reader,
                        budget,
                        request.start,
                        request.until,
                        request.bucket_ms,
                    )
                except Exception as exc:
                    log.error(
                        "baseline for budget %s unavailable, counting from zero: %s",
                        budget.budget_id,
                        exc,
                    )
            cost, tokens = sum(r[1] for r in rows), sum(r[2] for r in rows)
            if request.bucket_ms:
                processor.set_rolling_baseline(budget.budget_id, rows)
            else:
                processor.set_baseline(budget.budget_id, request.start, cost, tokens)
            log.info(
                "budget %s starts from %d nano-USD / %d tokens already spent in [%d, %d)",
                budget.budget_id,
                cost,
                tokens,
                request.start,
                request.until,
            )

    async def _publish_stage2(self, slot: _PartitionSlot, out: Stage2Output) -> None:
        producer = self.app.producer
        for budget_id, value in out.enforcement:
            await producer.send(
                self.settings.topic_enforcement, budget_id.encode(), value, None, None, None
            )
        if out.alerts:
            await self._send_alerts(slot, out.alerts)

    # ------------------------------------------------------------------ checkpoints

    @staticmethod
    def _table_items(table: Any, prefix: str) -> dict[str, bytes]:
        start = (prefix + "|").encode()
        return {
            k.decode(): v
            for k, v in list(table.data.items())
            if isinstance(k, bytes) and k.startswith(start) and v
        }

    def _write(self, table: Any, partition: int, key: str, value: bytes | None) -> None:
        raw_key = key.encode()
        if value is None:
            table.data.pop(raw_key, None)
            table.send_changelog(partition, raw_key, None, value_serializer="raw")
        else:
            table.data[raw_key] = value
            table.send_changelog(partition, raw_key, value)

    async def checkpoint_all(self) -> None:
        """Write every changed partition's state, then ack its batches.

        One partition's checkpoint (snapshot, changelog writes, acks) runs with no await in
        between, so it is atomic in the event loop; the loop runs other work between
        partitions, so that a large state holds it up for one partition at a time.
        """
        if self._rollup_producer is not None:
            self._rollup_producer.poll(0)
        for slot in list(self.stage1.values()):
            if (
                self.stage1.get(slot.partition) is slot
                and slot.held
                and not slot.inflight
                and not slot.rollups
                and not slot.rollups_unacked
            ):
                self._checkpoint1(slot)
                await asyncio.sleep(0)
        for slot in list(self.stage2.values()):
            if self.stage2.get(slot.partition) is slot and slot.held and not slot.inflight:
                self._checkpoint2(slot)
                await asyncio.sleep(0)

    def _checkpoint1(self, slot: _PartitionSlot) -> None:
        processor: PartitionAggregator = slot.processor
        prefix = f"{slot.partition}"
        epoch = slot.epoch + 1
        ids = processor.take_new_ids()
        if ids:
            self._write(self.table1, slot.partition, f"{prefix}|dd|{epoch}", _msgpack_encode(ids))
            slot.dd_chunks.append([epoch, max(m for m, _ in ids)])
        horizon = processor.watermark - processor.config.allowed_lateness_ms - 60_000
        expired = [c for c in slot.dd_chunks if c[1] < horizon]
        slot.dd_chunks = [c for c in slot.dd_chunks if c[1] >= horizon]
        state = {"stage": processor.snapshot(), "dd": slot.dd_chunks}
        for key, value in checkpoint.encode_pages(prefix, epoch, state):
            self._write(self.table1, slot.partition, key, value)
        for chunk_epoch, _ in expired:
            self._write(self.table1, slot.partition, f"{prefix}|dd|{chunk_epoch}", None)
        slot.epoch = epoch
        self._ack(slot)

    def _checkpoint2(self, slot: _PartitionSlot) -> None:
        epoch = slot.epoch + 1
        state = {"stage": slot.processor.snapshot()}
        for key, value in checkpoint.encode_pages(f"{slot.partition}", epoch, state):
            self._write(self.table2, slot.partition, key, value)
        slot.epoch = epoch
        self._ack(slot)

    @staticmethod
    def _ack(slot: _PartitionSlot) -> None:
        held, slot.held = slot.held, []
        for event in held:
            event.ack()

    def on_revoked(self, revoked: Iterable[TP]) -> None:
        """Forget revoked partitions: their state lives on in the changelog for the next owner."""
        events_topic = self.settings.topic_events
        partials = partials_topic(self.settings)
        for tp in revoked:
            if tp.topic == events_topic:
                self.stage1.pop(tp.partition, None)
            elif tp.topic == partials:
                self.stage2.pop(tp.partition, None)

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (faust's worker, uvloop event loop)."""
        self._prepare()
        tune_gc()
        worker = faust.Worker(
            self.app,
            loglevel=self.settings.log_level,
            loop=_new_loop(),
            redirect_stdouts=False,
            override_logging=False,
        )
        worker.execute_from_commandline()


#: cyclic-GC thresholds of a worker process. With CPython's default (700, 10, 10) full
#: collections ran over the whole window and session state every few seconds, each a 120-290
#: ms pause of every agent (measured at 10k events/s: it showed as alert latency spikes).
#: Young generations are still collected often; a full collection waits ~100x longer.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Raise the GC thresholds and freeze what startup allocated (it lives as long as we do)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()


def current_totals(worker: Worker) -> Mapping[tuple[str, int], int]:
    """Budget totals known to this process's stage 2 (cost, for diagnostics and tests)."""
    found: dict[tuple[str, int], int] = {}
    for slot in worker.stage2.values():
        processor: BudgetTotals = slot.processor
        for key, bucket in processor.buckets.items():
            found[key] = bucket.total(1)
    return found


# ============================================================================ CLI


@click.command("worker")
@click.option(
    "--worker-id",
    envvar=env_name("worker_id"),
    help="consumer group / app id (workers with the same id share the partitions)",
)
@click.option("--web/--no-web", default=False, help="also serve faust's web UI")
def worker_command(worker_id: str | None, web: bool) -> None:
    """Run the stream worker: windows, budgets, alerts (stop with Ctrl-C or SIGTERM)."""
    from streams.cli import load_settings

    settings = load_settings(worker_id=worker_id)
    config = dataclasses.replace(WorkerConfig.from_settings(settings), web=web)
    worker = Worker(settings, config, baseline_reader=clickhouse_baseline_reader(settings))
    worker.run()


def clickhouse_baseline_reader(settings: Settings) -> Any:
    """Spend so far in a period from ClickHouse (token_events), for mid-period budgets."""
    from streams.budgets import read_baseline

    def reader(
        budget: Budget, start: int, until: int, bucket_ms: int
    ) -> list[tuple[int, int, int]]:
        return read_baseline(settings, budget, start, until, bucket_ms)

    return reader
