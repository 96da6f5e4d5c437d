"""``--compare``: the limits our figures are given as ratios to, measured in the same run.

After the run's pipeline is stopped (so that they get the machine the pipeline had), over the
run's own broker and at our message size:

* ``kafka ProducerPerformance``: Kafka's own producer tool (kafka-tools, in the jars the local
  stack resolves), records of the mean size of the run's events, acks=all, lz4: the broker's
  produce ceiling on this machine;
* ``kafka ConsumerPerformance``: Kafka's consumer tool reading the run's events topic: the
  broker's fetch ceiling;
* ``python consume+decode``: a plain confluent-kafka consumer decoding every event with
  fastavro (loadtest/machine.py's calibration loop): the ceiling of any Python consumer;
* ``naive faust``: the per-event faust agent with four windowed Tables, as users would write
  it (loadtest/bench_worker.py's baseline), over a sample of the run's events.

Each limit's ``ratio`` is our sustained end-to-end events/s divided by the limit's events/s.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.bench_worker import child, run_baseline
from loadtest.machine import kafka_rate
from streams.local.kafka import KAFKA_VERSION, LocalKafka, _java
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics

PRODUCER_RECORDS = 1_000_000
CONSUMER_RECORDS = 1_000_000
PYTHON_RECORDS = 500_000
FAUST_RECORDS = 20_000


def _tool_classpath(settings: Settings) -> str:
    jars = LocalKafka(settings).install()  # the pinned jars, resolved once into the cache
    if not (jars / f"kafka-tools-{KAFKA_VERSION}.jar").is_file():
        raise FileNotFoundError(f"kafka-tools-{KAFKA_VERSION}.jar not in {jars}")
    return f"{jars}/*"


def _bootstrap(settings: Settings) -> str:
    return str(settings.kafka_client_config()["bootstrap.servers"])


def _client_props(settings: Settings, folder: Path) -> Path:
    """The client config for Kafka's tools: the protocol only (the tools run against a
    plaintext broker, the local stack's default; a SASL/TLS broker needs its own file)."""
    path = folder / "client.properties"
    config = settings.kafka_client_config()
    lines = [f"security.protocol={config.get('security.protocol', 'PLAINTEXT')}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def producer_performance(
    settings: Settings, record_size: int, folder: Path, records: int = PRODUCER_RECORDS
) -> dict[str, Any]:
    topic = f"{settings.topic_events}.perf"
    ensure_topics(settings, [TopicSpec(topic, settings.event_partitions)])
    argv = [_java(), "-cp", _tool_classpath(settings), "org.apache.kafka.tools.ProducerPerformance"]
    argv += ["--topic", topic, "--num-records", str(records), "--record-size", str(record_size)]
    argv += ["--throughput", "-1", "--producer.config", str(_client_props(settings, folder))]
    argv += ["--producer-props", f"bootstrap.servers={_bootstrap(settings)}", "acks=all",
             "compression.type=lz4", "linger.ms=20", "batch.size=1000000"]  # fmt: skip
    text = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    last = [line for line in text.splitlines() if "records sent" in line][-1]
    found = re.search(r"([\d.]+) records/sec", last)
    latency = re.search(r"([\d.]+) ms avg latency", last)
    return {
        "events_per_s": float(found.group(1)) if found else None,
        "avg_latency_ms": float(latency.group(1)) if latency else None,
        "records": records,
        "record_size": record_size,
        "line": last.strip(),
    }


def consumer_performance(
    settings: Settings, folder: Path, records: int = CONSUMER_RECORDS
) -> dict[str, Any]:
    topic = f"{settings.topic_events}.perf"
    argv = [_java(), "-cp", _tool_classpath(settings), "org.apache.kafka.tools.ConsumerPerformance"]
    argv += ["--bootstrap-server", _bootstrap(settings), "--topic", topic]
    argv += ["--messages", str(records), "--timeout", "60000"]
    argv += ["--consumer.config", str(_client_props(settings, folder))]
    text = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line for line in text.splitlines() if line and line[0].isdigit()]
    fields = rows[-1].split(",")
    # start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, ...
    return {"events_per_s": float(fields[5]), "records": int(fields[4]), "line": rows[-1]}


def compare_all(settings: Settings, folder: Path, ours: float | None = None) -> dict[str, Any]:
    """Every limit (each in its own try: one that cannot run says why, the others still do)."""
    from streams.loadtest.procs import ends

    produced = sum(ends(settings, settings.topic_events).values())
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        size = _mean_size(settings)
        steps = (
            ("kafka ProducerPerformance", lambda: producer_performance(settings, size, work)),
            ("kafka ConsumerPerformance", lambda: consumer_performance(settings, work)),
            (
                "python consume+decode",
                lambda: {
                    "events_per_s": kafka_rate(
                        settings, settings.topic_events, min(produced, PYTHON_RECORDS)
                    )
                },
            ),
            (
                "naive faust",
                lambda: _faust(settings, min(produced, FAUST_RECORDS)),
            ),
        )
        for name, step in steps:
            started = time.monotonic()
            try:
                out[name] = step()
            except Exception as exc:  # one limit failing must not hide the others
                out[name] = {"events_per_s": None, "error": f"{type(exc).__name__}: {exc}"}
            out[name]["seconds"] = round(time.monotonic() - started, 1)
    if ours:
        for entry in out.values():
            rate = entry.get("events_per_s")
            entry["ratio"] = round(ours / rate, 3) if rate else None
    return out


def _faust(settings: Settings, records: int) -> dict[str, Any]:
    result = child(run_baseline, settings, records, timeout=900)
    rate = result["events"] / max(result["wall_s"], 1e-9)
    return {"events_per_s": round(rate, 1), "records": records, **result}


def _mean_size(settings: Settings, sample: int = 2000) -> int:
    """The mean size in bytes of the first records of the run's events topic."""
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"lt-size-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    sizes: list[int] = []
    try:
        consumer.assign([TopicPartition(settings.topic_events, 0, 0)])
        deadline = time.monotonic() + 30
        while len(sizes) < sample and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=sample, timeout=1.0):
                if not msg.error():
                    sizes.append(len(msg.value() or b""))
    finally:
        consumer.close()
    return max(1, round(sum(sizes) / len(sizes))) if sizes else 180
