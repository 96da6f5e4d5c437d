"""Threshold crossings, forecast to period end, runaway sessions and spend spikes (pure).

Each detector answers from plain numbers so that the stream stages stay thin and every rule
is unit-tested on its own.
"""

from __future__ import annotations

import dataclasses
import fractions
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
    #: growth sustained over turns: the per-turn context (the prompt: input + cache read +
    #: cache writes) grew on every one of at least ``growth_turns`` consecutive turns (the
    #: growth run), to ``growth_factor`` times where the run began and at least
    #: ``growth_min_context``; one prompt, however large, is not growth (a session whose last
    #: prompt alone is 240k tokens is not flagged; one that grows for 120 turns is)
    growth_turns: int = 10
    growth_factor: float = 3.0
    growth_min_context: int = 100_000
    #: sustained, not one jump: no single turn of the run may add more than this share of
    #: the run's growth
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
        "run",
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
        self.last_time = 0  # the partition clock at its last turn (idle from then)
        self.recent: list[int] = []  # the last per-turn context sizes, newest last
        #: the growth run: [context it began at, turns it grew, largest one-turn step]
        self.run: list[int] = [0, 0, 0]
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
            self.run,
        ]

    @classmethod
    def from_list(cls, raw: Sequence[object]) -> SessionState:
        state = cls(str(raw[0]), str(raw[1]), str(raw[2]))
        state.cost = int(raw[3])  # type: ignore[call-overload]
        state.turns = int(raw[4])  # type: ignore[call-overload]
        state.last_time = int(raw[5])  # type: ignore[call-overload]
        state.recent = list(raw[6])  # type: ignore[call-overload]
        state.alerted = list(raw[7])  # type: ignore[call-overload]
        if len(raw) > 8:
            state.run = [int(x) for x in raw[8]]  # type: ignore[attr-defined]
        else:  # a checkpoint from before the run was kept: the run within ``recent``
            previous: int | None = None
            for context in state.recent:
                grow_run(state.run, context, previous)
                previous = context
        return state


def grow_run(run: list[int], context: int, previous: int | None) -> None:
    """Extend the growth run ``[start, turns, max step]`` by one turn's ``context`` (after
    ``previous``, None: the session's first turn); a turn that does not grow starts a new run."""
    if previous is not None and context > previous:
        run[1] += 1
        step = context - previous
        if step > run[2]:
            run[2] = step
    else:
        run[0], run[1], run[2] = context, 0, 0


def observe_turn(
    state: SessionState, cost: int, context_tokens: int, event_time: int, rules: RunawayRules
) -> list[str]:
    """Add one request to the session; return the runaway reasons newly true (not yet alerted)."""
    state.cost += cost
    state.turns += 1
    if event_time > state.last_time:
        state.last_time = event_time
    recent = state.recent
    grow_run(state.run, context_tokens, recent[-1] if recent else None)
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
    if rules.growth_turns and state.recent and is_growing(state.run, state.recent[-1], rules):
        found.append("context_growth")
    return [r for r in found if r not in state.alerted]


def is_growing(run: Sequence[int], last: int, rules: RunawayRules) -> bool:
    """Sustained context growth: the growth run ``[start, turns, max step]`` ending at
    ``last`` grew on at least ``growth_turns`` turns, by the factor, to at least the minimum,
    and no single turn added more than ``growth_max_step_share`` of the growth (one huge
    prompt after small ones is not a session growing turn by turn)."""
    start, turns, max_step = run
    if turns < rules.growth_turns or last < rules.growth_min_context or start <= 0:
        return False
    if max_step > (last - start) * rules.growth_max_step_share:
        return False
    return last >= start * rules.growth_factor


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
