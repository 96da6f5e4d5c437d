"""One demo run: the local stack, a run of its own (topics, groups, database), the real worker
and sink processes, the plan's traffic under the live display, then the checker and the chart.

Everything the run starts is stopped when it ends, however it ends (Ctrl-C included); the
local stack stays up for the user to explore. The run's files go to ``out_dir``: the ledgers,
``spend.png``, ``outcome.json`` and ``demo.env`` (the settings to explore the run's data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupState, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.console import Console

from streams.alerts import AlertTail
from streams.demo import chart
from streams.demo.agents import BlockedTeamAgent, RunawayAgent, kafka_log
from streams.demo.plan import BLOCK_TEAM, DemoPlan
from streams.errors import SpendstreamError
from streams.loadtest import (
    CheckResult,
    DisplaySnapshot,
    Ledger,
    LiveDisplay,
    Procs,
    check,
    env,
    prepare,
    run_settings,
)
from streams.settings import Settings

log = logging.getLogger(__name__)
NANOS = 1_000_000_000
TICK_S = 0.5
#: how long the worker and the sink may take to join their groups on a loaded machine
READY_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 120.0
#: after the drain, how long the expected alerts may take to arrive
ALERTS_TIMEOUT_S = 30.0


@dataclasses.dataclass
class DemoOutcome:
    """What a run showed; ``ok`` when the story happened and the checker found nothing wrong."""

    out_dir: Path
    settings: Settings
    started_ms: int = 0  # when the traffic started (UTC ms)
    chart: Path | None = None
    checked: CheckResult | None = None
    alerts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    refused: int = 0
    refused_by: str | None = None  # the budget of the first refusal
    refused_at_ms: int | None = None
    crossed_at_ms: int | None = None
    overshoot_nanos: int = 0
    block_limit: int = 0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a["kind"] == kind]

    @property
    def ok(self) -> bool:
        return bool(
            self.checked is not None
            and self.checked.ok
            and self.refused
            and self.kinds("runaway_session")
            and self.chart is not None
            and self.chart.exists()
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "out_dir": str(self.out_dir),
            "database": self.settings.clickhouse_database,
            "topic_events": self.settings.topic_events,
            "started_ms": self.started_ms,
            "chart": str(self.chart) if self.chart else None,
            "checked": self.checked.as_dict() if self.checked else None,
            "alerts": self.alerts,
            "refused": self.refused,
            "refused_by": self.refused_by,
            "refused_at_ms": self.refused_at_ms,
            "crossed_at_ms": self.crossed_at_ms,
            "overshoot_nanos": self.overshoot_nanos,
            "block_limit": self.block_limit,
            "timings_s": self.timings,
        }


# ------------------------------------------------------------------------------ probes


class Probes:
    """The figures of the live display, from clients created once: the sink's committed
    offsets and the worker's /metrics (lags), ClickHouse's row count, the load's ledger."""

    def __init__(self, settings: Settings, load_ledger: Path, worker_metrics: int) -> None:
        from streams.clickhouse import connect

        base: dict[str, Any] = {
            **settings.kafka_client_config(),
            "enable.auto.commit": False,
            "logger": kafka_log,
        }
        self._sink = Consumer({**base, "group.id": settings.sink_group})
        self._parts = [
            TopicPartition(settings.topic_events, p) for p in range(settings.event_partitions)
        ]
        self._client: Any = connect(settings, database=settings.clickhouse_database)
        admin: dict[str, Any] = {**settings.kafka_client_config(), "logger": kafka_log}
        self._admin = AdminClient(admin)
        self._groups = [settings.worker_id, settings.sink_group]
        self._ledger = load_ledger
        self._ledger_pos = 0
        self.load_acked = 0
        self._metrics = f"http://127.0.0.1:{worker_metrics}/metrics"

    def lags(self) -> tuple[int | None, int | None]:
        """The workers' lag (records of the events and partials topics not processed yet, from
        their /metrics: their committed offsets trail what they processed) and the sink's
        (records not committed yet)."""
        return self._worker_lag(), self._sink_lag()

    def _sink_lag(self) -> int | None:
        try:
            ends = [self._sink.get_watermark_offsets(tp, timeout=2)[1] for tp in self._parts]
            found = self._sink.committed(self._parts, timeout=2)
        except Exception as exc:  # a busy coordinator: shown as unknown this tick
            log.info("sink lag probe: %s", exc)
            return None
        return sum(max(0, end - max(0, tp.offset)) for tp, end in zip(found, ends, strict=True))

    def _worker_lag(self) -> int | None:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(self._metrics, timeout=2) as response:  # noqa: S310
                text = response.read().decode()
        except OSError as exc:  # not listening yet
            log.info("worker lag probe: %s", exc)
            return None
        lag, seen = 0, 0
        for family in text_string_to_metric_families(text):
            if family.name == "spendstream_worker_lag":
                for sample in family.samples:
                    lag += int(sample.value)
                    seen += 1
        return lag if seen else None

    def rows(self) -> int | None:
        try:
            return int(self._client.query("SELECT count() FROM token_events").result_rows[0][0])
        except Exception as exc:
            log.info("row probe: %s", exc)
            return None

    def ready(self) -> bool:
        """Both the workers' and the sink's consumer groups have members and are stable."""
        try:
            found = self._admin.describe_consumer_groups(self._groups, request_timeout=2)
            groups = [future.result() for future in found.values()]
        except Exception as exc:
            log.info("group probe: %s", exc)
            return False
        return all(g.state == ConsumerGroupState.STABLE and g.members for g in groups)

    def load_count(self) -> int:
        """Acknowledged events the load process has recorded so far (whole ledger lines)."""
        if self._ledger.exists():
            with open(self._ledger, "rb") as fh:
                fh.seek(self._ledger_pos)
                chunk = fh.read()
            complete = chunk.rfind(b"\n") + 1
            self.load_acked += chunk[:complete].count(b'{"e"')
            self._ledger_pos += complete
        return self.load_acked

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sink.close()
        with contextlib.suppress(Exception):
            self._client.close()

    def client(self) -> Any:
        return self._client


