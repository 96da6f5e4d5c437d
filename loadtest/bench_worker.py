"""Worker throughput and alert latency, beside the usual per-event faust baseline, in one run.

    python -m loadtest.bench_worker                      # defaults below
    python -m loadtest.bench_worker --events 1000000 --baseline-events 30000 --partitions 6
    python -m loadtest.bench_worker --only-latency --rates 10000,30000 --seconds 20 --runs 5

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
3. Alert latency at each of ``--rates`` events/s for ``--seconds``: background traffic plus probe
   events that each push a dedicated budget over 100%; latency = probe produced -> its alert
   received by a consumer of the alerts topic (p50/p95/p99).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Producer

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
        base.with_topic_prefix(f"bench.{run}"),
        kafka_bootstrap=bootstrap,
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
    import logging

    from streams.worker import Worker, WorkerConfig

    die_with_parent()
    # a spawned child has no logging set up: without this its log (BENCH_LOG_LEVEL) is lost
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

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

    die_with_parent()

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


def die_with_parent() -> None:
    """In a benchmark's child: exit once the parent is gone. A benchmark killed by a timeout
    left its worker child running (it never stops by itself), and a few of those kept the
    shared machine's load at 6-9 and slowed the runs after it."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def exit_on_sigterm() -> None:
    """SIGTERM (``timeout``, a heavy-slot limit) raises SystemExit, so that the ``finally``
    blocks run: children stopped, the run's topics deleted (Python's default dies at once)."""

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


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


# ---------------------------------------------------------------------------- main


def throughput(base: Settings, args: argparse.Namespace, machine: Machine) -> dict[str, Any]:
    """Phases 1 and 2 (the worker's catch-up, the naive faust baseline) and the calibration."""
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
        calibration = kafka_rate(settings, settings.topic_events, args.events)
        if machine.calibration is None:
            machine.calibrated(calibration, "kafka")
        fast = child(run_fast_worker, settings, specs, args.events, timeout=900)
        baseline = {}
        if args.baseline_events:
            baseline = child(run_baseline, settings, args.baseline_events, timeout=900)
    finally:  # the run's topics, whatever happened (they pile up on the broker otherwise)
        delete_topics_containing(base, run)
    report: dict[str, Any] = {
        "events": args.events,
        "partitions": args.partitions,
        "budgets": len(specs),
        "produce_s": round(produce_s, 2),
        "calibration": round(calibration),
        "fast": {
            **fast,
            "rate_wall": round(fast["events"] / fast["wall_s"]),
            "rate_cpu": round(fast["events"] / max(fast["cpu_s"], 1e-9)),
        },
    }
    report["vs_calibration"] = round(report["fast"]["rate_wall"] / calibration, 3)
    if baseline:
        report["baseline"] = {
            **baseline,
            "rate_wall": round(baseline["events"] / baseline["wall_s"]),
            "rate_cpu": round(baseline["events"] / max(baseline["cpu_s"], 1e-9)),
        }
        report["ratio_wall"] = round(
            report["fast"]["rate_wall"] / report["baseline"]["rate_wall"], 1
        )
        report["ratio_cpu"] = round(report["fast"]["rate_cpu"] / report["baseline"]["rate_cpu"], 1)
    return report


def _line_throughput(report: dict[str, Any]) -> str:
    fast = report["fast"]
    line = (
        f"worker: {fast['rate_wall']:,} events/s wall = x{report['vs_calibration']} the plain "
        f"consume + decode loop ({report['calibration']:,}/s, same topic, same run)"
    )
    if "baseline" in report:
        line += (
            f"; naive faust {report['baseline']['rate_wall']:,}/s (x{report['ratio_wall']} wall,"
            f" x{report['ratio_cpu']} CPU); peak RSS {fast['peak_rss_mb']} MB"
        )
    return line


