"""Worker throughput and alert latency, beside the usual per-event faust baseline, in one run.

    python -m loadtest.bench_worker                      # defaults below
    python -m loadtest.bench_worker --events 1000000 --baseline-events 30000 --partitions 6
    python -m loadtest.bench_worker --only-latency --rate 10000 --seconds 30

Runs against the local stack (started if needed) or SPENDSTREAM_KAFKA_BOOTSTRAP. Every phase
uses fresh topics and consumer groups. Prints the machine block of loadtest/machine.py (CPU,
cores, load before/after, the plain consume + decode calibration of the same topic, saturated
or not) and the worker's rate as a ratio to that calibration. ``BENCH_LOG_LEVEL=INFO`` shows
the worker's log.

1. Throughput (single-event messages, the realistic case): ``--events`` generated events
   (dense in event time, as at 100k/s) are produced first; then a child process runs the real
   worker (streams/worker/: decode, validation, dedup, pricing, 1-minute rollups, runaway
   sessions, spikes, budgets of every kind incl. a label-scoped and a rolling one) and times
   the catch-up from its first batch to the last event. Reported per wall second and per CPU
   second of the worker process (the machines are shared: CPU-normalised figures compare
   better across runs).
2. Baseline, same run, same topic: a plain faust agent written the usual way (per-message
   stream, Avro decode per event, four tumbling windowed Tables updated per event) over
   ``--baseline-events`` of the same events.
3. Alert latency at ``--rate`` events/s for ``--seconds``: background traffic plus probe
   events that each push a dedicated budget over 100%; latency = probe produced -> its alert
   received by a consumer of the alerts topic (p50/p95/p99).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer

from loadtest.machine import Machine, kafka_rate
from streams.events import now_ms, partition_key
from streams.generate import Shape, generate_events
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.topics import delete_topics_containing, ensure_topics

CODEC = AvroCodec("token_event")


def bench_settings(base: Settings, run: str, partitions: int) -> Settings:
    bootstrap = base.kafka_client_config()["bootstrap.servers"]
    return dataclasses.replace(
        base,
        kafka_bootstrap=bootstrap,
        topic_events=f"bench.{run}.events",
        topic_deadletter=f"bench.{run}.deadletter",
        topic_alerts=f"bench.{run}.alerts",
        topic_rollups=f"bench.{run}.rollups",
        topic_budgets=f"bench.{run}.budgets",
        topic_enforcement=f"bench.{run}.enforcement",
        event_partitions=partitions,
        worker_id=f"bench-worker-{run}",
        log_level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    )


def budget_specs(shape: Shape, probes: int = 0) -> list[dict[str, Any]]:
    """A realistic set: every org per month, team per day, user per week, plus a label-scoped,
    a model-scoped, a rolling and a block-mode budget; optional latency probes."""
    specs: list[dict[str, Any]] = []
    for o in range(shape.orgs):
        org = f"org-{o}"
        specs.append(
            {"id": f"{org}-month", "scope": {"org": org}, "limit_usd": 50_000, "forecast": True}
        )
        specs.append(
            {
                "id": f"{org}-6h",
                "scope": {"org": org},
                "period": "rolling",
                "window": "6h",
                "limit_usd": 20_000,
            }
        )
        for t in range(shape.teams_per_org):
            team = f"{org}-team-{t}"
            specs.append(
                {
                    "id": f"{team}-day",
                    "scope": {"team": team},
                    "period": "day",
                    "timezone": "Europe/Paris",
                    "limit_usd": 5_000,
                }
            )
            for u in range(shape.users_per_team):
                user = f"{org}-user-{t}-{u}"
                specs.append(
                    {
                        "id": f"{user}-week",
                        "scope": {"user": user},
                        "period": "week",
                        "limit_usd": 2_000,
                    }
                )
    specs.append(
        {"id": "repo-0-tokens", "scope": {"labels": {"repo": "repo-0"}}, "limit_tokens": "50B"}
    )
    specs.append(
        {
            "id": "org-0-opus",
            "scope": {"org": "org-0", "model": "claude-opus-4-5"},
            "limit_usd": 10_000,
            "mode": "block",
        }
    )
    for p in range(probes):
        specs.append(
            {
                "id": f"probe-{p}",
                "scope": {"user": f"probe-user-{p}"},
                "limit_usd": 1,
                "thresholds": [100],
            }
        )
    return specs


def _budgets(specs: list[dict[str, Any]]) -> Any:
    from streams.budgets import StaticBudgets, budget_from_spec

    created = now_ms() - 90 * 86_400_000  # long before the data: no ClickHouse baseline
    return StaticBudgets([budget_from_spec(s, now_ms=created) for s in specs])


def produce(settings: Settings, messages: list[tuple[bytes, bytes]]) -> float:
    producer = Producer(
        {
            **settings.kafka_client_config(),
            "linger.ms": 20,
            "compression.type": "lz4",
            "enable.idempotence": True,
            "queue.buffering.max.messages": 2_000_000,
            "batch.size": 1_000_000,
        }
    )
    start = time.perf_counter()
    for key, value in messages:
        while True:
            try:
                producer.produce(settings.topic_events, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- child: fast worker


def run_fast_worker(
    settings: Settings, specs: list[dict[str, Any]], total: int, result: Any
) -> None:
    """Child process: the real Worker; reports wall and CPU time of the catch-up."""
    from streams.worker import Worker, WorkerConfig

    worker = Worker(settings, WorkerConfig.from_settings(settings), budgets=_budgets(specs))

    def watch() -> None:
        first_wall = first_cpu = None
        while True:
            time.sleep(0.01)
            stats = worker.stats
            done = stats["events"] + stats["dead"] + stats["duplicates"]
            if done and first_wall is None:
                first_wall, first_cpu = time.perf_counter(), time.process_time()
                first_done = done
            if total and done >= total and first_wall is not None:
                wall = time.perf_counter() - first_wall
                cpu = time.process_time() - (first_cpu or 0.0)
                measured = done - first_done
                result.put(
                    {
                        "events": measured,
                        "wall_s": wall,
                        "cpu_s": cpu,
                        "counted": stats["events"],
                        "dead": stats["dead"],
                        "duplicates": stats["duplicates"],
                        "alerts": stats["alerts"],
                        "peak_rss_mb": _peak_rss_mb(),
                    }
                )
                _exit_after(result)

    if total:
        threading.Thread(target=watch, daemon=True).start()
    worker.run()


# ---------------------------------------------------------------------------- child: baseline


def run_baseline(settings: Settings, total: int, result: Any) -> None:
    """Child process: faust the usual way (per-event stream, windowed Tables per event)."""
    import faust

    from streams.worker import broker_settings
    from streams.worker.worker import _new_loop

    app = faust.App(
        f"{settings.worker_id}-baseline",
        store="memory://",
        web_enabled=False,
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.event_partitions,
        **broker_settings(settings),
    )
    topic = app.topic(settings.topic_events, value_type=bytes, key_type=bytes)
    tables = {
        dim: app.Table(f"by-{dim}", default=int, partitions=settings.event_partitions).tumbling(
            60, expires=3600
        )
        for dim in ("org_id", "team_id", "user_id", "model")
    }
    state = {"n": 0, "first_wall": 0.0, "first_cpu": 0.0}

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for value in stream:
            event = CODEC.decode(value)
            cost = event["cost_nanos"] or 0
            for dim, table in tables.items():
                table[event[dim]] += cost
            state["n"] += 1
            if state["n"] == 1:
                state["first_wall"], state["first_cpu"] = time.perf_counter(), time.process_time()
            if state["n"] >= total:
                result.put(
                    {
                        "events": total - 1,
                        "wall_s": time.perf_counter() - state["first_wall"],
                        "cpu_s": time.process_time() - state["first_cpu"],
                    }
                )
                _exit_after(result)

    worker = faust.Worker(
        app, loglevel="WARNING", loop=_new_loop(), redirect_stdouts=False, override_logging=False
    )
    worker.execute_from_commandline()


def _peak_rss_mb() -> int:
    """This process's peak RSS (VmHWM: since its exec, unlike ru_maxrss, which also counts
    the parent's memory copied at the fork before it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return -1


