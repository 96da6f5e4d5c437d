"""The checker's compact ledger (streams/loadtest/compact.py) against the plain computations it
replaces: on random ledgers, its expected alerts are the reference model's over the same
steps, its budget totals ``budget_amounts`` over the events as dicts, the harness's totals
``SpendTotals.add_all``; and it gives back every event, id and position as they were added."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.ledger import SpendTotals
from streams.budgets import Budget, budget_from_spec
from streams.loadtest import reference
from streams.loadtest.checker import (
    Ledger,
    budget_amounts,
    reference_alert_keys,
    reference_expected_alerts,
    simple_expected_alerts,
)
from streams.pricing import default_catalog
from tests.unit.stage_helpers import T0, event

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
#: T0 is 2026-05-28: a few days on, the month ends (late events and holds cross it)
MONTH_END = 1_780_272_000_000  # 2026-06-01T00:00:00Z

BUDGETS: list[Budget] = [
    budget_from_spec(
        {"id": "org", "scope": {"org": "acme"}, "limit_usd": "0.00002", "thresholds": [50, 100]}
    ),
    budget_from_spec(
        {
            "id": "ana",
            "scope": {"org": "acme", "user": "ana"},
            "period": "day",
            "limit_tokens": 300,
            "thresholds": [10, 80, 100],
        }
    ),
    budget_from_spec(
        {
            "id": "tz",
            "scope": {"org": "acme", "team": "platform"},
            "period": "day",
            "timezone": "Asia/Kolkata",
            "limit_usd": "0.000005",
        }
    ),
    budget_from_spec(
        {
            "id": "lab",
            "scope": {"org": "acme", "labels": {"env": "prod"}},
            "period": "week",
            "limit_usd": "0.000003",
            "mode": "block",
        }
    ),
    budget_from_spec(
        {
            "id": "roll",
            "scope": {"org": "acme"},
            "period": "rolling",
            "window": "2h",
            "limit_usd": "0.000004",
        }
    ),
    budget_from_spec(
        {
            "id": "model",
            "scope": {"org": "acme", "model": "claude-haiku-4-5"},
            "limit_usd": "0.000001",
        }
    ),
    budget_from_spec({"id": "none", "scope": {"org": "nobody"}, "limit_usd": "1"}),
]

_fresh = st.builds(
    lambda user, model, at, tokens, labels, reported, turn: event(
        event_id=str(uuid.uuid4()),
        user_id=user,
        model=model,
        event_time=MONTH_END - 6 * HOUR + at,
        input_tokens=tokens,
        labels=labels,
        cost_nanos=reported,
        turn=turn,
    ),
    st.sampled_from(["ana", "bo"]),
    st.sampled_from(["claude-sonnet-4-5", "claude-haiku-4-5"]),
    st.integers(0, 12 * HOUR),
    st.integers(0, 200),
    st.sampled_from([{}, {"env": "prod"}, {"env": "dev", "x": "1"}]),
    st.one_of(st.none(), st.integers(0, 3000), st.just(10_000_000_000_001)),
    st.one_of(st.none(), st.integers(1, 5)),
)


@st.composite
def ledgers(draw: Any) -> tuple[list[tuple[dict[str, Any], tuple[int, int, int]]], list[str]]:
    """Acked messages (event, (partition, offset, broker time)), re-sends among them (same
    id, another broker time, maybe another partition), and failed ids."""
    fresh = draw(st.lists(_fresh, min_size=1, max_size=30))
    messages: list[dict[str, Any]] = list(fresh)
    for i in draw(st.lists(st.integers(0, len(fresh) - 1), max_size=10)):
        messages.insert(draw(st.integers(0, len(messages))), dict(fresh[i]))
    offsets = [0, 0]
    out = []
    for e in messages:
        p = draw(st.integers(0, 1))
        # broker time around the event's: a bit before (skewed clock), late, past the hold
        ts = e["event_time"] + draw(st.sampled_from([-11 * MIN, 0, 2 * MIN, 3 * HOUR, 2 * DAY]))
        out.append((e, (p, offsets[p], ts)))
        offsets[p] += 1
    failed = [str(uuid.uuid4()) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        failed.append(str(messages[0]["event_id"]))  # failed once, acked later: not unacked
    return out, failed


def _ledger(messages: list[tuple[dict[str, Any], tuple[int, int, int]]], failed: list[str]):
    ledger = Ledger(budgets=BUDGETS)
    for e, where in messages:
        ledger.add_acked(e, where)
    for eid in failed:
        ledger.add_failed(eid)
    return ledger


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ledgers())
def test_columns_give_what_the_plain_computations_give(drawn: Any) -> None:
    messages, failed = drawn
    ledger = _ledger(messages, failed)
    first: dict[str, dict[str, Any]] = {}
    for e, _ in messages:
        first.setdefault(e["event_id"], e)

    # the events, ids, positions and failed ids, as added
    assert dict(ledger.acked) == first
    assert list(ledger.acked) == list(first)
    assert ledger.acked_messages == len(messages)
    assert list(ledger.positions) == [(*w, e["event_id"]) for e, w in messages]
    assert ledger.unacked == set(failed) - set(first)
    assert ledger.produced_ts(messages[0][0]["event_id"]) == messages[0][1][2]

    # the reference model over the same steps (the checker's former way)
    steps: list[reference.Step] = [reference.SetBudget(b) for b in BUDGETS]
    steps += [reference.Arrival(*w, first[e["event_id"]]) for e, w in messages]
    assert reference_alert_keys(ledger) == reference.evaluate(steps).alerts

    catalog = default_catalog()
    for budget in BUDGETS:
        if budget.period != "rolling":
            assert ledger.amounts(budget) == budget_amounts(budget, first.values(), catalog)

    plain = SpendTotals().add_all(first.values())
    assert SpendTotals.of_ledger(ledger).same_as(plain) == []
    assert SpendTotals.of_ledger(ledger).cost == plain.cost


def test_a_ledger_without_positions_expects_the_simple_models_alerts() -> None:
    ledger = Ledger(budgets=BUDGETS)
    spend = [event(event_time=MONTH_END - HOUR, input_tokens=2000) for _ in range(5)]
    for e in spend:
        ledger.add_acked(e)
    assert not ledger.fully_positioned and len(ledger.positions) == 0
    expected = reference_expected_alerts(ledger)
    assert expected == simple_expected_alerts(ledger)
    assert expected  # the org budget is crossed
    ledger.add_acked(event(event_time=T0), (0, 0, T0))
    ledger.add_acked(dict(spend[0]), (0, 1, T0))
    assert len(ledger.positions) == 2 and len(ledger.acked) == 6


def test_strings_sent_to_clickhouse_are_escaped_for_tab_separated() -> None:
    from streams.loadtest.checker import _tsv

    assert _tsv("plain-org") == "plain-org"
    assert _tsv("a\tb\\c\nd\re") == "a\\tb\\\\c\\nd\\re"
