"""The reference model of docs/budget-truth.md: what the budgets SHOULD say, as plain loops.

Deliberately simple and slow (loops, dicts, integers only, no numpy/polars, nothing from the
worker's stages): it exists so that the property tests (tests/unit/test_budget_truth.py) and
the load-test checker can compare the worker's totals, alerts and blocks with the spec.

Input: one list of *steps* in the order they happened:

* ``Arrival(partition, offset, ts, event)``: a record of the events topic. ``ts`` is the
  broker's append time (LogAppendTime, epoch ms), ``event`` the decoded token event (a dict in
  the contract's shape, streams/events.py) or None for a record that does not decode. Within
  one partition arrivals must come in offset order; partitions may interleave freely.
* ``SetBudget(budget)``: a budget created or edited (a ``streams.budgets.Budget``).
* ``DeleteBudget(budget_id)``: a budget deleted.

A budget change takes effect for every arrival listed after it (the worker's harness
applies it as a barrier: everything before it processed and evaluated, then the change).

Output, ``evaluate(steps) -> Result``:

* ``Result.status[(partition, offset)]``: ``"counted"``, ``"duplicate"`` or the dead-letter
  kind (``"decode"``, ``"invalid"``); ``Result.inserted(p, o)`` says whether the sink stored
  that record (what a fake ClickHouse lookup of the worker should answer).
* ``Result.totals[(budget_id, total_version, start)] = Total(cost, tokens, requests)``: every
  budget version that was ever current, per calendar period (start of the period) or per
  rolling bucket (start of the bucket), over ALL arrivals (a total version's total does not
  depend on when the budget was created: what came before is the worker's ClickHouse
  baseline). ``Result.spent(budget, start)`` gives it in the budget's unit.
* ``Result.alerts``: the set of ``(budget_id, definition_version, start, threshold_pct)``
  threshold alerts; ``start`` is the period start (calendar) or the window epoch
  ``e - e % window`` (rolling), as in the worker's alert ids
  (streams.processors.alerts.threshold_alert_id).
* ``Result.blocked(now)``: the budget ids a block-mode budget blocks at wall time ``now``.

The rules (docs/budget-truth.md), restated:

* accepted: decodes, ``streams.events.problems(event, now=ts)`` finds nothing, and the priced
  cost (``cost_nanos``, else the catalog's) is at most ``MAX_COST_NANOS``;
* duplicate: an earlier record of the same partition that the sink inserted (accepted, not a
  duplicate) has the same 128-bit id and an event_time in the same UTC hour, and arrived less
  than the dedup horizon before this one (the sink's ``event_ids``, keyed (hour, id) with a
  TTL of the horizon);
* total(V, P) = sum over counted records matching V's scope with event_time in P and
  ``ts < P.end + hold``; tokens = input + cache_read + cache writes + output;
* a definition D of a budget (everything but timestamps and the description) is current
  from its SetBudget to the next change of that budget; for each period still held when D
  became current (``P.end + hold > clock``, clock = the highest ts before D's SetBudget), D
  alerts threshold t iff ``total * 100 >= limit * t`` over the arrivals before D's end;
  rolling: iff ``W(e) * 100 >= limit * t`` for some bucket end e, W(e) = the sum of the
  buckets starting in [e - window, e);
* blocked at ``now`` (current block-mode budgets): the spend of the period containing now
  (rolling: W at the end of the bucket containing now) is >= limit.

Totals are exact Python integers (the worker saturates at int64 max at encoding boundaries,
which the event bounds keep far away in any test).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from zoneinfo import ZoneInfo

from streams.budgets import SCOPE_FIELDS, Budget
from streams.events import MAX_COST_NANOS, problems

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
#: the dedup horizon and the hold of a period after its end (SPENDSTREAM_DEDUP_HORIZON_HOURS)
HORIZON_MS: Final = 24 * HOUR_MS
HOLD_MS: Final = HORIZON_MS
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class Arrival:
    """A record of the events topic: partition, offset, broker append time, decoded event."""

    partition: int
    offset: int
    ts: int
    event: Mapping[str, Any] | None


@dataclasses.dataclass(frozen=True)
class SetBudget:
    """A budget created or edited."""

    budget: Budget


@dataclasses.dataclass(frozen=True)
class DeleteBudget:
    budget_id: str


Step = Arrival | SetBudget | DeleteBudget
#: (budget_id, definition_version, period start or rolling epoch, threshold percent)
AlertKey = tuple[str, str, int, int]


@dataclasses.dataclass
class Total:
    cost: int = 0
    tokens: int = 0
    requests: int = 0


@dataclasses.dataclass
class Definition:
    """One definition of a budget and its life: steps [start, end) of the step list."""

    budget: Budget
    version: str  # the definition version its alerts carry (of its first SetBudget)
    start: int
    end: int
    clock: int  # the highest broker time before ``start``


@dataclasses.dataclass
class Result:
    status: dict[tuple[int, int], str]
    totals: dict[tuple[str, str, int], Total]
    alerts: set[AlertKey]
    definitions: list[Definition]
    #: budgets current after the last step
    current: dict[str, Budget]
    #: the highest broker time of all arrivals
    clock: int

    def inserted(self, partition: int, offset: int) -> bool:
        """Did the sink store this record (counted, not a duplicate nor dead-lettered)?"""
        return self.status.get((partition, offset)) == "counted"

    def spent(self, budget: Budget, start: int) -> int:
        """The total of ``budget``'s current total version at ``start``, in its unit."""
        found = self.totals.get((budget.budget_id, budget.total_version, start), Total())
        return found.tokens if budget.unit == "tokens" else found.cost

    def window_spent(self, budget: Budget, end: int) -> int:
        """A rolling budget's spend over the window ending at bucket end ``end``."""
        size = bucket_ms(budget)
        return sum(self.spent(budget, s) for s in range(end - window_ms(budget), end, size))

    def blocked(self, now: int) -> set[str]:
        """Budget ids whose current block-mode budget blocks at wall time ``now``."""
        found: set[str] = set()
        for budget_id, budget in self.current.items():
            if budget.mode != "block":
                continue
            if budget.period == "rolling":
                size = bucket_ms(budget)
                spent = self.window_spent(budget, now - now % size + size)
            else:
                spent = self.spent(budget, calendar_period(now, budget.period, budget.timezone)[0])
            if spent >= budget.limit:
                found.add(budget_id)
        return found


