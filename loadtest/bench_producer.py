"""Producer SDK throughput: encode+enqueue rate per core and broker-acknowledged rate.

    python -m loadtest.bench_producer --events 300000

Runs against the local stack (started if needed) or SPENDSTREAM_KAFKA_BOOTSTRAP. Reports, in
one run: raw confluent-kafka produce of pre-encoded bytes (the baseline), the SDK's
``record()`` (validate + build + encode + enqueue), ``send()`` (encode + enqueue of a complete
event), and the acknowledged rate (enqueue through the last broker acknowledgement, acks=all).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from loadtest.machine import Machine, kafka_rate
from streams.generate import generate_events
from streams.local import stack
from streams.sdk import TokenEventProducer
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    machine = Machine()
    settings = Settings.from_env()
    stack.up(settings, clickhouse=False)
    sample = list(generate_events(args.events, seed=5))
    codec = AvroCodec("token_event")
    rows: list[tuple[str, float, float]] = []

    def topic() -> str:
        name = f"bench.producer.{uuid.uuid4().hex[:8]}"
        ensure_topics(settings, [TopicSpec(name, args.partitions)])
        return name

    # baseline: pre-encoded bytes straight into librdkafka, same producer settings
    encoded = [(codec.encode(e), e["event_id"].encode()) for e in sample]
    raw = Producer(
        {
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_097_152,
        }
    )
    name = raw_topic = topic()
    start = time.perf_counter()
    for i, (value, key) in enumerate(encoded):
        raw.produce(name, value, key)
        if not i % 512:
            raw.poll(0)
    enqueued = time.perf_counter() - start
    raw.flush(120)
    rows.append(("raw produce (pre-encoded)", enqueued, time.perf_counter() - start))

    for label, method in (("SDK send()", "send"), ("SDK record()", "record")):
        name = topic()
        producer = TokenEventProducer(
            settings,
            topic=name,
            config={
                "queue.buffering.max.messages": 2_000_000,
                "queue.buffering.max.kbytes": 2_097_152,
            },
        )
        call = getattr(producer, method)
        start = time.perf_counter()
        for event in sample:
            call(event)
        enqueued = time.perf_counter() - start
        producer.flush(120)
        acked = time.perf_counter() - start
        assert producer.stats.delivered == len(sample), producer.stats
        rows.append((label, enqueued, acked))

    n = len(sample)
    # calibration: the plain consume + decode loop over the raw topic just written
    machine.calibrated(kafka_rate(settings, raw_topic, n), "kafka")
    machine.finish()
    base = n / rows[0][1]
    table = Table(title=f"producer, {n:,} events (~{len(encoded[0][0])} B), one process")
    columns = ("path", "enqueue/s (client, 1 core)", "vs raw", "acked/s (acks=all)", "acked/calib.")
    for col in columns:
        table.add_column(col, justify="right")
    result = {}
    for label, enq, ack in rows:
        table.add_row(
            label,
            f"{n / enq:,.0f}",
            f"{n / enq / base:.2f}x",
            f"{n / ack:,.0f}",
            f"{machine.ratio(n / ack)}",
        )
        result[label] = {
            "enqueue_per_s": round(n / enq),
            "acked_per_s": round(n / ack),
            "acked_vs_calibration": machine.ratio(n / ack),
        }
    print(machine.text())
    Console().print(table)
    print(json.dumps({"events": n, "results": result, "machine": machine.as_dict()}))


if __name__ == "__main__":
    main()
