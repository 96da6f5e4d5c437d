"""One load-test run: the whole pipeline at a rate, measured, then checked against the ledger.

``run(scenario, out)``: starts the local stack in a fresh home (or uses the configured
Kafka/ClickHouse: ``SPENDSTREAM_KAFKA_BOOTSTRAP`` / ``SPENDSTREAM_CLICKHOUSE_URL``), gives the
run its own topics, groups and database (``streams.loadtest.procs.run_settings``), publishes
the scenario's budgets, starts the workers and sinks as real ``spendstream`` processes, waits
until their consumer groups are up, then the producer agents (loadtest/agents.py) and the
enforcement probe. Every second it samples produced, worker and sink committed offsets (lag),
rows in ClickHouse, alerts received, CPU and RSS of every process; every few seconds a report
query. After the agents finish it waits until everything is committed, stops the processes
and runs the fault suite's checker (streams.loadtest.checker.check) over the ledger.

Every child is started with fork + exec (subprocess), never ``multiprocessing`` fork: a
forked copy of a process whose librdkafka threads run can crash (exit 139).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from loadtest.agents import probe_budgets
from loadtest.latency import summary
from loadtest.ledger import SpendTotals
from loadtest.machine import Machine
from loadtest.scenario import Scenario
from loadtest.traffic import TrafficSpec
from streams.clickhouse import Target, connect
from streams.loadtest.checker import Ledger, check
from streams.loadtest.display import DisplaySnapshot, LiveDisplay, plain_line
from streams.loadtest.procs import Proc, Procs, committed, drop, ends, prepare, run_settings
from streams.local import stack
from streams.local._common import free_ports
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.worker import partials_topic

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_S = 1.0
#: a phase's lag is bounded when it grew by at most this many seconds of its rate
BOUNDED_LAG_S = 3.0


def results_dir(name: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return ROOT / "loadtest" / "results" / f"{name}-{stamp}"


# ---------------------------------------------------------------------------- processes


def _cpu_rss(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS in KiB of ``pid`` (0, 0 once gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(stat[11]) + int(stat[12])) / ticks
        rss = int(stat[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
        return cpu, rss
    except (OSError, IndexError, ValueError):
        return 0.0, 0


def _service_pids(settings: Settings) -> dict[str, int]:
    """The local broker's and ClickHouse's pids, when this stack runs them."""
    from streams.local import LocalClickHouse, LocalKafka

    out = {}
    if settings.kafka_is_local and (pid := LocalKafka(settings).pid()):
        out["kafka"] = pid
    if settings.clickhouse_is_local and (pid := LocalClickHouse(settings).pid()):
        out["clickhouse"] = pid
    return out


def wait_groups(settings: Settings, groups: list[str], procs: Procs, timeout: float) -> float:
    """Until every consumer group has a member (the workers and sinks are consuming)."""
    admin = AdminClient(settings.kafka_client_config())
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        procs.assert_alive("worker", "sink")
        try:
            futures = admin.describe_consumer_groups(groups, request_timeout=10)
            if all(f.result().members for f in futures.values()):
                return time.monotonic() - started
        except Exception:  # not created yet: ask again
            pass
        time.sleep(1.0)
    raise TimeoutError(f"consumer groups {groups} not up in {timeout:.0f}s")


class Offsets:
    """Ends of the events topic and the committed offsets of the worker and sink groups,
    asked as the fault suite's ``wait_drained`` asks them (a fresh consumer per question)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def ends(self) -> int:
        return sum(ends(self.settings, self.settings.topic_events).values())

    def sample(self) -> tuple[int, int, int]:
        """(produced, worker committed, sink committed), events summed over partitions."""
        s = self.settings
        return (
            self.ends(),
            sum(committed(s, s.topic_events, s.worker_id).values()),
            sum(committed(s, s.topic_events, s.sink_group).values()),
        )

    def close(self) -> None:
        pass


