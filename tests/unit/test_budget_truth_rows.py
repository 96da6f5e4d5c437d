"""Issue 12's table, one regression test per row, named after the row and using its numbers.

Each test drives the real stages (stage 1 per partition, stage 2) through the budget-truth
harness (tests/unit/truth_harness.py) and checks the row's own numbers, and that the stages
agree with the reference model (``problems() == []``). The rows that involve Kafka or
ClickHouse also have a test on the real services: tests/integration/test_budget_truth_rows_real.py.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from streams.budgets import Budget, StaticBudgets, budget_from_spec
from streams.events import INT64_MAX, MAX_COST_NANOS, MAX_TOKENS, problems
from streams.processors.alerts import runaway_alert_id, threshold_alert_id
from streams.processors.detectors import RunawayRules, SessionState, observe_turn
from streams.processors.periods import calendar_period
from streams.processors.stage1 import Stage1Config
from streams.processors.stage2 import rolling_bucket_ms
from tests.unit.stage_helpers import event
from tests.unit.truth_harness import (
    Append,
    Change,
    Checkpoint,
    Crash,
    Harness,
    Op,
    Process,
    Tick,
    check,
)

SEC = 1_000
MIN = 60_000
HOUR = 3_600_000
#: 2026-06-10 12:00 UTC: mid-month, mid-week, midday
T = 1_781_092_800_000
CENT = 10_000_000  # nano-USD


def ev(t: int, cost: int = CENT, **fields: Any) -> dict[str, Any]:
    return event(event_time=t, cost_nanos=cost, **fields)


def budget(budget_id: str, limit_usd: str, created: int = T - 2 * HOUR, **spec: Any) -> Budget:
    return budget_from_spec(
        {"id": budget_id, "scope": {"org": "acme"}, "limit_usd": limit_usd, **spec}, created
    )


def start_of(b: Budget, t: int) -> int:
    if b.period == "rolling":
        size = rolling_bucket_ms(b.window_ms)
        return t - t % size
    return calendar_period(t, b.period, b.timezone).start


def spent(h: Harness, b: Budget, t: int) -> int | None:
    return h.totals.spent(b, start_of(b, t))


def crossed(h: Harness, b: Budget) -> set[int]:
    """Thresholds alerted for ``b``'s limit."""
    return {
        a["threshold_pct"]
        for a in h.threshold_alerts.values()
        if a["budget_id"] == b.budget_id and a["limit"] == b.limit
    }


def block_of(h: Harness, budget_id: str) -> bytes | None:
    return h.blocks.get(budget_id)


MONTH = budget("org-month", "1000")


# ---------------------------------------------------------------------------- the rows


