"""The token-event contract in Python: field names, validation, time conversion.

Events travel as plain dicts shaped like ``schemas/token_event.avsc`` with ``event_time`` as
UTC epoch milliseconds and ``event_id`` as a string, because that is what the hot decode path
(no logical-type conversion) yields and what every stage after it consumes.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from streams.errors import InvalidEventError

TOKEN_FIELDS: Final = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
)
REQUIRED_IDS: Final = ("org_id", "team_id", "user_id", "client", "provider", "model")
TASK_TYPES: Final = ("chat", "completion", "agentic", "embedding", "other")
STATUSES: Final = ("ok", "error", "cancelled")
OPTIONAL_IDS: Final = ("project_id", "api_key_id", "session_id")
#: Events stamped further than this ahead of the validator's clock are rejected (clock skew).
MAX_FUTURE_MS: Final = 10 * 60 * 1000
#: No LLM request before this instant (2020-01-01 UTC); earlier times are corrupt clocks.
MIN_EVENT_TIME_MS: Final = 1_577_836_800_000
#: Most tokens one bucket of one request may hold: 100x the largest context window offered
#: today (10M tokens). A larger count is a client bug, and bounding it keeps every sum exact.
MAX_TOKENS: Final = 1_000_000_000
#: Most one request may cost, reported or priced: $10,000 (no list price today comes near it
#: for a single request). With it, an int64 sum holds 922,337 maximal requests ($9.2 billion);
#: sums beyond saturate instead of failing (see streams.processors.stage1.saturate).
MAX_COST_NANOS: Final = 10_000_000_000_000
#: The largest value an int64 field (Avro long, msgpack, ClickHouse Int64) holds.
INT64_MAX: Final = (1 << 63) - 1

Event = dict[str, Any]

#: Every field of the contract, in the schema's order (the order a complete event's keys keep).
FIELDS: Final = (
    "event_id",
    "event_time",
    "org_id",
    "team_id",
    "user_id",
    "project_id",
    "api_key_id",
    "session_id",
    "turn",
    "client",
    "task_type",
    "provider",
    "model",
    *TOKEN_FIELDS,
    "cost_nanos",
    "status",
    "labels",
)
#: The schema's default of each field that has one, but ``labels`` (a fresh ``{}`` each time:
#: a shared one would be a mutable default).
DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "project_id": None,
        "api_key_id": None,
        "session_id": None,
        "turn": None,
        "task_type": "other",
        **dict.fromkeys(TOKEN_FIELDS, 0),
        "cost_nanos": None,
        "status": "ok",
    }
)
_NO_DEFAULT: Final = ("event_id", "event_time", *REQUIRED_IDS)
_TEMPLATE: Final = {name: DEFAULTS.get(name) for name in FIELDS}


def make_event(**fields: Any) -> Event:
    """A complete event dict, keys in schema order: ``fields`` over the schema's defaults.

    The one builder for code that makes events itself (load traffic, the demo's plan, tests),
    so none repeats the contract's fields. It does not validate (a test may build an invalid
    event on purpose; a plan may set ``event_time`` later): the SDK's ``build_event`` does.
    Unknown fields and missing ones without a default are refused (a misspelt field would
    otherwise leave its default behind silently).
    """
    if not fields.keys() <= _TEMPLATE.keys():
        unknown = sorted(fields.keys() - _TEMPLATE.keys())
        raise InvalidEventError(f"unknown event fields: {', '.join(unknown)}")
    missing = [name for name in _NO_DEFAULT if name not in fields]
    if missing:
        raise InvalidEventError(f"missing event fields: {', '.join(missing)}")
    event = {**_TEMPLATE, **fields}
    event["labels"] = dict(fields.get("labels") or {})
    return event


def to_epoch_ms(value: dt.datetime) -> int:
    """UTC milliseconds of an aware datetime; naive datetimes are refused (ambiguous zone)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidEventError("event_time must be timezone-aware (naive datetimes are ambiguous)")
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_epoch_ms(ms: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)


def now_ms() -> int:
    return to_epoch_ms(dt.datetime.now(dt.UTC))


#: the two spellings of a UUID that ClickHouse reads as the same value: 8-4-4-4-12 hex digits,
#: or 32 hex digits, in either case. Everything else uuid.UUID also takes (braces, "urn:uuid:",
#: dashes anywhere, surrounding spaces) ClickHouse refuses, so it is refused here too.
EVENT_ID_PATTERN: Final = (
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32}"
)
_EVENT_ID: Final = re.compile(EVENT_ID_PATTERN).fullmatch


def canonical_event_id(raw: object) -> str | None:
    """The stored form of an event id (lowercase 8-4-4-4-12, what ClickHouse returns), or None
    when ``raw`` is not a spelling ClickHouse reads identically (see EVENT_ID_PATTERN).

    The one rule for the SDK (which sends the canonical form), the worker (its 16-byte ids) and
    the sink (its lookups and rows): an id one of them accepts, every other one accepts too.
    """
    if not isinstance(raw, str) or _EVENT_ID(raw) is None:
        return None
    low = raw.lower()
    if len(low) == 36:
        return low
    return f"{low[:8]}-{low[8:12]}-{low[12:16]}-{low[16:20]}-{low[20:]}"