def evaluate(
    steps: Sequence[Step],
    price: Callable[[Mapping[str, Any]], int] | None = None,
    hold_ms: int = HOLD_MS,
    horizon_ms: int = HORIZON_MS,
) -> Result:
    """Statuses, totals, alerts and the current budgets after ``steps`` (see the module doc).

    ``price(event)``: the catalog cost in nano-USD of an event without ``cost_nanos``
    (default: streams.pricing's default catalog; unpriced models cost 0).
    """
    if price is None:
        price = _default_price()
    status = _statuses(steps, price, horizon_ms)
    definitions = _definitions(steps)
    current: dict[str, Budget] = {}
    for step in steps:
        if isinstance(step, SetBudget):
            current[step.budget.budget_id] = step.budget
        elif isinstance(step, DeleteBudget):
            current.pop(step.budget_id, None)
    clock = max((s.ts for s in steps if isinstance(s, Arrival)), default=0)

    # totals of every total version ever current, over all arrivals
    versions: dict[tuple[str, str], Budget] = {}
    for d in definitions:
        versions[(d.budget.budget_id, d.budget.total_version)] = d.budget
    totals: dict[tuple[str, str, int], Total] = {}
    for budget in versions.values():
        for start, total in _bucket_totals(budget, steps, len(steps), status, price, hold_ms):
            totals[(budget.budget_id, budget.total_version, start)] = total

    alerts: set[AlertKey] = set()
    for d in definitions:
        buckets = dict(_bucket_totals(d.budget, steps, d.end, status, price, hold_ms))
        alerts |= _alerts(d, buckets, hold_ms)
    return Result(status, totals, alerts, definitions, current, clock)