# ------------------------------------------------------------------------------ the run


def _usd(nanos: int) -> str:
    return f"${nanos / NANOS:,.2f}"  # shown only; the sums stay integers


class _Story:
    """Turns the run's state into the display's extra lines and the final summary."""

    def __init__(self, plan: DemoPlan, runaway: RunawayAgent, blocked: BlockedTeamAgent) -> None:
        self.plan = plan
        self.runaway = runaway
        self.blocked = blocked

    def lines(self, phase: str, alerts: list[dict[str, Any]]) -> list[str]:
        plan, runaway, blocked = self.plan, self.runaway, self.blocked
        flagged = any(a["kind"] == "runaway_session" for a in alerts)
        lines = [phase]
        lines.append(
            f"runaway agent ({plan.runaway[0]['user_id']}): turn {runaway.sent}/"
            f"{len(plan.runaway)}, re-sending {runaway.context:,} tokens a turn, "
            f"{_usd(runaway.spent)} so far"
            + (" - flagged runaway by the worker" if flagged else "")
        )
        budget = plan.block_budget
        state = f"check() allowed {blocked.sent} requests"
        if blocked.first_refusal is not None:
            block = blocked.first_refusal.block
            state = (
                f"BLOCKED by {block.budget_id} ({_usd(block.spent)} of {_usd(block.limit)}); "
                f"check() refused {blocked.refused} requests, allowed {blocked.sent}"
            )
        elif not blocked.watching:
            state = "starting (following the enforcement topic)"
        lines.append(
            f"team {BLOCK_TEAM} under {budget.budget_id} (block, {_usd(budget.limit)}/day): "
            f"{_usd(blocked.spent)} sent; {state}"
        )
        org = plan.org_budget
        reached = sorted(
            a["threshold_pct"]
            for a in alerts
            if a.get("budget_id") == org.budget_id and a["kind"] == "threshold_crossed"
        )
        lines.append(
            f"{org.budget_id} (alert, {_usd(org.limit)}/day): thresholds reached "
            f"{', '.join(f'{p}%' for p in reached) or 'none yet'}"
        )
        return lines


