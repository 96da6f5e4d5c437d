"""Realistic token traffic, a function of a seed: what ``spendstream loadtest`` agents send.

Orgs, teams and users get Zipf-like activity (a few users send most requests, as in real
fleets); each request picks a model from a mix priced by our catalog. Two kinds of work:

* agentic sessions: every turn re-sends the whole conversation, so the prompt grows turn by
  turn; as clients report it, the cached prefix is a cache read and the new part a cache write
  (Anthropic's 5-minute cache; OpenAI models report cache reads only), ``input_tokens`` being
  the uncached rest;
* chat requests: one short prompt, no session.

Some requests fail (``error``: input counted, no output) or are cancelled (partial output);
some are re-sent as a client retrying after a lost acknowledgement (same id, same content);
some arrive late (their ``event_time`` minutes to hours behind the clock); one user's agent
runs a skewed clock (a few minutes ahead, inside the 10-minute bound); ids are UUID v4 or v7.

``Traffic(spec, agent).next(now_ms)`` is deterministic: the same seed, agent index and clock
values give the same events, so a run is replayable and a test can check it.
"""

from __future__ import annotations

import dataclasses
import math
import random
import uuid
from collections.abc import Iterator
from typing import Any

from streams import events

#: (provider, model, weight): a mix of expensive and cheap models, every one in our catalog
MODELS: tuple[tuple[str, str, int], ...] = (
    ("anthropic", "claude-sonnet-4-5-20250929", 40),
    ("anthropic", "claude-haiku-4-5", 20),
    ("anthropic", "claude-opus-4-1", 5),
    ("openai", "gpt-5", 10),
    ("openai", "gpt-5-mini", 15),
    ("google", "gemini-2.5-flash", 10),
)
CLIENTS = ("claude-code", "cursor", "codex-cli", "gateway")
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
#: a conversation's prompt stops growing here (clients compact the context)
MAX_CONTEXT = 180_000


@dataclasses.dataclass(frozen=True)
class TrafficSpec:
    """The shape of a run's traffic (a scenario's ``traffic:`` block)."""

    seed: int = 1
    orgs: int = 3
    teams_per_org: int = 4
    users_per_team: int = 5
    zipf_s: float = 1.1  # activity of the k-th user ~ 1 / k**s
    agentic_share: float = 0.7  # of requests, turns of sessions (the rest are chat)
    session_turns: tuple[int, int] = (3, 40)  # a session's length, uniform in this range
    error_share: float = 0.01
    cancelled_share: float = 0.01
    duplicate_share: float = 0.005  # re-sends of a recent request (same id)
    late_share: float = 0.002  # event_time minutes to hours behind the clock
    late_max_ms: int = 3 * HOUR_MS
    skew_ms: int = 4 * MINUTE_MS  # the skewed agent's clock (ahead; < 10 min)
    v7_share: float = 0.5  # of new ids, UUID v7 (the rest v4)
    runaway_users: int = 0  # the last users' agents loop: endless sessions, 50x activity
    prefix: str = "lt"

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> TrafficSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown traffic settings: {', '.join(unknown)}")
        values = dict(raw)
        if "session_turns" in values:
            low, high = values["session_turns"]
            values["session_turns"] = (int(low), int(high))
        return cls(**values)

    @property
    def users(self) -> int:
        return self.orgs * self.teams_per_org * self.users_per_team


@dataclasses.dataclass
class _Session:
    session_id: str
    user: int
    provider: str
    model: str
    turns_left: int
    turn: int = 0
    context: int = 0  # tokens of the conversation so far (the prompt of the next turn)


def uuid7(ms: int, rng: random.Random) -> str:
    """A UUID v7 (RFC 9562): 48 bits of Unix milliseconds, then random bits from ``rng``."""
    value = (ms & ((1 << 48) - 1)) << 80 | rng.getrandbits(80)
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # variant
    return str(uuid.UUID(int=value))


