"""Unpriced spend is loud: stage 1 raises one ``unpriced_model`` alert per (provider, model)
per UTC day, with an id every partition and restart computes alike, and token budgets still
count the tokens."""

from __future__ import annotations

from streams.budgets import budget_from_spec
from streams.processors.alerts import DAY_MS, unpriced_alert_id
from streams.serde import AvroCodec
from tests.unit.test_processors_stages import MIN, T0, aggregator, event, records

ALERTS = AvroCodec("budget_alert")
DAY0 = T0 - T0 % DAY_MS


def _unknown(t: int, model: str = "mystery-9000", **kw: object) -> dict:
    return event(event_time=t, model=model, cost_nanos=None, **kw)


def test_one_alert_per_model_per_day_and_tokens_still_count() -> None:
    tokens = budget_from_spec({"id": "tok", "scope": {"org": "acme"}, "limit_tokens": 10**9})
    evts = [
        _unknown(T0),
        _unknown(T0 + MIN),
        _unknown(T0 + 2 * MIN, model="mystery-9001"),
        event(event_time=T0 + 3 * MIN, cost_nanos=None),  # claude-sonnet-4-5: priced
        _unknown(DAY0 + DAY_MS + 5 * MIN),  # the next UTC day: alerted again
        _unknown(DAY0 + DAY_MS + 6 * MIN),
    ]
    agg = aggregator([tokens], now=DAY0 + DAY_MS + 10 * MIN)
    out = agg.process(records(evts))
    got = [(a["kind"], a["scope"]["model"], a["period_start"]) for a in out.alerts]
    assert got == [
        ("unpriced_model", "mystery-9000", DAY0),
        ("unpriced_model", "mystery-9001", DAY0),
        ("unpriced_model", "mystery-9000", DAY0 + DAY_MS),
    ]
    first = out.alerts[0]
    assert first["alert_id"] == unpriced_alert_id("anthropic", "mystery-9000", DAY0)
    assert (first["unit"], first["spent"], first["org_id"]) == ("tokens", 110, "acme")
    assert first["details"]["why"] == "no model of this provider matches"
    assert ALERTS.decode(ALERTS.encode(first)) == first  # schema v2 carries the new kind
    # cost 0 for the unpriced ones, their tokens in the token budget
    (acc,) = [a for (bid, _, _), a in agg.partials.items() if bid == "tok"]
    assert acc[1] == 6 * 110


def test_a_restarted_or_other_partition_computes_the_same_alert_id() -> None:
    one = aggregator([], partition=0).process(records([_unknown(T0)]))
    other = aggregator([], partition=3).process(records([_unknown(T0 + 5 * MIN)]))
    assert [a["alert_id"] for a in one.alerts] == [a["alert_id"] for a in other.alerts]


def test_a_known_but_deliberately_unpriced_model_says_why() -> None:
    evt = _unknown(T0, model="gemini-3-pro-image-preview", provider="gcp.gemini")
    (alert,) = aggregator([]).process(records([evt])).alerts
    assert alert["details"]["model_id"] == "google/gemini-3-pro-image-preview"
    assert "output tokens" in alert["details"]["unpriced_reason"]