def _exit_after(queue: Any) -> None:
    """Leave the child at once, but only after the queued result has been written."""
    queue.close()
    queue.join_thread()
    os._exit(0)


def child(target: Any, *args: Any, timeout: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        return dict(queue.get(timeout=timeout))
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


# ---------------------------------------------------------------------------- latency


def latency(base: Settings, partitions: int, rate: int, seconds: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    try:
        return _latency(base, run, partitions, rate, seconds)
    finally:
        delete_topics_containing(base, run)


def _latency(base: Settings, run: str, partitions: int, rate: int, seconds: int) -> dict[str, Any]:
    settings = bench_settings(base, run, partitions)
    from streams.worker import worker_topics

    ensure_topics(settings, worker_topics(settings))
    shape = Shape()
    probes = seconds * 10 + 5
    specs = budget_specs(shape, probes)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=run_fast_worker, args=(settings, specs, 0, queue))
    proc.start()
    received: dict[str, float] = {}
    alerts = AvroCodec("budget_alert")

    def listen(stop: threading.Event) -> None:
        consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"lat-{run}",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
            }
        )
        consumer.subscribe([settings.topic_alerts])
        while not stop.is_set():
            for msg in consumer.consume(num_messages=100, timeout=0.05):
                if msg.error():
                    continue
                alert = alerts.decode(msg.value())
                if alert["budget_id"] and alert["budget_id"].startswith("probe-"):
                    received.setdefault(alert["budget_id"], time.perf_counter())
        consumer.close()

    stop = threading.Event()
    listener = threading.Thread(target=listen, args=(stop,), daemon=True)
    listener.start()
    producer = Producer(
        {
            **settings.kafka_client_config(),
            "linger.ms": 1,
            "compression.type": "lz4",
            "enable.idempotence": True,
        }
    )
    sent: dict[str, float] = {}

    def probe(p: int) -> None:
        event = next(generate_events(1, seed=p, shape=shape))
        # a fresh id: seed p's first event would otherwise repeat the background's (seed 11)
        # and be dropped as a re-send
        event.update(
            event_id=str(uuid.uuid4()),
            event_time=now_ms(),
            user_id=f"probe-user-{p}",
            cost_nanos=2_000_000_000,
        )
        sent[f"probe-{p}"] = time.perf_counter()
        producer.produce(settings.topic_events, CODEC.encode(event), partition_key(event))
        producer.poll(0)

    # warm-up: wait until the worker answers a first probe
    deadline = time.monotonic() + 120
    probe(probes - 1)
    while f"probe-{probes - 1}" not in received and time.monotonic() < deadline:
        producer.poll(0.1)
    if f"probe-{probes - 1}" not in received:
        proc.kill()
        raise SystemExit("worker did not raise the warm-up alert within 120 s")
    sent.clear()
    received.clear()
    total = rate * seconds
    # generated and encoded before the clock starts: the producer side must stay light
    background = []
    for event in generate_events(total, seed=11, shape=shape):
        background.append((partition_key(event), event))
    start = time.perf_counter()
    produced = 0
    next_probe = 0
    while produced < total:
        elapsed = time.perf_counter() - start
        target = min(total, int(elapsed * rate))
        stamp = now_ms()
        while produced < target:
            key, event = background[produced]
            event["event_time"] = stamp
            producer.produce(settings.topic_events, CODEC.encode(event), key)
            produced += 1
        if next_probe < int(elapsed * 10) and next_probe < probes - 1:
            probe(next_probe)
            next_probe += 1
        producer.poll(0)
        time.sleep(0.001)
    achieved = produced / (time.perf_counter() - start)
    producer.flush(30)
    time.sleep(5)
    stop.set()
    listener.join(5)
    proc.kill()
    proc.join(10)
    delays = sorted(received[k] - sent[k] for k in sent if k in received)
    missing = len(sent) - len(delays)

    def pct(q: float) -> float:
        return delays[min(len(delays) - 1, int(q * len(delays)))] * 1000 if delays else -1.0

    return {
        "run": run,
        "rate_target": rate,
        "rate_achieved": round(achieved),
        "probes": len(sent),
        "missing": missing,
        "p50_ms": round(pct(0.50), 1),
        "p95_ms": round(pct(0.95), 1),
        "p99_ms": round(pct(0.99), 1),
        "max_ms": round(delays[-1] * 1000, 1) if delays else -1,
    }


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--baseline-events", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--only-latency", action="store_true", help="skip throughput and baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()

    machine = Machine()
    base = Settings.from_env()
    if base.kafka_is_local:
        from streams.local import stack

        stack.up(base, clickhouse=False)
    if args.only_latency:
        lat = latency(base, args.partitions, args.rate, args.seconds)
        machine.finish()
        print(json.dumps({"latency": lat, "machine": machine.as_dict()}, indent=2))
        print(machine.text())
        return
    run = uuid.uuid4().hex[:8]
    settings = bench_settings(base, run, args.partitions)
    from streams.worker import worker_topics

    # as dense in event time as traffic at 100k events/s
    span = max(1, args.events // 100)
    shape = Shape(span_ms=span, start_ms=now_ms() - span)
    events = sorted(
        generate_events(args.events, seed=42, shape=shape), key=lambda e: e["event_time"]
    )
    messages = [(partition_key(e), CODEC.encode(e)) for e in events]
    specs = budget_specs(shape)
    try:
        ensure_topics(settings, worker_topics(settings))
        produce_s = produce(settings, messages)
        # the calibration: a plain confluent-kafka consume + fastavro decode of the same topic
        machine.calibrated(kafka_rate(settings, settings.topic_events, args.events), "kafka")
        fast = child(run_fast_worker, settings, specs, args.events, timeout=900)
        baseline = child(run_baseline, settings, args.baseline_events, timeout=900)
    finally:  # the run's topics, whatever happened (they pile up on the broker otherwise)
        delete_topics_containing(base, run)
    report: dict[str, Any] = {
        "events": args.events,
        "partitions": args.partitions,
        "budgets": len(specs),
        "produce_s": round(produce_s, 2),
        "fast": {
            **fast,
            "rate_wall": round(fast["events"] / fast["wall_s"]),
            "rate_cpu": round(fast["events"] / max(fast["cpu_s"], 1e-9)),
        },
        "baseline": {
            **baseline,
            "rate_wall": round(baseline["events"] / baseline["wall_s"]),
            "rate_cpu": round(baseline["events"] / max(baseline["cpu_s"], 1e-9)),
        },
    }
    report["vs_calibration"] = machine.ratio(report["fast"]["rate_wall"])
    report["ratio_wall"] = round(report["fast"]["rate_wall"] / report["baseline"]["rate_wall"], 1)
    report["ratio_cpu"] = round(report["fast"]["rate_cpu"] / report["baseline"]["rate_cpu"], 1)
    print(json.dumps(report), file=sys.stderr, flush=True)  # kept if the latency phase fails
    if not args.skip_latency:
        report["latency"] = latency(base, args.partitions, args.rate, args.seconds)
    report["machine"] = machine.finish().as_dict()
    if args.json:
        print(json.dumps(report))
        return
    print(json.dumps(report, indent=2))
    print(machine.text())
    print(
        f"\nworker: {report['fast']['rate_wall']:,} events/s wall = "
        f"x{report['vs_calibration']} the plain consume + decode loop "
        f"({machine.calibration or 0:,.0f}/s, same topic, same run)"
    )
    print(
        f"worker: {report['fast']['rate_wall']:,} events/s wall "
        f"({report['fast']['rate_cpu']:,}/CPU-s) vs baseline {report['baseline']['rate_wall']:,}"
        f" events/s wall ({report['baseline']['rate_cpu']:,}/CPU-s): "
        f"x{report['ratio_wall']} wall, x{report['ratio_cpu']} CPU; worker peak RSS "
        f"{report['fast']['peak_rss_mb']} MB"
    )
    if "latency" in report:
        lat = report["latency"]
        print(
            f"alert latency at {lat['rate_achieved']:,} events/s: p50 {lat['p50_ms']} ms, "
            f"p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms ({lat['probes']} probes, "
            f"{lat['missing']} missing)"
        )


if __name__ == "__main__":
    main()
