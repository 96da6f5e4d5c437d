"""Drive the worker's pure stages (stage 1 per partition, stage 2) with a scenario, and check
them against the reference model (streams/loadtest/reference.py).

A scenario is a list of operations (hypothesis builds them, tests/unit/test_budget_truth.py):
append records to a partition's log, process the next records of a partition as one batch,
answer lookups or baseline requests, checkpoint or crash a stage, tick, change the budgets.
No Kafka and no ClickHouse: the fake ClickHouse answers from the model's own record of what
the sink stored (lookups: did the sink insert that record; baselines: what it holds of a
scope before a split offset), which is the sink's rule restated, not a claim about
ClickHouse. Whatever the interleaving, the stages must end with the model's totals, alerts
and blocks, and publish no alert twice.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from streams.budgets import Budget, StaticBudgets
from streams.events import partition_key
from streams.loadtest import reference as ref
from streams.pricing import default_catalog
from streams.processors.alerts import threshold_alert_id
from streams.processors.stage1 import Lookup, PartitionAggregator, Stage1Config, Stage1Output
from streams.processors.stage2 import (
    BaselineRequest,
    BudgetTotals,
    Stage2Config,
    Stage2Output,
)
from tests.unit.stage_helpers import CODEC, Rec, packs_of

CATALOG = default_catalog()
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


def price(event: Mapping[str, Any]) -> int:
    return CATALOG.price(event).cost_nanos


# ---------------------------------------------------------------------------- operations


@dataclasses.dataclass(frozen=True)
class Append:
    """Records appended to a partition's log at broker time ``ts`` (None: undecodable)."""

    partition: int
    ts: int
    event: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class Process:
    """Stage 1 of ``partition`` reads its next ``count`` records as one batch."""

    partition: int
    count: int


@dataclasses.dataclass(frozen=True)
class Answer:
    """Answer the oldest ``count`` outstanding lookups, then baseline requests."""

    count: int


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    partition: int  # -1: stage 2


@dataclasses.dataclass(frozen=True)
class Crash:
    """Restore the stage from its last checkpoint (stage 1: and replay its log from there)."""

    partition: int  # -1: stage 2


@dataclasses.dataclass(frozen=True)
class Tick:
    now: int


@dataclasses.dataclass(frozen=True)
class Change:
    """A budget barrier: everything appended is processed and answered, then the budgets
    become ``budgets`` and every stage ticks at ``now``."""

    budgets: tuple[Budget, ...]
    now: int


Op = Append | Process | Answer | Checkpoint | Crash | Tick | Change


# ---------------------------------------------------------------------------- the harness


class Harness:
    """The stages of one worker over ``partitions`` events partitions and one stage 2."""

    def __init__(self, partitions: int, config: Stage1Config, model: ref.Result) -> None:
        self.partitions = partitions
        self.config = config
        self.model = model
        self.now = 0
        self.view = StaticBudgets([])
        self.logs: list[list[Rec]] = [[] for _ in range(partitions)]
        self.events: dict[tuple[int, int], dict[str, Any]] = {}
        self.read = [0] * partitions  # next offset stage 1 reads per partition
        self.aggs = [self._aggregator(p) for p in range(partitions)]
        self.saved1: list[tuple[bytes, list[Any]] | None] = [None] * partitions
        self.chunks: list[list[Any]] = [[] for _ in range(partitions)]
        self.stage2_config = Stage2Config(
            partitions=partitions,
            close_after_ms=config.close_after_ms,
            hold_ms=config.hold_ms,
            hold_margin_ms=config.hold_margin_ms,
        )
        self.totals = self._totals()
        self.totals.caught_up()  # no predecessor
        self.saved2: bytes | None = None
        self.partials: list[dict[str, Any]] = []  # the partials topic (offset = index)
        self.lookups: list[Lookup] = []
        self.requests: list[BaselineRequest] = []
        #: alert ids published, and those published by the current incarnation of a stage
        self.published: set[str] = set()
        self.twice: list[str] = []
        self.seen: dict[object, set[str]] = {}
        #: incarnations of each stage 1 and of stage 2 (not id(): a crashed stage's object
        #: is freed and a later incarnation can get its id, and its set of alerts seen)
        self.lives = [0] * partitions
        self.lives2 = 0
        self.threshold_alerts: dict[str, dict[str, Any]] = {}
        #: every alert id published -> its kind, and the alert
        self.kinds: dict[str, str] = {}
        self.alerts: dict[str, dict[str, Any]] = {}
        self.blocks: dict[str, bytes | None] = {}
        #: dead letters of stage 1 as (partition, offset, kind), lookups stage 1 asked
        self.dead: list[tuple[int, int, str]] = []
        self.asked: list[Lookup] = []

    def _aggregator(self, p: int) -> PartitionAggregator:
        return PartitionAggregator(
            p, CODEC.decode, CATALOG, self.view, self.config, now_ms=lambda: self.now
        )

    def _totals(self) -> BudgetTotals:
        return BudgetTotals(self.view, self.stage2_config, now_ms=lambda: self.now)

    # ------------------------------------------------------------------ running

    def run(self, ops: Sequence[Op]) -> None:
        for op in ops:
            self.apply(op)
        self.settle(self.now)

    def apply(self, op: Op) -> None:
        if isinstance(op, Append):
            self.now = max(self.now, op.ts)
            log = self.logs[op.partition]
            value = CODEC.encode(op.event) if op.event is not None else b"\x00garbage"
            key = partition_key(op.event) if op.event is not None else None
            log.append(Rec(len(log), key, value, op.ts))
        elif isinstance(op, Process):
            self.process(op.partition, op.count)
        elif isinstance(op, Answer):
            self.answer(op.count)
        elif isinstance(op, Checkpoint):
            self.checkpoint(op.partition)
        elif isinstance(op, Crash):
            self.crash(op.partition)
        elif isinstance(op, Tick):
            self.now = max(self.now, op.now)
            self.tick()
        elif isinstance(op, Change):
            self.settle(max(self.now, op.now))
            fresh = StaticBudgets(list(op.budgets))
            self.view.matcher = fresh.matcher
            self.view._budgets = fresh._budgets
            self.tick()
            self.answer(None)

    def settle(self, now: int) -> None:
        """Read everything appended, answer every lookup and request, tick."""
        self.now = max(self.now, now)
        for p in range(self.partitions):
            while self.read[p] < len(self.logs[p]):
                self.process(p, len(self.logs[p]) - self.read[p])
        self.answer(None)
        self.tick()
        self.answer(None)

    def process(self, p: int, count: int) -> None:
        batch = self.logs[p][self.read[p] : self.read[p] + count]
        if not batch:
            return
        self.read[p] += len(batch)
        self.feed(p, self.aggs[p].process(batch))

    def tick(self) -> None:
        for p, agg in enumerate(self.aggs):
            caught_up = self.read[p] == len(self.logs[p])
            self.feed(p, agg.tick(self.now, caught_up))
        self.collect(self.totals.tick(self.now))

    def answer(self, count: int | None) -> None:
        """Answer lookups (the oldest ``count``, None: all), then every baseline request."""
        while self.lookups and (count is None or count > 0):
            take = self.lookups if count is None else self.lookups[:count]
            self.lookups = [] if count is None else self.lookups[count:]
            if count is not None:
                count -= len(take)
            by_partition: dict[int, dict[int, bool]] = {}
            for x in take:
                by_partition.setdefault(x.partition, {})[x.offset] = self.model.inserted(
                    x.partition, x.offset
                )
            for p, answers in sorted(by_partition.items()):
                self.feed(p, self.aggs[p].resolve(answers))
        while self.requests:
            request = self.requests.pop(0)
            self.collect(self.totals.set_baseline(request, self.baseline_rows(request)))

    def feed(self, p: int, out: Stage1Output) -> None:
        self.note_alerts(("s1", p, self.lives[p]), out.alerts)
        self.lookups.extend(out.lookups)
        self.asked.extend(out.lookups)
        self.dead.extend((p, d.record.offset, d.kind) for d in out.dead)
        messages = []
        for pack in packs_of(p, out, 1):
            messages.append((len(self.partials), pack))
            self.partials.append(_dec.decode(_enc.encode(pack)))
        self.collect(self.totals.process(messages))

    def collect(self, out: Stage2Output) -> None:
        self.note_alerts(("s2", self.lives2), out.alerts)
        for budget_id, value in out.enforcement:
            self.blocks[budget_id] = value
        self.requests.extend(out.baselines)

    def note_alerts(self, who: object, alerts: Sequence[dict[str, Any]]) -> None:
        seen = self.seen.setdefault(who, set())
        for alert in alerts:
            aid = alert["alert_id"]
            if aid in seen:
                self.twice.append(f"{aid} ({alert['kind']})")  # one incarnation, twice
            seen.add(aid)
            if aid in self.published:
                continue  # a replay after a crash: the alert log keeps it from going out again
            self.published.add(aid)
            self.kinds[aid] = alert["kind"]
            self.alerts[aid] = alert
            if alert["kind"] == "threshold_crossed":
                self.threshold_alerts[aid] = alert

    # ------------------------------------------------------------------ restarts

    def checkpoint(self, p: int) -> None:
        if p < 0:
            self.saved2 = _enc.encode(self.totals.snapshot())
            return
        agg = self.aggs[p]
        self.chunks[p].extend(agg.take_new_ids())
        self.saved1[p] = (_enc.encode(agg.snapshot()), list(self.chunks[p]))

    def crash(self, p: int) -> None:
        if p < 0:
            self.lives2 += 1
            self.totals = self._totals()
            if self.saved2 is not None:
                self.totals.restore(_dec.decode(self.saved2))
            self.requests = []  # the new owner asks again (tick)
            replay = [(o, m) for o, m in enumerate(self.partials) if o > self.totals.applied]
            self.collect(self.totals.process(replay))
            self.totals.caught_up()  # (the worker: once it read to the end it first saw)
            return
        self.lives[p] += 1
        agg = self.aggs[p] = self._aggregator(p)
        self.lookups = [x for x in self.lookups if x.partition != p]
        saved = self.saved1[p]
        if saved is None:
            self.read[p] = 0
            self.chunks[p] = []
            return
        state, chunks = saved
        agg.restore(_dec.decode(state))
        for chunk in chunks:
            agg.load_ids([chunk])
        self.chunks[p] = list(chunks)
        self.read[p] = agg.applied + 1
        self.lookups.extend(agg.pending_lookups())

    # ------------------------------------------------------------------ the fake ClickHouse

    def baseline_rows(self, request: BaselineRequest) -> list[tuple[int, int, int]]:
        """What the sink stored of the request's scope on its partition before its split."""
        budget = request.budget
        rows: dict[int, list[int]] = {}
        for offset in range(min(request.split, len(self.logs[request.partition]))):
            if not self.model.inserted(request.partition, offset):
                continue
            event = self.model_event(request.partition, offset)
            t = event["event_time"]
            if not (request.start <= t < request.until) or not ref.matches(budget, event):
                continue
            start = t - t % request.bucket_ms if request.bucket_ms else request.start
            row = rows.setdefault(start, [0, 0])
            row[0] += ref.cost_of(event, price)
            row[1] += ref.tokens_of(event)
        return [(s, c, t) for s, (c, t) in sorted(rows.items())]

    def model_event(self, p: int, offset: int) -> dict[str, Any]:
        value = self.logs[p][offset].value
        return CODEC.decode(value)

    # ------------------------------------------------------------------ the comparison

    def problems(self) -> list[str]:
        """How the stages differ from the model (empty: they agree)."""
        model = self.model
        found: list[str] = [f"alert {aid} published twice" for aid in self.twice]
        gone = self.totals.gone()
        for budget in model.current.values():
            starts = {
                s
                for (b, v, s) in model.totals
                if b == budget.budget_id and v == budget.total_version
            }
            starts |= {
                s
                for (b, v, s) in self.totals.buckets
                if b == budget.budget_id and v == budget.total_version
            }
            for start in sorted(starts):
                if _end(budget, start) <= gone:
                    continue  # forgotten by design
                want, have = model.spent(budget, start), self.totals.spent(budget, start)
                if want != have:
                    found.append(f"{budget.budget_id} at {start}: worker {have}, model {want}")
        expected = {threshold_alert_id(b, v, s, t): (b, v, s, t) for (b, v, s, t) in model.alerts}
        for aid in sorted(set(expected) - set(self.threshold_alerts)):
            found.append(f"missing alert {expected[aid]}")
        for aid in sorted(set(self.threshold_alerts) - set(expected)):
            alert = self.threshold_alerts[aid]
            found.append(
                "unexpected alert "
                f"{(alert['budget_id'], alert['period_start'], alert['threshold_pct'])} "
                f"spent {alert['spent']}"
            )
        blocked = {b for b, v in self.blocks.items() if v is not None}
        want_blocked = model.blocked(self.now)
        if blocked != want_blocked:
            found.append(f"blocked {sorted(blocked)}, model {sorted(want_blocked)}")
        for budget_id in blocked & want_blocked:
            value = self.blocks[budget_id]
            assert value is not None
            record = json.loads(value)
            if record["definition_version"] != model.current[budget_id].definition_version:
                found.append(f"block of {budget_id} names an old definition")
        return found

    def totals_clock(self) -> int:
        return max(self.totals.source_clock.values(), default=0)


