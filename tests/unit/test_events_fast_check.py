"""events.surely_valid (the hot-path pre-check) never passes an event problems() rejects."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from streams import events
from streams.generate import generate_events
from streams.serde import AvroCodec

CODEC = AvroCodec("token_event")
NOW = events.now_ms()
EDGES: dict[str, list[Any]] = {
    "event_id": [
        "not-a-uuid",
        "",
        "0x" + "0" * 34,
        "{12345678-1234-1234-1234-123456789012}",
        "12345678123412341234123456789012",
        "12345678-1234-1234-1234-12345678901G",
        "ABCDEF12-1234-1234-1234-123456789012",
    ],
    "event_time": [0, events.MIN_EVENT_TIME_MS - 1, NOW + events.MAX_FUTURE_MS + 1, NOW],
    "org_id": ["", "   ", "acme"],
    "model": ["", "\t"],
    "project_id": [None, "", "  ", "p"],
    "session_id": [None, "", " ", "s"],
    "api_key_id": [None, "", "k"],
    "turn": [None, 0, -3, 1],
    "input_tokens": [-1, 0, 5],
    "output_tokens": [-1, 0, 10],
    "reasoning_tokens": [-1, 0, 11],
    "cost_nanos": [None, -1, 0, 7],
    "cache_read_tokens": [-(1 << 40), 3],
}


def _decoded(event: dict[str, Any]) -> dict[str, Any]:
    """What the sink and stage 1 see: the event after an Avro round trip."""
    return CODEC.decode(CODEC.encode(event))


@pytest.mark.parametrize("field", sorted(EDGES))
def test_fast_check_agrees_with_problems(field: str) -> None:
    base = next(generate_events(1, seed=5))
    base["event_time"] = NOW
    for value in EDGES[field]:
        event = _decoded({**base, field: value})
        fast = events.surely_valid(event, NOW + events.MAX_FUTURE_MS)
        found = events.problems(event, NOW)
        assert not (fast and found), f"{field}={value!r} passed the fast check: {found}"


def test_fast_check_passes_the_generated_traffic() -> None:
    now = NOW + 10**12  # generated times may lie ahead of the wall clock
    for event in itertools.islice(generate_events(2_000, seed=9), 2_000):
        decoded = _decoded(event)
        assert events.surely_valid(decoded, now + events.MAX_FUTURE_MS)
        assert not events.problems(decoded, now)