def _lines_latency(lat: dict[str, Any]) -> list[str]:
    out = []
    for phase in lat["phases"]:
        a, b = phase["alert"], phase["block"]
        out.append(
            f"at {phase['rate_achieved']:,} events/s: alert p50 {a['p50']} p99 {a['p99']} max "
            f"{a['max']} ms ({a['probes']} probes, {a['missing']} missing); block seen by check()"
            f" p50 {b['p50']} p99 {b['p99']} ms ({b['probes']} probes, {b['missing']} missing),"
            f" overshoot p50 {b['overshoot_pct']['p50']}% max {b['overshoot_pct']['max']}%"
        )
        for kind in ("alert", "block"):
            for hop, fig in phase[kind]["hops"].items():
                out.append(f"    {kind} {hop:<38} p50 {fig['p50']!s:>7} p99 {fig['p99']!s:>7} ms")
        for hop, fig in phase["worker_histograms"].items():
            out.append(
                f"    worker histogram {hop:<24} p50 {fig['p50_ms']:>8} p99 {fig['p99_ms']:>8} ms"
                f" ({fig['n']} observations)"
            )
    return out


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of the issue's targets, from one run's report."""
    out: dict[str, Any] = {}
    if "throughput" in report:
        out["throughput_vs_calibration"] = report["throughput"]["vs_calibration"]
    for phase in report.get("latency", {}).get("phases", []):
        rate = phase["rate_target"]
        out[f"alert_p99_ms@{rate}"] = phase["alert"]["p99"]
        out[f"block_p99_ms@{rate}"] = phase["block"]["p99"]
        out[f"overshoot_max_pct@{rate}"] = phase["block"]["overshoot_pct"]["max"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--baseline-events", type=int, default=20_000, help="0: no baseline")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rates", default="10000,30000", help="latency phases, events/s")
    parser.add_argument("--seconds", type=int, default=20, help="of each latency phase")
    parser.add_argument("--runs", type=int, default=1, help="repeat; report medians and all")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--only-latency", action="store_true", help="skip throughput and baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()

    from loadtest.latency import LatencyRun, median_of

    exit_on_sigterm()
    machine = Machine()
    base = Settings.from_env()
    if base.kafka_is_local:
        from streams.local import stack

        stack.up(base, clickhouse=False)
    rates = [int(r) for r in args.rates.split(",") if r]
    runs: list[dict[str, Any]] = []
    if args.only_latency and args.runs > 1:
        # one worker for every run (its start-up takes minutes on a loaded machine): the
        # runs are consecutive rounds of the phases over the same worker and topics
        every = LatencyRun(base, args.partitions, rates * args.runs, args.seconds).run()
        for index in range(args.runs):
            phases = every["phases"][index * len(rates) : (index + 1) * len(rates)]
            report: dict[str, Any] = {
                "run": index + 1,
                "load_before": phases[0].get("load_before", [0.0]),
            }
            report["latency"] = {"run": every["run"], "phases": phases}
            report["headline"] = headline(report)
            runs.append(report)
    for index in range(0 if runs else args.runs):
        report = {"run": index + 1, "load_before": list(os.getloadavg())}
        if not args.only_latency:
            report["throughput"] = throughput(base, args, machine)
            print(_line_throughput(report["throughput"]), file=sys.stderr, flush=True)
        if not args.skip_latency:
            report["latency"] = LatencyRun(base, args.partitions, rates, args.seconds).run()
            for line in _lines_latency(report["latency"]):
                print(line, file=sys.stderr, flush=True)
        report["headline"] = headline(report)
        print(json.dumps(report["headline"]), file=sys.stderr, flush=True)
        runs.append(report)
    if machine.calibration is None and runs and "throughput" not in runs[0]:
        machine.calibrated(_calibrate_latency_only(base, args.partitions), "kafka")
    machine.finish()
    keys = list(runs[0]["headline"]) if runs else []
    medians = {k: median_of([r["headline"].get(k) for r in runs]) for k in keys}
    every = {k: [r["headline"].get(k) for r in runs] for k in keys}
    result = {"machine": machine.as_dict(), "median": medians, "all": every, "runs": runs}
    if args.json:
        print(json.dumps(result))
        return
    print(json.dumps(result, indent=2))
    print(machine.text())
    for report in runs:
        print(f"run {report['run']} (load before {report['load_before'][0]:.2f}):")
        if "throughput" in report:
            print("  " + _line_throughput(report["throughput"]))
        for line in _lines_latency(report.get("latency", {"phases": []})):
            print("  " + line)
    print(f"median of {len(runs)} runs (all runs):")
    for k in keys:
        print(f"  {k:<32} {medians[k]!s:>8}   {every[k]}")


def _calibrate_latency_only(base: Settings, partitions: int, events: int = 200_000) -> float:
    """The calibration when no throughput phase ran: a fresh topic of ``events`` events."""
    run = uuid.uuid4().hex[:8]
    settings = bench_settings(base, run, partitions)
    from streams.worker import worker_topics

    try:
        ensure_topics(settings, worker_topics(settings))
        messages = [(partition_key(e), CODEC.encode(e)) for e in generate_events(events, seed=42)]
        produce(settings, messages)
        return kafka_rate(settings, settings.topic_events, events)
    finally:
        delete_topics_containing(base, run)


if __name__ == "__main__":
    main()
