"""Stage 2: exact totals per budget period from per-partition partials; alerts and blocks.

Input packs (from stage 1, one per source partition and batch, see ``pack_partials``) carry
CUMULATIVE partial sums of one source partition, a sequence number, the partition's clock,
and split announcements. Stage 2 keeps the partial with the highest sequence per source
partition (of two counted from the same split, the larger sums: a restarted stage 1 may
publish in another order) and sums them, so replays and duplicated packs change nothing,
and totals stay exact whichever worker owns which events partition. A budget version's total is

    sum over source partitions p of (stream partial of p + baseline of p),

where the baseline is what ClickHouse holds of the scope at offsets before the version's
split on p (read once the sink has committed past it; requested as ``BaselineRequest``).
Thresholds fire once per (budget, definition version, period, threshold), with deterministic
ids remembered in the checkpointed state; rolling windows are evaluated at every bucket end
their buckets touch, so no batch size can step over a crossing. ``tick`` (a timer) picks up
budget changes and lifts blocks when a period or a rolling window no longer exceeds its limit.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from streams.budgets import Budget
from streams.events import MAX_FUTURE_MS
from streams.processors.alerts import (
    forecast_alert_id,
    format_amount,
    make_alert,
    scope_text,
    spike_alert_id,
    threshold_alert_id,
)
from streams.processors.detectors import SpikeRules, crossed, forecast_breach, percent, spike_ratio
from streams.processors.periods import MINUTE_MS, PeriodCache, rolling_bucket_ms


@dataclasses.dataclass(frozen=True)
class BaselineRequest:
    """What ClickHouse holds of a budget version's scope on one source partition before the
    version's split: in [start, until), one total (calendar periods, ``bucket_ms`` 0) or per
    bucket of ``bucket_ms`` (rolling windows). Read once the sink has committed past
    ``split`` on ``partition``."""

    budget: Budget
    partition: int
    split: int
    start: int
    until: int
    bucket_ms: int = 0

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        budget = self.budget
        return (budget.budget_id, budget.total_version, self.partition, self.split, self.start)


class BudgetLookup(Protocol):
    def get(self, budget_id: str) -> Budget | None: ...


@dataclasses.dataclass(frozen=True)
class Stage2Config:
    #: events partitions: a total is known once every one of them announced its split
    partitions: int = 1
    forecast_min_elapsed_pct: int = 10
    spike: SpikeRules = dataclasses.field(default_factory=SpikeRules)
    #: a minute's org spend is final once every source clock has passed minute + this
    #: (stage 1's window close: 1 minute + allowed lateness + grace)
    close_after_ms: int = MINUTE_MS + 5 * 60_000 + 5_000
    #: periods are held this long after they end (the dedup horizon), plus a margin
    hold_ms: int = 24 * 3_600_000
    hold_margin_ms: int = 3_600_000
    #: baselines are read from ClickHouse (off: every total starts at the split from zero)
    baselines: bool = True


@dataclasses.dataclass
class Stage2Output:
    alerts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: (budget_id, value) for the compacted enforcement topic; value None unblocks
    enforcement: list[tuple[str, bytes | None]] = dataclasses.field(default_factory=list)
    baselines: list[BaselineRequest] = dataclasses.field(default_factory=list)


class Bucket:
    """One budget period (or rolling bucket, or org minute) summed over source partitions."""

    __slots__ = ("end", "last_id", "last_t", "parts")

    def __init__(self, end: int) -> None:
        self.end = end
        #: partition -> [seq, cost, tokens, requests, split, split_ts]
        self.parts: dict[int, list[int]] = {}
        self.last_id: str | None = None
        self.last_t = 0

    def update(
        self, partition: int, seq: int, values: Sequence[Any], last: tuple[Any, int] | None
    ) -> bool:
        have = self.parts.get(partition)
        if have is not None and have[4:] == list(values[3:]):
            # the same split: sums over ever more of the partition's events, whatever order
            # a restarted stage 1 published them in (the larger is the newer)
            grown = [max(a, b) for a, b in zip(have[1:4], values[:3], strict=True)]
            if grown == have[1:4]:
                return False
            have[0] = max(have[0], seq)
            have[1:4] = grown
        elif have is not None and have[0] >= seq:
            return False
        else:
            self.parts[partition] = [seq, *values]
        if last is not None and last[0] is not None and last[1] >= self.last_t:
            self.last_id, self.last_t = last
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
            "definition_version": budget.definition_version,
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


def pack_target(ident: str, partitions: int) -> int:
    """The partials partition of a budget id or org: all its partials meet there."""
    return zlib.crc32(ident.encode()) % partitions


def pack_partials(
    partition: int,
    seq: int,
    clock: int,
    budget_partials: Sequence[list[Any]],
    org_partials: Sequence[list[Any]],
    announces: Sequence[list[Any]],
    partitions: int,
    everywhere: bool = False,
    hold_clock: int | None = None,
) -> dict[int, dict[str, Any]]:
    """Stage 1's output as one pack per stage-2 partition (``everywhere``: a pack, if only
    with the clock, for every partition, so that each knows every source's clock).
    ``hold_clock``: stage 1's hold clock (default: ``clock``)."""
    packs: dict[int, dict[str, Any]] = {}

    def pack(target: int) -> dict[str, Any]:
        found = packs.get(target)
        if found is None:
            found = packs[target] = {
                "p": partition,
                "q": seq,
                "ck": clock,
                "hk": clock if hold_clock is None else hold_clock,
                "b": [],
                "o": [],
                "s": [],
            }
        return found

    for item in budget_partials:
        pack(pack_target(item[0], partitions))["b"].append(item)
    for item in org_partials:
        pack(pack_target(item[0], partitions))["o"].append(item)
    for item in announces:
        pack(pack_target(item[0], partitions))["s"].append(item)
    if everywhere:
        for target in range(partitions):
            pack(target)
    return packs


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
        #: broker clock of each source partition, as its stage 1 last reported it
        self.source_clock: dict[int, int] = {}
        #: hold clock of each source partition (stage1.PartitionAggregator.hold_clock)
        self.source_hold: dict[int, int] = {}
        #: (budget_id, total_version) -> partition -> [seq, split, split_ts]
        self.versions: dict[tuple[str, str], dict[int, list[int]]] = {}
        #: (budget_id, total_version, period or bucket start) -> Bucket
        self.buckets: dict[tuple[str, str, int], Bucket] = {}
        #: (budget_id, total_version, partition, split, start) -> [cost, tokens]
        self.baselines: dict[tuple[str, str, int, int, int], list[int]] = {}
        #: baseline requests made and not answered yet (their keys)
        self.pending: set[tuple[str, str, int, int, int]] = set()
        #: (budget_id, total_version) -> the oldest start its baseline requests cover, while
        #: any is unanswered: its total is unknown, so nothing from there on is forgotten
        #: (``gone``) before its answers judge it (not checkpointed, like ``pending``)
        self._holding: dict[tuple[str, str], int] = {}
        #: what the last expiry forgot up to: ``gone`` never goes back below it
        self._forgotten = 0
        #: (budget_id, total_version, partition, split) whose baseline requests were all made:
        #: the timer does not rebuild them every second (not checkpointed: after a restore
        #: nothing is pending, so everything is asked again)
        self._asked: set[tuple[str, str, int, int]] = set()
        #: budget_id -> its total versions in ``versions`` (the timer finds stale ones in
        #: O(versions of that budget), not O(every version of every budget))
        self._versions_of: dict[str, set[str]] = {}
        #: (budget_id, definition_version, period start or rolling epoch) -> [expiry, thresholds]
        self.alerted: dict[tuple[str, str, int], list[Any]] = {}
        #: budget_id -> [definition_version, period start, until] of its block
        self.blocks: dict[str, list[Any]] = {}
        #: budget ids whose record on the enforcement topic this incarnation has not written:
        #: a predecessor may have published a block (or a tombstone) after the checkpoint this
        #: one restored, which ``blocks`` does not know. Once the predecessor's partials are
        #: all replayed (``caught_up``), the next decision on each is written whatever it is
        #: (not checkpointed: every incarnation starts unsure of every budget it holds)
        self.unsure: set[str] = set()
        self.replayed = False
        #: budget_id -> definition version last evaluated (a change re-evaluates its periods)
        self.evaluated: dict[str, str] = {}
        self.orgs: dict[tuple[str, int], Bucket] = {}
        self.org_first: dict[str, int] = {}
        self.org_judged: dict[str, int] = {}  # org -> last minute judged for spikes
        #: spike alert ids raised -> their minute
        self.spiked: dict[str, int] = {}
        self._caches: dict[tuple[str, str, int], PeriodCache] = {}

    # ------------------------------------------------------------------ input

    def process(self, messages: Iterable[tuple[int, Mapping[str, Any]]]) -> Stage2Output:
        """``messages``: (offset, pack) in partials-partition order."""
        out = Stage2Output()
        touched: dict[tuple[str, str], set[int]] = {}
        announced: set[tuple[str, str]] = set()
        before = self.gone()
        for offset, pack in messages:
            if offset <= self.applied:
                continue
            self.applied = offset
            p, seq = pack["p"], pack["q"]
            # what was final before this pack (its own partials were counted while held)
            gone = self.gone()
            if pack["ck"] > self.source_clock.get(p, 0):
                self.source_clock[p] = pack["ck"]
            hold = pack.get("hk", pack["ck"])
            if hold > self.source_hold.get(p, 0):
                self.source_hold[p] = hold
            for budget_id, version, split, split_ts in pack.get("s", ()):
                if self._split(budget_id, version, p, seq, split, split_ts):
                    announced.add((budget_id, version))
            for item in pack.get("b", ()):
                budget_id, version, start, end, cost, tokens, n, last_id, last_t, split, ts = item
                if self._split(budget_id, version, p, seq, split, ts):
                    announced.add((budget_id, version))
                key = (budget_id, version, start)
                bucket = self.buckets.get(key)
                if bucket is None:
                    if end <= gone:
                        continue  # final and forgotten: a replay re-sending it changes nothing
                    bucket = self.buckets[key] = Bucket(end)
                if bucket.update(p, seq, (cost, tokens, n, split, ts), (last_id, last_t)):
                    touched.setdefault((budget_id, version), set()).add(start)
            for org, minute, cost, tokens, n in pack.get("o", ()):
                bucket = self.orgs.get((org, minute))
                if bucket is None:
                    bucket = self.orgs[(org, minute)] = Bucket(minute + MINUTE_MS)
                    first = self.org_first.get(org)
                    if first is None or minute < first:
                        self.org_first[org] = minute
                bucket.update(p, seq, (cost, tokens, n, 0, 0), None)
        now = self.now_ms()
        complete: list[tuple[str, str]] = []
        for version_key in announced:
            # (what was held before the batch: its buckets were created while held)
            self._request_baselines(version_key, out, before)
            if len(self.versions.get(version_key, ())) >= self.config.partitions:
                complete.append(version_key)
        if complete:
            # a version whose last announcement just came: its spend so far was not
            # judged (no total before it), so judge every period it has now
            starts_of: dict[tuple[str, str], set[int]] = {}
            for bid, version, start in self.buckets:
                starts_of.setdefault((bid, version), set()).add(start)
            for version_key in complete:
                if version_key in starts_of:
                    touched.setdefault(version_key, set()).update(starts_of[version_key])
        for (budget_id, version), starts in touched.items():
            budget = self.budgets.get(budget_id)
            if budget is not None and budget.total_version == version:
                self._evaluate(budget, starts, now, out)
        self._judge_spikes(now, out)
        self._expire()
        return out

    def _split(self, budget_id: str, version: str, p: int, seq: int, split: int, ts: int) -> bool:
        """Note partition ``p``'s split of a version; True when it is new or moved."""
        known = self.versions.get((budget_id, version))
        if known is None:
            known = self.versions[(budget_id, version)] = {}
            self._versions_of.setdefault(budget_id, set()).add(version)
            if not self.replayed:
                self.unsure.add(budget_id)
        have = known.get(p)
        if have is not None and have[1] == split:
            # the same split keeps its first time: the baselines were asked for the periods
            # around it, and it bounds the records before the split as well as a later one
            # (a restarted stage 1 takes the version at the same offset when its next record
            # comes, hours later maybe: that time needed baselines never asked)
            if seq > have[0]:
                known[p] = [seq, split, have[2]]
            return False
        # another split is a restarted stage 1's (one incarnation never moves a version's
        # split): it took the version at another offset (its checkpoint was older than the
        # first announcement), and its partials from now on count from there. The later one
        # on the topic wins whatever its sequence: a replay's can be lower (the lookups
        # answered before the first announcement are not answered yet in the replay)
        known[p] = [seq, split, ts]
        if have is not None and split > have[1]:
            # a later split: the version was taken again, either by a stage 1 that left it
            # for another version in between (a scope edited away and back) or by a restarted
            # one that took it later. Either way what sits before the new split is its
            # baseline's, and the earlier split's parts of this partition are no total of
            # this life (the first case's stopped counting at the other version's split)
            for (bid, ver, _), bucket in self.buckets.items():
                if bid == budget_id and ver == version:
                    part = bucket.parts.get(p)
                    if part is not None and part[4] < split:
                        del bucket.parts[p]
        return have is None or have[1] != split

    # ------------------------------------------------------------------ baselines

    def _needs_baseline(self, budget: Budget, start: int, split: int, split_ts: int) -> bool:
        """Could events of the bucket at ``start`` sit before a split taken at ``split_ts``?
        (Nothing sits before offset 0: a version known from a partition's start needs none.)"""
        return self.config.baselines and split > 0 and start <= split_ts + MAX_FUTURE_MS

    def _request_baselines(
        self, key: tuple[str, str], out: Stage2Output, gone: int | None = None
    ) -> None:
        """Once every partition announced its split: ask ClickHouse for what each one held
        before it, over every period or bucket still held at that time (not ``gone``)."""
        budget = self.budgets.get(key[0])
        splits = self.versions.get(key)
        if (
            not self.config.baselines
            or budget is None
            or budget.total_version != key[1]
            or splits is None
            or len(splits) < self.config.partitions
        ):
            return
        if gone is None:
            gone = self.gone()
        for p, (_, split, split_ts) in sorted(splits.items()):
            if not split or (key[0], key[1], p, split) in self._asked:
                continue
            self._asked.add((key[0], key[1], p, split))
            for request in self._baseline_ranges(budget, p, split, split_ts):
                if request.until <= gone:
                    continue  # final and forgotten: its alerts were decided
                if request.key not in self.baselines and request.key not in self.pending:
                    self.pending.add(request.key)
                    held = self._holding.get(key)
                    self._holding[key] = request.start if held is None else min(held, request.start)
                    out.baselines.append(request)

    def _baseline_ranges(
        self, budget: Budget, p: int, split: int, split_ts: int
    ) -> list[BaselineRequest]:
        cfg = self.config
        latest = split_ts + MAX_FUTURE_MS
        oldest = split_ts - cfg.hold_ms
        if budget.period == "rolling":
            size = rolling_bucket_ms(budget.window_ms)
            start = oldest - budget.window_ms
            start -= start % size
            return [BaselineRequest(budget, p, split, start, latest - latest % size + size, size)]
        cache = self._cache(budget)
        found: list[BaselineRequest] = []
        period = cache.of(latest)
        while period.end > oldest and len(found) < 64:
            found.append(BaselineRequest(budget, p, split, period.start, period.end))
            period = cache.of(period.start - 1)
        return found

    def set_baseline(
        self, request: BaselineRequest, rows: Iterable[tuple[int, int, int]]
    ) -> Stage2Output:
        """The answer to ``request``: (bucket start, cost, tokens) rows (missing: nothing)."""
        out = Stage2Output()
        budget = request.budget
        bid, version = budget.budget_id, budget.total_version
        # what is final for this answer: its own hold still counts (it judges what it held)
        gone = self.gone()
        self.pending.discard(request.key)
        if request.bucket_ms:
            got = {int(s): (int(c), int(t)) for s, c, t in rows}
            for start in range(request.start, request.until, request.bucket_ms):
                cost, tokens = got.get(start, (0, 0))
                key = (bid, version, request.partition, request.split, start)
                self.baselines[key] = [cost, tokens]
        else:
            cost = sum(int(r[1]) for r in rows)
            tokens = sum(int(r[2]) for r in rows)
            self.baselines[request.key] = [cost, tokens]
        current = self.budgets.get(bid)
        if current is None or current.total_version != version:
            self._holding.pop((bid, version), None)
            return out
        if any(k[0] == bid and k[1] == version for k in self.pending):
            return out  # evaluated once the last one is in
        self._holding.pop((bid, version), None)
        starts = {k[2] for k in self.buckets if k[0] == bid and k[1] == version}
        starts |= {k[4] for k, v in self.baselines.items() if k[:2] == (bid, version) and any(v)}
        # an answer that comes after its period went final decides nothing for it (its
        # alert ids may be forgotten already: they would be published again). Periods its
        # requests cover are not final before it is in (``_holding``), only older ones
        if current.period != "rolling":
            starts = {s for s in starts if self._cache(current).of(s).end > gone}
        # (rolling: the windows that ended by then, see _evaluate's ``final``)
        self._evaluate(current, starts, self.now_ms(), out, final=gone)
        return out

    def _base(
        self, budget: Budget, p: int, split: int, split_ts: int, start: int
    ) -> list[int] | None:
        """Partition ``p``'s baseline for the bucket at ``start``; None while not read."""
        if not self._needs_baseline(budget, start, split, split_ts):
            return [0, 0]
        found = self.baselines.get((budget.budget_id, budget.total_version, p, split, start))
        if found is not None:
            return found
        if budget.period == "rolling":
            (request,) = self._baseline_ranges(budget, p, split, split_ts)
            if start < request.start:
                return [0, 0]  # before anything still held when the version started
        return None

    # ------------------------------------------------------------------ totals

    def spent(self, budget: Budget, start: int) -> int | None:
        """Spend in the budget's unit of its bucket at ``start`` (None: not all known yet)."""
        splits = self.versions.get((budget.budget_id, budget.total_version))
        if splits is None or len(splits) < self.config.partitions:
            return None
        index = 2 if budget.unit == "tokens" else 1
        bucket = self.buckets.get((budget.budget_id, budget.total_version, start))
        total = 0
        for p, (_, split, split_ts) in splits.items():
            part = bucket.parts.get(p) if bucket is not None else None
            if part is not None:
                total += part[index]
                if part[4] != split:  # an earlier life's part: its own split
                    split, split_ts = part[4], part[5]
            base = self._base(budget, p, split, split_ts, start)
            if base is None:
                return None
            total += base[index - 1]
        return total

    def window_spent(self, budget: Budget, end: int) -> int | None:
        """A rolling budget's spend over the window ending at bucket end ``end``."""
        size = rolling_bucket_ms(budget.window_ms)
        total = 0
        for start in range(end - budget.window_ms, end, size):
            spent = self.spent(budget, start)
            if spent is None:
                return None
            total += spent
        return total

    def _window_sums(self, budget: Budget, ends: Sequence[int]) -> Iterator[tuple[int, int | None]]:
        """``window_spent(budget, end)`` for each of the sorted ``ends``, each bucket's spend
        computed once: a window one bucket after the previous one is that one minus its first
        bucket plus one more (a touched bucket is in ~60 windows of ~60 buckets each; summed
        window by window that was 15% of the worker's event-loop time at 10k events/s)."""
        size = rolling_bucket_ms(budget.window_ms)
        window = budget.window_ms
        count = len(range(0, window, size))  # buckets per window
        known: dict[int, int | None] = {}

        def part(start: int) -> int | None:
            if start not in known:
                known[start] = self.spent(budget, start)
            return known[start]

        total = missing = 0
        previous: int | None = None
        for end in ends:
            if previous is not None and end - previous == size:
                # the previous window's first bucket leaves, one after its last comes in
                for start, sign in (
                    (previous - window, -1),
                    (end - window + (count - 1) * size, 1),
                ):
                    value = part(start)
                    if value is None:
                        missing += sign
                    else:
                        total += sign * value
            else:
                total = missing = 0
                for start in range(end - window, end, size):
                    value = part(start)
                    if value is None:
                        missing += 1
                    else:
                        total += value
            previous = end
            yield end, (None if missing else total)

    # ------------------------------------------------------------------ evaluation

    def _evaluate(
        self, budget: Budget, starts: Iterable[int], now: int, out: Stage2Output, final: int = 0
    ) -> None:
        """Judge the periods at ``starts`` (rolling: every window over them that ends after
        ``final``; a window final before a late baseline answer may have its ids forgotten)."""
        self.evaluated.setdefault(budget.budget_id, budget.definition_version)
        if budget.period == "rolling":
            size = rolling_bucket_ms(budget.window_ms)
            ends: set[int] = set()
            for start in starts:
                ends.update(range(start + size, start + budget.window_ms + size, size))
            for end, spent in self._window_sums(budget, sorted(e for e in ends if e > final)):
                if spent is not None:
                    self._thresholds(budget, end - end % budget.window_ms, end, spent, now, out)
        else:
            for start in sorted(starts):
                spent = self.spent(budget, start)
                if spent is not None:
                    self._thresholds(budget, start, start, spent, now, out)
                    self._forecast(budget, start, spent, now, out)
        if budget.mode == "block":
            self._enforce(budget, now, out)

    def _thresholds(
        self, budget: Budget, id_start: int, start: int, spent: int, now: int, out: Stage2Output
    ) -> None:
        rolling = budget.period == "rolling"
        if rolling:
            period_start, period_end = start - budget.window_ms, start
            bucket = None
        else:
            bucket = self.buckets.get((budget.budget_id, budget.total_version, start))
            period = self._cache(budget).of(start)
            period_start, period_end = period.start, period.end
        key = (budget.budget_id, budget.definition_version, id_start)
        entry = self.alerted.get(key)
        # the alert ids of a period (rolling: of an epoch, whose windows end by epoch +
        # window) are kept until it is final and forgotten (_expire)
        expiry = id_start + 2 * budget.window_ms if rolling else period_end
        for threshold in crossed(spent, budget.limit, budget.thresholds_pct):
            if entry is not None and threshold in entry[1]:
                continue
            if entry is None:
                entry = self.alerted[key] = [expiry, []]
            entry[1].append(threshold)
            aid = threshold_alert_id(
                budget.budget_id, budget.definition_version, id_start, threshold
            )
            out.alerts.append(
                make_alert(
                    "threshold_crossed",
                    aid,
                    now,
                    f"budget {budget.budget_id} ({scope_text(budget.scope)}) reached "
                    f"{threshold}% of {format_amount(budget.limit, budget.unit)} for the "
                    f"{_period_text(budget)}: {format_amount(spent, budget.unit)} spent",
                    spent,
                    severity="critical" if threshold >= 100 else "warning",
                    threshold_pct=threshold,
                    percent=percent(spent, budget.limit),
                    event_id=bucket.last_id if bucket else None,
                    event_time=bucket.last_t if bucket and bucket.last_id else None,
                    **_alert_base(budget, period_start, period_end),
                )
            )

    def _forecast(
        self, budget: Budget, start: int, spent: int, now: int, out: Stage2Output
    ) -> None:
        if not budget.forecast:
            return
        key = (budget.budget_id, budget.definition_version, start)
        entry = self.alerted.get(key)
        if entry is not None and "forecast" in entry[1]:
            return
        period = self._cache(budget).of(start)
        clock = max(self.source_clock.values(), default=0)
        found = forecast_breach(
            spent,
            budget.limit,
            period.start,
            period.end,
            clock,
            self.config.forecast_min_elapsed_pct,
        )
        if found is None:
            return
        if entry is None:
            entry = self.alerted[key] = [period.end, []]
        entry[1].append("forecast")
        bucket = self.buckets.get((budget.budget_id, budget.total_version, start))
        out.alerts.append(
            make_alert(
                "forecast_breach",
                forecast_alert_id(budget.budget_id, budget.definition_version, start),
                now,
                f"budget {budget.budget_id} ({scope_text(budget.scope)}) is "
                f"projected to reach {format_amount(found.projected, budget.unit)} "
                f"by the end of the {budget.period}, above its "
                f"{format_amount(budget.limit, budget.unit)} limit",
                spent,
                projected=found.projected,
                projected_breach_at=found.breach_at,
                percent=percent(spent, budget.limit),
                event_id=bucket.last_id if bucket else None,
                event_time=bucket.last_t if bucket and bucket.last_id else None,
                details={
                    "method": "linear run rate since period start: spent * period_length / elapsed",
                    "elapsed_ms": str(clock - period.start),
                },
                **_alert_base(budget, period.start, period.end),
            )
        )

    def current_spend(self, budget: Budget, now: int) -> tuple[int | None, int, int]:
        """(spend, period start, until) of the period or window that ``now`` is in."""
        if budget.period == "rolling":
            size = rolling_bucket_ms(budget.window_ms)
            end = now - now % size + size
            spent = self.window_spent(budget, end)
            return spent, end - budget.window_ms, end
        period = self._cache(budget).of(now)
        return self.spent(budget, period.start), period.start, period.end

    def _rolling_until(self, budget: Budget, end: int) -> int:
        """When the window ending at ``end`` slides below the limit if nothing more is spent."""
        size = rolling_bucket_ms(budget.window_ms)
        later = end
        for _ in range(budget.window_ms // size + 1):
            later += size
            spent = self.window_spent(budget, later)
            if spent is not None and spent < budget.limit:
                return later - size
        return later

    def _enforce(self, budget: Budget, now: int, out: Stage2Output) -> None:
        spent, period_start, until = self.current_spend(budget, now)
        if spent is None:
            return
        budget_id = budget.budget_id
        blocked = self.blocks.get(budget_id)
        rolling = budget.period == "rolling"
        state = [budget.definition_version, 0 if rolling else period_start]
        # a predecessor's record may say otherwise than ``blocks``: write this decision
        rewrite = self.replayed and budget_id in self.unsure
        if spent >= budget.limit:
            if blocked is None or blocked[:2] != state or rewrite:
                if rolling:
                    until = self._rolling_until(budget, until)
                self.blocks[budget_id] = [*state, until]
                self._write(
                    budget_id, enforcement_value(budget, True, until, spent, period_start, now), out
                )
        elif blocked is not None or rewrite:
            self.blocks.pop(budget_id, None)
            self._write(budget_id, None, out)

    def _write(self, budget_id: str, value: bytes | None, out: Stage2Output) -> None:
        """A record on the enforcement topic (None: a tombstone, unblocked)."""
        self.unsure.discard(budget_id)
        out.enforcement.append((budget_id, value))

    def caught_up(self) -> None:
        """Every partial on this partials partition when this incarnation started is applied:
        whatever a predecessor published on the enforcement topic after the checkpoint this
        one restored was decided on partials that this one has now seen. From here on, the
        first decision on each budget it holds is written to the topic even where ``blocks``
        has it already, so that a block published after that checkpoint, which no later
        decision here would lift (the window slid, the period or the budget ended while no
        stage 2 ran), is lifted (or a tombstone published after it is undone)."""
        self.replayed = True

    # ------------------------------------------------------------------ the timer

    def tick(self, now: int) -> Stage2Output:
        """Budget changes and the passing of time: a changed definition is evaluated afresh
        (new alert ids), a deleted or alert-mode budget's block is lifted, a block whose
        period ended or whose window slid below the limit is lifted."""
        out = Stage2Output()
        ids = {bid for bid, _ in self.versions} | set(self.blocks)
        if self.replayed:
            ids |= self.unsure
        for budget_id in sorted(ids):
            budget = self.budgets.get(budget_id)
            if (budget is None or budget.mode != "block") and (
                budget_id in self.blocks or (self.replayed and budget_id in self.unsure)
            ):
                self.blocks.pop(budget_id, None)
                self._write(budget_id, None, out)
            if budget is None:
                self._forget(budget_id, None)
                continue
            self._forget(budget_id, budget.total_version)
            key = (budget_id, budget.total_version)
            if key in self.versions and len(self.versions[key]) >= self.config.partitions:
                self._request_baselines(key, out)
            if self.evaluated.get(budget_id) != budget.definition_version:
                self.evaluated[budget_id] = budget.definition_version
                starts = {s for (b, v, s) in self.buckets if b == budget_id and v == key[1]}
                starts |= {k[4] for k in self.baselines if k[0] == budget_id and k[1] == key[1]}
                # not what is forgotten (baselines outlive their periods): its alert ids may be
                # gone, it would alert again (a restored stage 2 that meets the definition late)
                forgotten = self._forgotten
                if budget.period != "rolling":
                    cache = self._cache(budget)
                    starts = {s for s in starts if cache.of(s).end > forgotten}
                self._evaluate(budget, starts, now, out, final=forgotten)
            elif budget.mode == "block":
                self._enforce(budget, now, out)
        self._judge_spikes(now, out)
        self._expire()
        return out

    def _forget(self, budget_id: str, keep_version: str | None) -> None:
        """Drop the state of a deleted budget or of its replaced total versions (O(1) when
        there are none: the timer calls this for every budget every second)."""
        known = self._versions_of.get(budget_id)
        if not known or known == {keep_version}:
            return
        stale = [(budget_id, v) for v in known if v != keep_version]
        for key in stale:
            del self.versions[key]
        known.difference_update(v for _, v in stale)
        if not known:
            del self._versions_of[budget_id]
        self._asked = {k for k in self._asked if k[0] != budget_id or k[1] == keep_version}
        self.buckets = {
            k: b for k, b in self.buckets.items() if k[0] != budget_id or k[1] == keep_version
        }
        self.baselines = {
            k: v for k, v in self.baselines.items() if k[0] != budget_id or k[1] == keep_version
        }
        self.pending = {k for k in self.pending if k[0] != budget_id or k[1] == keep_version}
        for held in [k for k in self._holding if k[0] == budget_id and k[1] != keep_version]:
            del self._holding[held]

    # ------------------------------------------------------------------ spikes

    def _judge_spikes(self, now: int, out: Stage2Output) -> None:
        """Judge each org's minutes once they are final in every source partition."""
        if len(self.source_clock) < self.config.partitions:
            return
        low = min(self.source_clock.values())
        final_up_to = low - self.config.close_after_ms
        rules = self.config.spike
        for org, first in sorted(self.org_first.items()):
            minute = self.org_judged.get(org, first - MINUTE_MS) + MINUTE_MS
            while minute <= final_up_to:
                self.org_judged[org] = minute
                bucket = self.orgs.get((org, minute))
                if bucket is not None:
                    self._judge(org, first, minute, bucket.total(1), rules, now, out)
                minute += MINUTE_MS

    def _judge(
        self,
        org: str,
        first: int,
        minute: int,
        spend: int,
        rules: SpikeRules,
        now: int,
        out: Stage2Output,
    ) -> None:
        lo = max(first, minute - rules.baseline_minutes * MINUTE_MS)
        history = [
            (b.total(1) if (b := self.orgs.get((org, m))) else 0)
            for m in range(lo, minute, MINUTE_MS)
        ]
        ratio = spike_ratio(spend, history, rules)
        aid = spike_alert_id(f"org_id={org}", minute)
        if ratio is None or aid in self.spiked:
            return
        self.spiked[aid] = minute
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

    # ------------------------------------------------------------------ state

    def _cache(self, budget: Budget) -> PeriodCache:
        key = (budget.period, budget.timezone, budget.window_ms)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = PeriodCache(*key)
        return cache

    def gone(self) -> int:
        """Periods (and rolling buckets) that ended at or before this can no longer change:
        every source partition's hold clock is more than the hold (and a margin) past them,
        and no baseline is awaited for them (a total not known yet is judged before it is
        forgotten: a restarted stage 2 whose replay brings the clocks a day on before its
        baselines are read lost those periods' alerts). Never back below what was forgotten."""
        cfg = self.config
        if len(self.source_hold) < cfg.partitions:
            return self._forgotten
        gone = min(self.source_hold.values()) - cfg.hold_ms - cfg.hold_margin_ms
        if self._holding:
            gone = min(gone, min(self._holding.values()))
        return max(gone, self._forgotten)

    def _expire(self) -> None:
        """Forget periods, windows and org minutes that can no longer change or be judged."""
        cfg = self.config
        gone = self._forgotten = self.gone()
        for bucket_key in [k for k, b in self.buckets.items() if b.end <= gone]:
            del self.buckets[bucket_key]
        # a baseline's key holds its period's start: no period is longer than 31 days
        for base_key in [k for k in self.baselines if k[4] + 31 * 86_400_000 <= gone]:
            del self.baselines[base_key]
        for alert_key in [k for k, entry in self.alerted.items() if entry[0] <= gone]:
            del self.alerted[alert_key]
        keep = (cfg.spike.baseline_minutes + 1) * MINUTE_MS
        for org, judged in self.org_judged.items():
            for minute in range(self.org_first[org], judged - keep, MINUTE_MS):
                self.orgs.pop((org, minute), None)
            if judged - keep > self.org_first[org]:
                self.org_first[org] = judged - keep
        for aid in [a for a, minute in self.spiked.items() if minute <= gone]:
            del self.spiked[aid]

    def snapshot(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "source_clock": [[p, c] for p, c in self.source_clock.items()],
            "source_hold": [[p, c] for p, c in self.source_hold.items()],
            "versions": [
                [k[0], k[1], [[p, *v] for p, v in splits.items()]]
                for k, splits in self.versions.items()
            ],
            "buckets": [[*k, b.to_list()] for k, b in self.buckets.items()],
            "baselines": [[*k, *v] for k, v in self.baselines.items()],
            "alerted": [[*k, *v] for k, v in self.alerted.items()],
            "blocks": self.blocks,
            "evaluated": self.evaluated,
            "orgs": [[k[0], k[1], b.to_list()] for k, b in self.orgs.items()],
            "org_first": self.org_first,
            "org_judged": self.org_judged,
            "spiked": self.spiked,
            "forgotten": self._forgotten,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.applied = int(state["applied"])
        self.source_clock = {p: c for p, c in state["source_clock"]}
        self.source_hold = {p: c for p, c in state.get("source_hold", state["source_clock"])}
        self.versions = {(v[0], v[1]): {s[0]: list(s[1:]) for s in v[2]} for v in state["versions"]}
        self._versions_of = {}
        for budget_id, version in self.versions:
            self._versions_of.setdefault(budget_id, set()).add(version)
        self._asked = set()
        self.buckets = {(b[0], b[1], b[2]): Bucket.from_list(b[3]) for b in state["buckets"]}
        self.baselines = {(b[0], b[1], b[2], b[3], b[4]): list(b[5:]) for b in state["baselines"]}
        self.pending = set()
        self._holding = {}
        self.alerted = {(a[0], a[1], a[2]): [a[3], list(a[4])] for a in state["alerted"]}
        self.blocks = {k: list(v) for k, v in state["blocks"].items()}
        self.unsure = {bid for bid, _ in self.versions} | set(self.blocks)
        self.replayed = False
        self.evaluated = dict(state["evaluated"])
        self.orgs = {(b[0], b[1]): Bucket.from_list(b[2]) for b in state["orgs"]}
        self.org_first = dict(state["org_first"])
        self.org_judged = dict(state["org_judged"])
        self.spiked = dict(state["spiked"])
        self._forgotten = 0
        self._forgotten = int(state.get("forgotten", self.gone()))


def _period_text(budget: Budget) -> str:
    if budget.period == "rolling":
        return f"rolling {budget.window_ms // 60_000} min window"
    return budget.period


def _alert_base(budget: Budget, period_start: int, period_end: int) -> dict[str, Any]:
    return {
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
