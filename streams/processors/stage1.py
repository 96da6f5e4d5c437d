"""Stage 1: one events partition at a time, a whole fetched batch per call, exact and restartable.

The semantics it implements (docs/design.md, "Budget truth"):

* The partition's clock is the broker's: the running maximum of the records' timestamps (the
  events topic uses LogAppendTime). An event's own ``event_time`` never moves it, so a skewed
  agent cannot push windows ahead, and every decision below is a function of the records
  alone: a replay decides the same.
* Budgets count every accepted, non-duplicate event, however late, in every budget period the
  partition still holds (until ``hold_ms`` after the period ends). Lateness only decides
  whether an event is in its 1-minute rollup window (and in the org spend spike detection
  reads) or published as a late rollup row of its own.
* A duplicate is a re-send: the same 128-bit event_id in the same event hour, as the sink
  decides (ClickHouse ``event_ids``). Ids of recent events are kept in memory, 16 bytes each
  (processors/dedup.py); an event older than that window is handed to the worker as a lookup,
  which asks ClickHouse what the sink did with exactly this record, and is counted by
  ``resolve`` once answered.
* A budget version is counted from a split offset: the first offset processed with it known.
  What its scope spent before the split is stage 2's baseline, read from ClickHouse, so a
  budget created mid-period starts exact whatever the lateness or a backlog.

It returns what to publish: cumulative budget partials and org-minute partials for stage 2
(with a sequence number, ``SEQ_SHIFT``: stage 2 keeps the newest per source partition, and
of two with the same split the larger sums), split announcements,
closed rollup windows and late rollup rows, runaway alerts, dead letters and lookups.

Restart exactness: ``snapshot()`` is the state after exactly the records up to ``applied``;
the worker checkpoints it atomically (processors/checkpoint.py) and records at or below
``applied`` are skipped when replayed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import operator
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

import numpy as np
import polars as pl
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from streams import events as ev_mod
from streams.budgets import Budget, BudgetMatcher
from streams.errors import DecodeError, InvalidEventError
from streams.pricing import PriceCatalog, PriceEntry
from streams.processors.alerts import (
    DAY_MS,
    format_amount,
    make_alert,
    runaway_alert_id,
    unpriced_alert,
)
from streams.processors.dedup import ID_DTYPE, DedupMemory
from streams.processors.detectors import RunawayRules, SessionState, runaway_reasons
from streams.processors.periods import HOUR_MS, MINUTE_MS, PeriodCache
from streams.serde.columnar import ColumnarDecoder

ROLLUP_COUNTERS: Final = (
    "requests",
    "error_requests",
    "unpriced_requests",
    *ev_mod.TOKEN_FIELDS,
    "cost_nanos",
)
#: the scope key of the hot path (the event's labels appended when it has any: the rollup
#: rows' full key, whatever the budgets scope on)
KEY_FIELDS: Final = (
    "org_id",
    "team_id",
    "user_id",
    "project_id",
    "model",
    "client",
    "task_type",
    "provider",
)
_HALF_M: Final = 500_000
#: the sequence number of stage 1's output is ``((applied + 1) << SEQ_SHIFT) + resolves``:
#: a function of the position in the partition (so a replay in other batches, after a
#: restore, never reuses a number for other content), then of the lookups answered since
#: the position last moved (fewer than 2^20 between two batches). It fits int64 (msgpack)
#: for offsets below 2^43.
SEQ_SHIFT: Final = 20
_SEQ_LOW: Final = (1 << SEQ_SHIFT) - 1
_MIN_T: Final = ev_mod.MIN_EVENT_TIME_MS
_MAX_TOKENS: Final = ev_mod.MAX_TOKENS
_MAX_COST: Final = ev_mod.MAX_COST_NANOS
#: per scope key and minute: the pending sum it adds to, its model's price entries, and the
#: rates (input, cache read, cache write 5m and 1h, output, reasoning) when one untiered
#: entry prices the whole minute
_Rates = tuple[int, int, int, int, int, int]
_Targets = tuple[list[Any], Sequence[PriceEntry], _Rates | None]
#: the same plus the key's rollup row in the minute's open window (None: the window is closed)
_KeyInfo = tuple[Any, ...]
#: a pending sum: [cost, tokens, requests, last event id, its time, its offset, accumulators]
_PENDING_ACCS: Final = 6
_by_last_event: Final = operator.itemgetter(4, 5)
#: a budget accumulator: [cost, tokens, requests, last_id, last_t, period end, published
#: requests, split offset, split broker time]
_ACC_END: Final = 5


class Record(Protocol):
    """What stage 1 reads of a Kafka record (aiokafka's records fit). ``timestamp``: the
    broker's append time in epoch ms (None: the processor's clock)."""

    offset: int
    key: bytes | None
    value: bytes | None


@dataclasses.dataclass(frozen=True)
class Stage1Config:
    #: how long after a minute ends its rollup window still takes events
    allowed_lateness_ms: int = 5 * 60_000
    rollup_grace_ms: int = 5_000
    session_idle_ms: int = 2 * 3_600_000
    #: ids of events this recent (event time against the partition clock) are kept in
    #: memory; older events are checked against ClickHouse (16 bytes per id)
    dedup_memory_ms: int = 10 * 60_000
    #: a budget period is counted until this long after it ends (the dedup horizon)
    hold_ms: int = 24 * 3_600_000
    #: accumulators are kept this much longer than the hold, for lookups still in flight
    hold_margin_ms: int = 3_600_000
    #: a partition with no records that is caught up counts as this far behind the wall clock
    idle_timeout_ms: int = 5_000
    runaway: RunawayRules = dataclasses.field(default_factory=RunawayRules)

    def __post_init__(self) -> None:
        if self.dedup_memory_ms < self.allowed_lateness_ms + MINUTE_MS + self.rollup_grace_ms:
            raise ValueError("dedup_memory_ms must cover a rollup window's whole lateness")

    @property
    def close_after_ms(self) -> int:
        """A minute's rollup window closes when the clock reaches minute + this."""
        return MINUTE_MS + self.allowed_lateness_ms + self.rollup_grace_ms


@dataclasses.dataclass
class DeadLetterOut:
    record: Record
    kind: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Lookup:
    """An event older than the memory window: did the sink insert exactly this record?"""

    partition: int
    offset: int
    event_id: str  # canonical text
    event_time: int
    org_id: str


