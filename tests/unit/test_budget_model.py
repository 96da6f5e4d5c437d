"""Budget model: YAML parsing, validation (all problems at once), scope matching, apply plans."""

from __future__ import annotations

import dataclasses

import pytest

from streams.budgets import (
    Budget,
    BudgetError,
    BudgetMatcher,
    budget_from_spec,
    parse_budgets_yaml,
    parse_money,
    parse_tokens,
    plan_apply,
)

YAML = """
budgets:
  - id: acme-monthly
    scope: {org: acme}
    period: month
    timezone: Europe/Paris
    limit_usd: "12,500.50"
    forecast: true
  - id: platform-opus
    scope: {team: platform, model: claude-opus-4-5}
    period: day
    limit_usd: 200
    thresholds: [80, 100]
    mode: block
  - id: repo-tokens
    scope: {labels: {repo: spendstream}}
    period: rolling
    window: 6h
    limit_tokens: 20M
"""


def test_yaml_parses_into_budgets() -> None:
    acme, platform, repo = parse_budgets_yaml(YAML, now_ms=5)
    assert acme.limit == 12_500_500_000_000
    assert acme.timezone == "Europe/Paris"
    assert acme.forecast
    assert acme.created_at == 5
    assert platform.scope == {"team_id": "platform", "model": "claude-opus-4-5"}
    assert platform.thresholds_pct == (80, 100)
    assert platform.mode == "block"
    assert repo.unit == "tokens"
    assert repo.limit == 20_000_000
    assert repo.rolling_window_s == 6 * 3600
    assert repo.labels == {"repo": "spendstream"}


def test_every_problem_reported_at_once() -> None:
    bad = """
budgets:
  - id: "has space"
    scope: {galaxy: far}
    period: fortnight
    limit_usd: -3
  - id: ok
    limit_usd: 1
  - id: ok
    limit_usd: 2
"""
    with pytest.raises(BudgetError) as info:
        parse_budgets_yaml(bad)
    text = str(info.value)
    assert "unknown scope field 'galaxy'" in text
    assert "USD amount must be positive" in text
    assert "duplicate budget id 'ok'" in text


def test_block_mode_needs_a_who() -> None:
    with pytest.raises(BudgetError, match="block-mode budget must name"):
        budget_from_spec({"id": "x", "scope": {"model": "m"}, "limit_usd": 1, "mode": "block"})


def test_money_and_tokens_are_exact() -> None:
    assert parse_money("$0.000000001") == 1
    assert parse_money(12) == 12_000_000_000
    with pytest.raises(BudgetError):
        parse_money("0.0000000001")
    assert parse_tokens("2.5k") == 2500
    assert parse_tokens("1B") == 1_000_000_000


def test_scope_matching_is_a_conjunction() -> None:
    budget = budget_from_spec(
        {
            "id": "b",
            "scope": {"team": "platform", "model": "opus", "labels": {"repo": "x"}},
            "limit_usd": 1,
        }
    )
    event = {"team_id": "platform", "model": "opus", "labels": {"repo": "x", "ticket": "1"}}
    assert budget.matches(event)
    assert not budget.matches({**event, "model": "haiku"})
    assert not budget.matches({**event, "labels": {}})


def test_matcher_signature_cache() -> None:
    org = budget_from_spec({"id": "org", "scope": {"org": "a"}, "limit_usd": 1})
    team = budget_from_spec({"id": "team", "scope": {"org": "a", "team": "t"}, "limit_usd": 1})
    matcher = BudgetMatcher([team, org])
    sig = ("a", "t", "u", None, "m", "c", "chat")
    assert [b.budget_id for b in matcher.match_signature(sig)] == ["org", "team"]
    assert matcher.match_signature(("a", "x", "u", None, "m", "c", "chat")) == (org,)


def test_record_round_trip() -> None:
    (budget,) = parse_budgets_yaml(YAML)[:1]
    assert Budget.from_record(budget.to_record()) == budget


def test_counting_from_is_the_minute_after_creation() -> None:
    budget = budget_from_spec({"id": "b", "limit_usd": 1}, now_ms=125_000)
    assert budget.counting_from == 180_000


def test_apply_keeps_created_at_and_skips_unchanged() -> None:
    old = budget_from_spec({"id": "a", "limit_usd": 1}, now_ms=100)
    same = budget_from_spec({"id": "a", "limit_usd": 1})
    changed = budget_from_spec({"id": "a", "limit_usd": 2})
    new = budget_from_spec({"id": "n", "limit_usd": 2})
    assert plan_apply([old], [same], prune=False, now=999) == {}
    plan = plan_apply([old], [changed, new], prune=False, now=999)
    assert plan["a"] is not None
    assert plan["a"].created_at == 100
    assert plan["a"].updated_at == 999
    assert plan["n"] is not None
    assert plan["n"].created_at == 999
    assert plan_apply([old], [new], prune=True, now=1)["a"] is None


def test_definition_version_is_what_decides_alerts_not_the_description() -> None:
    """A re-described budget is the same definition: its alerts must not fire again (the
    property test of tests/unit/test_budget_truth.py found them re-fired with new ids)."""
    budget = budget_from_spec({"id": "b", "scope": {"org": "acme"}, "limit_usd": 1}, 5)
    described = dataclasses.replace(budget, description="finance's cap", updated_at=9)
    assert described.definition_version == budget.definition_version
    assert described.total_version == budget.total_version
    assert not described.same_definition(budget)  # still a change that `apply` publishes
    for changed in (
        dataclasses.replace(budget, limit=2 * budget.limit),
        dataclasses.replace(budget, thresholds_pct=(90,)),
        dataclasses.replace(budget, mode="block"),
        dataclasses.replace(budget, unit="tokens"),
    ):
        assert changed.definition_version != budget.definition_version
