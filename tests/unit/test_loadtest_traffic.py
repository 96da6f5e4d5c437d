"""The load test's traffic is a function of its seed, and its ledger adds up exactly."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from loadtest.ledger import SpendTotals, billable_tokens
from loadtest.traffic import MAX_CONTEXT, MODELS, Traffic, TrafficSpec, uuid7
from streams import events
from streams.pricing import default_catalog

NOW = 1_764_000_000_000  # 2025-11-24T16:00Z
SPEC = TrafficSpec(seed=7, duplicate_share=0.02, late_share=0.05, runaway_users=1)


def _events(spec: TrafficSpec = SPEC, agent: int = 0, agents: int = 1, n: int = 3000) -> list:
    return list(Traffic(spec, agent, agents).stream(NOW, n))


def test_same_seed_same_events_other_seed_other_events() -> None:
    assert _events() == _events()
    other = _events(TrafficSpec(seed=8, duplicate_share=0.02, late_share=0.05))
    assert [e["event_id"] for e in other] != [e["event_id"] for e in _events()]


def test_every_event_is_valid_and_priced_by_the_catalog() -> None:
    catalog = default_catalog()
    for e in _events():
        assert events.problems(e, now=NOW) == []
        assert catalog.price(e).source == "catalog", e["model"]
    for provider, model, _ in MODELS:
        probe = {**_events(n=1)[0], "provider": provider, "model": model}
        assert catalog.price(probe).cost_nanos > 0


def test_the_mix_has_every_kind_the_issue_asks_for() -> None:
    got = _events(n=6000)
    status = Counter(e["status"] for e in got)
    assert status["error"] and status["cancelled"] and status["ok"] > 5000
    ids = Counter(e["event_id"] for e in got)
    resent = [eid for eid, n in ids.items() if n > 1]
    assert resent  # re-sends: the same id with the same content
    for eid in resent:
        copies = [e for e in got if e["event_id"] == eid]
        assert all(c == copies[0] for c in copies)
    late = [e for e in got if e["event_time"] < NOW - 60_000]
    assert late and min(e["event_time"] for e in late) >= NOW - SPEC.late_max_ms
    ahead = {e["user_id"] for e in got if e["event_time"] > NOW}
    assert ahead == {Traffic(SPEC).names(0)["user_id"]}  # the one skewed agent
    assert max(e["event_time"] for e in got) - NOW < events.MAX_FUTURE_MS
    versions = Counter(uuid.UUID(e["event_id"]).version for e in got)
    assert set(versions) == {4, 7}
    assert {e["task_type"] for e in got} == {"agentic", "chat"}


def test_zipf_activity_a_few_users_send_most() -> None:
    spec = TrafficSpec(seed=3, orgs=4, teams_per_org=5, users_per_team=10, duplicate_share=0)
    per_user = Counter(e["user_id"] for e in _events(spec, n=20_000))
    counts = sorted(per_user.values(), reverse=True)
    assert sum(counts[:20]) > 0.5 * sum(counts)  # the top 10% of 200 users: over half
    assert len(counts) > 100


def test_sessions_resend_a_growing_context_with_cache_reads_and_writes() -> None:
    got = _events(n=4000)
    by_session: dict[str, list] = {}
    for e in got:
        if e["session_id"]:
            by_session.setdefault(e["session_id"], []).append(e)
    long = [turns for turns in by_session.values() if len({t["turn"] for t in turns}) >= 4]
    assert long
    for turns in long:
        unique = list({t["turn"]: t for t in turns}.values())
        assert [t["turn"] for t in unique] == list(range(1, len(unique) + 1))
        prompts = [t["input_tokens"] + t["cache_read_tokens"] + t["cache_write_5m_tokens"]
                   for t in unique]  # fmt: skip
        # until the context reaches the compaction cap
        prompts = [p for i, p in enumerate(prompts) if i == 0 or prompts[i - 1] < MAX_CONTEXT]
        assert prompts == sorted(prompts) and prompts[-1] > prompts[0]
        assert unique[0]["cache_read_tokens"] == 0
        assert all(t["cache_read_tokens"] > 0 for t in unique[1:])
        if unique[0]["provider"] == "anthropic":
            assert all(t["cache_write_5m_tokens"] > 0 for t in unique)


def test_agents_share_no_users_and_no_ids() -> None:
    a, b = _events(agent=0, agents=2), _events(agent=1, agents=2)
    assert not {e["user_id"] for e in a} & {e["user_id"] for e in b}
    assert not {e["event_id"] for e in a} & {e["event_id"] for e in b}


def test_uuid7_carries_its_milliseconds() -> None:
    import random

    value = uuid.UUID(uuid7(NOW, random.Random(1)))
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert value.int >> 80 == NOW


def test_the_runaway_user_loops_in_one_endless_session() -> None:
    got = _events(n=3000)
    runaway = Traffic(SPEC).names(SPEC.users - 1)["user_id"]
    mine = [e for e in got if e["user_id"] == runaway]
    assert len(mine) > 0.3 * len(got)
    assert len({e["session_id"] for e in mine}) == 1


# ---------------------------------------------------------------------------- the ledger


def test_totals_are_the_exact_sum_of_catalog_prices_each_id_once() -> None:
    got = _events(n=3000)
    catalog = default_catalog()
    totals = SpendTotals(catalog).add_all(got)
    unique = list({e["event_id"]: e for e in got}.values())
    assert totals.events == len(unique) and totals.resent == len(got) - len(unique)
    expected = sum(catalog.price(e).cost_nanos for e in unique)
    assert isinstance(expected, int)
    for scope in ("org", "team", "user"):
        assert totals.total_cost(scope, "month") == expected
        assert totals.total_cost(scope, "day") == expected
    tokens = sum(billable_tokens(e) for e in unique)
    assert sum(v for k, v in totals.tokens.items() if k[0] == "org" and k[2] == "month") == tokens


def test_periods_split_at_utc_midnight() -> None:
    base = _events(n=1)[0]
    midnight = 1_764_028_800_000  # 2025-11-25T00:00Z
    totals = SpendTotals()
    totals.add({**base, "event_id": str(uuid.uuid4()), "event_time": midnight - 1})
    totals.add({**base, "event_id": str(uuid.uuid4()), "event_time": midnight})
    days = sorted(k[3] for k in totals.cost if k[0] == "org" and k[2] == "day")
    assert days == [midnight - 86_400_000, midnight]
    assert len([k for k in totals.cost if k[0] == "org" and k[2] == "month"]) == 1


def test_merged_agents_equal_one_ledger_and_survive_a_file(tmp_path: Path) -> None:
    a, b = _events(agent=0, agents=2), _events(agent=1, agents=2)
    one = SpendTotals().add_all(a + b)
    merged = SpendTotals().add_all(a)
    merged.merge(SpendTotals().add_all(b))
    assert one.same_as(merged) == []
    path = tmp_path / "totals.json"
    one.write(path)
    assert SpendTotals.read(path).same_as(one) == []
    assert one.same_as(SpendTotals().add_all(a))  # a difference is reported
    with pytest.raises(ValueError, match="two agents"):
        merged.merge(SpendTotals().add_all(a))


# ---------------------------------------------------------------------------- scenarios


def test_every_scenario_loads_and_plans_budgets_that_its_traffic_crosses() -> None:
    from loadtest import scenario as scenarios

    assert {"smoke", "steady", "burst", "month-end", "runaway", "catch-up"} <= set(
        scenarios.names()
    )
    for name in scenarios.names():
        s = scenarios.load(name)
        assert s.seconds > 0 and s.rate > 0
    month_end = scenarios.load("month-end")
    budgets = month_end.with_overrides(rate=100.0).budgets(now_ms=NOW)
    assert len([b for b in budgets if b.user_id]) == 300
    smoke = scenarios.load("smoke").with_overrides(duration_s=20.0, rate=50.0)
    assert smoke.seconds == 20.0 and smoke.planned_events == 1000
    burst = scenarios.load("burst").with_overrides(duration_s=90.0)
    assert burst.seconds == pytest.approx(90.0)
    assert [r for _, r in burst.schedule()] == [1000.0, 10000.0, 1000.0]
    with pytest.raises(ValueError, match="no scenario"):
        scenarios.load("nope")


def test_phase_figures_judge_lag_bounded_or_growing() -> None:
    from loadtest.run import phase_figures

    samples = []
    for t in range(0, 21):
        produced = 1000 * t
        worker = produced - 500 if t < 10 else 10_000 - 500 + 200 * (t - 10)  # falls behind
        samples.append({"t": float(t), "produced": produced, "worker": worker, "sink": produced})
    first, second = phase_figures(samples, ((10.0, 1000.0), (10.0, 1000.0)), 0.0)
    assert first["bounded"] and first["worker_per_s"] == pytest.approx(1000.0)
    assert not second["bounded"] and not second["worker_bounded"] and second["sink_bounded"]
    assert second["end_to_end_per_s"] == pytest.approx(200.0, rel=0.2)