def _end(budget: Budget, start: int) -> int:
    if budget.period == "rolling":
        return start + ref.bucket_ms(budget)
    return ref.calendar_period(start, budget.period, budget.timezone)[1]


def model_steps(ops: Sequence[Op]) -> list[ref.Step]:
    """The reference model's steps of a scenario (arrivals in append order, changes)."""
    steps: list[ref.Step] = []
    offsets: dict[int, int] = {}
    live: dict[str, Budget] = {}
    for op in ops:
        if isinstance(op, Append):
            offset = offsets.get(op.partition, 0)
            offsets[op.partition] = offset + 1
            steps.append(ref.Arrival(op.partition, offset, op.ts, op.event))
        elif isinstance(op, Change):
            wanted = {b.budget_id: b for b in op.budgets}
            for budget_id in sorted(set(live) - set(wanted)):
                steps.append(ref.DeleteBudget(budget_id))
            for budget_id, budget in sorted(wanted.items()):
                if live.get(budget_id) != budget:
                    steps.append(ref.SetBudget(budget))
            live = wanted
    return steps


def check(partitions: int, ops: Sequence[Op], config: Stage1Config | None = None) -> Harness:
    """Run ``ops`` through the stages and return the harness (``problems()`` to compare)."""
    cfg = config or Stage1Config()
    model = ref.evaluate(model_steps(ops), price=price, hold_ms=cfg.hold_ms)
    harness = Harness(partitions, cfg, model)
    harness.run(ops)
    return harness
