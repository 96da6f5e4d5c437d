"""A load-test producer process: one agent's share of the traffic, or the enforcement probe.

    python -m loadtest.agents traffic --spec spec.json --agent 0 --agents 2 --out DIR \
        --phases '[[60, 2000]]'
    python -m loadtest.agents enforce --prefix lt --probes 5 --every 6 --out DIR

Run by ``loadtest/run.py`` as a child process (fork + exec through subprocess: a process
never forks after librdkafka started its threads, which is what made an earlier harness
segfault). Settings (broker, topics) come from the SPENDSTREAM_* environment.

``traffic``: sends ``Traffic(spec, agent, agents)`` through the SDK at each phase's rate
(``[seconds, events/s of this agent]``; rate 0 = as fast as it goes, for a backlog), writes
every acknowledged event to ``ledger-<agent>.jsonl`` as it goes, its ``SpendTotals`` to
``totals-<agent>.json``, and ``agent-<agent>.json``: acks per second and the broker's
acknowledgement latency (``Message.latency()``, a sample).

``enforce``: runaway agents, one after another, each spending against its own block-mode
budget through the SDK and calling ``check()`` before every request, as a user's agent would:
the first request spends ``BLOCK_PRESPEND`` of the limit, then ``BLOCK_REQUESTS_PER_S``
requests a second together cost 1/60 of the limit per second (the whole budget in a minute,
loadtest/latency.py's probe shape). Per probe: when the crossing request was sent, when
``check()`` first said blocked, and what was spent after the crossing before that (the
overshoot).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message

from loadtest.latency import BLOCK_PRESPEND, BLOCK_REQUESTS_PER_S
from loadtest.ledger import SpendTotals
from loadtest.traffic import Traffic, TrafficSpec
from streams import events
from streams.budgets import Budget, budget_from_spec
from streams.errors import ProducerError
from streams.loadtest.checker import LedgerWriter
from streams.loadtest.load import LedgerProducer
from streams.settings import Settings

TICK_S = 0.02
LATENCY_SAMPLE = 20_000
BLOCK_LIMIT_USD = 10
NANOS = 1_000_000_000
#: runaway probes start this long after the agent's EnforcementWatcher is ready
LONG_AGO_MS = 40 * 86_400_000


class MeasuredProducer(LedgerProducer):
    """The ledger producer, also counting acks per second and sampling the ack latency."""

    def __init__(self, settings: Settings, ledger: LedgerWriter, totals: SpendTotals) -> None:
        super().__init__(settings, ledger, check_timeout=0)
        self.totals = totals
        self.acks: dict[int, int] = {}
        self.latency_ms: list[float] = []
        self.seen = 0
        self.rng = random.Random(1)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        super()._on_delivery(err, msg)
        if err is not None:
            return
        second = int(time.time())
        self.acks[second] = self.acks.get(second, 0) + 1
        latency = msg.latency()
        self.seen += 1
        if latency is not None:
            if len(self.latency_ms) < LATENCY_SAMPLE:
                self.latency_ms.append(latency * 1000.0)
            else:  # reservoir: every ack equally likely to be in the sample
                slot = self.rng.randrange(self.seen)
                if slot < LATENCY_SAMPLE:
                    self.latency_ms[slot] = latency * 1000.0
        self.totals.add(self._codec.decode(msg.value() or b""))


def _stop_flag() -> list[bool]:
    flag = [False]

    def on_term(*_: object) -> None:
        flag[0] = True

    signal.signal(signal.SIGTERM, on_term)
    return flag


def run_traffic(
    settings: Settings,
    spec: TrafficSpec,
    agent: int,
    agents: int,
    phases: list[tuple[float, float]],
    out: Path,
    count: int | None = None,
) -> int:
    """Send the phases' traffic (at most ``count`` events); returns how many were not acked."""
    stop = _stop_flag()
    traffic = Traffic(spec, agent, agents)
    totals = SpendTotals()
    sent = 0
    with LedgerWriter(out / f"ledger-{agent}.jsonl") as ledger:
        producer = MeasuredProducer(settings, ledger, totals)
        for seconds, rate in phases:
            started = time.monotonic()
            done = 0
            while not stop[0] and (elapsed := time.monotonic() - started) < seconds:
                if count is not None and sent + done >= count:
                    break
                due = 2_000 if rate <= 0 else int(elapsed * rate) + 1 - done
                if count is not None:
                    due = min(due, count - sent - done)
                now = events.now_ms()
                for _ in range(max(0, due)):
                    try:
                        producer.send(traffic.next(now))
                    except ProducerError:  # the local queue is full: wait for acks
                        producer._producer.poll(0.05)
                        break
                    done += 1
                producer._producer.poll(0)
                if rate > 0:
                    time.sleep(TICK_S)
            sent += done
        remaining = producer.flush(300)
        stats = producer.stats
    totals.write(out / f"totals-{agent}.json")
    (out / f"agent-{agent}.json").write_text(
        json.dumps(
            {
                "sent": sent,
                "acked": stats.delivered,
                "failed": stats.failed,
                "unresolved": remaining,
                "acks_per_s": sorted(producer.acks.items()),
                "ack_latency_ms": producer.latency_ms,
            }
        )
    )
    print(f"agent {agent}: {sent} sent, {stats.delivered} acked, {stats.failed} failed", flush=True)
    return remaining + stats.failed


