"""The ground-truth ledger of a load-test run: what was acknowledged, and what it must add up to.

Each agent writes every event the broker acknowledged to its own JSON-lines file as it goes
(``streams.loadtest.LedgerWriter``, the fault suite's format, so its checker reads it) and
keeps ``SpendTotals``: cost (int nano-USD, priced by the catalog) and tokens per scope (org,
team, user) and period (UTC day and month), the first copy of each id only. At the end the
run merges the agents' totals, checks them against the totals recomputed from the merged
ledger files, and the checker compares ClickHouse and the alerts topic with the ledger
(alerts the budgets imply: the reference model, ``streams.loadtest.reference``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streams import events
from streams.loadtest.compact import Ledger, group_sum, period_starts
from streams.pricing import PriceCatalog, default_catalog
from streams.processors.periods import calendar_period

SCOPES = ("org", "team", "user")
PERIODS = ("day", "month")
#: (scope kind, scope id, period kind, period start ms)
Key = tuple[str, str, str, int]


def billable_tokens(event: Mapping[str, Any]) -> int:
    """Tokens a token budget counts: every bucket, reasoning being part of output."""
    return int(sum(event[f] for f in events.TOKEN_FIELDS) - event["reasoning_tokens"])


class SpendTotals:
    """Cost and tokens per scope and period, each event id counted once."""

    def __init__(self, catalog: PriceCatalog | None = None) -> None:
        self.catalog = catalog or default_catalog()
        self.seen: set[str] = set()
        self.cost: dict[Key, int] = {}
        self.tokens: dict[Key, int] = {}
        self.events = 0
        self.resent = 0  # acknowledged copies of an id already counted

    def add(self, event: Mapping[str, Any]) -> int:
        """Count one acknowledged event; returns its cost (0 for a re-send)."""
        eid = str(event["event_id"])
        if eid in self.seen:
            self.resent += 1
            return 0
        self.seen.add(eid)
        self.events += 1
        cost = int(self.catalog.price(event).cost_nanos)
        tokens = billable_tokens(event)
        ids = {"org": event["org_id"], "team": event["team_id"], "user": event["user_id"]}
        for period in PERIODS:
            start = calendar_period(event["event_time"], period, "UTC").start
            for scope in SCOPES:
                key = (scope, str(ids[scope]), period, start)
                self.cost[key] = self.cost.get(key, 0) + cost
                self.tokens[key] = self.tokens.get(key, 0) + tokens
        return cost

    def add_all(self, acked: Iterable[Mapping[str, Any]]) -> SpendTotals:
        for event in acked:
            self.add(event)
        return self

    @classmethod
    def of_ledger(cls, ledger: Ledger) -> SpendTotals:
        """The totals of a checker's ledger (its distinct acked events), from its columns:
        what ``add_all(ledger.acked.values())`` gives, without a dict per event."""
        out = cls(ledger.catalog)
        frozen = ledger.frozen()
        out.events = len(frozen.u_first)
        out.resent = ledger.acked_messages - out.events
        times = frozen.u("event_time")
        values = ledger.strings.values
        for period in PERIODS:

            def start(ms: int, p: str = period) -> int:
                return calendar_period(ms, p, "UTC").start

            starts = period_starts(times, start)
            for scope in SCOPES:
                codes = frozen.u(f"{scope}_id")
                # one int64 key per (scope code, period start): code * span + start offset
                base = int(starts.min()) if len(starts) else 0
                span = int(starts.max()) - base + 1 if len(starts) else 1
                keys = codes.astype(np.int64) * span + (starts - base)
                for name, column in (("cost", frozen.u("cost")), ("tokens", frozen.u("tokens"))):
                    target = out.cost if name == "cost" else out.tokens
                    for key, value in group_sum(keys, column).items():
                        code, offset = divmod(key, span)
                        target[(scope, str(values[code]), period, base + offset)] = value
        return out

    def merge(self, other: SpendTotals) -> None:
        """Add another agent's totals (agents send disjoint ids; an overlap is re-sent)."""
        overlap = self.seen & other.seen
        if overlap:
            raise ValueError(f"{len(overlap)} event ids counted by two agents")
        self.seen |= other.seen
        self.events += other.events
        self.resent += other.resent
        for key, value in other.cost.items():
            self.cost[key] = self.cost.get(key, 0) + value
        for key, value in other.tokens.items():
            self.tokens[key] = self.tokens.get(key, 0) + value

    def total_cost(self, scope: str = "org", period: str = "month") -> int:
        return sum(v for (s, _, p, _), v in self.cost.items() if s == scope and p == period)

    def same_as(self, other: SpendTotals) -> list[str]:
        """What differs from ``other`` (empty when equal), a few keys at most."""
        out = []
        if self.events != other.events:
            out.append(f"events {self.events} != {other.events}")
        for name, mine, theirs in (
            ("cost", self.cost, other.cost),
            ("tokens", self.tokens, other.tokens),
        ):
            for key in sorted(set(mine) | set(theirs)):
                if mine.get(key, 0) != theirs.get(key, 0):
                    out.append(f"{name} {key}: {mine.get(key, 0)} != {theirs.get(key, 0)}")
                    if len(out) > 5:
                        return out
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "resent": self.resent,
            "rows": [
                [*key, self.cost[key], self.tokens[key]]
                for key in sorted(self.cost, key=lambda k: (k[0], k[1], k[2], k[3]))
            ],
        }

    def write(self, path: Path) -> None:
        """Totals only (ids stay in the ledger file); ``read`` restores them without ids."""
        path.write_text(json.dumps(self.as_dict(), separators=(",", ":")))

    @classmethod
    def read(cls, path: Path) -> SpendTotals:
        raw = json.loads(path.read_text())
        out = cls()
        out.events, out.resent = int(raw["events"]), int(raw["resent"])
        for scope, sid, period, start, cost, tokens in raw["rows"]:
            key = (str(scope), str(sid), str(period), int(start))
            out.cost[key], out.tokens[key] = int(cost), int(tokens)
        return out