class AlertWatch(threading.Thread):
    """An ordinary subscriber of the alerts topic: counts alerts, stamps their receipt."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.received: list[tuple[float, dict[str, Any], int]] = []  # (ms, alert, broker ts)
        self.stop = threading.Event()

    def run(self) -> None:
        codec = AvroCodec("budget_alert")
        consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"lt-alerts-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
            }
        )
        topic = self.settings.topic_alerts
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        while not self.stop.is_set():
            for msg in consumer.consume(num_messages=500, timeout=0.1):
                if msg.error():
                    continue
                now = time.time() * 1000.0
                self.received.append((now, codec.decode(msg.value()), msg.timestamp()[1]))
        consumer.close()


# ---------------------------------------------------------------------------- measures


def phase_figures(
    samples: list[dict[str, Any]], schedule: tuple[tuple[float, float], ...], start: float
) -> list[dict[str, Any]]:
    """Per phase: offered, produced, worker and sink events/s; lags; was the lag bounded."""
    out = []
    begin = start
    for seconds, rate in schedule:
        end = begin + seconds
        inside = [s for s in samples if begin <= s["t"] <= end]
        begin = end
        if len(inside) < 2:
            continue
        first, last = inside[0], inside[-1]
        span = max(1e-9, last["t"] - first["t"])
        row: dict[str, Any] = {"seconds": seconds, "offered_per_s": rate}
        for name in ("produced", "worker", "sink"):
            row[f"{name}_per_s"] = round((last[name] - first[name]) / span, 1)
        for name in ("worker", "sink"):
            lags = [s["produced"] - s[name] for s in inside]
            growth = lags[-1] - lags[0]
            row[f"{name}_lag_start"], row[f"{name}_lag_end"] = lags[0], lags[-1]
            row[f"{name}_lag_max"] = max(lags)
            row[f"{name}_bounded"] = growth <= BOUNDED_LAG_S * max(rate, 1.0)
        row["bounded"] = row["worker_bounded"] and row["sink_bounded"]
        row["end_to_end_per_s"] = min(row["worker_per_s"], row["sink_per_s"])
        out.append(row)
    return out


def alert_latencies(
    received: list[tuple[float, dict[str, Any], int]], ledger: Ledger
) -> list[float]:
    """ms from the crossing event's production (its CreateTime in the ledger) to the alert's
    receipt by a subscriber, for threshold alerts of events in the ledger."""
    out = []
    seen = set()
    for at, alert, _ in received:
        if alert["kind"] != "threshold_crossed" or alert["alert_id"] in seen:
            continue
        seen.add(alert["alert_id"])
        ts = ledger.produced_ts(str(alert.get("event_id")))
        if ts is not None and ts > 0:
            out.append(at - ts)
    return out


def _report_query(settings: Settings) -> float:
    """ms of a month-to-date spend report by team (the `spendstream report spend` path)."""
    from streams.query.ranges import resolve
    from streams.query.report import Reports

    client = connect(settings, database=settings.clickhouse_database)
    try:
        started = time.perf_counter()
        Reports(client, Target.from_settings(settings)).spend(
            resolve("month", "UTC"), by=("org", "team")
        )
        return (time.perf_counter() - started) * 1000.0
    finally:
        client.close()


def _rows(settings: Settings) -> int | None:
    try:
        client = connect(settings, database=settings.clickhouse_database)
        try:
            return int(str(client.command("SELECT count() FROM token_events")))
        finally:
            client.close()
    except Exception:  # a busy server: the display shows '-'
        return None


# ---------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Stack:
    """The services of a run: started here in a fresh home, or the configured ones."""

    settings: Settings
    managed: bool
    home: Path | None = None

    @classmethod
    def up(cls, base: Settings | None = None) -> Stack:
        if base is not None:
            return cls(base, managed=False)
        settings = Settings.from_env()
        if not (settings.kafka_is_local or settings.clickhouse_is_local):
            stack.up(settings)
            return cls(settings, managed=False)
        home = Path(tempfile.mkdtemp(prefix="spendstream-loadtest-"))
        kafka_port, controller_port, http_port, tcp_port = free_ports(4)
        settings = Settings.from_env(
            home=home,
            local_kafka_port=kafka_port,
            local_kafka_controller_port=controller_port,
            local_clickhouse_http_port=http_port,
            local_clickhouse_tcp_port=tcp_port,
        )
        stack.up(settings)
        return cls(settings, managed=True, home=home)

    def down(self) -> None:
        if self.managed:
            stack.down(self.settings)
            if self.home is not None:
                shutil.rmtree(self.home, ignore_errors=True)


def _spawn_agents(
    procs: Procs,
    scenario: Scenario,
    out: Path,
    phases: list[tuple[float, float]],
    count: int | None = None,
    traffic: TrafficSpec | None = None,
) -> list[Proc]:
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "traffic.json"
    spec.write_text(json.dumps(dataclasses.asdict(traffic or scenario.traffic)))
    agents = []
    for agent in range(scenario.agents):
        argv = [sys.executable, "-m", "loadtest.agents", "traffic", "--spec", str(spec)]
        argv += ["--agent", str(agent), "--agents", str(scenario.agents), "--out", str(out)]
        argv += ["--phases", json.dumps([[s, r / scenario.agents] for s, r in phases])]
        if count is not None:
            argv += ["--count", str(count // scenario.agents)]
        proc = procs.spawn("agent", argv)
        proc.result = out / f"agent-{agent}.json"  # type: ignore[attr-defined]
        agents.append(proc)
    return agents


def run(
    scenario: Scenario,
    out: Path,
    *,
    base: Settings | None = None,
    display: LiveDisplay | None = None,
    compare: Callable[[Settings, Path, float | None], dict[str, Any]] | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run ``scenario``; returns (and writes to ``out/results.json``) what was measured."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.json").write_text(json.dumps(dataclasses.asdict(scenario), indent=1))
    machine = Machine()
    services = Stack.up(base)
    settings = run_settings(services.settings, partitions=scenario.partitions)
    prefix = scenario.traffic.prefix
    budgets = scenario.budgets() + probe_budgets(prefix, scenario.enforce_probes)
    prepare(settings, budgets)
    # loadtest/ is not installed: the children find it where this process did
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    procs = Procs(settings, out / "logs")
    results: dict[str, Any] = {"scenario": scenario.name, "out": str(out)}
    results["run_settings"] = {
        "clickhouse_database": settings.clickhouse_database,
        "topic_events": settings.topic_events,
        "topic_alerts": settings.topic_alerts,
        "topic_enforcement": settings.topic_enforcement,
        "topic_deadletter": settings.topic_deadletter,
        "event_partitions": settings.event_partitions,
        "worker_id": settings.worker_id,
        "sink_group": settings.sink_group,
    }
    samples: list[dict[str, Any]] = []
    queries: list[float] = []
    watch = AlertWatch(settings)
    offsets: Offsets | None = None
    try:
        backlog = None
        if scenario.backlog:
            backlog = _produce_backlog(procs, scenario, out)
            results["backlog"] = backlog
        for _ in range(scenario.workers):
            procs.start("worker")
        for n in range(scenario.sinks):
            procs.start("sink", SINK_INSTANCE_ID=f"lt-sink-{n}")
        drain_start = time.monotonic()
        results["startup_s"] = round(
            wait_groups(settings, [settings.worker_id, settings.sink_group], procs, 600), 1
        )
        watch.start()
        offsets = Offsets(settings)
        # the services' own settings: the run's name the broker and ClickHouse explicitly
        pids = _service_pids(services.settings)
        if backlog is not None:
            results["catch_up"] = _drain(offsets, procs, scenario, drain_start, samples, pids)
        t0 = time.monotonic()
        schedule = scenario.schedule()
        agents = _spawn_agents(procs, scenario, out, list(schedule))
        if scenario.enforce_probes:
            argv = [sys.executable, "-m", "loadtest.agents", "enforce", "--prefix", prefix]
            argv += ["--probes", str(scenario.enforce_probes)]
            argv += ["--every", str(scenario.enforce_every_s), "--out", str(out)]
            enforcer = procs.spawn("enforce", argv)
            enforcer.result = out / "enforce.json"  # type: ignore[attr-defined]
            agents.append(enforcer)
        next_query = t0 + scenario.query_every_s
        load_end: float | None = None
        drained_at: float | None = None
        deadline = t0 + scenario.seconds + scenario.drain_timeout_s + 120
        while time.monotonic() < deadline:
            now = time.monotonic()
            procs.assert_alive("worker", "sink")
            sample = _sample(offsets, procs, pids, now - t0)
            samples.append(sample)
            if now >= next_query:
                queries.append(_report_query(settings))
                next_query = now + scenario.query_every_s
            if display is not None:
                display.update(_snapshot(sample, samples, watch, settings))
            elif len(samples) % 10 == 1:
                print(plain_line(_snapshot(sample, samples, watch, settings)), flush=True)
            if load_end is None and all(_finished(a, out) for a in agents):
                load_end = now
            if load_end is not None and sample["worker"] >= sample["produced"] <= sample["sink"]:
                drained_at = now
                break
            time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - now)))
        if drained_at is None:
            raise TimeoutError(
                f"not drained {scenario.drain_timeout_s:.0f}s after the load ended (last "
                f"sample {samples[-1] if samples else None}): see {out}/logs"
            )
        _wait_partials(settings, procs, timeout=120)
        results["load_s"] = round((load_end or drained_at) - t0, 1)
        results["drain_after_load_s"] = round(drained_at - (load_end or drained_at), 1)
        live = [s for s in samples if s["phase"] == "load"]
        results["phases"] = phases = phase_figures(live, schedule, 0.0)
        bounded = [p for p in phases if p["bounded"]]
        if bounded:
            best = max(bounded, key=lambda p: p["end_to_end_per_s"])
            results["sustained"] = {
                "events_per_s": best["end_to_end_per_s"],
                "offered_per_s": best["offered_per_s"],
            }
        failed_agents = [a.log.name for a in agents if a.popen.returncode]
        results["failed_agents"] = failed_agents
        time.sleep(2.0)  # the last alerts of the drained partials
    finally:
        watch.stop.set()
        if offsets is not None:
            offsets.close()
        procs.stop_all()
        with open(out / "samples.jsonl", "w") as fh:
            for row in samples:
                fh.write(json.dumps(row) + "\n")
    try:
        checking = time.monotonic()
        results["runner_peak_rss_before_check_mib"] = _peak_rss_mib()
        results.update(_verify(settings, out, budgets, watch, scenario))
        results["check_s"] = round(time.monotonic() - checking, 1)
        # the runner's own peak (it holds the ledger): ru_maxrss is in KiB on Linux
        results["check_peak_rss_mib"] = _peak_rss_mib()
        results["report_query_ms"] = summary(queries)
        results["processes"] = _process_figures(samples)
        results["machine"] = machine.finish().as_dict()
        if compare is not None:
            ours = (results.get("sustained") or {}).get("events_per_s")
            results["compare"] = compare(settings, out, ours)
    finally:
        if not keep:
            drop(settings)
        services.down()
    results["alerts_received"] = len(watch.received)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def _peak_rss_mib() -> float:
    """This process's peak RSS so far (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _finished(agent: Proc, out: Path) -> bool:
    """Exited, or its results written (then it is given 10 s to exit, and stopped)."""
    if not agent.alive:
        return True
    written = getattr(agent, "result", None)
    if written is None or not written.exists():
        return False
    seen = getattr(agent, "written_at", None)
    if seen is None:
        agent.written_at = time.monotonic()  # type: ignore[attr-defined]
    elif time.monotonic() - seen > 10:
        agent.popen.terminate()
        return True
    return False