def _wait(
    what: str,
    done: Any,
    timeout: float,
    tick: Any,
    procs: Procs,
    fatal: bool = True,
) -> None:
    """Show ``what`` until ``done()``; past ``timeout`` raise (``fatal``) or just go on."""
    log.info("demo: %s", what)
    deadline = time.monotonic() + timeout
    while not done():
        try:
            procs.assert_alive("worker", "sink")
        except AssertionError as exc:
            raise SpendstreamError(f"{exc} (while {what})") from exc
        if time.monotonic() > deadline:
            if not fatal:
                log.warning("demo: gave up after %.0fs %s", timeout, what)
                return
            raise SpendstreamError(f"timed out after {timeout:.0f}s {what}")
        tick(what)


def run_demo(
    settings: Settings,
    plan: DemoPlan,
    console: Console,
    out_dir: Path,
    *,
    live: bool | None = None,
    up_stack: bool = True,
) -> DemoOutcome:
    """Run ``plan`` against the stack ``settings`` point at; returns what happened.

    Stops every process and thread it started before returning or raising (KeyboardInterrupt
    included). ``live``: force or refuse the redrawing display (default: on a terminal).
    """
    began = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    if up_stack:
        from streams.local import up

        for result in up(settings):
            console.print(f"{result.name}: {result.action} at {result.endpoint}")
    stack_s = time.monotonic() - began
    run = run_settings(settings, partitions=4, run=f"demo{out_dir.name.replace('-', '')}")
    outcome = DemoOutcome(out_dir, run, block_limit=plan.block_budget.limit)
    outcome.timings["stack_s"] = round(stack_s, 1)
    console.print(
        f"this run's topics run.{run.topic_events.split('.')[1]}.*, ClickHouse database "
        f"{run.clickhouse_database}; budgets: "
        + ", ".join(f"{b.budget_id} ({b.mode}, {_usd(b.limit)}/{b.period})" for b in plan.budgets)
    )
    prepare(run, plan.budgets)
    _write_env(out_dir / "demo.env", run)
    outcome.timings["prepare_s"] = round(time.monotonic() - began - stack_s, 1)

    logs = settings.home / "logs" / "demo"
    procs = Procs(run, logs)
    # the worker alone serves /metrics (its lag); both run in their own sessions, so that
    # Ctrl-C reaches the demo, which stops them in order
    metrics_port = _free_port()
    procs.start_new_session = True
    stop = threading.Event()
    load_ledger = out_dir / "ledger-load.jsonl"
    runaway = RunawayAgent(
        run, out_dir / "ledger-runaway.jsonl", stop, plan.runaway, plan.runaway_every_s
    )
    blocked = BlockedTeamAgent(
        run,
        out_dir / "ledger-team.jsonl",
        stop,
        plan.block_requests,
        plan.block_every_s,
        plan.block_budget.limit,
    )
    story = _Story(plan, runaway, blocked)
    probes: Probes | None = None
    tail = AlertTail(run, from_beginning=True)
    display = LiveDisplay("spendstream demo", console, live=live)
    agents = (runaway, blocked)
    try:
        probes = Probes(run, load_ledger, metrics_port)
        procs.start("sink")
        procs.start("worker", METRICS_PORT=str(metrics_port))
        tail.open()
        with display:
            rate_window: list[tuple[float, int]] = []
            phase_started = time.monotonic()

            def tick(phase: str) -> None:
                assert probes is not None
                outcome.alerts.extend(tail.poll(timeout=TICK_S / 2))
                produced = probes.load_count() + runaway.sent + blocked.sent
                now = time.monotonic()
                rate_window.append((now, produced))
                while len(rate_window) > 2 and now - rate_window[0][0] > 3:
                    rate_window.pop(0)
                then, before = rate_window[0]
                worker_lag, sink_lag = probes.lags()
                display.update(
                    DisplaySnapshot(
                        elapsed_s=now - began,
                        produced_per_s=(produced - before) / (now - then) if now > then else 0,
                        produced_total=produced,
                        worker_lag=worker_lag,
                        sink_lag=sink_lag,
                        clickhouse_rows=probes.rows(),
                        alerts_total=len(outcome.alerts),
                        recent_alerts=list(outcome.alerts[-display.max_alerts :]),
                        extra=story.lines(
                            f"{phase} ({time.monotonic() - phase_started:.0f}s)", outcome.alerts
                        ),
                    )
                )
                time.sleep(max(0.0, TICK_S - (time.monotonic() - now)))

            _wait(
                "waiting for the worker and the sink to join their consumer groups",
                probes.ready,
                READY_TIMEOUT_S,
                tick,
                procs,
            )
            outcome.timings["ready_s"] = round(time.monotonic() - phase_started, 1)

            phase_started = time.monotonic()
            outcome.started_ms = int(time.time() * 1000)
            load = procs.load(
                load_ledger, plan.load_rate, plan.load_count, plan.seed, prefix="demo"
            )
            for agent in agents:
                agent.start()
            traffic_end = time.monotonic() + plan.seconds
            _wait(
                f"sending {plan.seconds:.0f}s of traffic",
                lambda: time.monotonic() >= traffic_end and not load.alive,
                plan.seconds + 120,
                tick,
                procs,
            )
            stop.set()
            for agent in agents:
                agent.join(timeout=60)
                if agent.error is not None:
                    raise SpendstreamError(f"{agent.name} failed: {agent.error}") from agent.error
            if load.popen.returncode:
                raise SpendstreamError(f"the load process failed; its log: {load.log}")
            outcome.timings["traffic_s"] = round(time.monotonic() - phase_started, 1)

            phase_started = time.monotonic()

            def drained() -> bool:
                assert probes is not None
                return probes.lags() == (0, 0)

            _wait(
                "waiting for the worker and the sink to catch up",
                drained,
                DRAIN_TIMEOUT_S,
                tick,
                procs,
            )
            _wait(
                "waiting for the last alerts",
                lambda: _alerts_arrived(plan, outcome.alerts),
                ALERTS_TIMEOUT_S,
                tick,
                procs,
                fatal=False,  # the checker then says which are missing
            )
            outcome.timings["drain_s"] = round(time.monotonic() - phase_started, 1)
        outcome.refused = blocked.refused
        if blocked.first_refusal is not None:
            outcome.refused_by = blocked.first_refusal.block.budget_id
            outcome.refused_at_ms = blocked.first_refusal.at_ms
        outcome.crossed_at_ms = blocked.crossed_at_ms
        outcome.overshoot_nanos = blocked.overshoot

        ledger = Ledger.load(
            load_ledger,
            out_dir / "ledger-runaway.jsonl",
            out_dir / "ledger-team.jsonl",
            budgets=plan.budgets,
        )
        outcome.checked = check(run, ledger)
        client = probes.client()
        marks = []
        if outcome.refused_at_ms is not None:
            marks.append((BLOCK_TEAM, "check() refuses", outcome.refused_at_ms))
        outcome.chart = chart.draw(
            out_dir / "spend.png",
            chart.cumulative(chart.spend_rows(client, "team_id")),
            chart.cumulative(chart.spend_rows(client, "org_id")),
            plan.budgets,
            outcome.alerts,
            outcome.started_ms,
            marks,
            title=f"spendstream demo {out_dir.name}: spend so far, budgets and alerts",
        )
    finally:
        # a second Ctrl-C must not cut the clean-up short
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        stop.set()
        for agent in agents:
            if agent.is_alive():
                agent.join(timeout=60)
        procs.stop_all(timeout=30)
        tail.close()
        if probes is not None:
            probes.close()
        display.close()
        outcome.timings["total_s"] = round(time.monotonic() - began, 1)
        (out_dir / "outcome.json").write_text(json.dumps(outcome.as_dict(), indent=2, default=str))
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return outcome


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alerts_arrived(plan: DemoPlan, alerts: list[dict[str, Any]]) -> bool:
    """The runaway alert, the org budget's planned thresholds and the block's 100% are in."""
    seen = {(a.get("budget_id"), a.get("threshold_pct")) for a in alerts}
    wanted = {(plan.org_budget.budget_id, p) for p in plan.org_thresholds}
    wanted.add((plan.block_budget.budget_id, 100))
    return wanted <= seen and any(a["kind"] == "runaway_session" for a in alerts)


