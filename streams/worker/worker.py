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
import dataclasses
import gc
import itertools
import logging
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import faust
import msgspec
from confluent_kafka import KafkaError, Producer
from faust.types import TP

from streams.budgets import Budget, BudgetView, StaticBudgets, read_baseline
from streams.deadletter import DeadLetter
from streams.pricing import default_catalog
from streams.processors import checkpoint
from streams.processors.stage1 import PartitionAggregator, Stage1Output, rollup_rows
from streams.processors.stage2 import BaselineRequest, BudgetTotals, Stage2Output
from streams.serde import AvroCodec
from streams.serde.columnar import ColumnarDecoder
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker import fetch
from streams.worker.alertlog import AlertLog
from streams.worker.config import WorkerConfig, broker_settings, partials_topic, worker_topics
from streams.worker.fastpath import BatchTopic, SpendApp

log = logging.getLogger(__name__)


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


def clickhouse_baseline_reader(settings: Settings) -> Any:
    """Spend so far in a period from ClickHouse (token_events), for mid-period budgets."""

    def reader(
        budget: Budget, start: int, until: int, bucket_ms: int
    ) -> list[tuple[int, int, int]]:
        return read_baseline(settings, budget, start, until, bucket_ms)

    return reader