# ---------------------------------------------------------------------------- the pieces


def _alerts(d: Definition, buckets: Mapping[int, Total], hold_ms: int) -> set[AlertKey]:
    """The threshold alerts of definition ``d`` given its version's totals at its end."""
    budget = d.budget
    found: set[AlertKey] = set()

    def amount(start: int) -> int:
        total = buckets.get(start, Total())
        return total.tokens if budget.unit == "tokens" else total.cost

    if budget.period == "rolling":
        size, window = bucket_ms(budget), window_ms(budget)
        ends: set[int] = set()
        for start in buckets:
            e = start + size
            while e <= start + window:
                ends.add(e)
                e += size
        for e in sorted(ends):
            if e + hold_ms <= d.clock:
                continue  # no longer held when this definition became current
            spent = 0
            s = e - window
            while s < e:
                spent += amount(s)
                s += size
            for t in budget.thresholds_pct:
                if spent * 100 >= budget.limit * t:
                    found.add((budget.budget_id, d.version, e - e % window, t))
    else:
        for start in sorted(buckets):
            end = calendar_period(start, budget.period, budget.timezone)[1]
            if end + hold_ms <= d.clock:
                continue
            spent = amount(start)
            for t in budget.thresholds_pct:
                if spent * 100 >= budget.limit * t:
                    found.add((budget.budget_id, d.version, start, t))
    return found