class Traffic:
    """One agent's share of a run's traffic; ``agent`` of ``agents`` picks its users."""

    def __init__(self, spec: TrafficSpec, agent: int = 0, agents: int = 1) -> None:
        self.spec = spec
        self.agent = agent
        self.rng = random.Random(f"{spec.seed}/{agent}/{agents}")
        # this agent's users: every agents-th one, so agents never share a session
        self.users = list(range(agent, spec.users, agents)) or [agent % spec.users]
        weights = [1.0 / math.pow(rank + 1, spec.zipf_s) for rank in range(spec.users)]
        self.runaway = set(range(spec.users - spec.runaway_users, spec.users))
        for user in self.runaway:
            weights[user] = 50.0 * weights[0]
        self.weights = [weights[u] for u in self.users]
        self.cum = list(_accumulate(self.weights))
        self.model_cum = list(_accumulate([float(w) for *_, w in MODELS]))
        #: the skewed agent: user 0's clock (the busiest user, so it shows)
        self.skewed_user = 0
        self.sessions: dict[int, _Session] = {}
        self.recent: list[events.Event] = []  # candidates for re-sends
        self.generated = 0

    # ------------------------------------------------------------------ names

    def names(self, user: int) -> dict[str, str]:
        spec, p = self.spec, self.spec.prefix
        team_global, local = divmod(user, spec.users_per_team)
        org, team = divmod(team_global, spec.teams_per_org)
        return {
            "org_id": f"{p}-org-{org}",
            "team_id": f"{p}-org-{org}-team-{team}",
            "user_id": f"{p}-org-{org}-team-{team}-user-{local}",
            "project_id": f"{p}-org-{org}-proj-{team % 2}",
        }

    # ------------------------------------------------------------------ events

    def next(self, now_ms: int) -> events.Event:
        """The next event to send at wall-clock ``now_ms`` (a re-send is a copy)."""
        rng, spec = self.rng, self.spec
        self.generated += 1
        if self.recent and rng.random() < spec.duplicate_share:
            return dict(self.recent[rng.randrange(len(self.recent))])
        user = self.users[_pick(self.cum, rng)]
        event_time = now_ms
        if user == self.skewed_user:
            event_time += spec.skew_ms
        elif rng.random() < spec.late_share:
            event_time -= rng.randrange(MINUTE_MS, spec.late_max_ms)
        if user in self.runaway or rng.random() < spec.agentic_share:
            event = self._turn(user, event_time)
        else:
            event = self._chat(user, event_time)
        roll = rng.random()
        if roll < spec.error_share:
            event["status"] = "error"
            event["output_tokens"] = event["reasoning_tokens"] = 0
        elif roll < spec.error_share + spec.cancelled_share:
            event["status"] = "cancelled"
            event["output_tokens"] //= 3
            event["reasoning_tokens"] = min(event["reasoning_tokens"], event["output_tokens"])
        self.recent.append(event)
        if len(self.recent) > 64:
            self.recent.pop(0)
        return event

    def stream(self, now_ms: int, count: int) -> Iterator[events.Event]:
        """``count`` events at a fixed clock (tests, planning)."""
        for _ in range(count):
            yield self.next(now_ms)

    def _id(self, event_time: int) -> str:
        if self.rng.random() < self.spec.v7_share:
            return uuid7(event_time, self.rng)
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _model(self) -> tuple[str, str]:
        provider, model, _ = MODELS[_pick(self.model_cum, self.rng)]
        return provider, model

    def _base(self, user: int, event_time: int, provider: str, model: str) -> events.Event:
        return events.make_event(
            event_id=self._id(event_time),
            event_time=event_time,
            **self.names(user),
            client=CLIENTS[user % len(CLIENTS)],
            task_type="chat",
            provider=provider,
            model=model,
        )

    def _chat(self, user: int, event_time: int) -> events.Event:
        rng = self.rng
        provider, model = self._model()
        event = self._base(user, event_time, provider, model)
        event["input_tokens"] = rng.randrange(50, 3000)
        event["output_tokens"] = rng.randrange(20, 1500)
        if provider == "openai" and rng.random() < 0.3:
            event["reasoning_tokens"] = rng.randrange(0, event["output_tokens"])
        return event

    def _turn(self, user: int, event_time: int) -> events.Event:
        """A turn of the user's current session (a new one when it has ended)."""
        rng, spec = self.rng, self.spec
        session = self.sessions.get(user)
        if session is None or session.turns_left <= 0:
            provider, model = self._model()
            session = _Session(
                session_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                user=user,
                provider=provider,
                model=model,
                turns_left=10**9 if user in self.runaway else rng.randint(*spec.session_turns),
                context=rng.randrange(2_000, 12_000),  # system prompt + tools + first ask
            )
            self.sessions[user] = session
        session.turn += 1
        session.turns_left -= 1
        event = self._base(user, event_time, session.provider, session.model)
        event["session_id"] = session.session_id
        event["turn"] = session.turn
        event["task_type"] = "agentic"
        new = rng.randrange(100, 4_000)  # tool results and the user's words since last turn
        if session.turn == 1:
            cached, new = 0, session.context
        else:
            cached = session.context
        if session.provider == "anthropic":
            # cache_control on the last block: the prefix is read, the new part written
            event["cache_read_tokens"] = cached
            event["cache_write_5m_tokens"] = new
            event["input_tokens"] = rng.randrange(1, 20)
        else:
            # automatic prefix caching: reads only, the new part is plain input
            event["cache_read_tokens"] = cached
            event["input_tokens"] = new
        output = rng.randrange(50, 2_500)
        event["output_tokens"] = output
        if session.provider == "openai":
            event["reasoning_tokens"] = rng.randrange(0, output)
        session.context = min(cached + new + output, MAX_CONTEXT)
        return event


def _accumulate(weights: list[float]) -> Iterator[float]:
    total = 0.0
    for w in weights:
        total += w
        yield total


def _pick(cum: list[float], rng: random.Random) -> int:
    """Index drawn by the cumulative weights ``cum`` (bisect)."""
    x = rng.random() * cum[-1]
    lo, hi = 0, len(cum) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo
