"""The reference model (streams/loadtest/reference.py) on cases worked out by hand."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from streams.budgets import budget_from_spec
from streams.loadtest.reference import (
    HOLD_MS,
    Arrival,
    DeleteBudget,
    SetBudget,
    calendar_period,
    definition_key,
    evaluate,
)
from streams.processors.periods import calendar_period as worker_period
from tests.unit.stage_helpers import T0, event

MIN = 60_000
HOUR = 3_600_000


MONTH = budget_from_spec({"id": "m", "scope": {"org": "acme"}, "limit_usd": "0.00001"})
DAY = budget_from_spec(
    {"id": "d", "scope": {"org": "acme"}, "period": "day", "limit_usd": "0.00001"}
)


def arrivals(events: list[dict[str, Any]], ts: int | None = None, p: int = 0, at: int = 0):
    return [Arrival(p, at + i, ts or e["event_time"], e) for i, e in enumerate(events)]


def test_uuid_v1_ids_are_distinct_and_resends_within_the_horizon_are_duplicates() -> None:
    ids = [str(uuid.uuid1()) for _ in range(1000)]
    events = [event(event_id=i, event_time=T0 + n) for n, i in enumerate(ids)]
    resend = dict(events[0])
    steps = [SetBudget(MONTH), *arrivals(events), Arrival(0, 1000, T0 + 3 * HOUR, resend)]
    result = evaluate(steps)
    start = calendar_period(T0, "month", "UTC")[0]
    assert result.totals[("m", MONTH.total_version, start)].requests == 1000
    assert result.status[(0, 1000)] == "duplicate"
    assert not result.inserted(0, 1000)
    # past the horizon the sink stores it again
    again = evaluate([*steps[:2], Arrival(0, 1, T0 + 25 * HOUR, resend)])
    assert again.inserted(0, 1)
    # another partition, another hour: not a duplicate
    other = evaluate([*steps[:2], Arrival(1, 0, T0 + HOUR, resend)])
    assert other.inserted(1, 0)
    shifted = evaluate([*steps[:2], Arrival(0, 1, T0 + HOUR, dict(resend, event_time=T0 + HOUR))])
    assert shifted.inserted(0, 1)


def test_late_events_count_while_their_period_is_held() -> None:
    day = calendar_period(T0, "day", "UTC")
    late = event(event_time=T0)
    held = Arrival(0, 0, day[1] + HOLD_MS - 1, late)
    gone = Arrival(0, 1, day[1] + HOLD_MS, dict(late, event_id=str(uuid.uuid4())))
    result = evaluate([SetBudget(DAY), SetBudget(MONTH), held, gone])
    assert result.spent(DAY, day[0]) == 1_000  # the second came a day after the day ended
    assert result.spent(MONTH, calendar_period(T0, "month", "UTC")[0]) == 2_000
    assert result.status == {(0, 0): "counted", (0, 1): "counted"}


def test_invalid_and_undecodable_records_are_not_counted() -> None:
    future = event(event_time=T0 + 11 * MIN)
    steps = [
        SetBudget(MONTH),
        Arrival(0, 0, T0, future),
        Arrival(0, 1, T0, None),
        Arrival(0, 2, T0, event(cost_nanos=10_000_000_000_001)),
        Arrival(0, 3, T0 + 2 * MIN, future),  # 9 minutes ahead of its arrival: fine
    ]
    result = evaluate(steps)
    assert [result.status[(0, o)] for o in range(4)] == ["invalid", "decode", "invalid", "counted"]


def test_thresholds_per_definition_and_a_description_is_not_a_definition() -> None:
    events = [event(event_time=T0 + i) for i in range(6)]  # 6,000 of a 10,000 limit
    described = dataclasses.replace(MONTH, description="acme's month")
    raised = dataclasses.replace(MONTH, limit=5_000)
    start = calendar_period(T0, "month", "UTC")[0]
    result = evaluate(
        [SetBudget(MONTH), *arrivals(events[:3]), SetBudget(described), *arrivals(events[3:], at=3)]
    )
    assert result.alerts == {("m", MONTH.definition_version, start, 50)}
    assert len(result.definitions) == 1
    assert definition_key(MONTH) == definition_key(described)
    result = evaluate([SetBudget(MONTH), *arrivals(events), SetBudget(raised)])
    assert result.alerts == {
        ("m", MONTH.definition_version, start, 50),
        ("m", raised.definition_version, start, 50),
        ("m", raised.definition_version, start, 80),
        ("m", raised.definition_version, start, 100),
    }
    # a budget created after the spend still sees it (the baseline), deleted sees no more
    result = evaluate([*arrivals(events), SetBudget(raised), DeleteBudget("m")])
    assert {a[3] for a in result.alerts} == {50, 80, 100}
    assert result.current == {}


def test_rolling_windows_alert_at_any_bucket_end_and_blocks_slide() -> None:
    rolling = budget_from_spec(
        {
            "id": "r",
            "scope": {"org": "acme"},
            "period": "rolling",
            "window": "1h",
            "limit_usd": "0.00001",
            "mode": "block",
        }
    )
    base = T0 - T0 % HOUR
    # 10 events spread over 50 minutes: the window holding them all reaches 100%
    events = [event(event_time=base + i * 5 * MIN) for i in range(10)]
    result = evaluate([SetBudget(rolling), *arrivals(events)])
    assert {a[3] for a in result.alerts} == {50, 80, 100}
    assert result.window_spent(rolling, base + 46 * MIN) == 10_000
    assert result.blocked(base + 45 * MIN + 1) == {"r"}
    assert result.blocked(base + 61 * MIN) == set()  # the first event left the window


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_calendar_periods_equal_the_workers(zone: str, period: str) -> None:
    for ms in range(T0 - 400 * 86_400_000, T0, 86_400_000 * 7 + 3_600_000 * 5 + 17):
        assert calendar_period(ms, period, zone) == tuple(worker_period(ms, period, zone))