def _statuses(
    steps: Sequence[Step], price: Callable[[Mapping[str, Any]], int], horizon_ms: int
) -> dict[tuple[int, int], str]:
    """Each arrival's fate: counted, duplicate, decode or invalid (the sink's decision)."""
    status: dict[tuple[int, int], str] = {}
    #: partition -> (uuid int, event hour) -> broker times of the inserted records
    stored: dict[int, dict[tuple[int, int], list[int]]] = {}
    arrivals = [s for s in steps if isinstance(s, Arrival)]
    for a in sorted(arrivals, key=lambda s: (s.partition, s.offset)):
        event = a.event
        if event is None:
            status[(a.partition, a.offset)] = "decode"
            continue
        if problems(event, a.ts) or cost_of(event, price) > MAX_COST_NANOS:
            status[(a.partition, a.offset)] = "invalid"
            continue
        key = (uuid.UUID(event["event_id"]).int, event["event_time"] // HOUR_MS)
        earlier = stored.setdefault(a.partition, {}).setdefault(key, [])
        if any(a.ts - ts < horizon_ms for ts in earlier):
            status[(a.partition, a.offset)] = "duplicate"
            continue
        earlier.append(a.ts)
        status[(a.partition, a.offset)] = "counted"
    return status


def _definitions(steps: Sequence[Step]) -> list[Definition]:
    """Every budget definition with the steps it was current for."""
    found: list[Definition] = []
    live: dict[str, Definition] = {}
    clock = 0
    for index, step in enumerate(steps):
        if isinstance(step, Arrival):
            clock = max(clock, step.ts)
            continue
        budget_id = step.budget.budget_id if isinstance(step, SetBudget) else step.budget_id
        old = live.pop(budget_id, None)
        if isinstance(step, SetBudget):
            if old is not None and definition_key(old.budget) == definition_key(step.budget):
                live[budget_id] = old  # only timestamps or the description changed
                continue
            fresh = Definition(step.budget, step.budget.definition_version, index, 0, clock)
            live[budget_id] = fresh
            found.append(fresh)
        if old is not None:
            old.end = index
    for d in live.values():
        d.end = len(steps)
    return found


def definition_key(budget: Budget) -> str:
    """What makes a definition: the whole budget but its timestamps and its description."""
    record = budget.to_record()
    for name in ("created_at", "updated_at", "description"):
        record.pop(name, None)
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _bucket_totals(
    budget: Budget,
    steps: Sequence[Step],
    until: int,
    status: Mapping[tuple[int, int], str],
    price: Callable[[Mapping[str, Any]], int],
    hold_ms: int,
) -> list[tuple[int, Total]]:
    """(start, Total) per period or rolling bucket of ``budget``'s scope over steps[:until]."""
    found: dict[int, Total] = {}
    for step in steps[:until]:
        if not isinstance(step, Arrival) or status[(step.partition, step.offset)] != "counted":
            continue
        event = step.event
        assert event is not None
        if not matches(budget, event):
            continue
        t = event["event_time"]
        if budget.period == "rolling":
            size = bucket_ms(budget)
            start, end = t - t % size, t - t % size + size
        else:
            start, end = calendar_period(t, budget.period, budget.timezone)
        if step.ts >= end + hold_ms:
            continue  # the period was no longer held when it arrived
        total = found.setdefault(start, Total())
        total.cost += cost_of(event, price)
        total.tokens += tokens_of(event)
        total.requests += 1
    return sorted(found.items())


def matches(budget: Budget, event: Mapping[str, Any]) -> bool:
    for name in SCOPE_FIELDS:
        want = getattr(budget, name)
        if want is not None and event.get(name) != want:
            return False
    labels = event.get("labels") or {}
    return all(labels.get(name) == value for name, value in budget.labels.items())


def cost_of(event: Mapping[str, Any], price: Callable[[Mapping[str, Any]], int]) -> int:
    reported = event.get("cost_nanos")
    return int(reported) if reported is not None else price(event)


def tokens_of(event: Mapping[str, Any]) -> int:
    """Tokens a token budget counts: prompt (input, cache read, cache writes) and output."""
    return (
        event["input_tokens"]
        + event["cache_read_tokens"]
        + event["cache_write_5m_tokens"]
        + event["cache_write_1h_tokens"]
        + event["output_tokens"]
    )


def window_ms(budget: Budget) -> int:
    return (budget.rolling_window_s or 0) * 1000


def bucket_ms(budget: Budget) -> int:
    """A rolling window's bucket: 1/60 of the window in whole minutes, at least a minute."""
    size = window_ms(budget) // 60 // MINUTE_MS * MINUTE_MS
    return size if size > MINUTE_MS else MINUTE_MS


def calendar_period(ms: int, period: str, timezone: str) -> tuple[int, int]:
    """[start, end) in UTC ms of the day, week (from Monday) or month in ``timezone``."""
    zone = ZoneInfo(timezone)
    day = (_EPOCH + dt.timedelta(milliseconds=ms)).astimezone(zone).date()
    if period == "day":
        first, after = day, day + dt.timedelta(days=1)
    elif period == "week":
        first = day - dt.timedelta(days=day.weekday())
        after = first + dt.timedelta(days=7)
    elif period == "month":
        first = day.replace(day=1)
        after = (
            first.replace(year=first.year + 1, month=1)
            if first.month == 12
            else first.replace(month=first.month + 1)
        )
    else:
        raise ValueError(f"not a calendar period: {period!r}")

    def midnight(d: dt.date) -> int:
        local = dt.datetime(d.year, d.month, d.day, tzinfo=zone)
        return (local - _EPOCH) // dt.timedelta(milliseconds=1)

    return midnight(first), midnight(after)


def _default_price() -> Callable[[Mapping[str, Any]], int]:
    from streams.pricing import default_catalog

    catalog = default_catalog()
    return lambda event: catalog.price(event).cost_nanos


def definitions(steps: Sequence[Step]) -> list[Definition]:
    """Every budget definition with the steps it was current for (the checker's fast path
    over a ledger shares it)."""
    return _definitions(steps)


def alerts_of(d: Definition, buckets: Mapping[int, Total], hold_ms: int = HOLD_MS) -> set[AlertKey]:
    """The threshold alerts of definition ``d`` given its version's totals at its end."""
    return _alerts(d, buckets, hold_ms)