def _produce_backlog(procs: Procs, scenario: Scenario, out: Path) -> dict[str, Any]:
    started = time.monotonic()
    # other ids than the live traffic's (the same seed would send the same ones again)
    traffic = dataclasses.replace(scenario.traffic, seed=scenario.traffic.seed + 7919)
    agents = _spawn_agents(
        procs, scenario, out / "backlog", [(1e9, 0.0)], scenario.backlog, traffic
    )
    for agent in agents:
        procs.wait(agent, timeout=3600)
        if agent.popen.returncode:
            raise RuntimeError(f"backlog agent failed: {agent.log}")
    seconds = time.monotonic() - started
    return {"events": scenario.backlog, "produce_s": round(seconds, 1),
            "produce_per_s": round(scenario.backlog / seconds, 1)}  # fmt: skip


def _drain(
    offsets: Offsets,
    procs: Procs,
    scenario: Scenario,
    started: float,
    samples: list[dict[str, Any]],
    pids: dict[str, int],
) -> dict[str, Any]:
    """Until the workers and sinks have committed the backlog: their events/s doing so."""
    target = offsets.ends()
    done: dict[str, float] = {}
    deadline = started + scenario.drain_timeout_s
    while len(done) < 2 and time.monotonic() < deadline:
        procs.assert_alive("worker", "sink")
        now = time.monotonic()
        sample = _sample(offsets, procs, pids, now - started, phase="catch-up")
        samples.append(sample)
        for name in ("worker", "sink"):
            if name not in done and sample[name] >= target:
                done[name] = now - started
        time.sleep(SAMPLE_S)
    if len(done) < 2:
        raise TimeoutError(f"backlog not drained in {scenario.drain_timeout_s:.0f}s: {done}")
    return {
        "events": target,
        "worker_s": round(done["worker"], 1),
        "sink_s": round(done["sink"], 1),
        "worker_per_s": round(target / done["worker"], 1),
        "sink_per_s": round(target / done["sink"], 1),
        "note": "seconds from starting the workers and sinks (their start-up included)",
    }


