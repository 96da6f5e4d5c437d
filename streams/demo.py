"""``spendstream demo``: the main job on the embedded local stack, end to end.

Starts the local Kafka (and ClickHouse), produces generated agent traffic through the SDK,
reads it back with an independent consumer and shows spend by org and model.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import click
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from streams.errors import SpendstreamError
from streams.generate import Shape, generate_events
from streams.pricing import default_catalog
from streams.producer import TokenEventProducer
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.topics import ensure_topics


def _usd(nanos: int) -> str:
    return f"${nanos / 1e9:,.4f}"  # display only; the total itself stays integer


def roundtrip(settings: Settings, count: int, console: Console) -> dict[str, int]:
    """Produce ``count`` events through the SDK and read them back; returns checked totals."""
    catalog = default_catalog()
    sent_cost: dict[tuple[str, str], int] = defaultdict(int)
    sent_ids: set[str] = set()
    start = time.perf_counter()
    with TokenEventProducer(settings) as producer:
        for event in generate_events(count, seed=int(time.time()), shape=Shape(span_ms=600_000)):
            producer.send(event)
            sent_ids.add(event["event_id"])
            sent_cost[(event["org_id"], event["model"])] += catalog.price(event).cost_nanos
    produced_s = time.perf_counter() - start
    if producer.stats.failed:
        raise SpendstreamError(f"{producer.stats.failed} events failed delivery")
    console.print(
        f"produced {count:,} events in {produced_s:.2f}s ({count / produced_s:,.0f}/s, acked)"
    )

    codec = AvroCodec("token_event")
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"spendstream-demo-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    seen: set[str] = set()
    got_cost: dict[tuple[str, str], int] = defaultdict(int)
    try:
        metadata = consumer.list_topics(settings.topic_events, timeout=10)
        partitions = metadata.topics[settings.topic_events].partitions
        ends = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(settings.topic_events, p))
            ends[p] = high
        consumer.assign(
            [TopicPartition(settings.topic_events, p, max(0, ends[p] - count)) for p in ends]
        )
        deadline = time.monotonic() + 60
        while len(seen) < len(sent_ids) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                if msg.error():
                    continue
                event = codec.decode(msg.value())
                if event["event_id"] in sent_ids and event["event_id"] not in seen:
                    seen.add(event["event_id"])
                    got_cost[(event["org_id"], event["model"])] += catalog.price(event).cost_nanos
    finally:
        consumer.close()
    if seen != sent_ids or got_cost != sent_cost:
        raise SpendstreamError(
            f"round trip mismatch: sent {len(sent_ids)} events, read back {len(seen)}"
        )

    table = Table(title=f"Spend of {count:,} generated requests, read back from Kafka")
    for name in ("org", "model", "spend"):
        table.add_column(name, justify="right" if name == "spend" else "left")
    for (org, model), nanos in sorted(got_cost.items()):
        table.add_row(org, model, _usd(nanos))
    table.add_row("[b]total[/b]", "", f"[b]{_usd(sum(got_cost.values()))}[/b]")
    console.print(table)
    return {"events": len(seen), "cost_nanos": sum(got_cost.values())}


@click.command()
@click.option("--events", "count", default=20_000, show_default=True, help="events to generate")
def demo(count: int) -> None:
    """Start the local stack and run generated agent traffic through it."""
    from streams.cli import load_settings
    from streams.local import stack

    settings = load_settings()
    console = Console()
    stack.up(settings)
    ensure_topics(settings)
    result = roundtrip(settings, count, console)
    console.print(
        f"[green]ok[/green]: {result['events']:,} events round-tripped exactly; "
        "stop the stack with `spendstream local down`"
    )
