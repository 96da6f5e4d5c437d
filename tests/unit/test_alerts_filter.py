"""The pure parts of ``spendstream alerts tail``: --since and the filters."""

from __future__ import annotations

import pytest

from streams.alerts.tail import AlertFilter, alert_kinds, parse_since
from streams.errors import SpendstreamError
from streams.processors.alerts import ALERT_KINDS, make_alert

NOW = 1_796_030_100_000  # 2026-11-30 09:15:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - 90_000),
        ("10m", NOW - 600_000),
        (" 2h ", NOW - 7_200_000),
        ("1d", NOW - 86_400_000),
        ("2026-11-30T09:00", NOW - 900_000),  # naive: UTC
        ("2026-11-30T09:00:00Z", NOW - 900_000),
        ("2026-11-30T10:00:00+01:00", NOW - 900_000),
    ],
)
def test_since_takes_durations_and_iso_times(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "-5m", ""])
def test_since_refuses_anything_else_saying_what_it_takes(text):
    with pytest.raises(SpendstreamError, match="duration"):
        parse_since(text, NOW)


def test_the_kinds_offered_are_the_schema_s_and_the_worker_s():
    assert set(alert_kinds()) == set(ALERT_KINDS)


def _alert(**fields):
    return make_alert("threshold_crossed", "a", NOW, "m", 1, **fields)


def test_filters_combine_with_and_and_their_values_with_or():
    alert = _alert(org_id="acme", team_id="platform", budget_id="b1")
    assert AlertFilter().matches(alert)
    assert AlertFilter.of(orgs=["acme", "umbrella"], teams=["platform"]).matches(alert)
    assert not AlertFilter.of(orgs=["acme"], teams=["web"]).matches(alert)
    assert AlertFilter.of(budgets=["b1"], kinds=["threshold_crossed"]).matches(alert)
    assert not AlertFilter.of(kinds=["spend_spike"]).matches(alert)
    assert not AlertFilter.of(budgets=["b2"]).matches(_alert(budget_id=None))
    assert AlertFilter.of(since_ms=NOW).matches(alert)
    assert not AlertFilter.of(since_ms=NOW + 1).matches(alert)


def test_an_alert_without_org_fields_matches_by_its_scope():
    spike = _alert(scope={"org_id": "acme"})
    assert AlertFilter.of(orgs=["acme"]).matches(spike)
    assert not AlertFilter.of(teams=["platform"]).matches(spike)
