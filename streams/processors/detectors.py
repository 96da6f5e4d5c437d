"""Threshold crossings, forecast to period end, runaway sessions and spend spikes (pure).

Each detector answers from plain numbers so that the stream stages stay thin and every rule
is unit-tested on its own.
"""

from __future__ import annotations

import dataclasses
import fractions
import itertools
from collections.abc import Sequence
from typing import Final


def crossed(spent: int, limit: int, thresholds_pct: Sequence[int]) -> list[int]:
    """Thresholds reached by ``spent`` (integer math: spent*100 >= limit*pct)."""
    return [t for t in thresholds_pct if spent * 100 >= limit * t]


def percent(spent: int, limit: int) -> float:
    return round(100.0 * spent / limit, 3) if limit else 0.0


@dataclasses.dataclass(frozen=True)
class Forecast:
    projected: int
    breach_at: int | None  # when the run rate reaches the limit (UTC ms), None if never


def forecast_linear(
    spent: int,
    limit: int,
    period_start: int,
    period_end: int,
    now: int,
    min_elapsed_pct: int = 10,
) -> Forecast | None:
    """Projected spend at period end from the run rate since the period started.

    projected = spent * period_length / elapsed. Returns None while less than
    ``min_elapsed_pct`` % of the period has elapsed (too little data: a burst in the first
    minutes of a month would otherwise project absurd totals) or when nothing is spent.
    """
    length = period_end - period_start
    elapsed = min(now, period_end) - period_start
    if length <= 0 or elapsed <= 0 or spent <= 0:
        return None
    if elapsed * 100 < length * min_elapsed_pct:
        return None
    projected = spent * length // elapsed
    breach_at = period_start + limit * elapsed // spent if spent else None
    return Forecast(
        projected, breach_at if breach_at is not None and breach_at < period_end else None
    )


def forecast_breach(
    spent: int,
    limit: int,
    period_start: int,
    period_end: int,
    now: int,
    min_elapsed_pct: int = 10,
) -> Forecast | None:
    """A forecast worth alerting on: projected above the limit, and the limit not yet reached."""
    if spent >= limit:
        return None
    found = forecast_linear(spent, limit, period_start, period_end, now, min_elapsed_pct)
    if found is None or found.projected <= limit:
        return None
    return found


# ------------------------------------------------------------------------------ runaway sessions


@dataclasses.dataclass(frozen=True)
class RunawayRules:
    """When a session counts as runaway (any rule); 0 disables a rule."""

    max_cost_nanos: int = 25 * 1_000_000_000  # $25 in one session
    max_turns: int = 200
    #: growth: per-turn context (input + cache read + cache writes) grew on each of the last
    #: ``growth_turns`` turns, by ``growth_factor`` overall, above ``growth_min_context``.
    growth_turns: int = 10
    growth_factor: float = 3.0
    growth_min_context: int = 100_000
    #: sustained, not one jump: no single turn may add more than this share of the growth
    growth_max_step_share: float = 0.5


RUNAWAY_REASONS: Final = ("cost", "turns", "context_growth")


class SessionState:
    """What the runaway rules need about one session; small enough to keep thousands."""

    __slots__ = (
        "alerted",
        "cost",
        "last_time",
        "org_id",
        "recent",
        "team_id",
        "turns",
        "user_id",
    )

    def __init__(self, org_id: str, team_id: str, user_id: str) -> None:
        self.org_id = org_id
        self.team_id = team_id
        self.user_id = user_id
        self.cost = 0
        self.turns = 0
        self.last_time = 0
        self.recent: list[int] = []  # per-turn context sizes, newest last
        self.alerted: list[str] = []

    def to_list(self) -> list[object]:
        return [
            self.org_id,
            self.team_id,
            self.user_id,
            self.cost,
            self.turns,
            self.last_time,
            self.recent,
            self.alerted,
        ]

    @classmethod
    def from_list(cls, raw: Sequence[object]) -> SessionState:
        state = cls(str(raw[0]), str(raw[1]), str(raw[2]))
        state.cost = int(raw[3])  # type: ignore[call-overload]
        state.turns = int(raw[4])  # type: ignore[call-overload]
        state.last_time = int(raw[5])  # type: ignore[call-overload]
        state.recent = list(raw[6])  # type: ignore[call-overload]
        state.alerted = list(raw[7])  # type: ignore[call-overload]
        return state


def observe_turn(
    state: SessionState, cost: int, context_tokens: int, event_time: int, rules: RunawayRules
) -> list[str]:
    """Add one request to the session; return the runaway reasons newly true (not yet alerted)."""
    state.cost += cost
    state.turns += 1
    if event_time > state.last_time:
        state.last_time = event_time
    recent = state.recent
    recent.append(context_tokens)
    keep = rules.growth_turns + 1
    if len(recent) > keep:
        del recent[: len(recent) - keep]
    return runaway_reasons(state, rules)


def runaway_reasons(state: SessionState, rules: RunawayRules) -> list[str]:
    """Runaway reasons true for ``state`` now and not alerted yet (after ``observe``)."""
    found: list[str] = []
    if rules.max_cost_nanos and state.cost > rules.max_cost_nanos:
        found.append("cost")
    if rules.max_turns and state.turns > rules.max_turns:
        found.append("turns")
    recent = state.recent
    if rules.growth_turns and len(recent) == rules.growth_turns + 1 and is_growing(recent, rules):
        found.append("context_growth")
    return [r for r in found if r not in state.alerted]


def is_growing(contexts: Sequence[int], rules: RunawayRules) -> bool:
    """Sustained context growth: every turn re-sent more context than the one before, by the
    factor overall, ending above the minimum, and no single turn added more than
    ``growth_max_step_share`` of the growth (one huge prompt after small ones is not a
    session growing turn by turn)."""
    if contexts[-1] < rules.growth_min_context or contexts[0] <= 0:
        return False
    steps = [b - a for a, b in itertools.pairwise(contexts)]
    if any(step <= 0 for step in steps):
        return False
    growth = contexts[-1] - contexts[0]
    if max(steps) > growth * rules.growth_max_step_share:
        return False
    return contexts[-1] >= contexts[0] * rules.growth_factor


# ------------------------------------------------------------------------------ spend spikes


@dataclasses.dataclass(frozen=True)
class SpikeRules:
    """A minute's spend far above the trailing per-minute average of the same scope."""

    factor: float = 5.0
    baseline_minutes: int = 60
    min_history_minutes: int = 10
    min_spend_nanos: int = 1_000_000_000  # ignore spikes under $1 in a minute
    grace_ms: int = 5_000  # wait this long after the minute ends before judging it


def spike_ratio(window_spend: int, history: Sequence[int], rules: SpikeRules) -> float | None:
    """window/baseline when it is a spike, else None. ``history``: previous minutes' spend
    (zeros included), oldest first, at most ``baseline_minutes`` long."""
    if len(history) < rules.min_history_minutes or window_spend < rules.min_spend_nanos:
        return None
    total = sum(history)
    if total <= 0:
        return float("inf")
    # the decision in integers (window * minutes >= factor * total, the factor as the exact
    # fraction it is written as): floats lose the last digits of sums above 2^53 nano-USD
    factor = fractions.Fraction(str(rules.factor))
    if window_spend * len(history) * factor.denominator < factor.numerator * total:
        return None
    return window_spend * len(history) / total  # for the message only
