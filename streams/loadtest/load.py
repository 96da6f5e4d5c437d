"""Steady generated load through the SDK, recording every acknowledged event in a ledger.

    python -m streams.loadtest.load --ledger run.jsonl --rate 200 --count 6000 [--seed 1]

Settings (broker, events topic) come from the SPENDSTREAM_* environment as for any client.
Events are live (``event_time`` is the moment of sending), priced by the catalog, without
agent sessions (no runaway detector in play), with ``--duplicates`` of them re-sent as an
agent retrying after a lost acknowledgement would. The sequence of events (ids, dimensions,
tokens) is a function of the seed, so a test can plan budgets from ``plan_events`` before
the load runs. SIGTERM stops sending; the process then waits for every acknowledgement.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message

from streams import events
from streams.budgets import Budget, budget_from_spec
from streams.loadtest.checker import LedgerWriter
from streams.pricing import default_catalog
from streams.sdk import TokenEventProducer
from streams.settings import Settings

#: priced models only (an unpriced one raises its own alert)
MODELS = (
    ("anthropic", "claude-sonnet-4-5-20250929"),
    ("anthropic", "claude-haiku-4-5"),
    ("openai", "gpt-5-mini"),
)
TICK_S = 0.05


def plan_events(
    count: int, seed: int = 1, orgs: int = 2, duplicates: float = 0.01, prefix: str = "f"
) -> list[events.Event]:
    """The messages a load of ``count`` sends, in order (``event_time`` set when sent)."""
    rng = random.Random(seed)
    out: list[events.Event] = []
    for _ in range(count):
        if out and rng.random() < duplicates:
            out.append(dict(out[rng.randrange(max(0, len(out) - 50), len(out))]))
            continue
        org = rng.randrange(orgs)
        team = rng.randrange(3)
        provider, model = MODELS[rng.randrange(len(MODELS))]
        out.append(
            events.make_event(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                event_time=0,
                org_id=f"{prefix}-org-{org}",
                team_id=f"{prefix}-org-{org}-team-{team}",
                user_id=f"{prefix}-org-{org}-user-{team}-{rng.randrange(4)}",
                project_id=f"{prefix}-proj-{org}-{team}",
                client="claude-code",
                task_type="chat",
                provider=provider,
                model=model,
                input_tokens=rng.randrange(200, 4000),
                cache_read_tokens=rng.randrange(0, 2000),
                output_tokens=rng.randrange(20, 800),
            )
        )
    return out


def plan_budgets(planned: list[events.Event], prefix: str = "f") -> list[Budget]:
    """Budgets whose thresholds the planned load crosses part-way (known before it runs):
    org 0 reaches 80% of a monthly USD budget, a team of org 1 is blocked at 60% of its
    token load, org 1's budget is never reached."""
    unique = {e["event_id"]: e for e in planned}.values()
    tokens: dict[str, int] = {}
    for e in unique:
        t = sum(e[f] for f in events.TOKEN_FIELDS) - e["reasoning_tokens"]
        tokens[e["team_id"]] = tokens.get(e["team_id"], 0) + t
    catalog = default_catalog()
    cost: dict[str, int] = {}
    for e in unique:
        priced = {**e, "event_time": events.now_ms()}
        cost[e["org_id"]] = cost.get(e["org_id"], 0) + catalog.price(priced).cost_nanos
    long_ago = events.now_ms() - 40 * 86_400_000
    org0, org1 = f"{prefix}-org-0", f"{prefix}-org-1"
    team = f"{prefix}-org-1-team-0"
    specs: list[Mapping[str, Any]] = [
        {
            "id": f"{prefix}-org0-month",
            "scope": {"org": org0},
            "period": "month",
            "limit_usd": f"{cost.get(org0, 1) * 100 // 85 / 1e9:.9f}",
            "thresholds": [25, 50, 80, 100],
        },
        {
            "id": f"{prefix}-team-block",
            "scope": {"org": org1, "team": team},
            "period": "month",
            "mode": "block",
            "limit_tokens": max(1, tokens.get(team, 1) * 60 // 100),
        },
        {
            "id": f"{prefix}-org1-month",
            "scope": {"org": org1},
            "period": "month",
            "limit_usd": f"{max(cost.get(org1, 1), 1) * 10 / 1e9:.9f}",
        },
    ]
    return [budget_from_spec(s, now_ms=long_ago) for s in specs]


class LedgerProducer(TokenEventProducer):
    """The SDK's producer, writing each acknowledged event (or failed id) to a ledger."""

    def __init__(self, settings: Settings, ledger: LedgerWriter, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.ledger = ledger

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        event = self._codec.decode(msg.value() or b"")
        if err is None:
            _, ts = msg.timestamp()
            self.ledger.acked(event, msg.partition() or 0, msg.offset() or 0, ts)
        else:
            self.ledger.failed(str(event["event_id"]))
        super()._on_delivery(err, msg)


def run(
    settings: Settings,
    ledger_path: Path,
    rate: float,
    count: int,
    seed: int = 1,
    orgs: int = 2,
    duplicates: float = 0.01,
    prefix: str = "f",
) -> int:
    """Send the planned events at ``rate`` per second; returns how many were not acked."""
    planned = plan_events(count, seed, orgs, duplicates, prefix)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with LedgerWriter(ledger_path) as ledger:
        producer = LedgerProducer(settings, ledger, check_timeout=0)
        started = time.monotonic()
        sent = 0
        while sent < len(planned) and not stop:
            due = min(len(planned), int((time.monotonic() - started) * rate) + 1)
            now = events.now_ms()
            while sent < due:
                event = dict(planned[sent])
                event["event_time"] = now
                producer.send(event)
                sent += 1
            producer._producer.poll(0)
            time.sleep(TICK_S)
        remaining = producer.flush(300)
        stats = producer.stats
        print(
            f"load: {sent} sent, {stats.delivered} acked, {stats.failed} failed, "
            f"{remaining} unresolved",
            flush=True,
        )
        return remaining + stats.failed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ledger", type=Path, required=True, help="ledger file (appended)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--count", type=int, default=6000, help="messages to send")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--orgs", type=int, default=2)
    parser.add_argument("--duplicates", type=float, default=0.01, help="share of re-sends")
    parser.add_argument("--prefix", default="f", help="prefix of org/team/user ids")
    args = parser.parse_args(argv)
    failed = run(
        Settings.from_env(),
        args.ledger,
        args.rate,
        args.count,
        args.seed,
        args.orgs,
        args.duplicates,
        args.prefix,
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
