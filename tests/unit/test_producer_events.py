import datetime as dt
import uuid

import pytest

from streams import events
from streams.generate import Shape, generate_events
from streams.sdk import build_event, event_from_otel

WHO = dict(
    org_id="acme",
    team_id="platform",
    user_id="ada",
    client="claude-code",
    provider="anthropic",
    model="claude-sonnet-4-5",
)


def test_build_fills_id_time_and_defaults():
    e = build_event(**WHO, input_tokens=10, output_tokens=3)
    uuid.UUID(e["event_id"])
    assert abs(e["event_time"] - events.now_ms()) < 5_000
    assert e["task_type"] == "other" and e["status"] == "ok" and e["labels"] == {}
    assert e["cost_nanos"] is None


def test_aware_datetimes_convert_to_utc_millis():
    when = dt.datetime(2026, 3, 29, 2, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    e = build_event(**WHO, event_time=when)
    assert e["event_time"] == int(dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC).timestamp() * 1000)
    assert events.from_epoch_ms(e["event_time"]) == when


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (dict(org_id=""), "org_id is missing"),
        (dict(user_id=None), "user_id is missing"),
        (dict(event_id=""), "event_id is missing"),
        (dict(event_id="not-a-uuid"), "not a UUID"),
        (dict(input_tokens=-1), "input_tokens is negative"),
        (dict(output_tokens=5, reasoning_tokens=9), "reasoning_tokens exceed"),
        (dict(event_time=dt.datetime(2026, 1, 1, 12, 0)), "timezone-aware"),
        (dict(event_time=events.now_ms() + 3_600_000), "in the future"),
        (dict(cost_nanos=-5), "cost_nanos"),
        (dict(cost_nanos=0.5), "cost_nanos"),
        (dict(task_type="vibes"), "task_type"),
        (dict(turn=0), "turn"),
        (dict(labels={"a": 1}), "labels"),
        (dict(colour="red"), "unknown event fields: colour"),
    ],
)
def test_invalid_events_raise_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        build_event({**WHO, **bad})


def test_otel_input_includes_cache_and_is_split_into_buckets():
    attrs = {
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.response.model": "claude-sonnet-4-5-20250929",
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.conversation.id": "sess-1",
        "gen_ai.usage.input_tokens": 10_000,
        "gen_ai.usage.cache_read.input_tokens": 7_000,
        "gen_ai.usage.cache_creation.input_tokens": 2_000,
        "gen_ai.usage.output_tokens": 500,
        "gen_ai.usage.reasoning.output_tokens": 120,
    }
    e = event_from_otel(attrs, org_id="acme", team_id="t", user_id="u", client="claude-code")
    assert e["input_tokens"] == 1_000
    assert e["cache_read_tokens"] == 7_000 and e["cache_write_5m_tokens"] == 2_000
    assert e["cache_write_1h_tokens"] == 0
    assert e["output_tokens"] == 500 and e["reasoning_tokens"] == 120
    assert e["model"] == "claude-sonnet-4-5-20250929" and e["session_id"] == "sess-1"
    assert e["task_type"] == "agentic"
    one_hour = event_from_otel(
        attrs, cache_write_ttl="1h", org_id="a", team_id="t", user_id="u", client="c"
    )
    assert one_hour["cache_write_1h_tokens"] == 2_000 and one_hour["cache_write_5m_tokens"] == 0


def test_otel_inconsistent_cache_counts_are_refused():
    attrs = {
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-5",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.cache_read.input_tokens": 150,
    }
    with pytest.raises(ValueError, match="exceed"):
        event_from_otel(attrs, org_id="a", team_id="t", user_id="u", client="c")


def test_generator_is_deterministic_valid_and_resends_duplicates():
    a = list(
        generate_events(2_000, seed=1, shape=Shape(duplicate_rate=0.05, start_ms=1_764_547_200_000))
    )
    b = list(
        generate_events(2_000, seed=1, shape=Shape(duplicate_rate=0.05, start_ms=1_764_547_200_000))
    )
    assert a == b
    for e in a:
        events.validate(e, now=1_764_547_200_000 + 3_600_000)
    unique = {e["event_id"] for e in a}
    assert 1_850 < len(unique) < 1_950


def test_partition_key_spreads_one_org_and_keeps_resends_together():
    es = list(generate_events(2_000, seed=2, shape=Shape(orgs=1)))
    keys = {events.partition_key(e) for e in es}
    assert len(keys) > 500  # one org, many keys: spread over every partition
    e = es[0]
    assert events.partition_key(dict(e)) == events.partition_key(e)