def test_1000_uuid_v1_events_are_all_counted() -> None:
    """Row: 1,000 events whose event_id is a UUIDv1 (one node and clock sequence: the low
    63 bits are the same for all of them): 1,000 counted, dedup on the whole 128-bit id."""
    ids = [str(uuid.uuid1(node=0x0242AC110002, clock_seq=0x1234)) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert len({uuid.UUID(i).int & ((1 << 63) - 1) for i in ids}) == 1  # the old dedup key
    ops: list[Op] = [Change((MONTH,), T)]
    for i, eid in enumerate(ids):
        ops.append(Append(0, T + i, ev(T + i, event_id=eid)))
        if i % 97 == 0:
            ops.append(Process(0, 97))
    h = check(1, ops)
    assert h.problems() == []
    assert h.dead == []
    assert spent(h, MONTH, T) == 1000 * CENT


def test_one_event_9_min_in_the_future_then_199_on_time_all_200_counted() -> None:
    """Row: an event stamped 9 min ahead (accepted: < 10 min), then 199 on-time events on the
    partition: the watermark never runs ahead of the worker's clock; all 200 counted."""
    ops: list[Op] = [Change((MONTH,), T), Append(0, T, ev(T + 9 * MIN)), Process(0, 1)]
    ops += [Append(0, T + i * SEC, ev(T + i * SEC)) for i in range(1, 200)]
    h = check(1, ops)
    assert h.problems() == []
    assert h.dead == []
    assert spent(h, MONTH, T) == 200 * CENT
    assert h.aggs[0].clock <= h.now


def test_an_event_11_min_behind_the_watermark_counts_in_the_month_budget() -> None:
    """Row: an event 11 min behind the watermark, inside this month: counted in every period
    the worker still holds (lateness governs only the 1-minute rollups)."""
    ops: list[Op] = [Change((MONTH,), T)]
    ops += [Append(0, T + m * MIN, ev(T + m * MIN)) for m in range(30)]
    ops += [Process(0, 30), Append(0, T + 30 * MIN, ev(T + 19 * MIN, cost=7 * CENT))]
    h = check(1, ops)
    assert h.problems() == []
    assert h.dead == []
    assert spent(h, MONTH, T) == 30 * CENT + 7 * CENT


def test_telemetry_sent_40_min_late_2pct_counts_to_the_nano_usd_and_the_100pct_alert_fires() -> (
    None
):
    """Row: 2% of the traffic buffered on a laptop and sent 40 min late: month, week and day
    totals equal the truth to the nano-USD, and the 100% alert (limit = the exact total) fires."""
    events = [ev(T + i * 3 * SEC, cost=CENT + i) for i in range(500)]
    truth = sum(e["cost_nanos"] for e in events)
    limit = f"{truth / 1e9:.9f}"
    budgets = [budget(f"org-{p}", limit, period=p) for p in ("month", "week", "day")]
    assert all(b.limit == truth for b in budgets)
    ops: list[Op] = [Change(tuple(budgets), T)]
    late = [e for i, e in enumerate(events) if i % 50 == 7]  # 10 of 500: 2%
    on_time = [e for e in events if e not in late]
    arrivals = [(e["event_time"], e) for e in on_time]
    arrivals += [(e["event_time"] + 40 * MIN, e) for e in late]
    for ts, e in sorted(arrivals, key=lambda a: a[0]):
        ops.append(Append(0, ts, e))
        ops.append(Process(0, 1))
    h = check(1, ops)
    assert h.problems() == []
    for b in budgets:
        assert spent(h, b, T) == truth, b.budget_id
        assert 100 in crossed(h, b), b.budget_id


def test_an_event_re_sent_3h_after_the_original_counts_once() -> None:
    """Row: an agent re-sends an event 3 h after the original: counted once. The id is older
    than the worker's id memory (10 min), so stage 1 asks whether the sink stored that id at
    another offset (the lookup, answered here from the sink's rule)."""
    original = ev(T, cost=5 * CENT)
    ops: list[Op] = [Change((MONTH,), T), Append(0, T, original)]
    ops += [Append(0, T + m * MIN, ev(T + m * MIN)) for m in range(1, 181, 10)]
    ops += [Append(0, T + 3 * HOUR, dict(original))]
    h = check(1, ops)
    assert h.problems() == []
    assert [x.offset for x in h.asked] == [len(h.logs[0]) - 1]
    assert spent(h, MONTH, T) == 5 * CENT + 18 * CENT


def test_a_budget_created_mid_period_while_the_sink_loads_it_starts_from_the_exact_baseline() -> (
    None
):
    """Row: a budget created mid-period while the sink is still loading that period and the
    worker replays a backlog: its baseline is what the sink stored before the version's split
    on each partition, and the stream counts from the split: exact, on 2 partitions."""
    events = [ev(T - 90 * MIN + i * 20 * SEC, cost=CENT + i) for i in range(300)]
    ops: list[Op] = []
    for i, e in enumerate(events[:200]):
        ops.append(Append(i % 2, e["event_time"], e))
    ops += [Process(0, 40), Process(1, 25)]  # the backlog is partly read
    late_budget = budget("later", "0.5", created=T - 30 * MIN)
    ops.append(Change((late_budget,), T - 30 * MIN))
    for i, e in enumerate(events[200:]):
        ops.append(Append(i % 2, e["event_time"] + 40 * MIN, e))
    h = check(2, ops)
    assert h.problems() == []
    assert h.totals.spent(late_budget, start_of(late_budget, T)) == sum(
        e["cost_nanos"] for e in events
    )
    assert crossed(h, late_budget) == {50, 80, 100}


def test_a_blocked_scope_is_lifted_when_the_limit_is_raised_10x_and_alerts_at_110pct_of_it() -> (
    None
):
    """Row: a limit raised 10x while its scope is blocked: the block is lifted, thresholds
    re-evaluated against the new definition (its version is in the alert id): 110% of the new
    limit alerts again."""
    cap = budget("cap", "1", mode="block")
    ops: list[Op] = [Change((cap,), T)]
    ops += [Append(0, T + i * SEC, ev(T + i * SEC, cost=20 * CENT)) for i in range(6)]  # $1.20
    h = check(1, list(ops))
    assert block_of(h, "cap") is not None
    raised = dataclasses.replace(cap, limit=cap.limit * 10, updated_at=T + MIN)
    assert raised.definition_version != cap.definition_version
    ops.append(Change((raised,), T + MIN))
    h = check(1, list(ops))
    assert h.problems() == []
    assert block_of(h, "cap") is None
    assert crossed(h, raised) == set()
    ops += [Append(0, T + 2 * MIN + i * SEC, ev(T + 2 * MIN, cost=CENT * 100)) for i in range(10)]
    h = check(1, ops)  # $11.20 of $10
    assert h.problems() == []
    assert crossed(h, raised) == {50, 80, 100}
    assert block_of(h, "cap") is not None
    spent_at = {a["threshold_pct"]: a["spent"] for a in h.threshold_alerts.values()}
    assert threshold_alert_id("cap", raised.definition_version, start_of(raised, T), 100) in (
        h.threshold_alerts
    )
    assert spent_at[100] >= raised.limit


def test_a_blocked_scope_is_lifted_when_its_budget_switches_to_alert_mode() -> None:
    """Row: a budget switched to alert mode while its scope is blocked: lifted."""
    cap = budget("cap", "1", mode="block")
    ops: list[Op] = [Change((cap,), T)]
    ops += [Append(0, T + i * SEC, ev(T + i * SEC, cost=30 * CENT)) for i in range(4)]
    assert block_of(check(1, list(ops)), "cap") is not None
    ops.append(Change((dataclasses.replace(cap, mode="alert", updated_at=T + MIN),), T + MIN))
    h = check(1, ops)
    assert h.problems() == []
    assert block_of(h, "cap") is None


def test_a_blocked_scope_is_lifted_when_its_budget_is_deleted() -> None:
    """Row: a budget deleted while its scope is blocked: lifted."""
    cap = budget("cap", "1", mode="block")
    ops: list[Op] = [Change((cap,), T)]
    ops += [Append(0, T + i * SEC, ev(T + i * SEC, cost=30 * CENT)) for i in range(4)]
    assert block_of(check(1, list(ops)), "cap") is not None
    ops.append(Change((), T + MIN))
    h = check(1, ops)
    assert h.problems() == []
    assert block_of(h, "cap") is None


def test_a_scope_edit_of_a_blocked_budget_starts_a_fresh_total() -> None:
    """Row (same): a scope edit starts a fresh total from ClickHouse (the baseline), so ana's
    spend alone decides; bo's spend no longer counts."""
    cap = budget("cap", "1", mode="block")
    ops: list[Op] = [Change((cap,), T)]
    ops += [Append(0, T + i * SEC, ev(T + i * SEC, cost=30 * CENT, user_id="bo")) for i in range(4)]
    ops += [Append(0, T + 5 * SEC, ev(T + 5 * SEC, cost=10 * CENT))]
    assert block_of(check(1, list(ops)), "cap") is not None
    ana = dataclasses.replace(cap, user_id="ana", updated_at=T + MIN)
    ops.append(Change((ana,), T + MIN))
    h = check(1, ops)
    assert h.problems() == []
    assert spent(h, ana, T) == 10 * CENT
    assert block_of(h, "cap") is None


def test_a_rolling_block_is_lifted_by_the_timer_as_soon_as_spend_slides_below_the_limit() -> None:
    """Row: a rolling budget in block mode: re-evaluated on a timer, lifted as soon as the
    spend slides out of the window (not at period end + window: a blocked scope sends no new
    partials, so only the timer can lift it)."""
    roll = budget("roll", "1", mode="block", period="rolling", window="1h")
    ops: list[Op] = [Change((roll,), T)]
    ops += [Append(0, T + i * SEC, ev(T + i * SEC, cost=30 * CENT)) for i in range(4)]
    h = check(1, list(ops))
    assert block_of(h, "roll") is not None
    ops.append(Tick(T + 50 * MIN))
    assert block_of(check(1, list(ops)), "roll") is not None  # still inside the window
    size = rolling_bucket_ms(roll.window_ms)
    ops.append(Tick(T - T % size + size + HOUR + MIN))  # the spend's bucket left the window
    h = check(1, ops)
    assert h.problems() == []
    assert block_of(h, "roll") is None


def test_a_rolling_block_published_after_stage_2s_checkpoint_is_lifted_after_a_restart() -> None:
    """Found by ``make truth-long`` (roll-1h, Crash(-1), a Tick 26 h later): stage 2 blocks,
    then restarts from a checkpoint that predates the block (or none at all) once the
    spend slid out of the window. Its replay judges the window at the new time (below the
    limit), so it never learns of the block on the topic, and no later decision lifted it:
    blocked forever. Once replayed, it writes its first decision on every budget it holds."""
    roll = budget("roll", "1", mode="block", period="rolling", window="1h")
    ops: list[Op] = [Change((roll,), T)]
    ops += [Append(0, T + i * SEC, ev(T + i * SEC, cost=30 * CENT)) for i in range(4)]
    ops += [Process(0, 4)]
    # another org's event moves the clock past the window; the timer has not run since
    ops += [Append(0, T + 2 * HOUR, ev(T + 2 * HOUR, org_id="beta"))]
    h = check(1, list(ops))
    assert h.problems() == []  # (no restart: the timer lifts it)
    assert block_of(h, "roll") is None
    for before in ([], [Checkpoint(-1)]):  # no checkpoint; one from before the block
        restarted = [*ops[:1], *before, *ops[1:], Crash(-1), Tick(T + 26 * HOUR)]
        h = check(1, restarted)
        assert h.problems() == []
        assert block_of(h, "roll") is None


def test_a_day_block_published_after_stage_2s_checkpoint_is_lifted_by_a_restart_next_day() -> None:
    """The calendar case (``beta-day`` in the long run): a day budget blocked, stage 2
    restarted after the day ended from a checkpoint without the block: lifted."""
    day = budget("day", "1", mode="block", period="day")
    ops: list[Op] = [Change((day,), T), Checkpoint(-1)]
    ops += [Append(0, T + i * SEC, ev(T + i * SEC, cost=30 * CENT)) for i in range(4)]
    ops += [Process(0, 4), Append(0, T + 13 * HOUR, ev(T + 13 * HOUR, org_id="beta"))]
    ops += [Crash(-1), Tick(T + 14 * HOUR)]
    h = check(1, ops)
    assert h.problems() == []
    assert block_of(h, "day") is None


def test_a_block_published_after_stage_2s_checkpoint_is_lifted_if_deleted_meanwhile() -> None:
    """Stage 2 blocks, the budget is deleted, stage 2 restarts from a checkpoint without the
    block before its timer ran: lifted (the restarted stage 2 did not know it had blocked)."""
    cap = budget("cap", "1", mode="block")
    ops: list[Op] = [Change((cap,), T), Checkpoint(-1)]
    ops += [Append(0, T + i * SEC, ev(T + i * SEC, cost=30 * CENT)) for i in range(4)]
    ops += [Process(0, 4)]
    h = Harness(1, Stage1Config(), check(1, [*ops, Change((), T + MIN)]).model)
    for op in ops:
        h.apply(op)
    assert block_of(h, "cap") is not None
    deleted = StaticBudgets([])  # the budgets view changes; stage 2's timer has not run
    h.view.matcher, h.view._budgets = deleted.matcher, deleted._budgets
    h.crash(-1)
    h.settle(T + MIN)
    assert h.problems() == []
    assert block_of(h, "cap") is None


def test_a_rolling_block_lifted_after_stage_2s_checkpoint_returns_with_new_spend() -> None:
    """The other way round: the checkpoint holds a block that the timer lifted later (the
    window slid); restored from it, stage 2 believed the scope still blocked, so new spend
    over the limit published nothing: the scope stayed unblocked, the spend unbounded."""
    roll = budget("roll", "1", mode="block", period="rolling", window="1h")
    ops: list[Op] = [Change((roll,), T)]
    ops += [Append(0, T + i * SEC, ev(T + i * SEC, cost=30 * CENT)) for i in range(4)]
    ops += [Process(0, 4), Checkpoint(-1), Tick(T + 2 * HOUR)]
    h = check(1, list(ops))
    assert block_of(h, "roll") is None  # lifted by the timer
    ops += [Crash(-1)]
    ops += [Append(0, T + 2 * HOUR + i * SEC, ev(T + 2 * HOUR, cost=30 * CENT)) for i in range(4)]
    h = check(1, ops)
    assert h.problems() == []
    assert block_of(h, "roll") is not None


def test_two_events_with_10_15_input_tokens_are_dead_lettered_and_sums_never_overflow() -> None:
    """Row: two events with 10^15 input tokens: beyond the contract's bound (MAX_TOKENS,
    10^9 per bucket and request: 100x the largest context window), dead-lettered by the SDK's
    validator, the worker (and the sink: the same bound in its batch check,
    tests/unit/test_sink_frames.py); the other events count; sums stay within int64."""
    huge = [ev(T + i, input_tokens=10**15) for i in range(2)]
    for e in huge:
        assert any("above the bound" in p for p in problems(e, now=T))
    at_bounds = ev(T + 5, input_tokens=MAX_TOKENS, cost=MAX_COST_NANOS)
    tokens = budget_from_spec(
        {"id": "tok", "scope": {"org": "acme"}, "limit_tokens": 10**15}, T - HOUR
    )
    ops: list[Op] = [Change((MONTH, tokens), T), *(Append(0, T + i, e) for i, e in enumerate(huge))]
    ops += [Append(0, T + 5, at_bounds), Append(0, T + 6, ev(T + 6))]
    h = check(1, ops)
    assert h.problems() == []
    assert sorted((o, k) for _, o, k in h.dead) == [(0, "invalid"), (1, "invalid")]
    assert spent(h, MONTH, T) == MAX_COST_NANOS + CENT
    assert spent(h, tokens, T) == MAX_TOKENS + 10 + 110
    # the bound's arithmetic: an int64 holds 9.2e9 requests at the token bound in every bucket
    assert INT64_MAX // (6 * MAX_TOKENS) > 1_500_000_000


def test_a_rolling_6h_budget_alerts_at_its_peak_whatever_the_batch_sizes_of_a_backlog() -> None:
    """Row: a rolling 6 h budget while the worker catches up after a restart: the window
    peaks at 55-60% of the limit hours before the backlog's newest event; the 50% alert fires
    whether the backlog is read in one batch or event by event."""
    roll = budget("roll6", "10", period="rolling", window="6h", created=T - 12 * HOUR)
    events = [ev(T - 9 * HOUR + i * MIN, cost=29 * CENT) for i in range(20)]  # $5.80: 58%
    events += [ev(T - 2 * HOUR + i * MIN, cost=CENT) for i in range(60)]  # after the peak slid
    arrivals = [Append(0, T - 2 * HOUR + 60 * MIN, e) for e in events]  # a backlog
    for batch in (len(events), 1):
        ops: list[Op] = [Change((roll,), T - 10 * HOUR)]
        for a in arrivals:
            ops += [a, Process(0, batch)] if batch == 1 else [a]
        ops += [Process(0, batch)]
        h = check(1, ops)
        assert h.problems() == [], batch
        assert crossed(h, roll) == {50}, batch


def _spike_traffic(partition: int) -> list[Op]:
    """15 minutes of $0.10 a minute, then $5 in one minute: a spend spike (factor 5)."""
    ops: list[Op] = []
    for m in range(15):
        t = T + m * MIN + 10 * SEC
        ops.append(Append(partition, t, ev(t, cost=10 * CENT)))
    t = T + 15 * MIN + 10 * SEC
    ops += [Append(partition, t + i, ev(t + i, cost=50 * CENT)) for i in range(10)]
    return ops


def test_partition_1_idle_does_not_stop_spend_spike_detection() -> None:
    """Row: partition 1 goes idle: it stops holding the watermark back after the idleness
    timeout, and the spike on partition 0 is detected."""
    ops: list[Op] = [Change((), T), *_spike_traffic(0), Tick(T + 30 * MIN)]
    h = check(2, ops)
    assert h.problems() == []
    assert h.logs[1] == []
    assert sorted(h.kinds.values()) == ["spend_spike"]


def test_identical_traffic_run_twice_once_with_restarts_gives_the_same_spikes() -> None:
    """Row: identical traffic, run twice, once with restarts of both stages and partition 1
    lagging behind partition 0 (read late, in big batches): the same spike alert (a
    deterministic function of the events), judged against the true trailing average."""
    traffic: list[Append] = [op for op in _spike_traffic(0) if isinstance(op, Append)]
    for m in range(15):  # partition 1: $0.01 a minute
        t = T + m * MIN + 20 * SEC
        traffic.append(Append(1, t, ev(t, cost=CENT)))
    traffic.sort(key=lambda op: op.ts)
    calm = check(2, [Change((), T), *traffic, Tick(T + 30 * MIN)])
    restarted: list[Op] = [Change((), T)]
    for i, op in enumerate(traffic):
        restarted.append(op)
        if i % 6 == 3:
            restarted += [Process(0, 5), Checkpoint(0), Checkpoint(-1)]
        if i % 9 == 8:
            restarted += [Crash(0), Crash(-1)]
        if i == 20:
            restarted += [Process(1, 100), Checkpoint(1)]
        if i % 11 == 10:
            restarted += [Crash(1)]
    rough = check(2, [*restarted, Tick(T + 30 * MIN)])
    assert calm.problems() == [] and rough.problems() == []
    assert sorted(calm.kinds.values()) == ["spend_spike"]
    assert calm.kinds == rough.kinds
    [alert] = calm.alerts.values()
    assert alert["period_start"] == T + 15 * MIN
    assert alert["spent"] == 500 * CENT
    assert alert["limit"] == 11 * CENT  # the trailing average: $0.10 + $0.01 a minute


def _session(org: str, contexts: list[int], session: str = "s-1") -> list[Op]:
    return [
        Append(
            0,
            T + i * 30 * SEC,
            ev(T + i * 30 * SEC, org_id=org, session_id=session, turn=i + 1, input_tokens=c),
        )
        for i, c in enumerate(contexts)
    ]


def test_a_session_whose_last_prompt_alone_is_240k_tokens_is_not_context_growth() -> None:
    """Row: a session whose last prompt alone is 240k tokens is not flagged for context growth:
    the rule means growth sustained over turns (each of the last 10 turns re-sent more context
    than the one before, 3x overall, ending above 100k, no one turn adding more than half of
    the growth). A session growing for 120 turns to 240k is flagged."""
    jump = [2_000 + 10 * i for i in range(11)] + [240_000]
    h = check(1, [Change((), T), *_session("acme", jump)])
    assert h.problems() == []
    assert list(h.kinds.values()) == []
    grow = [2_000 * (i + 1) for i in range(120)]  # 2k -> 240k over 120 turns
    h = check(1, [Change((), T), *_session("acme", grow)])
    assert list(h.alerts) == [runaway_alert_id("acme", "s-1", "context_growth")]
    # the detector itself, turn by turn
    rules = RunawayRules()
    state = SessionState("acme", "platform", "ana")
    assert [r for i, c in enumerate(jump) for r in observe_turn(state, 1, c, i, rules)] == []


def test_two_orgs_that_reuse_a_session_id_are_two_sessions() -> None:
    """Row: two orgs reuse a session_id: sessions are keyed by (org, session); the growing one
    is flagged, attributed to its own org, the other is not."""
    grow = [20_000 * (i + 1) for i in range(12)]
    flat = [50_000] * 12
    ops = [Change((), T), *_session("acme", grow), *_session("beta", flat)]
    ops.sort(key=lambda op: getattr(op, "ts", 0))
    h = check(1, ops)
    [(aid, alert)] = h.alerts.items()
    assert aid == runaway_alert_id("acme", "s-1", "context_growth")
    assert alert["org_id"] == "acme"


# ---------------------------------------------------------------------------- also fix: state


def test_state_past_its_use_expires_rolling_buckets_first_then_the_month() -> None:
    """Also fix (state that grows without bound): stage 2's alerted set, rolling buckets and
    org minutes, and stage 1's id memory, sessions and accumulators expire once past their
    use: a rolling bucket the hold (24 h) after it left the window (it was kept 40 days), a
    month's period and its alerted thresholds the hold after the month ends; the alert log
    forgets ids older than its window."""
    roll = budget("roll", "1", period="rolling", window="6h")
    ops: list[Op] = [Change((MONTH, roll), T)]
    ops += [
        Append(0, T + i * SEC, ev(T + i * SEC, cost=30 * CENT, session_id=f"s{i}"))
        for i in range(40)
    ]
    h = check(1, list(ops))
    totals, stage1 = h.totals, h.aggs[0]
    assert {k[0] for k in totals.buckets} == {"org-month", "roll"}
    assert {k[0] for k in totals.alerted} == {"roll"}  # $12 of the rolling $1
    assert totals.orgs and len(stage1.memory) == 40 and len(stage1.sessions) == 40
    day = 86_400_000
    h = check(1, [*ops, Tick(T + 2 * day)])
    totals, stage1 = h.totals, h.aggs[0]
    assert h.problems() == []
    assert {k[0] for k in totals.buckets} == {"org-month"}  # the month is still open
    assert totals.alerted == {} and totals.orgs == {}
    assert len(stage1.memory) == 0 and len(stage1.sessions) == 0
    assert spent(h, MONTH, T) == 40 * 30 * CENT
    h = check(1, [*ops, Tick(T + 40 * day)])  # June ended, and the hold after it
    totals, stage1 = h.totals, h.aggs[0]
    assert h.problems() == []
    assert totals.buckets == {} and totals.alerted == {} and totals.baselines == {}
    assert stage1.partials == {} and stage1.windows == {}


def test_the_alert_log_forgets_ids_older_than_its_window() -> None:
    from streams.settings import Settings
    from streams.worker.alertlog import AlertLog

    log = AlertLog(Settings.from_env({}), window_s=3600)
    now = time.time()
    log.add("old", now - 3601)
    log.add("recent", now - 3500)
    assert log.claim("new") and not log.claim("new")
    log._expire()
    assert not log.seen("old") and log.seen("recent") and log.seen("new")
    assert len(log) == 2
