"""Stage 2: exact totals per budget period from per-partition partials; alerts and blocks.

Input messages (from stage 1, keyed by budget id or org) carry CUMULATIVE partial sums of one
source partition for one bucket, with the source offset as a sequence number. Stage 2 keeps
the partial with the highest sequence per source partition and sums them, so replays and
duplicates of partial messages change nothing, and totals stay exact whichever worker owns
which events partition. Thresholds fire once per (budget, period, threshold): the id is
deterministic and emitted ids are remembered in the checkpointed state.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from streams.budgets import Budget
from streams.processors.alerts import (
    forecast_alert_id,
    format_amount,
    make_alert,
    scope_text,
    spike_alert_id,
    threshold_alert_id,
)
from streams.processors.detectors import SpikeRules, crossed, forecast_breach, percent, spike_ratio
from streams.processors.periods import MINUTE_MS, rolling_bucket_ms

#: baselines key of a rolling budget whose per-bucket baseline has been read (no bucket
#: starts at -1: event times are after 2020)
ROLLING_LOADED = -1


@dataclasses.dataclass(frozen=True)
class BaselineRequest:
    """Spend already in ClickHouse that a budget created mid-period starts from.

    ``[start, until)`` in one total (calendar periods, ``bucket_ms`` 0) or per bucket of
    ``bucket_ms`` (rolling windows: the baseline slides out of the window bucket by bucket).
    """

    budget: Budget
    start: int
    until: int
    bucket_ms: int = 0


class BudgetLookup(Protocol):
    def get(self, budget_id: str) -> Budget | None: ...


@dataclasses.dataclass(frozen=True)
class Stage2Config:
    forecast_min_elapsed_pct: int = 10
    spike: SpikeRules = dataclasses.field(default_factory=SpikeRules)
    keep_periods_ms: int = 40 * 86_400_000  # forget finished buckets this long after their end


@dataclasses.dataclass
class Stage2Output:
    alerts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: (budget_id, value) for the compacted enforcement topic; value None unblocks
    enforcement: list[tuple[str, bytes | None]] = dataclasses.field(default_factory=list)


class Bucket:
    """One budget period (or rolling bucket, or org minute) summed over source partitions."""

    __slots__ = ("end", "last_id", "last_t", "parts")

    def __init__(self, end: int) -> None:
        self.end = end
        self.parts: dict[int, list[int]] = {}  # partition -> [seq, cost, tokens, requests]
        self.last_id: str | None = None
        self.last_t = 0

    def update(self, msg: Mapping[str, Any]) -> bool:
        partition = msg["p"]
        seq = msg["q"]
        have = self.parts.get(partition)
        if have is not None and have[0] >= seq:
            return False
        self.parts[partition] = [seq, msg["c"], msg["t"], msg["n"]]
        if msg["et"] >= self.last_t and msg["ei"] is not None:
            self.last_t = msg["et"]
            self.last_id = msg["ei"]
        return True

    def total(self, index: int) -> int:
        return sum(p[index] for p in self.parts.values())

    def to_list(self) -> list[Any]:
        return [self.end, self.last_id, self.last_t, [[k, *v] for k, v in self.parts.items()]]

    @classmethod
    def from_list(cls, raw: list[Any]) -> Bucket:
        bucket = cls(raw[0])
        bucket.last_id, bucket.last_t = raw[1], raw[2]
        bucket.parts = {p[0]: list(p[1:]) for p in raw[3]}
        return bucket


def enforcement_value(
    budget: Budget, blocked: bool, until: int, spent: int, period_start: int, now: int
) -> bytes:
    """The JSON block-state record on the compacted enforcement topic (key: budget_id)."""
    return json.dumps(
        {
            "v": 1,
            "budget_id": budget.budget_id,
            "scope": budget.scope,
            "blocked": blocked,
            "since": now,
            "period_start": period_start,
            "until": until,
            "spent": spent,
            "limit": budget.limit,
            "unit": budget.unit,
        },
        sort_keys=True,
    ).encode()


class BudgetTotals:
    """Stage 2 state for one partials partition."""

    def __init__(
        self,
        budgets: BudgetLookup,
        config: Stage2Config | None = None,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        from streams.events import now_ms as wall

        self.budgets = budgets
        self.config = config or Stage2Config()
        self.now_ms = now_ms or wall
        self.applied = -1
        self.watermark = 0
        #: event-time watermark of each source partition; spikes are judged on the lowest so
        #: that a minute is complete in every partition before it is compared
        self.source_wm: dict[int, int] = {}
        self.buckets: dict[tuple[str, int], Bucket] = {}
        self.orgs: dict[tuple[str, int], Bucket] = {}
        self.org_first: dict[str, int] = {}
        self.org_judged: dict[str, int] = {}  # org -> last minute judged for spikes
        self.baselines: dict[tuple[str, int], list[int]] = {}  # -> [cost, tokens]
        self.alerted: set[str] = set()
        self.blocks: dict[str, int] = {}  # budget_id -> period start blocked
        self._starts: dict[str, set[int]] = {}  # budget_id -> bucket starts held
        self._baseline_starts: dict[str, set[int]] = {}  # budget_id -> baseline starts held

    # ------------------------------------------------------------------ baselines

    def baselines_needed(self, messages: Iterable[Mapping[str, Any]]) -> list[BaselineRequest]:
        """Mid-period baselines to read before these partials are counted (each once)."""
        needed: dict[tuple[str, int], BaselineRequest] = {}
        for msg in messages:
            if msg["k"] != "b":
                continue
            budget = self.budgets.get(msg["id"])
            if budget is None or not budget.created_at:
                continue
            if budget.period == "rolling":
                key = (budget.budget_id, ROLLING_LOADED)
                if key in self.baselines or key in needed:
                    continue
                bucket = rolling_bucket_ms(budget.window_ms)
                since = budget.counting_from - budget.window_ms
                needed[key] = BaselineRequest(
                    budget, since - since % bucket, budget.counting_from, bucket
                )
                continue
            key = (budget.budget_id, msg["s"])
            if key in self.baselines or key in needed:
                continue
            if msg["s"] < budget.counting_from < msg["e"]:
                needed[key] = BaselineRequest(budget, msg["s"], budget.counting_from)
        return list(needed.values())

    def set_baseline(self, budget_id: str, period_start: int, cost: int, tokens: int) -> None:
        self.baselines[(budget_id, period_start)] = [cost, tokens]
        if period_start != ROLLING_LOADED:
            self._baseline_starts.setdefault(budget_id, set()).add(period_start)

    def set_rolling_baseline(self, budget_id: str, buckets: Iterable[tuple[int, int, int]]) -> None:
        """Per-bucket (start, cost, tokens) spend of a rolling budget's window before it."""
        for start, cost, tokens in buckets:
            self.set_baseline(budget_id, start, cost, tokens)
        self.baselines[(budget_id, ROLLING_LOADED)] = [0, 0]

    # ------------------------------------------------------------------ processing

    def process(self, messages: Iterable[tuple[int, Mapping[str, Any]]]) -> Stage2Output:
        """``messages``: (offset, decoded partial) in partition order."""
        out = Stage2Output()
        touched: dict[tuple[str, int], None] = {}
        orgs_touched: set[str] = set()
        for offset, msg in messages:
            if offset <= self.applied:
                continue
            self.applied = offset
            if msg["wm"] > self.watermark:
                self.watermark = msg["wm"]
            if msg["wm"] > self.source_wm.get(msg["p"], 0):
                self.source_wm[msg["p"]] = msg["wm"]
            key = (msg["id"], msg["s"])
            if msg["k"] == "o":
                bucket = self.orgs.get(key)
                if bucket is None:
                    bucket = self.orgs[key] = Bucket(msg["e"])
                    first = self.org_first.get(msg["id"])
                    if first is None or msg["s"] < first:
                        self.org_first[msg["id"]] = msg["s"]
                bucket.update(msg)
                orgs_touched.add(msg["id"])
                continue
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = Bucket(msg["e"])
                self._starts.setdefault(key[0], set()).add(key[1])
            if bucket.update(msg):
                touched[key] = None
        now = self.now_ms()
        for budget_id, start in touched:
            budget = self.budgets.get(budget_id)
            if budget is not None:
                self._evaluate(budget, start, now, out)
        for org in sorted(orgs_touched):
            self._judge_spikes(org, now, out)
        self._expire()
        return out

    def spent(self, budget: Budget, start: int) -> tuple[int, int, int]:
        """(spent in the budget's unit, period start, period end) for the bucket at ``start``."""
        index = 2 if budget.unit == "tokens" else 1
        if budget.period != "rolling":
            bucket = self.buckets.get((budget.budget_id, start))
            total = bucket.total(index) if bucket else 0
            base = self.baselines.get((budget.budget_id, start))
            if base:
                total += base[1] if budget.unit == "tokens" else base[0]
            end = bucket.end if bucket else start
            return total, start, end
        starts = self._starts.get(budget.budget_id) or {start}
        newest = max(starts)
        newest_end = self.buckets[(budget.budget_id, newest)].end
        since = newest_end - budget.window_ms
        total = sum(self.buckets[(budget.budget_id, s)].total(index) for s in starts if s >= since)
        for s in self._baseline_starts.get(budget.budget_id, ()):
            if s >= since:
                total += self.baselines[(budget.budget_id, s)][index - 1]
        return total, since, newest_end

    def _evaluate(self, budget: Budget, start: int, now: int, out: Stage2Output) -> None:
        spent, period_start, period_end = self.spent(budget, start)
        if budget.period == "rolling":
            # rolling windows alert once per threshold per window-aligned epoch
            epoch = period_end - period_end % budget.window_ms
            id_start = epoch
        else:
            id_start = start
        bucket = self.buckets.get((budget.budget_id, start))
        last_id = bucket.last_id if bucket else None
        last_t = bucket.last_t if bucket else None
        base = {
            "budget_id": budget.budget_id,
            "org_id": budget.org_id,
            "team_id": budget.team_id,
            "user_id": budget.user_id,
            "scope": budget.scope,
            "period": budget.period,
            "period_start": period_start,
            "period_end": period_end,
            "timezone": budget.timezone,
            "unit": budget.unit,
            "limit": budget.limit,
            "mode": budget.mode,
        }
        for threshold in crossed(spent, budget.limit, budget.thresholds_pct):
            aid = threshold_alert_id(budget.budget_id, id_start, threshold)
            if aid in self.alerted:
                continue
            self.alerted.add(aid)
            severity = "critical" if threshold >= 100 else "warning"
            out.alerts.append(
                make_alert(
                    "threshold_crossed",
                    aid,
                    now,
                    f"budget {budget.budget_id} ({scope_text(budget.scope)}) reached "
                    f"{threshold}% of {format_amount(budget.limit, budget.unit)} for the "
                    f"{budget.period}: {format_amount(spent, budget.unit)} spent",
                    spent,
                    severity=severity,
                    threshold_pct=threshold,
                    percent=percent(spent, budget.limit),
                    event_id=last_id,
                    event_time=last_t,
                    **base,
                )
            )
        if budget.mode == "block":
            self._enforce(budget, spent, period_start, period_end, now, out)
        if budget.forecast and budget.period != "rolling":
            aid = forecast_alert_id(budget.budget_id, start)
            if aid not in self.alerted:
                found = forecast_breach(
                    spent,
                    budget.limit,
                    period_start,
                    period_end,
                    self.watermark,
                    self.config.forecast_min_elapsed_pct,
                )
                if found is not None:
                    self.alerted.add(aid)
                    out.alerts.append(
                        make_alert(
                            "forecast_breach",
                            aid,
                            now,
                            f"budget {budget.budget_id} ({scope_text(budget.scope)}) is "
                            f"projected to reach {format_amount(found.projected, budget.unit)} "
                            f"by the end of the {budget.period}, above its "
                            f"{format_amount(budget.limit, budget.unit)} limit",
                            spent,
                            projected=found.projected,
                            projected_breach_at=found.breach_at,
                            percent=percent(spent, budget.limit),
                            event_id=last_id,
                            event_time=last_t,
                            details={
                                "method": "linear run rate since period start: "
                                "spent * period_length / elapsed",
                                "elapsed_ms": str(self.watermark - period_start),
                            },
                            **base,
                        )
                    )

    def _enforce(
        self,
        budget: Budget,
        spent: int,
        period_start: int,
        period_end: int,
        now: int,
        out: Stage2Output,
    ) -> None:
        blocked_start = self.blocks.get(budget.budget_id)
        if spent >= budget.limit:
            if blocked_start != period_start:
                self.blocks[budget.budget_id] = period_start
                until = period_end if budget.period != "rolling" else period_end + budget.window_ms
                out.enforcement.append(
                    (
                        budget.budget_id,
                        enforcement_value(budget, True, until, spent, period_start, now),
                    )
                )
        elif blocked_start is not None and budget.period == "rolling":
            del self.blocks[budget.budget_id]
            out.enforcement.append((budget.budget_id, None))

    def unblock_missing(self, present: Iterable[str]) -> Stage2Output:
        """Lift blocks of budgets that were deleted or switched to alert mode."""
        out = Stage2Output()
        keep = set(present)
        for budget_id in [b for b in self.blocks if b not in keep]:
            del self.blocks[budget_id]
            out.enforcement.append((budget_id, None))
        return out

    # ------------------------------------------------------------------ spikes

    def _judge_spikes(self, org: str, now: int, out: Stage2Output) -> None:
        rules = self.config.spike
        first = self.org_first.get(org, 0)
        last = self.org_judged.get(org, first - MINUTE_MS)
        minute = last + MINUTE_MS
        low = min(self.source_wm.values(), default=0)
        while minute + MINUTE_MS + rules.grace_ms <= low:
            bucket = self.orgs.get((org, minute))
            self.org_judged[org] = minute
            if bucket is not None:
                spend = bucket.total(1)
                lo = max(first, minute - rules.baseline_minutes * MINUTE_MS)
                history = [
                    (b.total(1) if (b := self.orgs.get((org, m))) else 0)
                    for m in range(lo, minute, MINUTE_MS)
                ]
                ratio = spike_ratio(spend, history, rules)
                aid = spike_alert_id(f"org_id={org}", minute)
                if ratio is not None and aid not in self.alerted:
                    self.alerted.add(aid)
                    baseline = sum(history) // max(1, len(history))
                    out.alerts.append(
                        make_alert(
                            "spend_spike",
                            aid,
                            now,
                            f"org {org} spent {format_amount(spend, 'usd_nanos')} in one "
                            + (
                                f"minute, {ratio:.1f}x its trailing average of "
                                f"{format_amount(baseline, 'usd_nanos')}/min"
                                if baseline
                                else f"minute after {len(history)} idle minutes"
                            ),
                            spend,
                            org_id=org,
                            scope={"org_id": org},
                            period="spike",
                            period_start=minute,
                            period_end=minute + MINUTE_MS,
                            limit=baseline,
                            percent=round(100.0 * ratio, 1) if ratio != float("inf") else None,
                            details={
                                "ratio": f"{ratio:.3f}",
                                "baseline_minutes": str(len(history)),
                                "factor": str(rules.factor),
                            },
                        )
                    )
            minute += MINUTE_MS

    # ------------------------------------------------------------------ state

    def _expire(self) -> None:
        horizon = self.watermark - self.config.keep_periods_ms
        for key in [k for k, b in self.buckets.items() if b.end < horizon]:
            del self.buckets[key]
            if self.baselines.pop(key, None) is not None:
                self._baseline_starts.get(key[0], set()).discard(key[1])
            self._starts.get(key[0], set()).discard(key[1])
        for budget_id, starts in self._baseline_starts.items():
            budget = self.budgets.get(budget_id)
            if budget is None or budget.period != "rolling":
                continue
            for start in [s for s in starts if s < horizon - budget.window_ms]:
                starts.discard(start)
                del self.baselines[(budget_id, start)]
        keep = self.watermark - (self.config.spike.baseline_minutes + 5) * MINUTE_MS
        for key in [k for k in self.orgs if k[1] < keep]:
            del self.orgs[key]

    def snapshot(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "wm": self.watermark,
            "source_wm": [[p, w] for p, w in self.source_wm.items()],
            "buckets": [[k[0], k[1], b.to_list()] for k, b in self.buckets.items()],
            "orgs": [[k[0], k[1], b.to_list()] for k, b in self.orgs.items()],
            "org_first": self.org_first,
            "org_judged": self.org_judged,
            "baselines": [[k[0], k[1], *v] for k, v in self.baselines.items()],
            "alerted": sorted(self.alerted),
            "blocks": self.blocks,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.applied = int(state["applied"])
        self.watermark = int(state["wm"])
        self.source_wm = {p: w for p, w in state["source_wm"]}
        self.buckets = {(b[0], b[1]): Bucket.from_list(b[2]) for b in state["buckets"]}
        self._starts = {}
        for budget_id, start in self.buckets:
            self._starts.setdefault(budget_id, set()).add(start)
        self.orgs = {(b[0], b[1]): Bucket.from_list(b[2]) for b in state["orgs"]}
        self.org_first = dict(state["org_first"])
        self.org_judged = dict(state["org_judged"])
        self.baselines = {(b[0], b[1]): list(b[2:]) for b in state["baselines"]}
        self._baseline_starts = {}
        for budget_id, start in self.baselines:
            if start != ROLLING_LOADED:
                self._baseline_starts.setdefault(budget_id, set()).add(start)
        self.alerted = set(state["alerted"])
        self.blocks = dict(state["blocks"])