def _wait_partials(settings: Settings, procs: Procs, timeout: float) -> None:
    target = ends(settings, partials_topic(settings))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.assert_alive("worker")
        found = committed(settings, partials_topic(settings), settings.worker_id)
        if all(found.get(p, 0) >= end for p, end in target.items()):
            return
        time.sleep(0.5)
    raise TimeoutError("the workers' partials were not committed")


def _sample(
    offsets: Offsets, procs: Procs, pids: dict[str, int], t: float, phase: str = "load"
) -> dict[str, Any]:
    produced, worker, sink = offsets.sample()
    row: dict[str, Any] = {"t": round(t, 2), "phase": phase, "produced": produced,
                           "worker": worker, "sink": sink, "wall": time.time()}  # fmt: skip
    row["rows"] = _rows(offsets.settings)
    for proc in procs.all:
        if proc.alive:
            cpu, rss = _cpu_rss(proc.popen.pid)
            key = f"{proc.name}-{proc.popen.pid}"
            row[f"cpu:{key}"], row[f"rss:{key}"] = cpu, rss
    for name, pid in pids.items():
        cpu, rss = _cpu_rss(pid)
        row[f"cpu:{name}"], row[f"rss:{name}"] = cpu, rss
    row["load1"] = os.getloadavg()[0]
    return row


