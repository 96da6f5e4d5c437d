"""The demo's plan (streams/demo/plan.py): which traffic, which budgets, which outcome.

Checked against the worker's own rules (the runaway detector, the catalog's prices), so a
change of those that would break the demo's story fails here, before anyone runs it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from streams import events
from streams.demo import plan_demo
from streams.demo.chart import cumulative, draw
from streams.demo.plan import (
    BLOCK_BUDGET,
    BLOCK_TEAM,
    ORG_BUDGET,
    RUNAWAY_FLAGGED_TURN,
    RUNAWAY_ORG,
    RUNAWAY_TEAM,
)
from streams.demo.run import _alerts_arrived
from streams.loadtest import plan_events
from streams.pricing import default_catalog
from streams.processors.detectors import RunawayRules, SessionState, observe_turn
from streams.serde import AvroCodec


def _price(event: events.Event, now: int) -> int:
    return default_catalog().price({**event, "event_time": now}).cost_nanos


def _context(event: events.Event) -> int:
    return sum(
        event[f]
        for f in (
            "input_tokens",
            "cache_read_tokens",
            "cache_write_5m_tokens",
            "cache_write_1h_tokens",
        )
    )


@pytest.mark.parametrize("seconds", [40.0, 12.0])
def test_the_runaway_session_is_runaway_by_the_workers_rule_part_way(seconds: float) -> None:
    plan = plan_demo(seconds)
    turns = plan.runaway
    assert {e["session_id"] for e in turns} == {plan.runaway_session}
    assert [e["turn"] for e in turns] == list(range(1, len(turns) + 1))
    contexts = [_context(e) for e in turns]
    assert all(b > a for a, b in itertools.pairwise(contexts))
    # each turn re-reads the previous turn's context from the cache
    assert all(t["cache_read_tokens"] == c for t, c in zip(turns[1:], contexts, strict=False))
    state = SessionState(RUNAWAY_ORG, RUNAWAY_TEAM, "u")
    flagged_at = None
    for event in turns:
        reasons = observe_turn(
            state, _price(event, events.now_ms()), _context(event), 0, RunawayRules()
        )
        if reasons and flagged_at is None:
            flagged_at = event["turn"]
            assert flagged_at == RUNAWAY_FLAGGED_TURN
            assert reasons == ["context_growth"]
    assert flagged_at is not None
    # flagged with time to spare: the alert must arrive while the traffic still runs
    assert flagged_at * plan.runaway_every_s <= 0.6 * seconds
    assert len(turns) * plan.runaway_every_s <= seconds


def test_no_other_traffic_is_an_agentic_session() -> None:
    plan = plan_demo(40)
    load = plan_events(plan.load_count, plan.seed, prefix="demo")
    assert all(e["session_id"] is None for e in load)
    assert all(e["session_id"] is None for e in plan.block_requests)
    assert {e["team_id"] for e in plan.block_requests} == {BLOCK_TEAM}
    assert BLOCK_TEAM not in {e["team_id"] for e in load}


def test_the_block_lands_about_half_way_through_the_teams_requests() -> None:
    plan = plan_demo(40)
    now = events.now_ms()
    block = plan.block_budget
    assert (block.budget_id, block.mode, block.period) == (BLOCK_BUDGET, "block", "day")
    assert block.scope == {"org_id": "demo-org-1", "team_id": BLOCK_TEAM}
    costs = [_price(e, now) for e in plan.block_requests]
    k = plan.block_crossing_request
    assert sum(costs[:k]) >= block.limit > sum(costs[: k - 1])
    assert 0.4 <= k / len(costs) <= 0.6
    # the agent sends one request per tick: the crossing comes well before the end
    assert k * plan.block_every_s <= 0.6 * plan.seconds


def test_the_org_budget_is_crossed_at_50_and_80_percent_not_100() -> None:
    plan = plan_demo(40)
    now = events.now_ms()
    org = plan.org_budget
    assert (org.budget_id, org.mode, org.org_id, org.team_id) == (
        ORG_BUDGET,
        "alert",
        RUNAWAY_ORG,
        None,
    )
    load = {e["event_id"]: e for e in plan_events(plan.load_count, plan.seed, prefix="demo")}
    spend = sum(_price(e, now) for e in load.values() if e["org_id"] == RUNAWAY_ORG)
    spend += sum(_price(e, now) for e in plan.runaway)
    assert org.limit * 80 <= spend * 100 < org.limit * 100
    assert plan.org_thresholds == (50, 80)


def test_every_planned_event_is_valid_and_encodes() -> None:
    plan = plan_demo(12)
    codec = AvroCodec("token_event")
    now = events.now_ms()
    for event in [*plan.runaway, *plan.block_requests]:
        live = {**event, "event_time": now}
        events.validate(live, now)
        assert _price(live, now) > 0  # priced by the catalog, as the worker will
        assert codec.decode(codec.encode(live))["event_id"] == event["event_id"]
    assert len({e["event_id"] for e in [*plan.runaway, *plan.block_requests]}) == len(
        plan.runaway
    ) + len(plan.block_requests)


def test_the_plan_is_a_function_of_seed_and_duration() -> None:
    a, b, c = plan_demo(20, seed=3), plan_demo(20, seed=3), plan_demo(20, seed=4)
    assert [e["event_id"] for e in a.runaway] == [e["event_id"] for e in b.runaway]
    assert a.budgets == b.budgets
    assert a.runaway[0]["event_id"] != c.runaway[0]["event_id"]
    assert plan_demo(40).load_count == 2 * plan_demo(20).load_count
    with pytest.raises(ValueError, match="at least 10 seconds"):
        plan_demo(5)


def test_the_run_waits_for_the_planned_alerts() -> None:
    plan = plan_demo(12)
    org, block = plan.org_budget.budget_id, plan.block_budget.budget_id
    seen = [
        {"kind": "threshold_crossed", "budget_id": org, "threshold_pct": 50},
        {"kind": "threshold_crossed", "budget_id": org, "threshold_pct": 80},
        {"kind": "threshold_crossed", "budget_id": block, "threshold_pct": 100},
    ]
    assert not _alerts_arrived(plan, seen)  # no runaway alert yet
    seen.append({"kind": "runaway_session", "budget_id": None, "threshold_pct": None})
    assert _alerts_arrived(plan, seen)
    assert not _alerts_arrived(plan, seen[1:])


def test_the_chart_sums_integers_and_writes_a_png(tmp_path: Path) -> None:
    start = 1_796_030_100_000
    rows = [("t1", start // 1000 + 2, 5), ("t1", start // 1000, 3), ("t2", start // 1000 + 1, 7)]
    teams = cumulative(rows)
    assert teams == {
        "t1": ([start // 1000, start // 1000 + 2], [3, 8]),
        "t2": ([start // 1000 + 1], [7]),
    }
    plan = plan_demo(12)
    alert = {
        "kind": "runaway_session",
        "detected_at": start + 1500,
        "team_id": "t1",
        "org_id": "o",
        "budget_id": None,
        "threshold_pct": None,
    }
    path = draw(
        tmp_path / "spend.png",
        teams,
        cumulative([("o", start // 1000, 9)]),
        plan.budgets,
        [alert],
        start,
        [("t1", "check() refuses", start + 2000)],
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quiet_logs_sends_stderr_and_logging_to_the_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import logging
    import os

    from streams.demo.run import quiet_logs

    path = tmp_path / "logs" / "demo.log"
    with quiet_logs(path):
        # what librdkafka's own threads do: write(2) below Python
        os.write(2, b"%4|1796216030.830|GETPID|rdkafka#producer-8| retrying\n")
        logging.getLogger("streams.demo.test").warning("a warning of ours")
    os.write(2, b"after\n")
    text = path.read_text()
    assert "GETPID" in text and "a warning of ours" in text
    captured = capfd.readouterr()
    assert "GETPID" not in captured.err and "a warning of ours" not in captured.err
    assert "after" in captured.err  # the terminal's stderr is back
