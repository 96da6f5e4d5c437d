"""Realistic synthetic token events with known ground truth, for the demo, tests and load tests.

Agentic sessions re-send their context every turn, so their input grows with the turn number
(cumulative input grows quadratically); chat requests are small and independent. Output is
deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Iterator
from typing import Any

from streams import events

MODELS: tuple[tuple[str, str, float], ...] = (
    ("anthropic", "claude-sonnet-4-5-20250929", 0.45),
    ("anthropic", "claude-opus-4-5", 0.10),
    ("anthropic", "claude-haiku-4-5", 0.15),
    ("openai", "gpt-5", 0.15),
    ("openai", "gpt-5-mini", 0.05),
    ("gcp.gemini", "gemini-2.5-pro", 0.10),
)
CLIENTS: tuple[str, ...] = ("claude-code", "copilot", "cursor", "custom-agent")


@dataclasses.dataclass(frozen=True)
class Shape:
    """How many orgs, teams and users, and over which time span events are spread."""

    orgs: int = 3
    teams_per_org: int = 4
    users_per_team: int = 5
    projects_per_team: int = 2
    start_ms: int | None = None
    span_ms: int = 3_600_000
    agentic_share: float = 0.6
    max_turns: int = 30
    duplicate_rate: float = 0.0


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def generate_events(n: int, seed: int = 0, shape: Shape | None = None) -> Iterator[events.Event]:
    """Yield ``n`` messages' worth of events; with ``duplicate_rate`` some are re-sends.

    A re-send is the same event again (same event_id and values), as an agent retrying after a
    lost acknowledgement would produce; unique events are ``n`` minus the re-sends.
    """
    shape = shape or Shape()
    rng = random.Random(seed)
    start = shape.start_ms if shape.start_ms is not None else events.now_ms() - shape.span_ms
    weights = [w for _, _, w in MODELS]
    sessions: dict[int, dict[str, Any]] = {}
    recent: list[events.Event] = []
    for _ in range(n):
        if recent and rng.random() < shape.duplicate_rate:
            yield dict(recent[rng.randrange(len(recent))])
            continue
        org = rng.randrange(shape.orgs)
        team = rng.randrange(shape.teams_per_org)
        user = rng.randrange(shape.users_per_team)
        provider, model, _ = rng.choices(MODELS, weights)[0]
        agentic = rng.random() < shape.agentic_share
        base: dict[str, Any] = {
            "event_id": _uuid(rng),
            "event_time": start + rng.randrange(shape.span_ms),
            "org_id": f"org-{org}",
            "team_id": f"org-{org}-team-{team}",
            "user_id": f"org-{org}-user-{team}-{user}",
            "project_id": f"proj-{org}-{team}-{rng.randrange(shape.projects_per_team)}",
            "api_key_id": f"key-{org}-{team}",
            "client": rng.choice(CLIENTS),
            "provider": provider,
            "model": model,
            "cost_nanos": None,
            "status": "ok" if rng.random() < 0.97 else "error",
            "labels": {"repo": f"repo-{team}"},
        }
        if agentic:
            slot = rng.randrange(shape.orgs * shape.teams_per_org * shape.users_per_team)
            session = sessions.get(slot)
            if session is None or session["turn"] >= shape.max_turns:
                session = {"id": _uuid(rng), "turn": 0, "context": rng.randrange(2_000, 8_000)}
                sessions[slot] = session
            session["turn"] += 1
            session["context"] += rng.randrange(500, 4_000)
            context = session["context"]
            cached = int(context * 0.8) if session["turn"] > 1 else 0
            written = context - cached if rng.random() < 0.5 else 0
            output = rng.randrange(100, 2_000)
            base.update(
                session_id=session["id"],
                turn=session["turn"],
                task_type="agentic",
                input_tokens=context - cached - written,
                cache_read_tokens=cached,
                cache_write_5m_tokens=written,
                cache_write_1h_tokens=0,
                output_tokens=output,
                reasoning_tokens=rng.randrange(0, output // 2),
            )
        else:
            output = rng.randrange(20, 800)
            base.update(
                session_id=None,
                turn=None,
                task_type=rng.choice(("chat", "completion")),
                input_tokens=rng.randrange(50, 3_000),
                cache_read_tokens=0,
                cache_write_5m_tokens=0,
                cache_write_1h_tokens=0,
                output_tokens=output,
                reasoning_tokens=0,
            )
        if rng.random() < 0.05:
            base["cost_nanos"] = rng.randrange(1_000, 50_000_000)  # provider-reported cost
        recent.append(base)
        if len(recent) > 10_000:
            recent = recent[-5_000:]
        yield base