# ---------------------------------------------------------------------------- enforcement


def probe_budgets(prefix: str, probes: int) -> list[Budget]:
    """One block-mode budget per runaway probe (each its own user), set before the run."""
    long_ago = events.now_ms() - LONG_AGO_MS
    return [
        budget_from_spec(
            {
                "id": f"{prefix}-block-{n}",
                "scope": {"user": f"{prefix}-runaway-user-{n}"},
                "period": "month",
                "mode": "block",
                "limit_usd": BLOCK_LIMIT_USD,
                "thresholds": [100],
            },
            now_ms=long_ago,
        )
        for n in range(probes)
    ]


def _probe_event(prefix: str, n: int, cost: int, turn: int) -> events.Event:
    return events.make_event(
        event_id=str(uuid.uuid4()),
        event_time=events.now_ms(),
        org_id=f"{prefix}-runaway-org",
        team_id=f"{prefix}-runaway-team",
        user_id=f"{prefix}-runaway-user-{n}",
        session_id=f"{prefix}-runaway-session-{n}",
        turn=turn,
        client="claude-code",
        task_type="agentic",
        provider="anthropic",
        model="claude-sonnet-4-5-20250929",
        input_tokens=10,
        output_tokens=100,
        cost_nanos=cost,  # the provider's reported cost: the catalog takes it as is
    )


def run_enforce(settings: Settings, prefix: str, probes: int, every_s: float, out: Path) -> int:
    """The runaway probes, one after another; results in ``enforce.json``."""
    stop = _stop_flag()
    limit = BLOCK_LIMIT_USD * NANOS
    step = limit // (60 * BLOCK_REQUESTS_PER_S)  # the whole limit in a minute: a runaway
    results: list[dict[str, Any]] = []
    totals = SpendTotals()
    with LedgerWriter(out / "ledger-enforce.jsonl") as ledger:
        producer = MeasuredProducer(settings, ledger, totals)
        producer.watch_enforcement(timeout=120)
        for n in range(probes):
            if stop[0]:
                break
            user = f"{prefix}-runaway-user-{n}"
            started = time.monotonic()
            spent = after = 0
            turn = 0
            probe: dict[str, Any] = {"probe": n, "limit_nanos": limit}
            while not stop[0] and time.monotonic() - started < 120:
                if producer.check(user_id=user) is not None:  # refused: the agent stops
                    probe["seen_ms"] = time.time() * 1000.0
                    break
                cost = int(limit * BLOCK_PRESPEND) if spent == 0 else step
                turn += 1
                if spent >= limit:
                    after += cost
                crossing = spent < limit <= spent + cost
                spent += cost
                if crossing:
                    probe["crossing_ms"] = time.time() * 1000.0
                producer.send(_probe_event(prefix, n, cost, turn))
                producer._producer.poll(0)
                time.sleep(1.0 / BLOCK_REQUESTS_PER_S)
            probe.update(spent_nanos=spent, overshoot_nanos=after, requests=turn)
            if "seen_ms" in probe and "crossing_ms" in probe:
                probe["delay_ms"] = probe["seen_ms"] - probe["crossing_ms"]
            results.append(probe)
            rest = every_s - (time.monotonic() - started)
            if rest > 0 and n + 1 < probes:
                time.sleep(rest)
        remaining = producer.flush(120)
        producer.close()
    totals.write(out / "totals-enforce.json")
    (out / "enforce.json").write_text(json.dumps(results))
    blocked = sum(1 for p in results if "delay_ms" in p)
    print(f"enforce: {blocked} of {len(results)} probes blocked", flush=True)
    return remaining


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    traffic = sub.add_parser("traffic")
    traffic.add_argument("--spec", type=Path, required=True, help="TrafficSpec as JSON")
    traffic.add_argument("--agent", type=int, default=0)
    traffic.add_argument("--agents", type=int, default=1)
    traffic.add_argument("--phases", required=True, help="JSON [[seconds, events/s], ...]")
    traffic.add_argument("--out", type=Path, required=True)
    traffic.add_argument("--count", type=int, default=None, help="stop after this many")
    enforce = sub.add_parser("enforce")
    enforce.add_argument("--prefix", default="lt")
    enforce.add_argument("--probes", type=int, default=3)
    enforce.add_argument("--every", type=float, default=8.0, help="seconds between probes")
    enforce.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.role == "traffic":
        spec = TrafficSpec.from_mapping(json.loads(args.spec.read_text()))
        phases = [(float(s), float(r)) for s, r in json.loads(args.phases)]
        failed = run_traffic(settings, spec, args.agent, args.agents, phases, args.out, args.count)
    else:
        failed = run_enforce(settings, args.prefix, args.probes, args.every, args.out)
    # everything is flushed and written: leave without the interpreter's shutdown, which can
    # wait on librdkafka's threads (a producer still referenced at exit)
    sys.stdout.flush()
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