def _snapshot(
    sample: dict[str, Any], samples: list[dict[str, Any]], watch: AlertWatch, settings: Settings
) -> DisplaySnapshot:
    earlier = samples[-6] if len(samples) > 5 else samples[0]
    span = max(1e-9, sample["t"] - earlier["t"])
    return DisplaySnapshot(
        elapsed_s=sample["t"],
        produced_per_s=(sample["produced"] - earlier["produced"]) / span,
        produced_total=sample["produced"],
        worker_lag=sample["produced"] - sample["worker"],
        sink_lag=sample["produced"] - sample["sink"],
        clickhouse_rows=sample["rows"],
        alerts_total=len(watch.received),
        recent_alerts=[a for _, a, _ in watch.received[-5:]],
        extra=[f"load average {sample['load1']:.2f}"],
    )


def _process_figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per process: CPU seconds used, mean cores while sampled, peak RSS (MiB)."""
    out: dict[str, Any] = {}
    keys = {k.split(":", 1)[1] for s in samples for k in s if k.startswith("cpu:")}
    for key in sorted(keys):
        rows = [(s["t"], s[f"cpu:{key}"], s[f"rss:{key}"]) for s in samples if f"cpu:{key}" in s]
        if len(rows) < 2:
            continue
        (t0, c0, _), (t1, c1, _) = rows[0], rows[-1]
        out[key] = {
            "cpu_s": round(c1 - c0, 1),
            "cores": round((c1 - c0) / max(1e-9, t1 - t0), 2),
            "peak_rss_mib": round(max(r for *_, r in rows) / 1024, 1),
        }
    return out


def _verify(
    settings: Settings,
    out: Path,
    budgets: list[Any],
    watch: AlertWatch,
    scenario: Scenario,
) -> dict[str, Any]:
    """The checker over the ledger; the agents' totals against the ledger's; latencies."""
    files = sorted(out.glob("ledger-*.jsonl")) + sorted((out / "backlog").glob("ledger-*.jsonl"))
    ledger = Ledger.load(*files, budgets=budgets)
    loaded_rss = _peak_rss_mib()
    result = check(settings, ledger)
    merged = SpendTotals()
    for path in sorted(out.glob("totals-*.json")) + sorted((out / "backlog").glob("totals-*.json")):
        merged.merge(SpendTotals.read(path))
    recomputed = SpendTotals.of_ledger(ledger)
    totals_diff = recomputed.same_as(merged)
    enforce = _enforce_figures(out)
    latencies = alert_latencies(watch.received, ledger)
    (out / "alert_latency_ms.json").write_text(json.dumps([round(x, 1) for x in latencies]))
    acks: list[float] = []
    for path in sorted(out.glob("agent-*.json")):
        acks += json.loads(path.read_text())["ack_latency_ms"]
    return {
        "runner_peak_rss_after_load_mib": loaded_rss,
        "check": result.as_dict(),
        "check_ok": result.ok,
        "check_summary": result.summary(),
        "ledger_totals_agree": not totals_diff,
        "ledger_totals_diff": totals_diff,
        "spend_usd": round(recomputed.total_cost() / 1e9, 2),
        "alert_latency_ms": summary(latencies),
        "ack_latency_ms": summary(acks),
        "enforcement": enforce,
    }


def _enforce_figures(out: Path) -> dict[str, Any]:
    path = out / "enforce.json"
    if not path.exists():
        return {}
    probes = json.loads(path.read_text())
    delays = [p["delay_ms"] for p in probes if "delay_ms" in p]
    overshoot_pct = [100.0 * p["overshoot_nanos"] / p["limit_nanos"] for p in probes]
    overshoot_usd = [p["overshoot_nanos"] / 1e9 for p in probes]
    return {
        "probes": len(probes),
        "blocked": len(delays),
        "delay_ms": summary(delays),
        "overshoot_pct": summary(overshoot_pct),
        "overshoot_usd_max": round(max(overshoot_usd), 4) if overshoot_usd else None,
        "overshoot_pct_median": round(statistics.median(overshoot_pct), 2) if probes else None,
        "limit_usd": probes[0]["limit_nanos"] / 1e9 if probes else None,
    }


def interrupt_handler() -> None:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt in the main thread: the ``finally`` blocks
    stop the processes and the stack; SIGTERM is made to do the same."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