def _write_env(path: Path, run: Settings) -> None:
    """The run's settings as ``SPENDSTREAM_*`` lines, for exploring its data afterwards."""
    values = {k: v for k, v in env(run).items() if k.startswith("SPENDSTREAM_")}
    path.write_text("".join(f"{k}={v}\n" for k, v in sorted(values.items())))


def summary_lines(outcome: DemoOutcome, plan: DemoPlan) -> list[str]:
    """What the run showed, in a few lines for the terminal."""
    lines: list[str] = []
    if outcome.refused_at_ms is not None:
        delay = ""
        if outcome.crossed_at_ms is not None:
            seconds = (outcome.refused_at_ms - outcome.crossed_at_ms) / 1000
            delay = f", {seconds:.1f}s after the request that crossed it"
        over = outcome.overshoot_nanos
        pct = over * 100 / outcome.block_limit if outcome.block_limit else 0.0
        lines.append(
            f"block: check() refused {BLOCK_TEAM} {outcome.refused} times once "
            f"{outcome.refused_by} was reached{delay}; overshoot {_usd(over)} "
            f"({pct:.1f}% of the limit)"
        )
    else:
        lines.append(f"block: check() never refused {BLOCK_TEAM}")
    runaway = outcome.kinds("runaway_session")
    if runaway:
        seconds = (int(runaway[0]["detected_at"]) - outcome.started_ms) / 1000
        lines.append(f"runaway: {runaway[0]['message']} ({seconds:.0f}s into the traffic)")
    else:
        lines.append("runaway: no runaway_session alert arrived")
    if outcome.checked is not None:
        lines.append("ground truth: " + outcome.checked.summary())
    return lines


