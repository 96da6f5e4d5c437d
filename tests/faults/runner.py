"""One fault run: real workers and sinks under steady load, faults at random points, the checker.

A run (``FaultRun``) names the faults it injects; ``execute`` prepares the run's own topics and
database on the session's stack, starts its workers and sinks, starts the load (every acked
event in a ledger), injects each fault at a random point of the load (seeded: a run is
replayable), brings every process back, waits until everything produced is committed by the
sinks and the workers, and returns the checker's result (streams/loadtest/checker.py).

Faults (``FAULTS``): SIGKILL of a worker, a sink, or both at once (each restarted at once);
SIGSTOP/SIGCONT of a worker, a sink, the broker or ClickHouse for a few seconds; a broker
restart; ClickHouse stopped for 30 s; a rebalance (a worker and a sink added, later the oldest
of each stopped with SIGTERM).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.loadtest.checker import CheckResult, Ledger, check
from streams.loadtest.load import plan_budgets, plan_events
from streams.loadtest.procs import Proc, Procs, drop, prepare, run_settings, wait_drained
from streams.local import LocalClickHouse, LocalKafka
from streams.settings import Settings

#: longest wait for the sinks and workers to commit everything after the load
DRAIN_S = 240.0


@dataclasses.dataclass(frozen=True)
class FaultRun:
    name: str
    faults: tuple[str, ...]  # kinds of FAULTS, injected in this order at random points
    rate: float = 200.0  # events per second
    seconds: float = 30.0  # of load
    seed: int = 1
    partitions: int = 4

    @property
    def count(self) -> int:
        return int(self.rate * self.seconds)


@dataclasses.dataclass
class Context:
    procs: Procs
    kafka: LocalKafka
    clickhouse: LocalClickHouse
    rng: random.Random
    log: list[str]
    sinks: int = 0  # sink slots handed out (each sink has a stable instance id)

    def start_sink(self, slot: int | None = None) -> Proc:
        if slot is None:
            slot, self.sinks = self.sinks, self.sinks + 1
        proc = self.procs.start("sink", SINK_INSTANCE_ID=f"fault-sink-{slot}")
        proc.slot = slot  # type: ignore[attr-defined]
        return proc

    def pick(self, name: str) -> Proc:
        running = self.procs.running(name)
        assert running, f"no {name} running"
        return self.rng.choice(running)

    def pause(self) -> float:
        return round(self.rng.uniform(3.0, 12.0), 1)


def _kill(ctx: Context, *names: str) -> None:
    for name in names:
        proc = ctx.pick(name)
        Procs.signal(proc, signal.SIGKILL)
        if name == "sink":
            ctx.start_sink(getattr(proc, "slot", None))
        else:
            ctx.procs.start(name)


def _stop_proc(ctx: Context, name: str) -> None:
    proc = ctx.pick(name)
    seconds = ctx.pause()
    ctx.log.append(f"  {name} pid {proc.popen.pid} stopped {seconds}s")
    Procs.signal(proc, signal.SIGSTOP)
    time.sleep(seconds)
    Procs.signal(proc, signal.SIGCONT)


def _stop_pid(ctx: Context, what: str, pid: int | None) -> None:
    assert pid is not None, f"{what} is not running"
    seconds = ctx.pause()
    ctx.log.append(f"  {what} pid {pid} stopped {seconds}s")
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def _restart_broker(ctx: Context) -> None:
    ctx.kafka.down()
    ctx.kafka.up()


def _clickhouse_down(ctx: Context) -> None:
    ctx.clickhouse.down()
    try:
        time.sleep(30)
    finally:
        ctx.clickhouse.up()


def _rebalance(ctx: Context) -> None:
    """A worker and a sink join; after a while the oldest of each leaves (SIGTERM)."""
    ctx.procs.start("worker")
    ctx.start_sink()
    time.sleep(ctx.pause())
    for name in ("worker", "sink"):
        oldest = ctx.procs.running(name)[0]
        oldest.popen.send_signal(signal.SIGTERM)
        ctx.procs.wait(oldest, 60)


FAULTS: dict[str, Callable[[Context], None]] = {
    "kill-worker": lambda ctx: _kill(ctx, "worker"),
    "kill-sink": lambda ctx: _kill(ctx, "sink"),
    "kill-both": lambda ctx: _kill(ctx, "worker", "sink"),
    "pause-worker": lambda ctx: _stop_proc(ctx, "worker"),
    "pause-sink": lambda ctx: _stop_proc(ctx, "sink"),
    "pause-broker": lambda ctx: _stop_pid(ctx, "broker", ctx.kafka.pid()),
    "pause-clickhouse": lambda ctx: _stop_pid(ctx, "clickhouse", ctx.clickhouse.pid()),
    "restart-broker": _restart_broker,
    "clickhouse-down-30s": _clickhouse_down,
    "rebalance": _rebalance,
}


@dataclasses.dataclass
class Outcome:
    run: FaultRun
    result: CheckResult
    log: list[str]
    seconds: float

    def row(self) -> dict[str, Any]:
        r = self.result
        return {
            "run": self.run.name,
            "faults": list(self.run.faults),
            "rate": self.run.rate,
            "load_s": self.run.seconds,
            "seed": self.run.seed,
            "seconds": round(self.seconds),
            "ok": r.ok,
            "acked": r.acked,
            "rows": r.rows,
            "lost": r.lost,
            "duplicated": r.duplicated,
            "invented": r.invented,
            "orphan_keys": r.orphan_keys,
            "alerts_expected": r.alerts_expected,
            "alerts_missing": r.missing_alerts,
            "alerts_duplicate": r.duplicate_alerts,
            "alerts_extra": r.extra_alerts,
            "summary": r.summary(),
            "log": self.log,
        }


def execute(
    stack: Settings, kafka: LocalKafka, clickhouse: LocalClickHouse, run: FaultRun, tmp: Path
) -> Outcome:
    """Run ``run`` on the session's stack; the checker's result (the caller asserts it)."""
    started = time.monotonic()
    settings = run_settings(stack, partitions=run.partitions)
    planned = plan_events(run.count, run.seed)
    budgets = plan_budgets(planned)
    prepare(settings, budgets)
    procs = Procs(settings, tmp / "logs")
    ledger_path = tmp / "ledger.jsonl"
    rng = random.Random(run.seed)
    ctx = Context(procs, kafka, clickhouse, rng, [])
    try:
        procs.start("worker")
        ctx.start_sink()
        load = procs.load(ledger_path, rate=run.rate, count=run.count, seed=run.seed)
        # each fault at a random point of its share of the load
        share = run.seconds / max(1, len(run.faults))
        for i, kind in enumerate(run.faults):
            at = i * share + rng.uniform(0.15, 0.85) * share
            while time.monotonic() - started < at:
                time.sleep(0.1)
            ctx.log.append(f"{time.monotonic() - started:6.1f}s {kind}")
            FAULTS[kind](ctx)
        assert procs.wait(load, run.seconds + 300) == 0, f"load failed: see {load.log}"
        ctx.log.append(f"{time.monotonic() - started:6.1f}s load done")
        try:
            wait_drained(settings, procs, timeout=DRAIN_S)
        except AssertionError as exc:
            _dump_stacks(procs)
            _record_failure(run, f"not drained: {exc}", ctx.log, time.monotonic() - started)
            raise
        ctx.log.append(f"{time.monotonic() - started:6.1f}s drained")
        ledger = Ledger.load(ledger_path, budgets=budgets)
        result = check(settings, ledger)
        outcome = Outcome(run, result, ctx.log, time.monotonic() - started)
        _record(outcome)
        return outcome
    finally:
        procs.stop_all()
        if not kafka.is_running():
            kafka.up()
        if not clickhouse.is_running():
            clickhouse.up()
        drop(settings)


def _dump_stacks(procs: Procs) -> None:
    """Every live worker's threads (SIGUSR2, faulthandler) and tasks (SIGUSR1, no locals) into
    its log, for a run that did not drain."""
    for proc in procs.running("worker"):
        for sig in (signal.SIGUSR2, signal.SIGUSR1):
            proc.popen.send_signal(sig)
            time.sleep(1.5)


def _record_failure(run: FaultRun, why: str, log: list[str], seconds: float) -> None:
    path = os.environ.get("FAULTS_RESULTS")
    if path:
        row = {"run": run.name, "faults": list(run.faults), "rate": run.rate}
        row.update(load_s=run.seconds, seed=run.seed, seconds=round(seconds), ok=False)
        row.update(summary=why, log=log)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def _record(outcome: Outcome) -> None:
    """Append the run's row to ``$FAULTS_RESULTS`` (``make faults`` sets it)."""
    path = os.environ.get("FAULTS_RESULTS")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(outcome.row()) + "\n")
