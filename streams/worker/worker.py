"""The worker: moves data between Kafka topics, faust Tables and the pure stage processors.

* Work is accumulated in plain dicts (streams/processors/) and state is written behind: each
  partition's whole state is checkpointed atomically into a changelog-backed Table every
  ``worker_flush_seconds``, never once per event. A batch is acked only after the checkpoint
  that contains it is written, so committed offsets never run ahead of saved state, and
  events at or below a restored checkpoint's offset are skipped on replay: a SIGKILL and
  restart counts every event exactly once.
* Org and team totals are exact although an org spans every partition: stage 1 publishes
  cumulative per-partition partials keyed by budget id; stage 2 keeps the newest partial of
  each source partition and sums them (idempotent under replays and rebalances).
* The consumer side is faust's, through the partition-batch fast path (streams/worker/
  fastpath.py, fetch.py); docs/design.md has the whole picture.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import faulthandler
import gc
import itertools
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO, TypeVar, cast

import faust
import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer
from faust.types import TP

from streams import observe
from streams.budgets import BudgetView, StaticBudgets
from streams.deadletter import DeadLetter
from streams.errors import SpendstreamError
from streams.events import now_ms as events_now_ms
from streams.pricing import default_catalog
from streams.processors import checkpoint
from streams.processors.stage1 import (
    Lookup,
    PartitionAggregator,
    Stage1Output,
    late_rollup_rows,
    rollup_key,
    rollup_rows,
)
from streams.processors.stage2 import BaselineRequest, BudgetTotals, Stage2Output, pack_partials
from streams.serde import AvroCodec
from streams.serde.columnar import ColumnarDecoder
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker import fetch
from streams.worker import health as liveness
from streams.worker.alertlog import AlertLog
from streams.worker.config import WorkerConfig, broker_settings, partials_topic, worker_topics
from streams.worker.fastpath import BatchTopic, SpendApp
from streams.worker.metrics import WorkerMetrics
from streams.worker.sinkview import SinkView

log = logging.getLogger(__name__)
T = TypeVar("T")


_msgpack_encode = msgspec.msgpack.Encoder().encode
_msgpack_decode = msgspec.msgpack.Decoder().decode
#: rollup rows sent per turn of the sender task, and the pause after each turn: a minute
#: closing releases tens of thousands of rows at once (their Avro encoding alone measured
#: ~6 us each), and sending them in one go stalled every agent, and so the alerts, for a
#: second or more (measured at 10k events/s). Paced, the agents run between chunks.
ROLLUP_CHUNK = 250
ROLLUP_PAUSE_S = 0.005
#: how often each events partition's clock reaches every stage-2 partition, at most: with
#: its batches, and when it is idle (heartbeats, from the timer)
CLOCK_EVERY_S = 1.0
IDLE_CLOCK_EVERY_S = 5.0
#: the event loop's lag is measured by a sleep this long (metrics hop ``loop_lag``)
LOOP_PROBE_S = 0.01
#: checkpoints may take at most this share of the event loop: a whole-state snapshot costs
#: in proportion to the state (open windows, sessions, partials), not to the traffic, and at
#: 10-30k events/s one partition's took 100+ ms after a few minutes, so checkpointing every
#: slot every second held the loop most of the time and alert latency grew round by round
#: (0.46 -> 4.6 s p99, loadtest/latency.py). A slot whose checkpoint took ``c`` waits
#: ``c * slots / CHECKPOINT_SHARE`` (at least the flush interval, at most CHECKPOINT_MAX_S).
CHECKPOINT_SHARE = 0.1
#: longest wait between two checkpoints of a slot (bounds the replay after a crash)
CHECKPOINT_MAX_S = 20.0
#: between two reads of the sink's progress while a baseline or a lookup waits for it
SINK_WAIT_S = 0.25
#: longest pause between retries of a failed ClickHouse read
MAX_BACKOFF_S = 5.0
#: the health timer's period (it records what streams/worker/health.py's monitor judges)
HEALTH_EVERY_S = 1.0


@dataclasses.dataclass
class _PartitionSlot:
    """Working state of one owned partition plus what is not yet safe to checkpoint."""

    partition: int
    processor: Any
    epoch: int = 0
    #: batch events processed but not yet checkpointed (acked at the checkpoint)
    held: list[Any] = dataclasses.field(default_factory=list)
    #: sends the broker has not acknowledged yet: the checkpoint waits for them
    sends: list[asyncio.Future[Any]] = dataclasses.field(default_factory=list)
    #: when each send of ``sends`` was handed over (same order)
    send_times: list[float] = dataclasses.field(default_factory=list)
    #: when the oldest send still waiting was handed over (0: none waiting)
    oldest_send_at: float = 0.0
    dd_chunks: list[list[int]] = dataclasses.field(default_factory=list)  # [key, max minute]
    #: closed 1-minute windows' rows not yet sent (lazy), and rows sent but not acknowledged
    rollups: collections.deque[Iterator[dict[str, Any]]] = dataclasses.field(
        default_factory=collections.deque
    )
    rollups_unacked: int = 0
    clock_sent_at: float = 0.0
    last_batch_at: float = 0.0
    waiting_since: float = 0.0
    reported_at: float = 0.0
    #: monotonic time before which this slot is not checkpointed again (see CHECKPOINT_SHARE)
    next_checkpoint_at: float = 0.0
    #: stage 2: the partition's end offset when first seen, which its replay must reach
    #: before the processor is ``caught_up`` (None: not seen yet)
    replay_to: int | None = None

    def track(self, send: asyncio.Future[Any], handed_at: float) -> None:
        if not self.sends:
            self.oldest_send_at = handed_at
        self.sends.append(send)
        self.send_times.append(handed_at)

    def settled(self) -> bool:
        """Every send acknowledged (a failed one stops the worker: see Worker._sent)."""
        waiting = [(f, t) for f, t in zip(self.sends, self.send_times, strict=True) if not f.done()]
        self.sends = [f for f, _ in waiting]
        self.send_times = [t for _, t in waiting]
        self.oldest_send_at = self.send_times[0] if waiting else 0.0
        return not self.sends and not self.rollups and not self.rollups_unacked


class Worker:
    """Builds the faust app and moves data between topics, Tables and the pure processors."""

    def __init__(
        self,
        settings: Settings,
        config: WorkerConfig | None = None,
        budgets: BudgetView | StaticBudgets | None = None,
        sink_view: SinkView | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or WorkerConfig.from_settings(settings)
        if sink_view is None:
            self.config = dataclasses.replace(
                self.config, stage2=dataclasses.replace(self.config.stage2, baselines=False)
            )
        self.budgets: BudgetView | StaticBudgets = budgets or BudgetView(settings)
        self.sink_view = sink_view
        self.event_codec = AvroCodec("token_event")
        self.columnar = ColumnarDecoder(self.event_codec.current)
        self.alert_codec = AvroCodec("budget_alert")
        self.rollup_codec = AvroCodec("rollup_1m")
        self.catalog = default_catalog()
        self.alert_log = AlertLog(settings)
        self.stage1: dict[int, _PartitionSlot] = {}
        self.stage2: dict[int, _PartitionSlot] = {}
        self.stats = dict.fromkeys(
            (
                "events",
                "dead",
                "duplicates",
                "alerts",
                "partials",
                "rollup_errors",
                "lookups",
                "baselines",
            ),
            0,
        )
        self._rollups_waiting = asyncio.Event()
        self._rollup_producer: Producer | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="sink-view")
        self.metrics = WorkerMetrics()
        self._health: tuple[bool, dict[str, Any]] = (True, {})
        #: what the health timer last saw, for the monitor thread (streams/worker/health.py)
        self._health_sample = liveness.Sample({}, time.monotonic())
        self.monitor: liveness.HealthMonitor | None = None
        self._loop_progress: dict[tuple[str, int], liveness.Progress] = {}
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

        async def tick_timer() -> None:
            await self.tick_all()

        app.timer(self.config.flush_interval_s, name="checkpoint")(checkpoint_timer)
        app.timer(self.config.tick_interval_s, name="tick")(tick_timer)

        async def health_timer() -> None:
            # its own timer, never awaiting: tick_all can wait on a send for as long as the
            # producer does (faust: 20 minutes), and health judged there went stale
            self._check_health(getattr(self.app, "consumer", None))

        app.timer(HEALTH_EVERY_S, name="health")(health_timer)
        app.task(self._rollup_sender)
        app.task(self._watch_loop)

        async def dumps() -> None:  # once mode's Worker installed its signal handlers
            install_stack_dumps()

        app.task(dumps)

        async def on_revoked(sender: Any, revoked: Iterable[TP], **_: Any) -> None:
            self.on_revoked(revoked)

        app.on_partitions_revoked.connect(cast(Any, on_revoked))

        return app

    def _prepare(self) -> None:
        # faust creates its data directory, but not the folders above it
        self.app.conf.datadir.parent.mkdir(parents=True, exist_ok=True)
        ensure_topics(self.settings, worker_topics(self.settings))
        self.alert_log.start()
        if isinstance(self.budgets, BudgetView):
            self.budgets.start()

    def _sent(self, slot: _PartitionSlot, sent: Awaitable[Any], what: str) -> None:
        """Track a send: the slot's checkpoint waits for it; a failed one stops the worker
        (its partitions are then replayed from the last checkpoint, by it or another)."""
        future = cast("asyncio.Future[Any]", sent)  # aiokafka's send hands back a Future

        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is None:
                return
            log.error("%s not delivered: %s; stopping (nothing is lost)", what, fut.exception())
            self.app.loop.create_task(self.app.crash(cast(BaseException, fut.exception())))

        future.add_done_callback(done)
        slot.track(future, time.monotonic())

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
                for chunk, _ in slot.dd_chunks:
                    raw = items.get(f"{prefix}|dd|{chunk}")
                    if raw:
                        processor.load_ids(_msgpack_decode(raw))
                log.info(
                    "stage1 partition %d restored at offset %d (checkpoint %d)",
                    partition,
                    processor.applied,
                    slot.epoch,
                )
            self.stage1[partition] = slot
            lookups = processor.pending_lookups()
            if lookups:
                self._start_lookups(slot, lookups)
        return slot

    async def on_events_batch(self, event: Any) -> None:
        message = event.message
        await self.alert_log.ready()
        fetched = int(time.time() * 1000)
        slot = self._slot1(message.partition)
        processor: PartitionAggregator = slot.processor
        hops = self.metrics.hops
        newest = message.value[-1].timestamp if message.value else None
        if newest:
            hops["appended_to_fetched"].observe(max(0.0, time.time() - newest / 1000))
            _observe_fetch(hops, "events", message.value, newest)
        started = time.perf_counter()
        out = processor.process(message.value)
        hops["stage1"].observe(time.perf_counter() - started)
        slot.held.append(event)
        slot.last_batch_at = time.monotonic()
        self._count(out)
        await self._publish_stage1(slot, out, fetched=fetched)
        if out.lookups:
            self._start_lookups(slot, out.lookups)

    async def _publish_stage1(
        self,
        slot: _PartitionSlot,
        out: Stage1Output,
        clock_every_s: float = CLOCK_EVERY_S,
        fetched: int = 0,
    ) -> None:
        """``fetched``: when stage 1 was handed the batch behind ``out`` (UTC ms; 0: a tick)."""
        s = self.settings
        producer = self.app.producer
        topic = partials_topic(s)
        now = time.monotonic()
        everywhere = now - slot.clock_sent_at >= clock_every_s
        if everywhere:
            slot.clock_sent_at = now
        packs = pack_partials(
            slot.partition,
            out.seq,
            out.clock,
            out.budget_partials,
            out.org_partials,
            out.announces,
            s.event_partitions,
            everywhere=everywhere,
            hold_clock=out.hold_clock,
        )
        sent_at = int(time.time() * 1000)
        for target, pack in packs.items():
            pack["at"] = sent_at
            if fetched:
                pack["f"] = fetched
            fut = await producer.send(topic, None, _msgpack_encode(pack), target, None, None)
            self._sent(slot, fut, "partials")
        self.stats["partials"] += len(out.budget_partials) + len(out.org_partials)
        if self.config.publish_rollups:
            if out.rollup_windows:
                slot.rollups.extend(rollup_rows(*window) for window in out.rollup_windows)
            if out.late_rows:
                slot.rollups.append(late_rollup_rows(slot.partition, out.late_rows))
            if out.rollup_windows or out.late_rows:
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
            fut = await producer.send(
                s.topic_deadletter,
                record.key,
                record.value,
                None,
                None,
                letter.headers(),
            )
            self._sent(slot, fut, "dead letter")
        self.stats["dead"] += len(out.dead)
        if out.alerts:
            await self._send_alerts(slot, out.alerts, fetched=fetched)

    async def _send_alerts(
        self,
        slot: _PartitionSlot,
        alerts: list[dict[str, Any]],
        clock: int = 0,
        fetched: int = 0,
    ) -> None:
        """Publish the alerts not already on the topic; the checkpoint waits for their acks.
        ``clock``: the newest broker time of the records behind them (stage 1: the slot's);
        ``fetched``: when the batch behind them was handed to its stage (see ``_hop_headers``)."""
        producer = self.app.producer
        topic = self.settings.topic_alerts
        hops = self.metrics.hops
        clock = clock or getattr(slot.processor, "clock", 0)
        for alert in alerts:
            aid = alert["alert_id"]
            if not self.alert_log.claim(aid):
                continue
            if clock:
                hops["appended_to_alert"].observe(max(0.0, time.time() - clock / 1000))
            fut = await producer.send(
                topic,
                aid.encode(),
                self.alert_codec.encode(alert),
                None,
                None,
                _hop_headers(fetched),
            )
            self._sent(slot, fut, "alert")
            future = cast("asyncio.Future[Any]", fut)
            future.add_done_callback(self._acked(hops["alert_ack"], time.perf_counter()))
            self.metrics.alerts.labels(alert["kind"]).inc()
            self.stats["alerts"] += 1
            log.info("alert %s %s: %s", alert["kind"], aid, alert["message"])

    @staticmethod
    def _acked(histogram: Any, since: float) -> Callable[[asyncio.Future[Any]], None]:
        def done(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                histogram.observe(time.perf_counter() - since)

        return done

    def _start_lookups(self, slot: _PartitionSlot, lookups: list[Lookup]) -> None:
        self.stats["lookups"] += len(lookups)
        self.app.loop.create_task(self._resolve_lookups(slot, lookups))

    async def _resolve_lookups(self, slot: _PartitionSlot, lookups: list[Lookup]) -> None:
        """Events older than the id memory: once the sink has committed past them, ask
        ClickHouse whether it inserted each record; count those it did (stage1.resolve)."""
        view = self.sink_view
        if view is None:
            answers = {x.offset: True for x in lookups}
        else:
            newest = max(x.offset for x in lookups)
            if not await self._sink_past(slot.partition, newest, lambda: slot is self._owner(slot)):
                return
            counted = await self._clickhouse(lambda: view.counted(slot.partition, lookups))
            if counted is None:
                return
            answers = {x.offset: x.offset in counted for x in lookups}
        if self.stage1.get(slot.partition) is not slot:
            return  # revoked meanwhile: the next owner restores the deferred events and asks
        out = slot.processor.resolve(answers)
        self._count(out, resolved=True)
        await self._publish_stage1(slot, out)

    def _count(self, out: Stage1Output, resolved: bool = False) -> None:
        self.stats["events"] += out.counted
        self.stats["duplicates"] += out.duplicates
        outcomes = self.metrics.outcomes
        outcomes["counted"].inc(out.counted)
        outcomes["duplicate"].inc(out.duplicates)
        outcomes["dead"].inc(len(out.dead))
        outcomes["skipped"].inc(out.skipped)
        if not resolved:
            outcomes["deferred"].inc(len(out.lookups))

    def _owner(self, slot: _PartitionSlot) -> _PartitionSlot | None:
        return self.stage1.get(slot.partition)

    async def _sink_past(self, partition: int, offset: int, still: Callable[[], bool]) -> bool:
        """Wait until the sink committed past ``offset`` on ``partition`` (False: give up, the
        slot was revoked)."""
        view = self.sink_view
        assert view is not None
        loop = asyncio.get_running_loop()
        warned = time.monotonic()
        while still():
            try:
                committed = await loop.run_in_executor(self._pool, view.committed, partition)
            except SpendstreamError as exc:
                log.warning("%s; retrying", exc)
                committed = -1
            if committed > offset:
                return True
            if time.monotonic() - warned > 30:
                warned = time.monotonic()
                log.warning(
                    "waiting for the sink to commit past offset %d of partition %d (at %d)",
                    offset,
                    partition,
                    committed,
                )
            await asyncio.sleep(SINK_WAIT_S)
        return False

    async def _clickhouse(self, call: Callable[[], T]) -> T | None:
        """``call()`` in the pool, retried with backoff on failure (a read: safe to repeat)."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            try:
                return await loop.run_in_executor(self._pool, call)
            except Exception as exc:
                log.warning("clickhouse read failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

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
                    started = time.perf_counter()
                    self._send_rollup_chunk(slot)
                    self.metrics.hops["rollup_chunk"].observe(time.perf_counter() - started)
                    await asyncio.sleep(ROLLUP_PAUSE_S)

    async def _watch_loop(self) -> None:
        """How late the event loop wakes from a short sleep: a batch, a checkpoint or a chunk
        that holds the loop delays every agent, and so every alert, by as much."""
        lag = self.metrics.hops["loop_lag"]
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LOOP_PROBE_S)
            lag.observe(max(0.0, time.perf_counter() - started - LOOP_PROBE_S))

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
            if error is not None:
                self.stats["rollup_errors"] += 1
                log.error("rollup row not delivered to %s: %s; stopping", topic, error)
                self.app.loop.call_soon_threadsafe(
                    lambda: self.app.loop.create_task(self.app.crash(KafkaException(error)))
                )
                return
            slot.rollups_unacked -= 1

        chunk: list[dict[str, Any]] = []
        while backlog and len(chunk) < ROLLUP_CHUNK:
            before = len(chunk)
            chunk.extend(itertools.islice(backlog[0], ROLLUP_CHUNK - before))
            if len(chunk) - before < ROLLUP_CHUNK - before:
                backlog.popleft()  # that window is exhausted
        for row in chunk:
            value = encode(row)
            slot.rollups_unacked += 1
            while True:
                try:
                    producer.produce(topic, value, rollup_key(row), on_delivery=delivered)
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
        await self.alert_log.ready()
        slot = self._slot2(message.partition)
        processor: BudgetTotals = slot.processor
        decoded: list[tuple[int, Any]] = []
        for record in message.value:
            try:
                decoded.append((record.offset, _msgpack_decode(record.value)))
            except (msgspec.DecodeError, TypeError) as exc:  # internal topic: should not happen
                log.error("unreadable partials at offset %d: %s", record.offset, exc)
        hops = self.metrics.hops
        now = time.time() * 1000
        if message.value and message.value[-1].timestamp:
            _observe_fetch(hops, "partials", message.value, message.value[-1].timestamp)
        clock = 0
        for _, pack in decoded:
            clock = max(clock, pack.get("ck", 0))
            if "at" in pack:
                hops["partials_in_flight"].observe(max(0.0, now - pack["at"]) / 1000)
        started = time.perf_counter()
        out = processor.process(decoded)
        hops["stage2"].observe(time.perf_counter() - started)
        slot.held.append(event)
        await self._publish_stage2(slot, out, clock, int(now))

    def _start_baselines(self, slot: _PartitionSlot, requests: list[BaselineRequest]) -> None:
        for request in requests:
            self.stats["baselines"] += 1
            self.app.loop.create_task(self._load_baseline(slot, request))

    async def _load_baseline(self, slot: _PartitionSlot, request: BaselineRequest) -> None:
        """Once the sink committed past the split: the version's baseline from ClickHouse
        (retried until it is read; the total waits for it, nothing is counted from zero)."""
        view = self.sink_view
        if view is None:
            rows: list[tuple[int, int, int]] | None = []
        else:
            if not await self._sink_past(
                request.partition,
                request.split - 1,
                lambda: self.stage2.get(slot.partition) is slot,
            ):
                return
            rows = await self._clickhouse(lambda: view.baseline(request))
        if rows is None or self.stage2.get(slot.partition) is not slot:
            return
        budget = request.budget
        log.info(
            "budget %s (version %s) starts from %d rows of ClickHouse spend before offset %d "
            "of partition %d",
            budget.budget_id,
            budget.total_version,
            len(rows),
            request.split,
            request.partition,
        )
        out = slot.processor.set_baseline(request, rows)
        await self._publish_stage2(slot, out)

    async def _publish_stage2(
        self, slot: _PartitionSlot, out: Stage2Output, clock: int = 0, fetched: int = 0
    ) -> None:
        """``clock``: the newest broker time among the packs behind ``out`` (for the hops);
        ``fetched``: when stage 2 was handed their batch (UTC ms; 0: a tick or a baseline)."""
        producer = self.app.producer
        hops = self.metrics.hops
        for budget_id, value in out.enforcement:
            if clock and value is not None:
                hops["appended_to_block"].observe(max(0.0, time.time() - clock / 1000))
            fut = await producer.send(
                self.settings.topic_enforcement,
                budget_id.encode(),
                value,
                None,
                None,
                _hop_headers(fetched),
            )
            self._sent(slot, fut, "enforcement record")
            cast("asyncio.Future[Any]", fut).add_done_callback(
                self._acked(hops["block_ack"], time.perf_counter())
            )
        if out.alerts:
            await self._send_alerts(slot, out.alerts, clock, fetched)
        if out.baselines:
            self._start_baselines(slot, out.baselines)

    # ------------------------------------------------------------------ the timer

    async def tick_all(self) -> None:
        """Budget changes and idle partitions, between batches (see stage1/stage2 ``tick``)."""
        now = events_now_ms()
        consumer = getattr(self.app, "consumer", None)
        for tp in self._assigned(self.settings.topic_events):
            if not self._recovered():
                break
            slot = self._slot1(tp.partition)
            processor: PartitionAggregator = slot.processor
            caught_up = False
            if consumer is not None and time.monotonic() - slot.last_batch_at > (
                self.config.stage1.idle_timeout_ms / 1000
            ):
                high = consumer.highwater(tp)
                caught_up = high is not None and processor.applied + 1 >= high
            out = processor.tick(now, caught_up)
            await self._publish_stage1(slot, out, IDLE_CLOCK_EVERY_S)
        partials = partials_topic(self.settings)
        for slot in list(self.stage2.values()):
            if self.stage2.get(slot.partition) is not slot:
                continue
            totals: BudgetTotals = slot.processor
            if not totals.replayed and consumer is not None:
                # what a predecessor published was decided on partials before this end
                if slot.replay_to is None:
                    slot.replay_to = consumer.highwater(TP(partials, slot.partition))
                if slot.replay_to is not None and totals.applied + 1 >= slot.replay_to:
                    totals.caught_up()
            await self._publish_stage2(slot, totals.tick(now))

    def _check_health(self, consumer: Any) -> None:
        """Record what the health rule (streams/worker/health.py) judges: each owned
        partition's applied offset, sends not acknowledged and checkpoints waiting for
        ``worker_stall_s``, and this loop's beat; judge it here too against aiokafka's
        high-water marks (the lag gauges; the verdict when no monitor thread runs)."""
        now = time.monotonic()
        stall_s = self.settings.worker_stall_s
        lags = self.metrics.lag
        waiting: list[str] = []
        applied: dict[tuple[str, int], int] = {}
        ends: dict[tuple[str, int], int] = {}
        for stage, topic, slots in (
            ("stage1", self.settings.topic_events, self.stage1),
            ("stage2", partials_topic(self.settings), self.stage2),
        ):
            for tp in self._assigned(topic):
                slot = slots.get(tp.partition)
                key = (topic, tp.partition)
                applied[key] = slot.processor.applied if slot is not None else -1
                high = consumer.highwater(tp) if consumer is not None else None
                if high is not None:
                    ends[key] = high
                    lags.labels(topic, str(tp.partition)).set(max(0, high - applied[key] - 1))
            for slot in list(slots.values()):
                waited = now - slot.waiting_since
                if slot.waiting_since and waited > stall_s:
                    waiting.append(f"{stage}[{slot.partition}]: checkpoint waits {waited:.0f}s")
                slot.settled()
                if slot.oldest_send_at and now - slot.oldest_send_at > stall_s:
                    waiting.append(
                        f"{stage}[{slot.partition}]: {len(slot.sends)} sends not acknowledged "
                        f"for {now - slot.oldest_send_at:.0f}s"
                    )
        sample = liveness.Sample(applied, now, tuple(waiting))
        self._health_sample = sample
        healthy, problems = liveness.judge(now, stall_s, sample, ends, self._loop_progress)
        self._health = (healthy, {"stalled": problems})
        if self.monitor is None:  # no monitor thread (tests): the loop's own verdict
            self.metrics.healthy.set(1 if healthy else 0)
            if not healthy:
                log.error("worker makes no progress: %s", "; ".join(problems))

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``: the monitor thread's verdict (which also fails when this loop stops
        beating), else the loop's own."""
        if self.monitor is None:
            return self._health
        ok, details = self.monitor.verdict()
        self.metrics.healthy.set(1 if ok else 0)
        return ok, details

    def start_monitor(self) -> liveness.HealthMonitor:
        """Judge health in a thread against the broker's end offsets (streams/worker/health.py)."""
        self.monitor = liveness.HealthMonitor(
            self.settings.worker_stall_s,
            lambda: self._health_sample,
            liveness.broker_end_offsets(self.settings.kafka_client_config()),
        )
        self.monitor.start()
        return self.monitor

    def _assigned(self, topic: str) -> list[TP]:
        try:
            assignment = self.app.consumer.assignment()
        except Exception:  # not started, or between generations
            return []
        return sorted((tp for tp in assignment if tp.topic == topic), key=lambda tp: tp.partition)

    def _recovered(self) -> bool:
        recovery = getattr(self.app.tables, "recovery", None)
        return bool(
            recovery is not None and recovery.completed.is_set() and not self.app.rebalancing
        )

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

        A partition is checkpointed only once everything its state says was published is
        acknowledged by the broker (partials, alerts, enforcement records, dead letters,
        rollup rows). One partition's checkpoint (snapshot, changelog writes, acks) runs with
        no await in between, so it is atomic in the event loop.
        """
        if self._rollup_producer is not None:
            self._rollup_producer.poll(0)
        slots = len(self.stage1) + len(self.stage2)
        for stage, write in ((self.stage1, self._checkpoint1), (self.stage2, self._checkpoint2)):
            for slot in list(stage.values()):
                if (
                    stage.get(slot.partition) is slot
                    and slot.held
                    and time.monotonic() >= slot.next_checkpoint_at
                    and slot.settled()
                ):
                    began, started = time.monotonic(), time.perf_counter()
                    write(slot)
                    interval = self.config.flush_interval_s
                    wait = checkpoint_wait(time.perf_counter() - started, slots, interval)
                    # a cheap checkpoint leaves the slot to the timer, as before
                    slot.next_checkpoint_at = began + wait if wait > interval else 0.0
                    await asyncio.sleep(0)
        self._report_unsettled()

    def _report_unsettled(self) -> None:
        """Log a partition whose checkpoint has waited long for acknowledgements."""
        now = time.monotonic()
        for stage, slots in (("stage1", self.stage1), ("stage2", self.stage2)):
            for slot in slots.values():
                if not slot.held:
                    slot.waiting_since = 0.0
                elif not slot.waiting_since:
                    slot.waiting_since = now
                elif now - slot.waiting_since > 30 and now - slot.reported_at > 30:
                    slot.reported_at = now
                    log.warning(
                        "%s partition %d: %d batches wait for their checkpoint for %.0fs "
                        "(%d sends and %d rollup rows not acknowledged)",
                        stage,
                        slot.partition,
                        len(slot.held),
                        now - slot.waiting_since,
                        len(slot.sends),
                        slot.rollups_unacked,
                    )

    def _checkpoint1(self, slot: _PartitionSlot) -> None:
        started = time.perf_counter()
        processor: PartitionAggregator = slot.processor
        prefix = f"{slot.partition}"
        epoch = slot.epoch + 1
        pieces = split_id_chunks(processor.take_new_ids())
        for number, piece in enumerate(pieces):
            chunk = epoch * DD_PIECES_MAX + number  # above every key of older checkpoints
            self._write(self.table1, slot.partition, f"{prefix}|dd|{chunk}", _msgpack_encode(piece))
            slot.dd_chunks.append([chunk, max(m for m, _ in piece)])
        horizon = processor.memory_horizon
        expired = [c for c in slot.dd_chunks if c[1] < horizon]
        slot.dd_chunks = [c for c in slot.dd_chunks if c[1] >= horizon]
        state = {"stage": processor.snapshot(), "dd": slot.dd_chunks}
        for key, value in checkpoint.encode_pages(prefix, epoch, state):
            self._write(self.table1, slot.partition, key, value)
        for chunk, _ in expired:
            self._write(self.table1, slot.partition, f"{prefix}|dd|{chunk}", None)
        slot.epoch = epoch
        self._ack(slot)
        self.metrics.hops["checkpoint"].observe(time.perf_counter() - started)

    def _checkpoint2(self, slot: _PartitionSlot) -> None:
        started = time.perf_counter()
        epoch = slot.epoch + 1
        state = {"stage": slot.processor.snapshot()}
        for key, value in checkpoint.encode_pages(f"{slot.partition}", epoch, state):
            self._write(self.table2, slot.partition, key, value)
        slot.epoch = epoch
        self._ack(slot)
        self.metrics.hops["checkpoint"].observe(time.perf_counter() - started)

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
        if self.settings.metrics_port:
            self.start_monitor()
            observe.serve(
                self.metrics.registry,
                self.settings.metrics_host,
                self.settings.metrics_port,
                self.health,
            )
        tune_gc()
        worker = faust.Worker(
            self.app,
            loglevel=self.settings.log_level,
            loop=_new_loop(),
            redirect_stdouts=False,
            override_logging=False,
        )
        try:
            worker.execute_from_commandline()
        finally:
            self.alert_log.stop()
            if self.sink_view is not None:
                self.sink_view.close()


#: Kafka headers of alerts and enforcement records that say when their stage was handed the
#: batch behind them and when the record was handed to the producer (UTC ms, ASCII): with the
#: broker's append times they split a record's way into hops (loadtest/bench_worker.py)
HEADER_FETCHED = "spendstream-fetched-ms"
HEADER_HANDED = "spendstream-handed-ms"


def _observe_fetch(hops: Mapping[str, Any], topic: str, batch: Any, newest_ms: int) -> None:
    """The fetch hops of a batch stamped by streams.worker.fetch (appended -> received ->
    handed to faust -> the agent has it)."""
    received = getattr(batch, "received", None)
    if received is None:
        return
    now = time.time()
    hops[f"{topic}_received"].observe(max(0.0, received - newest_ms / 1000))
    hops[f"{topic}_buffered"].observe(max(0.0, batch.taken - received))
    hops[f"{topic}_queued"].observe(max(0.0, now - batch.taken))


def _hop_headers(fetched: int) -> list[tuple[str, bytes]]:
    handed = str(int(time.time() * 1000)).encode()
    if not fetched:
        return [(HEADER_HANDED, handed)]
    return [(HEADER_FETCHED, str(fetched).encode()), (HEADER_HANDED, handed)]


#: cyclic-GC thresholds of a worker process. With CPython's default (700, 10, 10) full
#: collections ran over the whole window and session state every few seconds, each a 120-290
#: ms pause of every agent (measured at 10k events/s: it showed as alert latency spikes).
#: Young generations are still collected often; a full collection waits ~100x longer.
GC_THRESHOLDS = (50_000, 20, 100)


def checkpoint_wait(cost_s: float, slots: int, interval_s: float) -> float:
    """How long a slot whose checkpoint took ``cost_s`` waits for its next one: checkpoints of
    ``slots`` such slots then take at most CHECKPOINT_SHARE of the loop (see there)."""
    return min(CHECKPOINT_MAX_S, max(interval_s, cost_s * max(1, slots) / CHECKPOINT_SHARE))


#: one changelog record of dedup ids holds at most this many id bytes (as a checkpoint page):
#: a backlog brings hundreds of thousands of new ids between two checkpoints, and a record
#: past the broker's message.max.bytes (1 MB by default) is refused, the ids lost unnoticed
DD_CHUNK_BYTES = 256 * 1024
#: pieces of one checkpoint's ids are keyed epoch x this + piece number (larger pieces beyond)
DD_PIECES_MAX = 4096
_ID_BYTES = 16


def split_id_chunks(ids: list[list[Any]], limit: int = DD_CHUNK_BYTES) -> list[list[list[Any]]]:
    """``[[minute, packed 16-byte ids], ...]`` as pieces of at most ``limit`` id bytes each
    (more only past DD_PIECES_MAX pieces), every id in exactly one piece, minutes in order."""
    total = sum(len(packed) for _, packed in ids)
    step = max(limit - limit % _ID_BYTES, -(-total // DD_PIECES_MAX // _ID_BYTES) * _ID_BYTES)
    pieces: list[list[list[Any]]] = []
    piece: list[list[Any]] = []
    size = 0
    for minute, packed in ids:
        start = 0
        while start < len(packed):
            room = step - size
            part = packed[start : start + room]
            piece.append([minute, part])
            size += len(part)
            start += len(part)
            if size >= step:
                pieces.append(piece)
                piece, size = [], 0
    if piece:
        pieces.append(piece)
    return pieces


def tune_gc() -> None:
    """Raise the GC thresholds and freeze what startup allocated (it lives as long as we do)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def install_stack_dumps() -> None:
    """``kill -USR2 <pid>``: every thread's stack to stderr, at C level (faulthandler), so it
    works while the event loop is stuck. Replaces mode's SIGUSR2 handler (it opens pdb: a
    daemon then hangs on stdin). ``kill -USR1`` stays mode's: threads and their loops' tasks,
    printed by the loop. For a worker that stopped making progress; no py-spy needed.
    ``kill -USR1``: threads and the loop's tasks, without local variables (replaces mode's
    dump, which prints every frame's locals: a credential handed to a client can sit there)."""
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    except (NotImplementedError, RuntimeError, ValueError) as exc:  # a loop without signals
        log.warning("kill -USR1 task dumps unavailable: %s", exc)


def dump_tasks(file: TextIO | None = None) -> None:
    """Every thread's stack and every task of the running loop, names and frames only."""
    out = file or sys.stderr
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        print(f"THREAD {names.get(ident, ident)}", file=out)
        traceback.print_stack(frame, file=out)
    for task in asyncio.all_tasks():
        print(f"TASK {task.get_name()} {task.get_coro()!r}", file=out)
        task.print_stack(file=out)
    out.flush()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()


def current_totals(worker: Worker) -> Mapping[tuple[str, int], int]:
    """Budget totals known to this process's stage 2: (budget_id, period start) -> spend in
    the budget's unit (for diagnostics and tests; periods still waiting for a baseline are
    left out)."""
    found: dict[tuple[str, int], int] = {}
    for slot in worker.stage2.values():
        processor: BudgetTotals = slot.processor
        for budget_id, version, start in list(processor.buckets):
            budget = worker.budgets.get(budget_id)
            if budget is None or budget.total_version != version:
                continue
            spent = processor.spent(budget, start)
            if spent is not None:
                found[(budget_id, start)] = spent
    return found