@contextlib.contextmanager
def quiet_logs(path: Path) -> Iterator[None]:
    """This process's logging, and anything written to its stderr (librdkafka's own lines
    included), go to ``path`` for the duration; the terminal keeps only the display."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level, old_handlers = root.level, list(root.handlers)
    for other in old_handlers:  # their stderr is the file now: each line would come twice
        root.removeHandler(other)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    sys.stderr.flush()
    stream = handler.stream
    assert stream is not None  # a FileHandler opens its file at once
    saved = os.dup(2)
    os.dup2(stream.fileno(), 2)
    stream.write(f"--- spendstream demo {dt.datetime.now(dt.UTC).isoformat()}\n")
    try:
        yield
    finally:
        sys.stderr.flush()
        handler.flush()
        os.dup2(saved, 2)
        os.close(saved)
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for other in old_handlers:
            root.addHandler(other)
        root.setLevel(old_level)
        handler.close()


def report_rows(outcome: DemoOutcome) -> Mapping[str, int]:
    """Spend per team in ClickHouse (nano-USD), for the closing table."""
    from streams.clickhouse import connect

    client: Any = connect(outcome.settings, database=outcome.settings.clickhouse_database)
    try:
        rows = client.query(
            "SELECT team_id, sum(cost_nanos) FROM token_events GROUP BY team_id ORDER BY team_id"
        ).result_rows
    finally:
        client.close()
    return {str(team): int(nanos) for team, nanos in rows}
