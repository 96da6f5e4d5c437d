"""Load-test scenarios: small YAML files in loadtest/scenarios/, read into ``Scenario``.

A scenario names its rate and length (or ``phases``: seconds and a factor of the rate, for a
burst or a ramp), its processes (workers, sinks, producer agents), its traffic (a
``TrafficSpec``), its budgets (per org, and per busiest user; ``cross_at`` is the share of the
run at which they reach 100%, so ``month-end`` makes hundreds cross at once), the runaway
probes of enforcement, and a ``backlog``: events produced before the workers and sinks start
(``catch-up``). ``spendstream loadtest scenarios`` lists them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from loadtest.ledger import SpendTotals
from loadtest.traffic import Traffic, TrafficSpec
from streams import events
from streams.budgets import Budget, budget_from_spec

FOLDER = Path(__file__).resolve().parent / "scenarios"
#: events per agent generated to plan budgets (scaled up to the run's count)
PLAN_SAMPLE = 20_000
LONG_AGO_MS = 40 * 86_400_000


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    rate: float = 1000.0  # events/s, all agents together
    duration_s: float = 60.0
    #: (seconds, factor of ``rate``); default one phase of ``duration_s`` at 1x
    phases: tuple[tuple[float, float], ...] = ()
    workers: int = 1
    sinks: int = 1
    agents: int = 1
    partitions: int = 4
    traffic: TrafficSpec = dataclasses.field(default_factory=TrafficSpec)
    org_budgets: bool = True
    user_budgets: int = 10  # the busiest users, each its own budget
    cross_at: float = 0.6  # of the run's spend, where the budgets reach 100%
    thresholds: tuple[int, ...] = (50, 80, 100)
    enforce_probes: int = 3
    enforce_every_s: float = 8.0
    backlog: int = 0  # events produced before workers and sinks start
    query_every_s: float = 5.0
    drain_timeout_s: float = 300.0

    def schedule(self) -> tuple[tuple[float, float], ...]:
        """(seconds, total events/s) of each phase."""
        phases = self.phases or ((self.duration_s, 1.0),)
        return tuple((s, f * self.rate) for s, f in phases)

    @property
    def seconds(self) -> float:
        return sum(s for s, _ in self.schedule())

    @property
    def planned_events(self) -> int:
        return int(sum(s * r for s, r in self.schedule())) + self.backlog

    def with_overrides(self, **values: Any) -> Scenario:
        """``--rate``, ``--duration`` (drops the phases' lengths: one phase), ``--workers``..."""
        given = {k: v for k, v in values.items() if v is not None}
        if "duration_s" in given and self.phases:
            total = self.seconds
            given["phases"] = tuple((s * given["duration_s"] / total, f) for s, f in self.phases)
        return dataclasses.replace(self, **given)

    def budgets(self, now_ms: int | None = None) -> list[Budget]:
        """The run's budgets, set long before it, limits planned from a sample of its traffic."""
        now = events.now_ms() if now_ms is None else now_ms
        totals = SpendTotals()
        sampled = 0
        per_agent = max(1, self.planned_events // self.agents)
        for agent in range(self.agents):
            n = min(per_agent, PLAN_SAMPLE)
            totals.add_all(Traffic(self.traffic, agent, self.agents).stream(now, n))
            sampled += n
        scale = self.planned_events / max(1, sampled)
        specs: list[dict[str, Any]] = []
        month = [(k, v) for k, v in totals.cost.items() if k[2] == "month"]
        p = self.traffic.prefix
        if self.org_budgets:
            for (_, org, _, _), cost in sorted(m for m in month if m[0][0] == "org"):
                specs.append(self._spec(f"{p}-budget-{org}", {"org": org}, cost * scale))
        users = sorted((m for m in month if m[0][0] == "user"), key=lambda m: -m[1])
        for (_, user, _, _), cost in users[: self.user_budgets]:
            org = user.split("-team-")[0]
            scope = {"org": org, "user": user}
            specs.append(self._spec(f"{p}-budget-{user}", scope, cost * scale))
        long_ago = now - LONG_AGO_MS
        return [budget_from_spec(s, now_ms=long_ago) for s in specs]

    def _spec(self, bid: str, scope: dict[str, str], planned_nanos: float) -> dict[str, Any]:
        limit = max(1, int(planned_nanos * self.cross_at))
        return {
            "id": bid,
            "scope": scope,
            "period": "month",
            "limit_usd": f"{limit / 1e9:.9f}",
            "thresholds": list(self.thresholds),
        }


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def load(name_or_path: str) -> Scenario:
    """A scenario by name (loadtest/scenarios/NAME.yaml) or by the path of a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = FOLDER / f"{name_or_path}.yaml"
    if not path.exists():
        raise ValueError(f"no scenario {name_or_path!r}; known: {', '.join(names())}")
    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("name", path.stem)
    known = {f.name for f in dataclasses.fields(Scenario)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
    if "traffic" in raw:
        raw["traffic"] = TrafficSpec.from_mapping(raw["traffic"])
    if "phases" in raw:
        raw["phases"] = tuple((float(s), float(f)) for s, f in raw["phases"])
    if "thresholds" in raw:
        raw["thresholds"] = tuple(int(t) for t in raw["thresholds"])
    return Scenario(**raw)
