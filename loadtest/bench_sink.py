"""Sink throughput: rows/s into ClickHouse beside the raw consume+decode rate of the same topic.

    python -m loadtest.bench_sink --events 500000

Runs against the local stack (started if needed) or SPENDSTREAM_KAFKA_BOOTSTRAP /
SPENDSTREAM_CLICKHOUSE_URL. One run: produce N generated events (1% re-sends) to a fresh
topic; read them all with a plain confluent-kafka consumer that decodes each message (the
baseline), then again decoding each fetched batch with the sink's batch decoder (the second
baseline); then run the sink (one process, in-process thread) from the start of the same topic
into a fresh database, with its rollup views attached, until every message is accounted for.
Prints both rates and their ratio (the issue's targets: sink >= 60% of raw and >= 100k rows/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from loadtest.machine import Machine
from streams import events
from streams.clickhouse import Target, connect
from streams.generate import Shape, generate_events
from streams.local import stack
from streams.migrate import Migrator
from streams.serde import AvroCodec
from streams.serde.columnar import ColumnarDecoder
from streams.settings import Settings
from streams.sink.metrics import SinkMetrics
from streams.sink.runner import Sink
from streams.topics import TopicSpec, delete_topics_containing, ensure_topics


def produce(settings: Settings, topic: str, n: int) -> None:
    codec = AvroCodec("token_event")
    shape = Shape(orgs=5, span_ms=86_400_000, duplicate_rate=0.01)
    producer = Producer(
        {
            **settings.kafka_client_config(),
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_097_152,
        }
    )
    for i, event in enumerate(generate_events(n, seed=3, shape=shape)):
        producer.produce(topic, codec.encode(event), events.partition_key(event))
        if not i % 1000:
            producer.poll(0)
    producer.flush(120)


def _from_the_start(settings: Settings, topic: str) -> Consumer:
    """A plain consumer of every partition of ``topic`` from offset 0 (no group commits)."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"bench-raw-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    return consumer


def raw_consume_decode(settings: Settings, topic: str, n: int) -> float:
    """Seconds to consume and decode all ``n`` messages with batched consume()."""
    codec = AvroCodec("token_event")
    consumer = _from_the_start(settings, topic)
    seen = 0
    start = time.perf_counter()
    while seen < n:
        for message in consumer.consume(num_messages=5000, timeout=1.0):
            if message.error() is None:
                codec.decode(message.value())
                seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return elapsed


def raw_consume_columnar(settings: Settings, topic: str, n: int) -> float:
    """Seconds to consume all ``n`` messages and decode each batch with the sink's batch
    decoder (streams/serde/columnar.py): the baseline of the decoder the sink now uses."""
    codec = AvroCodec("token_event")
    decoder = ColumnarDecoder(codec.current)
    header = decoder.message_header
    consumer = _from_the_start(settings, topic)
    seen = 0
    start = time.perf_counter()
    while seen < n:
        bodies = [
            value[len(header) :]
            for message in consumer.consume(num_messages=5000, timeout=1.0)
            if message.error() is None and (value := message.value()) is not None
        ]
        if bodies:
            if decoder.decode(bodies) is None:
                raise SystemExit("the generated events did not decode as a batch")
            seen += len(bodies)
    elapsed = time.perf_counter() - start
    consumer.close()
    return elapsed


def run_sink(settings: Settings, n: int) -> tuple[float, float, int, dict[str, float]]:
    """(seconds from start, seconds from the first insert, rows inserted, writer timings)."""
    registry = CollectorRegistry()
    sink = Sink(settings, metrics=SinkMetrics(registry))
    start = time.perf_counter()
    cpu_start = time.process_time()
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels or None) or 0.0

    first_insert = None
    first_rows = 0.0
    while True:
        done = sum(
            sample("spendstream_sink_messages_total", outcome=o)
            for o in ("inserted", "duplicate", "deadletter")
        )
        if first_insert is None and done:
            first_insert = time.perf_counter()
            first_rows = sample("spendstream_sink_rows_inserted_total")
        if done >= n:
            break
        time.sleep(0.02)
    end = time.perf_counter()
    cpu = time.process_time() - cpu_start
    sink.stop()
    thread.join(60)
    rows = int(sample("spendstream_sink_rows_inserted_total"))
    timings = {
        "inserts": sample("spendstream_sink_insert_seconds_count"),
        "insert_s_total": round(sample("spendstream_sink_insert_seconds_sum"), 2),
        "lookups": sample("spendstream_sink_lookup_seconds_count"),
        "lookup_s_total": round(sample("spendstream_sink_lookup_seconds_sum"), 2),
        # CPU seconds of this process (all its threads) over the sink's wall seconds: near 1
        # means one core's worth of Python, librdkafka and Arrow work
        "sink_cpu_per_wall": round(cpu / (end - start), 2),
        # peak resident memory of this process (the raw baselines ran in it before the sink)
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    # the steady rate counts only rows committed after the first block (whose rows were
    # consumed before the clock started)
    timings["rows_after_first_insert"] = rows - first_rows
    return end - start, end - (first_insert or start), rows, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-rows", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    machine = Machine()
    base = Settings.from_env()
    stack.up(base)
    suffix = uuid.uuid4().hex[:8]
    topic = f"bench.sink.{suffix}"
    ensure_topics(base, [TopicSpec(topic, args.partitions)])
    settings = dataclasses.replace(
        base,
        topic_events=topic,
        clickhouse_database=f"bench_sink_{suffix}",
        sink_group=f"bench-sink-{suffix}",
        sink_batch_rows=args.batch_rows or base.sink_batch_rows,
    )
    client = connect(settings)
    try:
        Migrator(client, Target.from_settings(settings)).migrate()
        produce(settings, topic, args.events)
        raw_s = raw_consume_decode(settings, topic, args.events)
        columnar_s = raw_consume_columnar(settings, topic, args.events)
        total_s, steady_s, rows, timings = run_sink(settings, args.events)
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}`")
        client.close()
        delete_topics_containing(base, topic)
    # the raw consume + decode of the same topic is this run's calibration
    machine.calibrated(args.events / raw_s, "kafka")
    machine.finish()
    figures = {
        "events": args.events,
        "rows_inserted": rows,
        "raw_consume_decode_per_s": round(args.events / raw_s),
        "sink_rows_per_s": round(rows / total_s),
        "sink_rows_per_s_after_first_insert": round(timings["rows_after_first_insert"] / steady_s),
        "sink_vs_raw": round((rows / total_s) / (args.events / raw_s), 3),
        "raw_consume_batch_decode_per_s": round(args.events / columnar_s),
        "sink_vs_raw_batch_decode": round((rows / total_s) / (args.events / columnar_s), 3),
        "batch_rows": settings.sink_batch_rows,
        **timings,
    }
    if args.json:
        print(json.dumps({**figures, "machine": machine.as_dict()}))
        return
    print(machine.text())
    table = Table(title=f"sink benchmark, {args.events:,} events, {args.partitions} partitions")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int | float) else str(value))
    Console().print(table)


if __name__ == "__main__":
    main()