def problems(event: Mapping[str, Any], now: int | None = None) -> list[str]:
    """Every way ``event`` breaks the contract; empty when valid. Pure, cheap, no I/O.

    ``now`` is the clock the "10 minutes in the future" bound is judged against: the record's
    broker timestamp in the worker and the sink (a replayed backlog keeps its verdicts), the
    wall clock by default.
    """
    found: list[str] = []
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        found.append("event_id is missing")
    elif canonical_event_id(event_id) is None:
        found.append(f"event_id {event_id[:80]!r} is not a UUID as 8-4-4-4-12 or 32 hex digits")
    for name in REQUIRED_IDS:
        value = event.get(name)
        if not isinstance(value, str) or not value.strip():
            found.append(f"{name} is missing or empty")
    for name in OPTIONAL_IDS:
        value = event.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            found.append(f"{name} must be a non-empty string or null")
    event_time = event.get("event_time")
    if not isinstance(event_time, int) or isinstance(event_time, bool):
        found.append("event_time must be epoch milliseconds (int)")
    else:
        if event_time < MIN_EVENT_TIME_MS:
            found.append(f"event_time {event_time} is before 2020-01-01")
        limit = (now_ms() if now is None else now) + MAX_FUTURE_MS
        if event_time > limit:
            found.append(f"event_time {event_time} is more than 10 minutes in the future")
    for name in TOKEN_FIELDS:
        value = event.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            found.append(f"{name} must be an integer")
        elif value < 0:
            found.append(f"{name} is negative ({value})")
        elif value > MAX_TOKENS:
            found.append(f"{name} {value} is above the bound of {MAX_TOKENS:,} per request")
    reasoning, output = event.get("reasoning_tokens", 0), event.get("output_tokens", 0)
    if isinstance(reasoning, int) and isinstance(output, int) and reasoning > output:
        found.append("reasoning_tokens exceed output_tokens (reasoning is part of output)")
    cost = event.get("cost_nanos")
    if cost is not None and (not isinstance(cost, int) or isinstance(cost, bool) or cost < 0):
        found.append("cost_nanos must be a non-negative integer (nano-USD) or null")
    elif cost is not None and cost > MAX_COST_NANOS:
        found.append(f"cost_nanos {cost} is above the bound of {MAX_COST_NANOS:,} ($10,000)")
    turn = event.get("turn")
    if turn is not None and (not isinstance(turn, int) or turn < 1):
        found.append("turn must be a positive integer or null")
    if event.get("task_type", "other") not in TASK_TYPES:
        found.append(f"task_type must be one of {', '.join(TASK_TYPES)}")
    if event.get("status", "ok") not in STATUSES:
        found.append(f"status must be one of {', '.join(STATUSES)}")
    labels = event.get("labels", {})
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        found.append("labels must map strings to strings")
    return found


#: the 8-4-4-4-12 hex form of a UUID (what surely_valid accepts without parsing)
CANONICAL_UUID_PATTERN: Final = (
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_CANONICAL_UUID: Final = re.compile(CANONICAL_UUID_PATTERN).fullmatch


def surely_valid(e: Mapping[str, Any], max_time_ms: int) -> bool:
    """Fast pre-check of an Avro-DECODED event, whose types, enums and labels the schema fixed.

    True only when ``problems(e, max_time_ms - MAX_FUTURE_MS)`` would find nothing; False
    means "ask problems()" (which also writes the reasons). About 5x cheaper on the hot path.
    """
    session = e["session_id"]
    project = e["project_id"]
    api_key = e["api_key_id"]
    turn = e["turn"]
    cost = e["cost_nanos"]
    output = e["output_tokens"]
    reasoning = e["reasoning_tokens"]
    return bool(
        MIN_EVENT_TIME_MS <= e["event_time"] <= max_time_ms
        and _CANONICAL_UUID(e["event_id"])
        and e["org_id"].strip()
        and e["team_id"].strip()
        and e["user_id"].strip()
        and e["client"].strip()
        and e["provider"].strip()
        and e["model"].strip()
        and (
            e["input_tokens"]
            | e["cache_read_tokens"]
            | e["cache_write_5m_tokens"]
            | e["cache_write_1h_tokens"]
            | output
            | reasoning
        )
        >= 0
        and max(
            e["input_tokens"],
            e["cache_read_tokens"],
            e["cache_write_5m_tokens"],
            e["cache_write_1h_tokens"],
            output,
        )
        <= MAX_TOKENS
        and reasoning <= output
        and (cost is None or 0 <= cost <= MAX_COST_NANOS)
        and (turn is None or turn >= 1)
        and (session is None or session.strip())
        and (project is None or project.strip())
        and (api_key is None or api_key.strip())
    )


def validate(event: Mapping[str, Any], now: int | None = None) -> None:
    """Raise InvalidEventError (a ValueError) listing every problem of ``event``."""
    found = problems(event, now)
    if found:
        raise InvalidEventError("invalid token event: " + "; ".join(found))


def partition_key(event: Mapping[str, Any]) -> bytes:
    """The Kafka message key: the session when there is one, else the event itself.

    See schemas/README.md: keys never contain the org, so one large org spreads over every
    partition; a re-sent event keeps its key and so its partition.
    """
    session = event.get("session_id")
    return (session if session else event["event_id"]).encode()