@dataclasses.dataclass
class Stage1Output:
    #: [budget_id, total_version, start, end, cost, tokens, requests, last_id, last_t, split,
    #: split_ts] per changed budget accumulator
    budget_partials: list[list[Any]] = dataclasses.field(default_factory=list)
    #: [org, minute, cost, tokens, requests] per changed org minute (on-time events only)
    org_partials: list[list[Any]] = dataclasses.field(default_factory=list)
    #: [budget_id, total_version, split, split_ts] for budget versions seen for the first time
    announces: list[list[Any]] = dataclasses.field(default_factory=list)
    #: closed windows as (partition, minute, rows); ``rollup_rows`` makes the records lazily,
    #: so that a minute closing does not hold up the batch that closed it
    rollup_windows: list[tuple[int, int, Mapping[tuple[Any, ...], list[int]]]] = dataclasses.field(
        default_factory=list
    )
    #: events late for their rollup window, one row each: (minute, key, counters, offset)
    late_rows: list[tuple[int, tuple[Any, ...], list[int], int]] = dataclasses.field(
        default_factory=list
    )
    alerts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    dead: list[DeadLetterOut] = dataclasses.field(default_factory=list)
    lookups: list[Lookup] = dataclasses.field(default_factory=list)
    #: the partition clock after this call, and the sequence number of what it emitted
    clock: int = 0
    seq: int = 0
    #: the partition's hold clock (``PartitionAggregator.hold_clock``): periods that ended
    #: more than the hold before it can no longer change
    hold_clock: int = 0
    counted: int = 0
    duplicates: int = 0
    skipped: int = 0

    @property
    def rollups(self) -> list[dict[str, Any]]:
        """Every row to publish (built on each call: the worker streams them instead)."""
        rows = [row for window in self.rollup_windows for row in rollup_rows(*window)]
        partition = self.rollup_windows[0][0] if self.rollup_windows else None
        rows.extend(late_rollup_rows(partition or 0, self.late_rows))
        return rows

    def has_partials(self) -> bool:
        return bool(self.budget_partials or self.org_partials or self.announces)


def _rollup_record(
    partition: int, minute: int, dims: tuple[Any, ...], counters: Sequence[int], segment: str
) -> dict[str, Any]:
    record: dict[str, Any] = dict(zip(KEY_FIELDS, dims[:8], strict=True))
    record["labels"] = dict(dims[8]) if len(dims) > 8 else {}
    record.update(zip(ROLLUP_COUNTERS, map(saturate, counters), strict=True))
    record["window_start"] = minute
    record["window_end"] = minute + MINUTE_MS
    record["source_partition"] = partition
    record["segment"] = segment
    record["revision"] = 0
    return record


def rollup_rows(
    partition: int, minute: int, rows: Mapping[tuple[Any, ...], list[int]]
) -> Iterator[dict[str, Any]]:
    """The rollups-topic records of one closed window of one partition (final: one per key)."""
    for dims, counters in rows.items():
        if counters[0]:
            yield _rollup_record(partition, minute, dims, counters, "")


def late_rollup_rows(
    partition: int, rows: Sequence[tuple[int, tuple[Any, ...], list[int], int]]
) -> Iterator[dict[str, Any]]:
    """One record per event late for its window, keyed by its offset (idempotent on replay)."""
    for minute, dims, counters, offset in rows:
        yield _rollup_record(partition, minute, dims, counters, f"late:{offset}")


def rollup_key(record: Mapping[str, Any]) -> bytes:
    """The Kafka key of a rollup row: its window, full scope key, source partition, segment."""
    parts = [record["window_start"], *(record[f] for f in KEY_FIELDS)]
    parts += [sorted(record["labels"].items()), record["source_partition"], record["segment"]]
    return json.dumps(parts, separators=(",", ":")).encode()


def saturate(value: int) -> int:
    """``value`` clamped to int64, the encoders' bound (exact below; see MAX_COST_NANOS)."""
    return value if value <= ev_mod.INT64_MAX else ev_mod.INT64_MAX


class Budgets(Protocol):
    """Live view of the budgets (streams.budgets.BudgetView fits)."""

    @property
    def matcher(self) -> BudgetMatcher: ...


def id_bytes(event_id: str) -> bytes:
    """The 16 bytes of an event id in a spelling ``events.canonical_event_id`` accepts, as
    numpy's S16 hands them back (trailing zero bytes dropped: still one value per id)."""
    canonical = ev_mod.canonical_event_id(event_id)
    if canonical is None:
        raise InvalidEventError(f"event_id {event_id[:80]!r} is not a UUID ClickHouse reads")
    return uuid.UUID(canonical).bytes.rstrip(b"\x00")


