"""What the demo sends, which budgets it sets and what it expects to see (pure, deterministic).

Three sources of traffic, all live (``event_time`` is the moment of sending):

* the load-test harness's steady load (``streams.loadtest.plan_events``: chat requests of two
  orgs, three teams each, with a few re-sends), from its own process at ``load_rate``;
* a **runaway agent**: one agentic session looping, each turn re-sending the whole context
  (cache read of what was there, a cache write of what was added, a small fresh input), so its
  context grows by ``RUNAWAY_STEP`` tokens a turn until the worker's context-growth rule
  (``streams.processors.detectors.RunawayRules``) raises ``runaway_session``;
* a **team under a block-mode budget**: an agent of ``BLOCK_TEAM`` that calls the SDK's
  ``check()`` before each request and sends nothing once it is refused; its budget's limit is
  what half of its planned requests cost, so the block lands about half-way.

The org budget of ``demo-org-0`` is set so that the load and the runaway agent together cross
50% and 80% of it, not 100%. Everything is a function of the seed and the duration, so the unit
test can check the plan without running anything.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Iterable

from streams import events
from streams.budgets import Budget, budget_from_spec
from streams.loadtest import plan_events
from streams.pricing import default_catalog

PREFIX = "demo"
ORG_BUDGET = "demo-org-0-day"
BLOCK_BUDGET = "demo-team-block"
BLOCK_ORG = f"{PREFIX}-org-1"
BLOCK_TEAM = f"{PREFIX}-org-1-team-agents"
BLOCK_USER = f"{PREFIX}-org-1-user-agent"
RUNAWAY_ORG = f"{PREFIX}-org-0"
RUNAWAY_TEAM = f"{PREFIX}-org-0-team-0"
RUNAWAY_USER = f"{PREFIX}-org-0-user-looping"
RUNAWAY_MODEL = ("anthropic", "claude-sonnet-4-5-20250929")
BLOCK_MODEL = ("anthropic", "claude-sonnet-4-5-20250929")
#: context of the runaway session's first turn and what each turn adds (tokens)
RUNAWAY_START = 10_000
RUNAWAY_STEP = 8_000
#: the turn at which RunawayRules' defaults flag it (context 106,000 > 100,000, 10 growing turns)
RUNAWAY_FLAGGED_TURN = 13
#: the block agent's requests per second, and the share of them its budget allows
BLOCK_REQUESTS_PER_S = 5.0
BLOCK_SHARE = 0.5
#: the org budget is set so that the planned spend reaches this share of it
ORG_REACH = 0.9


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """The traffic, the budgets and the outcome a demo run expects."""

    seconds: float
    seed: int
    load_rate: float
    load_count: int
    #: the runaway agent's turns, in order, one every ``runaway_every_s`` (event_time unset)
    runaway: list[events.Event]
    runaway_every_s: float
    #: the block agent's requests, one every ``block_every_s`` while check() lets it
    block_requests: list[events.Event]
    block_every_s: float
    budgets: list[Budget]
    #: the org budget's thresholds the planned spend crosses (all of it sent)
    org_thresholds: tuple[int, ...]
    #: how many of the block agent's requests cross its budget's limit (1-based)
    block_crossing_request: int

    @property
    def block_budget(self) -> Budget:
        return next(b for b in self.budgets if b.budget_id == BLOCK_BUDGET)

    @property
    def org_budget(self) -> Budget:
        return next(b for b in self.budgets if b.budget_id == ORG_BUDGET)

    @property
    def runaway_session(self) -> str:
        return str(self.runaway[0]["session_id"])


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _base(
    rng: random.Random, org: str, team: str, user: str, model: tuple[str, str]
) -> events.Event:
    return events.make_event(
        event_id=_uuid(rng),
        event_time=0,
        org_id=org,
        team_id=team,
        user_id=user,
        project_id=f"{team}-repo",
        client="claude-code",
        task_type="chat",
        provider=model[0],
        model=model[1],
    )


def runaway_turns(count: int, seed: int) -> list[events.Event]:
    """One agentic session of ``count`` turns whose context grows by RUNAWAY_STEP a turn."""
    rng = random.Random(f"runaway-{seed}")
    session = _uuid(rng)
    out: list[events.Event] = []
    context = RUNAWAY_START
    for turn in range(1, count + 1):
        event = _base(rng, RUNAWAY_ORG, RUNAWAY_TEAM, RUNAWAY_USER, RUNAWAY_MODEL)
        cached = 0 if turn == 1 else context - RUNAWAY_STEP  # the prefix sent last turn
        fresh = rng.randrange(200, 1_500)  # the new tool result / message, not cached
        written = context - cached - fresh  # the rest of what was added, written to the cache
        event.update(
            session_id=session,
            turn=turn,
            task_type="agentic",
            input_tokens=fresh,
            cache_read_tokens=cached,
            cache_write_5m_tokens=written,
            output_tokens=rng.randrange(300, 1_200),
        )
        out.append(event)
        context += RUNAWAY_STEP
    return out


def block_agent_requests(count: int, seed: int) -> list[events.Event]:
    """The block agent's chat requests (a coding assistant's, a few thousand tokens each)."""
    rng = random.Random(f"block-{seed}")
    out: list[events.Event] = []
    for _ in range(count):
        event = _base(rng, BLOCK_ORG, BLOCK_TEAM, BLOCK_USER, BLOCK_MODEL)
        event.update(
            input_tokens=rng.randrange(3_000, 9_000), output_tokens=rng.randrange(300, 900)
        )
        out.append(event)
    return out


def _usd(nanos: int) -> str:
    """Exact decimal USD text of an amount of nano-USD (no float on the way)."""
    return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"


def _cost(planned: Iterable[events.Event], now_ms: int) -> int:
    catalog = default_catalog()
    return sum(catalog.price({**e, "event_time": now_ms}).cost_nanos for e in planned)


def plan_demo(seconds: float = 40.0, seed: int = 1, load_rate: float = 200.0) -> DemoPlan:
    """The demo's traffic over ``seconds`` of sending and the budgets that make its story."""
    if seconds < 10:
        raise ValueError("the demo needs at least 10 seconds of traffic")
    now = events.now_ms()
    load_count = int(seconds * load_rate)
    load = plan_events(load_count, seed, prefix=PREFIX)
    # the context-growth rule flags the session at turn RUNAWAY_FLAGGED_TURN: by half-way,
    # with turns left after it (the worker goes on counting a flagged session)
    every = min(seconds * 0.9 / max(16, int(seconds * 0.75)), seconds * 0.5 / RUNAWAY_FLAGGED_TURN)
    runaway = runaway_turns(int(seconds * 0.9 / every), seed)
    runaway_every_s = every
    requests = block_agent_requests(int(seconds * BLOCK_REQUESTS_PER_S), seed)
    crossing = max(1, int(len(requests) * BLOCK_SHARE))
    block_limit = _cost(requests[:crossing], now)
    unique = {e["event_id"]: e for e in load}.values()
    org_spend = _cost((e for e in unique if e["org_id"] == RUNAWAY_ORG), now) + _cost(runaway, now)
    org_limit = org_spend * 100 // int(ORG_REACH * 100)
    budgets = [
        budget_from_spec(
            {
                "id": ORG_BUDGET,
                "description": "demo-org-0's daily spend (alerts only)",
                "scope": {"org": RUNAWAY_ORG},
                "period": "day",
                "limit_usd": _usd(org_limit),
            }
        ),
        budget_from_spec(
            {
                "id": BLOCK_BUDGET,
                "description": f"{BLOCK_TEAM}'s daily cap: its agents stop at the limit",
                "scope": {"org": BLOCK_ORG, "team": BLOCK_TEAM},
                "period": "day",
                "mode": "block",
                "limit_usd": _usd(block_limit),
            }
        ),
    ]
    org = next(b for b in budgets if b.budget_id == ORG_BUDGET)
    block = next(b for b in budgets if b.budget_id == BLOCK_BUDGET)
    spent = 0
    crossing_request = 0
    for i, cost in enumerate(_costs(requests, now), start=1):
        spent += cost
        if spent >= block.limit:
            crossing_request = i
            break
    return DemoPlan(
        seconds=seconds,
        seed=seed,
        load_rate=load_rate,
        load_count=load_count,
        runaway=runaway,
        runaway_every_s=runaway_every_s,
        block_requests=requests,
        block_every_s=1 / BLOCK_REQUESTS_PER_S,
        budgets=budgets,
        org_thresholds=tuple(p for p in org.thresholds_pct if org_spend * 100 >= org.limit * p),
        block_crossing_request=crossing_request,
    )


def _costs(planned: Iterable[events.Event], now_ms: int) -> list[int]:
    catalog = default_catalog()
    return [catalog.price({**e, "event_time": now_ms}).cost_nanos for e in planned]
