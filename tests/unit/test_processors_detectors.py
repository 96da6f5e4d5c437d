"""Thresholds, forecast, runaway sessions, spend spikes and alert ids (pure functions)."""

from __future__ import annotations

import pytest

from streams.processors.alerts import (
    make_alert,
    runaway_alert_id,
    spike_alert_id,
    threshold_alert_id,
)
from streams.processors.detectors import (
    RunawayRules,
    SessionState,
    SpikeRules,
    crossed,
    forecast_breach,
    forecast_linear,
    observe_turn,
    spike_ratio,
)
from streams.serde import AvroCodec

DAY = 86_400_000


def test_thresholds_use_exact_integer_math() -> None:
    assert crossed(49_999, 100_000, (50, 80, 100)) == []
    assert crossed(50_000, 100_000, (50, 80, 100)) == [50]
    assert crossed(100_000, 100_000, (50, 80, 100)) == [50, 80, 100]
    assert crossed(1, 3, (33, 34)) == [33]  # 1/3 = 33.3%


def test_forecast_projects_run_rate_to_period_end() -> None:
    found = forecast_linear(spent=300, limit=1000, period_start=0, period_end=30 * DAY, now=6 * DAY)
    assert found is not None
    assert found.projected == 1500
    assert found.breach_at == 20 * DAY


def test_forecast_waits_for_enough_of_the_period() -> None:
    assert forecast_linear(500, 1000, 0, 30 * DAY, now=DAY, min_elapsed_pct=10) is None


def test_forecast_breach_only_before_the_breach_and_above_limit() -> None:
    assert forecast_breach(300, 1000, 0, 30 * DAY, 6 * DAY) is not None
    assert forecast_breach(100, 1000, 0, 30 * DAY, 6 * DAY) is None  # projects 500
    assert forecast_breach(1000, 1000, 0, 30 * DAY, 6 * DAY) is None  # already breached


def test_runaway_cost_and_turns_fire_once() -> None:
    rules = RunawayRules(max_cost_nanos=100, max_turns=3, growth_turns=0)
    state = SessionState("o", "t", "u")
    assert observe_turn(state, 60, 10, 1, rules) == []
    assert observe_turn(state, 60, 10, 2, rules) == ["cost"]
    state.alerted.append("cost")
    assert observe_turn(state, 1, 10, 3, rules) == []
    assert observe_turn(state, 1, 10, 4, rules) == ["turns"]


def test_runaway_growing_context_detected() -> None:
    rules = RunawayRules(
        max_cost_nanos=0, max_turns=0, growth_turns=5, growth_factor=2.0, growth_min_context=1000
    )
    state = SessionState("o", "t", "u")
    reasons: list[str] = []
    for turn, context in enumerate([400, 500, 700, 900, 1100, 1300], start=1):
        reasons = observe_turn(state, 1, context, turn, rules)
    assert reasons == ["context_growth"]


def test_runaway_flat_context_is_not_growth() -> None:
    rules = RunawayRules(
        max_cost_nanos=0, max_turns=0, growth_turns=5, growth_factor=2.0, growth_min_context=1000
    )
    state = SessionState("o", "t", "u")
    for turn, context in enumerate([400, 2000, 700, 2000, 1100, 2600], start=1):
        assert observe_turn(state, 1, context, turn, rules) == []


def test_session_state_round_trip() -> None:
    state = SessionState("o", "t", "u")
    observe_turn(state, 5, 10, 7, RunawayRules())
    again = SessionState.from_list(state.to_list())
    assert again.to_list() == state.to_list()