class PartitionAggregator:
    """Exact per-partition aggregation; ``process(records)`` once per fetched batch."""

    def __init__(
        self,
        partition: int,
        decode: Callable[[bytes | None], dict[str, Any]],
        catalog: PriceCatalog,
        budgets: Budgets,
        config: Stage1Config | None = None,
        now_ms: Callable[[], int] = ev_mod.now_ms,
        columnar: ColumnarDecoder | None = None,
    ) -> None:
        self.partition = partition
        self.decode = decode
        #: decodes big batches as columns (serde/columnar.py)
        self.columnar = columnar
        self.catalog = catalog
        self.budgets = budgets
        self.config = config or Stage1Config()
        self.now_ms = now_ms
        self.applied = -1
        self.clock = 0
        self.seq = 0
        #: lookups answered (resolve calls) since ``applied`` last moved (see SEQ_SHIFT)
        self.resolves = 0
        self.memory = DedupMemory()
        #: events older than the memory window, waiting for their lookup: [offset, broker
        #: time, key, value]
        self.deferred: dict[int, list[Any]] = {}
        # budget accumulators by (budget_id, total_version, period or bucket start), see _ACC_END
        self.partials: dict[tuple[str, str, int], list[Any]] = {}
        #: (budget_id, total_version) -> [split offset, split broker time]
        self.versions: dict[tuple[str, str], list[int]] = {}
        # org spend by (org, minute) of on-time events: [cost, tokens, requests, published]
        self.org_minutes: dict[tuple[str, int], list[Any]] = {}
        self._period_caches: dict[tuple[str, str, int], PeriodCache] = {}
        self._matcher: BudgetMatcher | None = None
        # per minute: scope key (joined string, or tuple) -> (pending sum it adds to, price
        # entries of its model, its minute's rates, row in windows[minute]); dropped with the
        # window's rows when they are published. Late events of a closed minute use _late_accs.
        self._accs: dict[int, dict[Any, _KeyInfo]] = {}
        self._late_accs: dict[int, dict[Any, _KeyInfo]] = {}
        # per minute: (org, id(matched budgets), on time) -> (matched budgets, pending sum). An
        # event adds to one pending sum, not to each of its 4-8 accumulators; ``_fold`` adds
        # the pending sums to the accumulators at the end of every batch
        self._budget_accs: dict[int, dict[tuple[str, int, bool], tuple[Any, list[Any]]]] = {}
        self.sessions: dict[str, SessionState] = {}
        #: runaway alert ids already raised -> clock when raised (kept past session expiry)
        self.runaway_alerted: dict[str, int] = {}
        #: (provider, model, UTC day) already alerted as unpriced by this partition (the
        #: alert id is the same on every partition and restart: the alert log keeps one)
        self.unpriced_alerted: set[tuple[str, str, int]] = set()
        self._next_session_sweep = 0  # clock of the next idle-session scan
        # rollups: minute -> scope key -> counters, open windows only
        self.windows: dict[int, dict[tuple[Any, ...], list[int]]] = {}

    # ------------------------------------------------------------------ budgets

    def _sync_budgets(self, split: int, split_ts: int, out: Stage1Output) -> None:
        """Pick up a changed budget view: new versions start counting at ``split``."""
        matcher = self.budgets.matcher
        if matcher is self._matcher:
            return
        self._matcher = matcher
        self._accs = {}
        self._late_accs = {}
        self._budget_accs = {}
        current = {(b.budget_id, b.total_version) for b in matcher.budgets}
        for key in current:
            if key not in self.versions:
                self.versions[key] = [split, split_ts]
                out.announces.append([key[0], key[1], split, split_ts])
        for key in [k for k in self.versions if k not in current]:
            del self.versions[key]
        for pkey in [k for k in self.partials if (k[0], k[1]) not in current]:
            del self.partials[pkey]

    # ------------------------------------------------------------------ the hot path

    def process(self, records: Sequence[Record]) -> Stage1Output:
        """Count a batch of records (one partition, offset order); see the module docstring."""
        out = Stage1Output()
        applied = self.applied
        if records and records[0].offset <= applied:  # a replay after a restore
            skip = 0
            while skip < len(records) and records[skip].offset <= applied:
                skip += 1
            out.skipped = skip
            records = records[skip:]
        now = self.now_ms()
        if not records:
            out.clock, out.seq, out.hold_clock = self.clock, self.seq, self.hold_clock
            return out
        stamps = [getattr(r, "timestamp", None) or now for r in records]
        self._sync_budgets(records[0].offset, stamps[0], out)
        cfg = self.config
        targets_of = self._targets
        clock = self.clock
        memory_from = cfg.dedup_memory_ms
        close_after = cfg.close_after_ms
        windows = self.windows
        accs_by_minute = self._accs
        late_by_minute = self._late_accs
        sessions = self.sessions
        rules = cfg.runaway
        growth_keep = rules.growth_turns + 1
        max_cost = rules.max_cost_nanos or 1 << 62
        max_turns = rules.max_turns or 1 << 62
        min_context = rules.growth_min_context if rules.growth_turns else 1 << 62
        dead = out.dead
        late_rows = out.late_rows
        partition = self.partition
        counted = 0
        cur_minute = -1
        window: dict[tuple[Any, ...], list[int]] = {}
        accs: dict[Any, _KeyInfo] = {}
        ids: list[bytes] = []
        by_minute: dict[int, list[bytes]] = {}
        claimed: dict[bytes, int] = {}
        claimed_more: set[tuple[bytes, int]] = set()
        touched: list[list[Any]] = []  # pending sums added to in this batch
        alerts = out.alerts
        columns, prior = self._columns(records)
        for (
            index,
            rec,
            ts,
            eid,
            t,
            org,
            team,
            user,
            project,
            api_key,
            session,
            turn,
            client,
            task,
            provider,
            model,
            i_tok,
            cr,
            cw5,
            cw1,
            out_tok,
            reas,
            reported,
            status,
            labels,
            label_value,
            idb,
            scope,
        ) in zip(range(len(records)), records, stamps, *columns, strict=True):
            if ts > clock:
                clock = ts
            if eid is None:  # not decodable: ``t`` holds the reason
                dead.append(DeadLetterOut(rec, "decode", t))
                continue
            if not (
                idb
                and _MIN_T <= t <= ts + 600_000
                and org.strip()
                and team.strip()
                and user.strip()
                and client.strip()
                and provider.strip()
                and model.strip()
                and 0 <= (i_tok | cr | cw5 | cw1 | out_tok | reas) <= _MAX_TOKENS
                and reas <= out_tok
                and (reported is None or 0 <= reported <= _MAX_COST)
                and (turn is None or turn >= 1)
                and project != ""
                and session != ""
                and api_key != ""
            ):
                # rare: the reasons come from the record decoded on its own, as a dict (the
                # same values: tests/unit/test_serde_columnar.py)
                try:
                    found = ev_mod.problems(self.decode(rec.value), ts)
                except DecodeError as exc:  # not expected: the batch decoder read it
                    dead.append(DeadLetterOut(rec, "decode", exc.reason))
                    continue
                if found:
                    dead.append(DeadLetterOut(rec, "invalid", "; ".join(found)))
                    continue
                if not idb:  # a valid spelling other than 8-4-4-4-12 hex
                    idb = id_bytes(eid)
                    prior[index] = self.memory.contains(
                        np.array([idb], dtype=ID_DTYPE), np.array([t // HOUR_MS])
                    )[0]
            if t < clock - memory_from:
                # older than the ids kept in memory: the worker asks ClickHouse (``resolve``)
                self.deferred[rec.offset] = [rec.offset, ts, rec.key, rec.value]
                out.lookups.append(Lookup(partition, rec.offset, eid, t, org))
                continue
            hour = t // HOUR_MS
            if prior[index]:
                out.duplicates += 1
                continue
            seen_hour = claimed.get(idb)
            if seen_hour is not None:
                if seen_hour == hour or (idb, hour) in claimed_more:
                    out.duplicates += 1
                    continue
                claimed_more.add((idb, hour))
            minute = t - t % MINUTE_MS
            on_time = minute + close_after > clock
            if on_time:
                if minute != cur_minute:
                    cur_minute = minute
                    window = windows.setdefault(minute, {})
                    accs = accs_by_minute.setdefault(minute, {})
                    ids = by_minute.setdefault(minute, [])
                info = accs.get(scope)
                id_list = ids
            else:
                info = late_by_minute.setdefault(minute, {}).get(scope)
                id_list = by_minute.setdefault(minute, [])
            prompt = i_tok + cr + cw5 + cw1
            if info is None:
                if label_value is not None:  # one label, name and value apart (_scope_labels)
                    labels = ((labels, label_value),)
                if labels:  # a scope key (and its rollup row) always holds the labels
                    key: tuple[Any, ...] = (
                        org,
                        team,
                        user,
                        project,
                        model,
                        client,
                        task,
                        provider,
                        labels,
                    )
                else:
                    key = (org, team, user, project, model, client, task, provider)
                if on_time:
                    row = window.get(key)
                    if row is None:
                        row = window[key] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
                    info = accs[scope] = (*targets_of(key, minute, True), row)
                else:
                    info = late_by_minute[minute][scope] = (
                        *targets_of(key, minute, False),
                        None,
                        key,
                    )
            if reported is not None:
                cost = reported
            elif (rates := info[2]) is not None:
                # streams.pricing.cost_nanos inlined (pinned equal by a unit test)
                cost = (
                    i_tok * rates[0]
                    + cr * rates[1]
                    + cw5 * rates[2]
                    + cw1 * rates[3]
                    + (out_tok - reas) * rates[4]
                    + reas * rates[5]
                    + _HALF_M
                ) // 1_000_000
            else:
                for entry in info[1]:
                    if entry.effective_from_ms <= t:
                        break
                else:
                    entry = None
                if entry is None:
                    cost = -1
                else:
                    priced = entry.rates_for(prompt)[0] if entry.tiers else entry.rates
                    cost = (
                        i_tok * priced.input
                        + cr * priced.cache_read
                        + cw5 * priced.cache_write_5m
                        + cw1 * priced.cache_write_1h
                        + (out_tok - reas) * priced.output
                        + reas * priced.reasoning
                        + _HALF_M
                    ) // 1_000_000
            if cost > _MAX_COST:
                dead.append(
                    DeadLetterOut(
                        rec,
                        "invalid",
                        f"priced cost {cost} nano-USD is above the bound of {_MAX_COST:,} "
                        "($10,000) per request",
                    )
                )
                continue
            if seen_hour is None:
                claimed[idb] = hour
            id_list.append(idb)
            row = info[3]
            if row is None:  # late for its window: a rollup row of its own
                row = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
                late_rows.append((minute, info[4], row, rec.offset))
            row[0] += 1
            if status != "ok":
                row[1] += 1
            if cost < 0:
                row[2] += 1
                cost = 0
                day = t - t % DAY_MS
                if (provider, model, day) not in self.unpriced_alerted:
                    self.unpriced_alerted.add((provider, model, day))
                    alerts.append(
                        self._unpriced_alert(
                            provider, model, eid, t, (org, team, user, session), prompt + out_tok
                        )
                    )
            row[3] += i_tok
            row[4] += cr
            row[5] += cw5
            row[6] += cw1
            row[7] += out_tok
            row[8] += reas
            row[9] += cost
            pending = info[0]
            if not pending[2]:
                touched.append(pending)
            pending[0] += cost
            pending[1] += prompt + out_tok
            pending[2] += 1
            if t >= pending[4]:
                pending[3] = eid
                pending[4] = t
                pending[5] = counted
            counted += 1
            if session is not None:
                skey = f"{org}\x1f{session}"
                state = sessions.get(skey)
                if state is None:
                    state = sessions[skey] = SessionState(org, team, user)
                state.cost += cost
                state.turns += 1
                state.last_time = clock  # idle by the partition clock at its last turn
                recent = state.recent
                context = prompt
                run = state.run
                if recent and context > recent[-1]:  # detectors.grow_run, inlined
                    run[1] += 1
                    if context - recent[-1] > run[2]:
                        run[2] = context - recent[-1]
                else:
                    run[0], run[1], run[2] = context, 0, 0
                recent.append(context)
                if len(recent) > growth_keep:
                    del recent[0]
                if state.cost > max_cost or state.turns > max_turns or context >= min_context:
                    self._check_runaway(session, state, eid, t, now, clock, alerts)
        out.counted = counted
        self.clock = clock
        self.applied = records[-1].offset
        for minute, minute_ids in by_minute.items():
            self.memory.add(minute, minute_ids)
        _fold(touched)
        self._finish(out)
        return out

    # ------------------------------------------------------------------ slow paths

    def resolve(self, answers: Mapping[int, bool]) -> Stage1Output:
        """Count the deferred events whose lookup was answered: True when the sink inserted
        exactly that record (partition, offset), False when it dropped it as a duplicate."""
        out = Stage1Output()
        now = self.now_ms()
        self.resolves += 1
        for offset in sorted(answers):
            item = self.deferred.pop(offset, None)
            if item is None:
                continue
            if answers[offset]:
                self._count_old(item, out, now)
            else:
                out.duplicates += 1
        self._finish(out)
        return out

    def _count_old(self, item: list[Any], out: Stage1Output, now: int) -> None:
        """One event older than the memory window, known not to be a duplicate: its budget
        periods still held and a late rollup row (not its session: see below)."""
        offset, ts, key_bytes, value = item
        event = self.decode(value)
        price = self.catalog.price(event)
        if price.cost_nanos > _MAX_COST:
            record = _Raw(offset, key_bytes, value, ts)
            reason = f"priced cost {price.cost_nanos} nano-USD is above the bound of {_MAX_COST:,}"
            out.dead.append(DeadLetterOut(record, "invalid", reason))
            return
        cost = price.cost_nanos
        t = event["event_time"]
        labels = label_key(event.get("labels"))
        dims = tuple(event[f] for f in KEY_FIELDS)
        key = (*dims, labels) if labels else dims
        tokens = sum(event[f] for f in ev_mod.TOKEN_FIELDS) - event["reasoning_tokens"]
        matcher = self._matcher or self.budgets.matcher
        cfg = self.config
        for budget in matcher.match_signature(key[:7], dict(labels) if labels else None):
            version = self.versions.get((budget.budget_id, budget.total_version))
            if version is None or offset < version[0]:
                # before the version's split: the sink stored it (the lookup said so), so
                # stage 2's baseline holds it; a budget taken while its lookup was pending
                continue
            period = self._period_cache(budget).of(t)
            if period.end + cfg.hold_ms <= ts:
                continue  # no longer held when it arrived (its accumulator was kept for it)
            pkey = (budget.budget_id, budget.total_version, period.start)
            acc = self.partials.get(pkey)
            if acc is None:
                acc = self.partials[pkey] = [0, 0, 0, None, 0, period.end, 0, *version]
            acc[0] += cost
            acc[1] += tokens
            acc[2] += 1
            if t >= acc[4]:
                acc[3], acc[4] = event["event_id"], t
        if price.source == "unpriced":
            day = t - t % DAY_MS
            provider, model = event["provider"], event["model"]
            if (provider, model, day) not in self.unpriced_alerted:
                self.unpriced_alerted.add((provider, model, day))
                who = (event["org_id"], event["team_id"], event["user_id"], event["session_id"])
                out.alerts.append(
                    self._unpriced_alert(provider, model, event["event_id"], t, who, tokens)
                )
        row = [1, int(event["status"] != "ok"), int(price.source == "unpriced")]
        row += [event[f] for f in ev_mod.TOKEN_FIELDS] + [cost]
        out.late_rows.append((t - t % MINUTE_MS, key, row, offset))
        # its session is left alone: the runaway rules judge a session's live turns, and an
        # event this old would bring back a session that went idle (or add a turn out of order)
        out.counted += 1

    def tick(self, now: int, caught_up: bool) -> Stage1Output:
        """Between batches: pick up budget changes, and when the partition has no records to
        read (``caught_up``), move its clock to ``now - idle_timeout`` (records appended later
        get broker times after that), so that its windows close and it holds nothing back."""
        out = Stage1Output()
        self._sync_budgets(self.applied + 1, now, out)
        if caught_up:
            idle_clock = now - self.config.idle_timeout_ms
            if idle_clock > self.clock:
                self.clock = idle_clock
        self._finish(out)
        return out

    # ------------------------------------------------------------------ batch end

    def _finish(self, out: Stage1Output) -> None:
        """Publish what changed, then close and expire by the clock."""
        for (budget_id, version, start), acc in self.partials.items():
            if acc[2] == acc[6]:
                continue
            acc[6] = acc[2]
            out.budget_partials.append(
                [
                    budget_id,
                    version,
                    start,
                    acc[5],
                    saturate(acc[0]),
                    saturate(acc[1]),
                    acc[2],
                    acc[3],
                    acc[4],
                    acc[7],
                    acc[8],
                ]
            )
        for (org, minute), acc in self.org_minutes.items():
            if acc[2] == acc[5]:
                continue
            acc[5] = acc[2]
            out.org_partials.append([org, minute, saturate(acc[0]), saturate(acc[1]), acc[2]])
        self._expire(out)
        seq = ((self.applied + 1) << SEQ_SHIFT) + min(self.resolves, _SEQ_LOW)
        if seq >> SEQ_SHIFT != self.seq >> SEQ_SHIFT:
            self.resolves = 0  # the position moved
            seq = (self.applied + 1) << SEQ_SHIFT
        self.seq = max(self.seq, seq)
        out.seq = self.seq
        out.clock = self.clock
        out.hold_clock = self.hold_clock

    def _check_runaway(
        self,
        session: str,
        state: SessionState,
        event_id: str,
        event_time: int,
        now: int,
        clock: int,
        alerts: list[dict[str, Any]],
    ) -> None:
        for reason in runaway_reasons(state, self.config.runaway):
            state.alerted.append(reason)
            aid = runaway_alert_id(state.org_id, session, reason)
            if aid in self.runaway_alerted:  # raised before this session state expired
                continue
            self.runaway_alerted[aid] = clock
            alerts.append(
                self._runaway_alert(aid, session, state, reason, event_id, event_time, now)
            )

    def _expire(self, out: Stage1Output) -> None:
        cfg = self.config
        clock = self.clock
        recent_from = clock - cfg.dedup_memory_ms - MINUTE_MS
        self.memory.expire(recent_from - recent_from % MINUTE_MS)
        # rollup windows whose minute + lateness has passed: final, published once
        closed_up_to = clock - cfg.close_after_ms
        for minute in sorted(self.windows):
            if minute > closed_up_to:
                break
            rows = self.windows.pop(minute)
            if rows:
                out.rollup_windows.append((self.partition, minute, rows))
            self._accs.pop(minute, None)
        for okey in [k for k in self.org_minutes if k[1] <= closed_up_to]:
            del self.org_minutes[okey]
        for minute in [m for m in self._late_accs if m < recent_from]:
            del self._late_accs[minute]
        for minute in [m for m in self._budget_accs if m < recent_from]:
            del self._budget_accs[minute]
        # budget periods no longer held: not even by a deferred event still waiting for its
        # lookup (the hold clock stays at the oldest of them)
        gone = self.hold_clock - cfg.hold_ms - cfg.hold_margin_ms
        for pkey in [k for k, acc in self.partials.items() if acc[_ACC_END] <= gone]:
            del self.partials[pkey]
        if clock >= self._next_session_sweep:  # a scan of every session: once a minute
            self._next_session_sweep = clock + MINUTE_MS
            idle = clock - cfg.session_idle_ms
            for sid in [s for s, st in self.sessions.items() if st.last_time < idle]:
                del self.sessions[sid]
            keep = clock - 7 * 86_400_000
            for aid in [a for a, at in self.runaway_alerted.items() if at < keep]:
                del self.runaway_alerted[aid]

    # ------------------------------------------------------------------ decoding

    def _columns(self, records: Sequence[Record]) -> tuple[Sequence[Sequence[Any]], list[bool]]:
        """The records' fields as columns (EVENT_FIELDS order, then the label value, the id's
        16 bytes and the scope key), decoded as one block when the batch is big enough to pay
        for it, else record by record; and whether each id is among those kept in memory. A
        record that does not decode has event_id None and the reason in event_time's place."""
        columnar = self.columnar
        frame = None
        if columnar is not None and len(records) >= COLUMNAR_MIN_BATCH:
            header = columnar.message_header
            size = len(header)
            picked: list[int] = []
            bodies: list[bytes] = []
            for index, rec in enumerate(records):
                value = rec.value
                if value is not None and value[:size] == header:
                    picked.append(index)
                    bodies.append(value[size:])
            if len(bodies) >= COLUMNAR_MIN_BATCH:
                frame = columnar.decode(bodies)
        if frame is None:
            columns = list(self._decoded_one_by_one(records, range(len(records))))
            id_series = pl.Series(columns[0], dtype=pl.String)
            times = pl.Series([t if isinstance(t, int) else 0 for t in columns[1]], dtype=pl.Int64)
        else:
            lists = _arrow_lists(frame.get_column("labels"))
            names, values = _label_columns(lists, frame.height)
            columns = [
                frame.get_column(name).to_list() if name != "labels" else names
                for name in EVENT_FIELDS
            ]
            columns.append(values)
            columns.append(_scope_strings(frame, lists) or _scope_tuples(columns, True))
            if len(picked) != len(records):
                # a few records in another framing or version: merge them in by position
                rows: list[tuple[Any, ...]] = [()] * len(records)
                for index, row in zip(picked, zip(*columns, strict=True), strict=True):
                    rows[index] = row
                others = [i for i, row in enumerate(rows) if not row]
                decoded = zip(*self._decoded_one_by_one(records, others), strict=True)
                for index, row in zip(others, decoded, strict=True):
                    rows[index] = row
                columns = [list(c) for c in zip(*rows, strict=True)]
                id_series = pl.Series(columns[0], dtype=pl.String)
                times = pl.Series(
                    [t if isinstance(t, int) else 0 for t in columns[1]], dtype=pl.Int64
                )
            else:
                id_series = frame.get_column("event_id")
                times = frame.get_column("event_time")
        ids, valid = _id_array(id_series)
        hours = times.to_numpy() // HOUR_MS
        prior = self.memory.contains(ids, hours).tolist()
        id_list: list[bytes | None] = ids.tolist()
        if not valid.all():
            id_list = [b if ok else None for b, ok in zip(id_list, valid.tolist(), strict=True)]
        columns.insert(len(EVENT_FIELDS) + 1, id_list)
        return columns, prior

    def _decoded_one_by_one(
        self, records: Sequence[Record], indices: Sequence[int]
    ) -> Sequence[Sequence[Any]]:
        decode = self.decode
        rows: list[tuple[Any, ...]] = []
        for index in indices:
            try:
                row = _as_row(decode(records[index].value))
                rows.append((*row[:-1], label_key(row[-1]), None))
            except DecodeError as exc:
                rows.append((None, exc.reason, *_NOTHING))
        if not rows:
            return [[] for _ in range(len(EVENT_FIELDS) + 2)]
        columns: list[Sequence[Any]] = [list(c) for c in zip(*rows, strict=True)]
        columns.append(_scope_tuples(columns, True))
        return columns

    # ------------------------------------------------------------------ lookups of the hot path

    def _period_cache(self, budget: Budget) -> PeriodCache:
        key = (budget.period, budget.timezone, budget.window_ms)
        cache = self._period_caches.get(key)
        if cache is None:
            cache = self._period_caches[key] = PeriodCache(*key)
        return cache

    def _targets(self, key: tuple[Any, ...], minute: int, on_time: bool) -> _Targets:
        """The pending sum an event with scope ``key`` in ``minute`` adds to (for its budgets'
        accumulators, and its org's spend of the minute when on time), and the price entries
        of its (provider, model), newest first."""
        labels = dict(key[8]) if len(key) > 8 else None
        matcher = self._matcher or self.budgets.matcher
        matched = matcher.match_signature(key[:7], labels)
        # many scope keys of an org match the same budgets: they share one pending sum a minute
        by_matched = self._budget_accs.get(minute)
        if by_matched is None:
            by_matched = self._budget_accs[minute] = {}
        org = key[0]
        cache_key = (org, id(matched), on_time)
        cached = by_matched.get(cache_key)
        if cached is None or cached[0] is not matched:
            accs: tuple[list[Any], ...] = self._budget_targets(matched, minute)
            if on_time:
                okey = (org, minute)
                org_acc = self.org_minutes.get(okey)
                if org_acc is None:
                    org_acc = self.org_minutes[okey] = [0, 0, 0, None, 0, 0]
                accs = (org_acc, *accs)
            cached = by_matched[cache_key] = (matched, [0, 0, 0, None, -1, -1, accs])
        prices = self.catalog.resolve_for(key[0], key[7], key[4])
        fixed: _Rates | None = None
        if prices and prices[0].effective_from_ms <= minute and not prices[0].tiers:
            r = prices[0].rates
            fixed = (
                r.input,
                r.cache_read,
                r.cache_write_5m,
                r.cache_write_1h,
                r.output,
                r.reasoning,
            )
        return cached[1], prices, fixed

    def _budget_targets(self, matched: Sequence[Budget], minute: int) -> tuple[list[Any], ...]:
        found: list[list[Any]] = []
        for budget in matched:
            version = self.versions.get((budget.budget_id, budget.total_version))
            if version is None:  # not synced (cannot happen within a batch)
                continue
            period = self._period_cache(budget).of(minute)
            pkey = (budget.budget_id, budget.total_version, period.start)
            acc = self.partials.get(pkey)
            if acc is None:
                acc = self.partials[pkey] = [0, 0, 0, None, 0, period.end, 0, *version]
            found.append(acc)
        return tuple(found)

    def _unpriced_alert(
        self,
        provider: str,
        model: str,
        event_id: str,
        event_time: int,
        who: tuple[str, str, str, str | None],
        tokens: int,
    ) -> dict[str, Any]:
        """The day's first unpriced event of a model on this partition (rare: not hot)."""
        found = self.catalog.resolution(provider, model)
        details = {"catalog_version": self.catalog.version, "why": found.why}
        if found.definition is not None:
            details["model_id"] = found.definition.model_id
            if found.definition.unpriced_reason:
                details["unpriced_reason"] = found.definition.unpriced_reason
        # forget days the clock has left (their ids stay in the alert log)
        old = {k for k in self.unpriced_alerted if k[2] < event_time - 2 * DAY_MS}
        self.unpriced_alerted -= old
        event = dict(
            zip(("org_id", "team_id", "user_id", "session_id"), who, strict=True),
            event_id=event_id,
            event_time=event_time,
        )
        return unpriced_alert(provider, model, event, tokens, self.now_ms(), details)

    # ------------------------------------------------------------------ sessions

    def _runaway_alert(
        self,
        aid: str,
        sid: str,
        state: SessionState,
        reason: str,
        event_id: str,
        event_time: int,
        now: int,
    ) -> dict[str, Any]:
        rules = self.config.runaway
        if reason == "cost":
            text = (
                f"session {sid} spent {format_amount(state.cost, 'usd_nanos')}, over the "
                f"{format_amount(rules.max_cost_nanos, 'usd_nanos')} session limit"
            )
            unit, spent, limit = "usd_nanos", state.cost, rules.max_cost_nanos
        elif reason == "turns":
            text = f"session {sid} ran {state.turns} turns, over the {rules.max_turns} limit"
            unit, spent, limit = "turns", state.turns, rules.max_turns
        else:
            text = (
                f"session {sid} re-sends a growing context every turn: "
                f"{state.recent[0]:,} -> {state.recent[-1]:,} tokens over the last "
                f"{len(state.recent) - 1} turns (cumulative input grows quadratically)"
            )
            unit, spent, limit = "usd_nanos", state.cost, None
        return make_alert(
            "runaway_session",
            aid,
            now,
            text,
            saturate(spent),
            severity="critical",
            org_id=state.org_id,
            team_id=state.team_id,
            user_id=state.user_id,
            scope={"org_id": state.org_id, "team_id": state.team_id, "user_id": state.user_id},
            period="session",
            unit=unit,
            limit=limit,
            event_id=event_id,
            event_time=event_time,
            session_id=sid,
            details={
                "reason": reason,
                "turns": str(state.turns),
                "session_cost_nanos": str(state.cost),
                "recent_context_tokens": ",".join(str(c) for c in state.recent),
            },
        )

    # ------------------------------------------------------------------ state

    @property
    def hold_clock(self) -> int:
        """The broker time up to which this partition's budget counting is done: its clock,
        or the arrival of the oldest deferred event when one waits for its lookup (that event
        still counts in every period held when it arrived). A period that ended more than the
        hold before this can no longer change."""
        clock = self.clock
        for item in self.deferred.values():
            if item[1] < clock:
                clock = item[1]
        return clock

    @property
    def memory_horizon(self) -> int:
        """Checkpointed id chunks of minutes before this are no longer needed."""
        return self.clock - self.config.dedup_memory_ms - 2 * MINUTE_MS

    def take_new_ids(self) -> list[list[Any]]:
        """Ids counted since the last call, as [[minute, packed 16-byte ids], ...]."""
        return self.memory.take_unsaved()

    def load_ids(self, chunk: Sequence[Sequence[Any]]) -> None:
        self.memory.load(chunk, self.memory_horizon)

    def snapshot(self) -> dict[str, Any]:
        """Everything but the dedup ids (written apart, incrementally), as msgpack-able data."""
        return {
            "applied": self.applied,
            "clock": self.clock,
            "seq": self.seq,
            "resolves": self.resolves,
            "deferred": list(self.deferred.values()),
            "partials": [[*k, *v] for k, v in self.partials.items()],
            "versions": [[*k, *v] for k, v in self.versions.items()],
            "orgs": [[k[0], k[1], *v] for k, v in self.org_minutes.items()],
            "sessions": {sid: st.to_list() for sid, st in self.sessions.items()},
            "runaway_alerted": self.runaway_alerted,
            "unpriced_alerted": [list(k) for k in self.unpriced_alerted],
            # msgpack writes tuple keys as arrays; restore() turns them back into tuples
            "windows": [[minute, list(rows.items())] for minute, rows in self.windows.items()],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.applied = int(state["applied"])
        self.clock = int(state["clock"])
        self.seq = int(state["seq"])
        self.resolves = int(state.get("resolves", 0))
        self.deferred = {int(d[0]): list(d) for d in state["deferred"]}
        self.partials = {(p[0], p[1], p[2]): list(p[3:]) for p in state["partials"]}
        self.versions = {(v[0], v[1]): list(v[2:]) for v in state["versions"]}
        self.org_minutes = {(o[0], o[1]): list(o[2:]) for o in state["orgs"]}
        self.sessions = {s: SessionState.from_list(v) for s, v in state["sessions"].items()}
        self.runaway_alerted = dict(state["runaway_alerted"])
        self.unpriced_alerted = {(k[0], k[1], k[2]) for k in state.get("unpriced_alerted", ())}
        self.windows = {
            minute: {_key_from_plain(d): list(c) for d, c in rows}
            for minute, rows in state["windows"]
        }
        self.memory = DedupMemory()
        self._matcher = None
        self._accs = {}
        self._late_accs = {}
        self._budget_accs = {}

    def pending_lookups(self) -> list[Lookup]:
        """Lookups of the deferred events (after a restore, the worker asks again)."""
        found = []
        for offset, _, _, value in self.deferred.values():
            event = self.decode(value)
            found.append(
                Lookup(
                    self.partition, offset, event["event_id"], event["event_time"], event["org_id"]
                )
            )
        return found


@dataclasses.dataclass
class _Raw:
    """A record rebuilt from a deferred event, for its dead letter."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None


#: events.EVENT_ID_PATTERN anchored, for polars' (Rust) regex engine
_EVENT_ID_REGEX: Final = f"^(?:{ev_mod.EVENT_ID_PATTERN})$"


def _id_array(ids: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Event ids (text) as 16-byte values (numpy S16) and whether each one is an id
    ``events.canonical_event_id`` accepts (8-4-4-4-12 or 32 hex digits, nothing else)."""
    spelled = ids.str.contains(_EVENT_ID_REGEX).fill_null(False).to_arrow()
    binary = ids.str.replace_all("-", "", literal=True).str.decode("hex", strict=False)
    arrow = binary.to_arrow()
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    if isinstance(spelled, pa.ChunkedArray):
        spelled = spelled.combine_chunks()
    valid_arrow = pc.and_(pc.fill_null(pc.equal(pc.binary_length(arrow), 16), False), spelled)
    valid = valid_arrow.to_numpy(zero_copy_only=False)
    if not valid.all():
        arrow = pc.if_else(valid_arrow, arrow, pa.scalar(b"\x00" * 16, arrow.type))
    fixed = arrow.cast(pa.binary(16))
    buffer = fixed.buffers()[1]
    array = np.frombuffer(buffer, dtype=ID_DTYPE, count=len(fixed), offset=fixed.offset * 16)
    return array, valid


def _fold(touched: list[list[Any]]) -> None:
    """Add each pending sum to its accumulators and empty it. An accumulator keeps the id and
    time of its latest event (the last one counted among equal times): folding in the order of
    each pending sum's latest (time, offset) gives what adding event by event gives."""
    if len(touched) > 1:
        touched.sort(key=_by_last_event)
    for pending in touched:
        cost, tokens, requests, eid, t = pending[0], pending[1], pending[2], pending[3], pending[4]
        for acc in pending[_PENDING_ACCS]:
            acc[0] += cost
            acc[1] += tokens
            acc[2] += requests
            if t >= acc[4]:
                acc[3] = eid
                acc[4] = t
        pending[0] = pending[1] = pending[2] = 0
        pending[3] = None
        pending[4] = pending[5] = -1


def _key_from_plain(raw: list[Any]) -> tuple[Any, ...]:
    if len(raw) > 8:
        return (*raw[:8], tuple(tuple(p) for p in raw[8]))
    return tuple(raw)


#: the token event's fields in schema order: the shape of a decoded row in ``process``, whose
#: loop unpacks them by name in this order (the contract's literal; the columnar test pins it
#: equal to the decoder's columns)
EVENT_FIELDS: Final = ev_mod.FIELDS
#: below this many records a batch is decoded record by record (the columnar decoder's fixed
#: cost, ~1-2 ms a call, is more than fastavro's ~8 us per event saves)
COLUMNAR_MIN_BATCH: Final = 256
_as_row: Final = operator.itemgetter(*EVENT_FIELDS)
#: labels in a scope key: (name, value) pairs sorted by name
LabelKey = tuple[tuple[str, str], ...]
_NOTHING: Final = (None,) * (len(EVENT_FIELDS) - 1)


#: where the scope key's fields are in a decoded row
_KEY_AT: Final = tuple(EVENT_FIELDS.index(name) for name in KEY_FIELDS)
_LABELS_AT: Final = EVENT_FIELDS.index("labels")
#: the column after the event fields: see ``_label_columns``
_LABEL_VALUE_AT: Final = len(EVENT_FIELDS)
_SEP: Final = "\x1f"


def _scope_tuples(columns: Sequence[Sequence[Any]], use_labels: bool) -> list[tuple[Any, ...]]:
    """Each row's scope key as the tuple the rollup windows are keyed by."""
    parts = [columns[i] for i in _KEY_AT]
    if not use_labels:
        return list(zip(*parts, strict=True))
    labels = _scope_labels(columns[_LABELS_AT], columns[_LABEL_VALUE_AT])
    return [
        (*key, label) if label else key
        for key, label in zip(zip(*parts, strict=True), labels, strict=True)
    ]


def _scope_strings(frame: pl.DataFrame, lists: Any | None) -> list[str] | None:
    """Each row's scope key as one string, the fields joined by a separator: one new string
    to hash and compare per event instead of eight (~0.8 us less per event, for ~0.3 us of
    polars work). A row's string determines its tuple key (``_scope_tuples``) only while no
    field holds the separator, so a batch where one does gets None (and tuples instead). A
    null project is joined as "", which a valid event never has. ``lists``: the labels
    (``_arrow_lists``) when budgets scope on them, else None."""
    fields = [pl.col(name) for name in KEY_FIELDS]
    if lists is not None:
        entries = lists.values
        names, values = entries.field("key"), entries.field("value")
        if (
            pc.any(pc.match_substring_regex(names, "[\x1d-\x1f]")).as_py()
            or pc.any(pc.match_substring_regex(values, "[\x1d-\x1f]")).as_py()
        ):
            return None
        pairs = pc.binary_join_element_wise(names, values, pa.scalar("\x1d", names.type))
        joined = pc.binary_join(
            pa.ListArray.from_arrays(lists.offsets, pairs), pa.scalar("\x1e", names.type)
        )
        fields.append(pl.lit(pl.from_arrow(joined)))
    keys = frame.select(
        pl.concat_str([f.fill_null("") for f in fields], separator=_SEP).alias("k")
    ).get_column("k")
    if (keys.str.count_matches(_SEP, literal=True) != len(fields) - 1).any():
        return None
    return keys.to_list()


def _arrow_lists(column: pl.Series) -> Any:
    """The labels column as one arrow list array (of key/value structs)."""
    lists = column.to_arrow()
    return lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists


def _label_columns(lists: Any | None, rows: int) -> tuple[list[Any], list[str | None]]:
    """The labels (``_arrow_lists``) as two columns: row i's scope-key labels (``label_key``)
    are ``((names[i], values[i]),)`` when values[i] is not None, else ``names[i]``
    (``_scope_labels``). With one label per event, the usual shape, the two are the names and
    values as read: no tuples are built for the events whose key is already known (most).
    Nones when ``lists`` is None: no budget scopes on labels (not worth reading)."""
    nothing: list[Any] = [None] * rows
    if lists is None:
        return nothing, nothing
    offsets = lists.offsets.to_pylist()
    keys = lists.values.field("key").to_pylist()
    values = lists.values.field("value").to_pylist()
    first, last = offsets[0], offsets[-1]
    if offsets == list(range(first, last + 1)) and last - first == rows:
        return keys[first:last], values[first:last]
    keyed = [
        tuple(sorted(zip(keys[a:b], values[a:b], strict=True)))
        for a, b in itertools.pairwise(offsets)
    ]
    return keyed, nothing


def _scope_labels(names: Sequence[Any], values: Sequence[str | None]) -> Iterator[Any]:
    """Rows' scope-key labels from ``_label_columns`` (process() inlines this for new keys)."""
    return (((n, v),) if v is not None else n for n, v in zip(names, values, strict=True))


def _labels(column: pl.Series, wanted: bool) -> list[LabelKey | None]:
    """The labels column as scope-key parts (``label_key``), or Nones when not wanted."""
    names, values = _label_columns(_arrow_lists(column) if wanted else None, len(column))
    return list(_scope_labels(names, values))


def label_key(labels: Mapping[str, str] | None) -> LabelKey:
    """Labels as they appear in a scope key: (name, value) pairs sorted by name."""
    if not labels:
        return ()
    if len(labels) == 1:
        return tuple(labels.items())
    return tuple(sorted(labels.items()))