def test_context_growth_is_a_run_of_growing_turns_not_the_last_ten() -> None:
    """Growth sustained over 120 turns (2k -> 240k, 2k a turn: never 3x within 10 turns) is
    flagged; the same turns with one drop in the middle start a new run; one jump is not."""
    rules = RunawayRules(max_cost_nanos=0, max_turns=0)
    state = SessionState("o", "t", "u")
    found = [observe_turn(state, 1, 2_000 * (i + 1), i, rules) for i in range(120)]
    first = next(i for i, reasons in enumerate(found) if reasons)
    assert found[first] == ["context_growth"] and 2_000 * (first + 1) >= 100_000
    dropped = SessionState("o", "t", "u")
    contexts = [2_000 * (i + 1) for i in range(45)] + [40_000 + 12_000 * i for i in range(10)]
    assert [r for i, c in enumerate(contexts) for r in observe_turn(dropped, 1, c, i, rules)] == []
    assert dropped.run == [40_000, 9, 12_000]
    assert observe_turn(dropped, 1, 160_000, 99, rules) == ["context_growth"]
    jump = SessionState("o", "t", "u")
    contexts = [2_000 + 10 * i for i in range(30)] + [240_000]
    assert [r for i, c in enumerate(contexts) for r in observe_turn(jump, 1, c, i, rules)] == []


def test_a_checkpoint_from_before_the_run_restores_the_run_from_recent() -> None:
    state = SessionState("o", "t", "u")
    for i, context in enumerate([50, 10, 20, 40, 80]):
        observe_turn(state, 1, context, i, RunawayRules())
    old = state.to_list()[:8]
    again = SessionState.from_list(old)
    assert again.run == state.run == [10, 3, 40]


def test_spike_needs_history_floor_and_factor() -> None:
    rules = SpikeRules(factor=5.0, min_history_minutes=3, min_spend_nanos=100)
    assert spike_ratio(1000, [100, 100], rules) is None  # too little history
    assert spike_ratio(1000, [100, 100, 100], rules) == pytest.approx(10.0)
    assert spike_ratio(400, [100, 100, 100], rules) is None
    assert spike_ratio(50, [1, 1, 1], rules) is None  # under the floor


def test_alert_ids_are_deterministic_and_distinct() -> None:
    a = threshold_alert_id("b1", "v1", 1000, 80)
    assert a == threshold_alert_id("b1", "v1", 1000, 80)
    others = {
        threshold_alert_id("b1", "v1", 1000, 100),
        threshold_alert_id("b1", "v1", 2000, 80),
        threshold_alert_id("b1", "v2", 1000, 80),  # a changed definition alerts afresh
    }
    assert len({a, *others}) == 4
    assert runaway_alert_id("o", "s", "cost") != runaway_alert_id("o", "s", "turns")
    assert runaway_alert_id("o1", "s", "cost") != runaway_alert_id("o2", "s", "cost")
    assert spike_alert_id("org_id=a", 60_000) != spike_alert_id("org_id=b", 60_000)


def test_make_alert_is_a_valid_avro_record() -> None:
    codec = AvroCodec("budget_alert")
    alert = make_alert("spend_spike", "x" * 32, 1, "msg", 5, org_id="o", details={"ratio": "9"})
    assert codec.decode(codec.encode(alert)) == alert
    with pytest.raises(ValueError, match="unknown alert fields"):
        make_alert("spend_spike", "x", 1, "m", 1, colour="red")


def test_spike_decisions_are_exact_for_sums_beyond_floats() -> None:
    """window * minutes vs factor * total in integers: 12 minutes summing to 21.8e15 nano-USD
    and a minute 1 nano-USD short of 5x their average is no spike (floats said 5.0)."""
    rules = SpikeRules(min_history_minutes=12)
    history = [21821936326435110 // 12] * 11
    history.append(21821936326435110 - sum(history))
    assert sum(history) == 21821936326435110
    assert spike_ratio(9092473469347962, history, rules) is None
    assert spike_ratio(9092473469347963, history, rules) is not None  # 5x exactly
    half = SpikeRules(min_history_minutes=2, factor=2.5)
    assert spike_ratio(5 * 10**9, [2 * 10**9, 2 * 10**9], half) is not None
    assert spike_ratio(5 * 10**9 - 1, [2 * 10**9, 2 * 10**9], half) is None
