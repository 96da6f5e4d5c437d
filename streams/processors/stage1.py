"""Stage 1: one events partition at a time, a whole fetched batch per call, exact and restartable.

Per partition it keeps, in plain dicts: the event-time watermark, the ids seen within the
allowed lateness (re-sent duplicates land on the same partition as their original), per-budget
partial sums for each period bucket, per-org per-minute spend for spike detection, per-session
runaway state, and 1-minute rollup windows. It returns what to publish: cumulative budget
partials for stage 2 (idempotent: stage 2 keeps the highest offset per source partition),
closed rollup rows, runaway alerts and dead letters.

Restart exactness: ``snapshot()`` is the state after exactly the events up to ``applied``;
the app checkpoints it atomically (processors/checkpoint.py) and events at or below
``applied`` are skipped when replayed.
"""

from __future__ import annotations

import array
import dataclasses
import itertools
import operator
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

import polars as pl
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from streams import events as ev_mod
from streams.budgets import Budget, BudgetMatcher
from streams.errors import DecodeError
from streams.pricing import PriceCatalog, PriceEntry
from streams.processors.alerts import (
    DAY_MS,
    format_amount,
    make_alert,
    runaway_alert_id,
    unpriced_alert,
)
from streams.processors.detectors import RunawayRules, SessionState, runaway_reasons
from streams.processors.periods import MINUTE_MS, PeriodCache
from streams.serde.columnar import ColumnarDecoder

ROLLUP_COUNTERS: Final = (
    "requests",
    "error_requests",
    "unpriced_requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nanos",
)
#: the scope key of the hot path (labels appended when a budget uses them)
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
_MASK63: Final = 0x7FFF_FFFF_FFFF_FFFF
_HALF_M: Final = 500_000
_MIN_T: Final = ev_mod.MIN_EVENT_TIME_MS
#: per scope key and minute: the pending sum it adds to, its model's price entries, and the
#: rates (input, cache read, cache write 5m and 1h, output, reasoning) when one untiered
#: entry prices the whole minute
_Rates = tuple[int, int, int, int, int, int]
_Targets = tuple[list[Any], Sequence[PriceEntry], _Rates | None]
#: the same plus the key's rollup row in the minute's open window
_KeyInfo = tuple[list[Any], Sequence[PriceEntry], _Rates | None, list[int]]
#: a pending sum: [cost, tokens, requests, last event id, its time, its offset, accumulators]
_PENDING_ACCS: Final = 6
_by_last_event: Final = operator.itemgetter(4, 5)


class Record(Protocol):
    """What stage 1 reads of a Kafka record (aiokafka ConsumerRecord fits)."""

    offset: int
    key: bytes | None
    value: bytes | None


@dataclasses.dataclass(frozen=True)
class Stage1Config:
    allowed_lateness_ms: int = 5 * 60_000
    rollup_grace_ms: int = 5_000
    session_idle_ms: int = 2 * 3_600_000
    spike_keep_minutes: int = 2
    runaway: RunawayRules = dataclasses.field(default_factory=RunawayRules)


@dataclasses.dataclass
class DeadLetterOut:
    record: Record
    kind: str
    reason: str


@dataclasses.dataclass
class Stage1Output:
    partials: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: closed windows as (partition, minute, rows, revision); ``rollup_rows`` makes the rows
    #: lazily, so that a minute closing does not hold up the batch that closed it
    rollup_windows: list[tuple[int, int, Mapping[tuple[Any, ...], list[int]], int]] = (
        dataclasses.field(default_factory=list)
    )
    alerts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    dead: list[DeadLetterOut] = dataclasses.field(default_factory=list)
    counted: int = 0
    duplicates: int = 0
    skipped: int = 0

    @property
    def rollups(self) -> list[dict[str, Any]]:
        """Every closed window's rows (built on each call: the worker streams them instead)."""
        return [row for window in self.rollup_windows for row in rollup_rows(*window)]


def rollup_rows(
    partition: int, minute: int, rows: Mapping[tuple[Any, ...], list[int]], revision: int
) -> Iterator[dict[str, Any]]:
    """The rollups-topic records of one closed window of one partition."""
    end = minute + MINUTE_MS
    for dims, counters in rows.items():
        record: dict[str, Any] = dict(zip(KEY_FIELDS, dims[:8], strict=True))
        record.update(zip(ROLLUP_COUNTERS, counters, strict=True))
        record["window_start"] = minute
        record["window_end"] = end
        record["source_partition"] = partition
        record["revision"] = revision
        yield record


class Budgets(Protocol):
    """Live view of the budgets (streams.budgets.BudgetView fits)."""

    @property
    def matcher(self) -> BudgetMatcher: ...


def uuid_int64(event_id: str) -> int:
    """Low 63 bits of the UUID: the dedup key (collisions ~ n^2 / 2^64, negligible)."""
    try:
        return int(event_id.replace("-", ""), 16) & 0x7FFF_FFFF_FFFF_FFFF
    except ValueError:
        return uuid.UUID(event_id).int & 0x7FFF_FFFF_FFFF_FFFF


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
        self.watermark = 0
        # dedup: ids seen per event minute, expired once older than the allowed lateness
        self.seen: set[int] = set()
        self.seen_by_minute: dict[int, list[int]] = {}
        self.saved_ids: dict[int, int] = {}  # minute -> how many ids are in dedup chunks
        # accumulators, all [cost, tokens, requests, last_id, last_t, end, published_requests]:
        # budget partials by (budget_id, period or bucket start), org spend by (org, minute)
        self.partials: dict[tuple[str, int], list[Any]] = {}
        self.org_minutes: dict[tuple[str, int], list[Any]] = {}
        self._period_caches: dict[tuple[str, str, int], PeriodCache] = {}
        self._matcher: BudgetMatcher | None = None
        # per minute: scope key (joined string, or tuple) -> (pending sum it adds to, price
        # entries of its model, its minute's rates, row in windows[minute]); dropped with the
        # window's rows when they are published
        self._accs: dict[int, dict[Any, _KeyInfo]] = {}
        # per minute: (org, id(matched budgets)) -> (matched budgets, pending sum). An event
        # adds to one pending sum, not to each of its 4-8 accumulators; ``_fold`` adds the
        # pending sums to the accumulators at the end of every batch
        self._budget_accs: dict[int, dict[tuple[str, int], tuple[Any, list[Any]]]] = {}
        # budget_id -> (first counted minute, period cache), rebuilt with the matcher
        self._budget_info: dict[str, tuple[int, PeriodCache]] = {}
        self.sessions: dict[str, SessionState] = {}
        #: (provider, model, UTC day) already alerted as unpriced by this partition (the
        #: alert id is the same on every partition and restart: the alert log keeps one)
        self.unpriced_alerted: set[tuple[str, str, int]] = set()
        self._next_session_sweep = 0  # event time of the next idle-session scan
        # rollups: minute -> scope key -> counters; closed minutes hold the late additions
        self.windows: dict[int, dict[tuple[Any, ...], list[int]]] = {}
        self.revisions: dict[int, int] = {}  # minute -> next revision once closed

    # ------------------------------------------------------------------ the hot path

    def process(self, records: Sequence[Record]) -> Stage1Output:
        """Count a batch of records (one partition, offset order); see the module docstring."""
        out = Stage1Output()
        cfg = self.config
        targets_of = self._targets
        now = self.now_ms()
        max_t = now + ev_mod.MAX_FUTURE_MS
        lateness = cfg.allowed_lateness_ms
        wm = self.watermark
        applied = self.applied
        seen = self.seen
        seen_add = seen.add
        seen_by_minute = self.seen_by_minute
        if self.budgets.matcher is not self._matcher:
            self._matcher = self.budgets.matcher
            self._accs = {}
            self._budget_accs = {}
            self._budget_info = {}
        use_labels = self._matcher.uses_labels()
        windows = self.windows
        accs_by_minute = self._accs
        sessions = self.sessions
        rules = cfg.runaway
        growth_keep = rules.growth_turns + 1
        max_cost = rules.max_cost_nanos or 1 << 62
        max_turns = rules.max_turns or 1 << 62
        min_context = rules.growth_min_context if rules.growth_turns else 1 << 62
        dead = out.dead
        if records and records[0].offset <= applied:  # a replay after a restore
            skip = 0
            while skip < len(records) and records[skip].offset <= applied:
                skip += 1
            out.skipped = skip
            records = records[skip:]
        last_offset = records[-1].offset if records else applied
        counted = 0
        cur_minute = -1
        window: dict[tuple[Any, ...], list[int]] = {}
        accs: dict[tuple[Any, ...], _KeyInfo] = {}
        ids: list[int] = []
        touched: list[list[Any]] = []  # pending sums added to in this batch
        alerts = out.alerts
        columns = self._columns(records, use_labels)
        for (
            rec,
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
            scope,
        ) in zip(records, *columns, strict=True):
            if eid is None:  # not decodable: ``t`` holds the reason
                dead.append(DeadLetterOut(rec, "decode", t))
                continue
            try:
                key64 = int(eid.replace("-", ""), 16) & _MASK63 if len(eid) == 36 else -1
            except ValueError:
                key64 = -1
            if not (
                key64 >= 0
                and _MIN_T <= t <= max_t
                and org.strip()
                and team.strip()
                and user.strip()
                and client.strip()
                and provider.strip()
                and model.strip()
                and (i_tok | cr | cw5 | cw1 | out_tok | reas) >= 0
                and reas <= out_tok
                and (reported is None or reported >= 0)
                and (turn is None or turn >= 1)
                and project != ""
                and session != ""
                and api_key != ""
            ):
                # rare: the reasons come from the record decoded on its own, as a dict (the
                # same values: tests/unit/test_serde_columnar.py)
                try:
                    found = ev_mod.problems(self.decode(rec.value), now)
                except DecodeError as exc:  # not expected: the batch decoder read it
                    dead.append(DeadLetterOut(rec, "decode", exc.reason))
                    continue
                if found:
                    dead.append(DeadLetterOut(rec, "invalid", "; ".join(found)))
                    continue
                key64 = uuid_int64(eid)
            if t < wm - lateness:
                dead.append(
                    DeadLetterOut(
                        rec,
                        "late",
                        f"event_time {t} is {wm - t} ms behind the partition watermark {wm}"
                        f" (allowed lateness {lateness} ms)",
                    )
                )
                continue
            if key64 in seen:
                out.duplicates += 1
                continue
            seen_add(key64)
            if t > wm:
                wm = t
            minute = t - t % MINUTE_MS
            if minute != cur_minute:
                cur_minute = minute
                ids = seen_by_minute.setdefault(minute, [])
                window = windows.setdefault(minute, {})
                accs = accs_by_minute.setdefault(minute, {})
            ids.append(key64)
            info = accs.get(scope)
            if info is None:
                if label_value is not None:  # one label, name and value apart (_scope_labels)
                    labels = ((labels, label_value),)
                if use_labels and labels:
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
                row = window.get(key)
                if row is None:
                    row = window[key] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
                info = accs[scope] = (*targets_of(key, minute), row)
            else:
                row = info[3]
            prompt = i_tok + cr + cw5 + cw1
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
                state = sessions.get(session)
                if state is None:
                    state = sessions[session] = SessionState(org, team, user)
                state.cost += cost
                state.turns += 1
                if t > state.last_time:
                    state.last_time = t
                recent = state.recent
                context = prompt
                recent.append(context)
                if len(recent) > growth_keep:
                    del recent[0]
                if state.cost > max_cost or state.turns > max_turns or context >= min_context:
                    for reason in runaway_reasons(state, rules):
                        state.alerted.append(reason)
                        alerts.append(self._runaway_alert(session, state, reason, eid, t, now))
        out.counted = counted
        self.watermark = wm
        self.applied = last_offset
        _fold(touched)
        self._emit_partials(out)
        self._expire(out)
        return out

    def _columns(self, records: Sequence[Record], use_labels: bool) -> Sequence[Sequence[Any]]:
        """The records' fields as columns (EVENT_FIELDS order), decoded as one block when the
        batch is big enough to pay for it, else record by record. A record that does not
        decode has event_id None and the reason in event_time's place."""
        columnar = self.columnar
        if columnar is None or len(records) < COLUMNAR_MIN_BATCH:
            return self._decoded_one_by_one(records, range(len(records)))
        header = columnar.message_header
        size = len(header)
        picked: list[int] = []
        bodies: list[bytes] = []
        for index, rec in enumerate(records):
            value = rec.value
            if value is not None and value[:size] == header:
                picked.append(index)
                bodies.append(value[size:])
        frame = columnar.decode(bodies) if len(bodies) >= COLUMNAR_MIN_BATCH else None
        if frame is None:
            return self._decoded_one_by_one(records, range(len(records)))
        lists = _arrow_lists(frame.get_column("labels")) if use_labels else None
        names, values = _label_columns(lists, frame.height)
        columns = [
            frame.get_column(name).to_list() if name != "labels" else names for name in EVENT_FIELDS
        ]
        columns.append(values)
        columns.append(_scope_strings(frame, lists) or _scope_tuples(columns, use_labels))
        if len(picked) == len(records):
            return columns
        # a few records in another framing or version: merge them in by position
        rows: list[tuple[Any, ...]] = [()] * len(records)
        for index, row in zip(picked, zip(*columns, strict=True), strict=True):
            rows[index] = row
        others = [i for i, row in enumerate(rows) if not row]
        decoded = zip(*self._decoded_one_by_one(records, others), strict=True)
        for index, row in zip(others, decoded, strict=True):
            rows[index] = row
        return list(zip(*rows, strict=True))

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
        columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
        labelled = self._matcher is not None and self._matcher.uses_labels()
        columns.append(_scope_tuples(columns, labelled))
        return columns

    def _period_cache(self, budget: Budget) -> PeriodCache:
        key = (budget.period, budget.timezone, budget.window_ms)
        cache = self._period_caches.get(key)
        if cache is None:
            cache = self._period_caches[key] = PeriodCache(*key)
        return cache

    def _targets(self, key: tuple[Any, ...], minute: int) -> _Targets:
        """The pending sum an event with scope ``key`` in ``minute`` adds to (for its org's
        and its budgets' accumulators), and the price entries of its (provider, model), newest
        first."""
        labels = dict(key[8]) if len(key) > 8 else None
        matcher = self._matcher or self.budgets.matcher
        matched = matcher.match_signature(key[:7], labels)
        # many scope keys of an org match the same budgets: they share one pending sum a minute
        by_matched = self._budget_accs.get(minute)
        if by_matched is None:
            by_matched = self._budget_accs[minute] = {}
        org = key[0]
        cached = by_matched.get((org, id(matched)))
        if cached is None or cached[0] is not matched:
            okey = (org, minute)
            org_acc = self.org_minutes.get(okey)
            if org_acc is None:
                org_acc = self.org_minutes[okey] = [0, 0, 0, None, 0, minute + MINUTE_MS, 0]
            accs = (org_acc, *self._budget_targets(matched, minute))
            cached = by_matched[(org, id(matched))] = (matched, [0, 0, 0, None, -1, -1, accs])
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
        info = self._budget_info
        for budget in matched:
            known = info.get(budget.budget_id)
            if known is None:
                known = info[budget.budget_id] = (budget.counting_from, self._period_cache(budget))
            if minute < known[0]:
                continue  # counted by the ClickHouse baseline taken at creation
            period = known[1].of(minute)
            pkey = (budget.budget_id, period.start)
            acc = self.partials.get(pkey)
            if acc is None:
                acc = self.partials[pkey] = [0, 0, 0, None, 0, period.end, 0]
            found.append(acc)
        return tuple(found)

    def _emit_partials(self, out: Stage1Output) -> None:
        """Cumulative partials of every accumulator changed since it was last published."""
        for kind, table in (("b", self.partials), ("o", self.org_minutes)):
            for (ident, start), acc in table.items():
                if acc[2] == acc[6]:
                    continue
                acc[6] = acc[2]
                out.partials.append(
                    {
                        "k": kind,
                        "id": ident,
                        "s": start,
                        "e": acc[5],
                        "p": self.partition,
                        "q": self.applied,
                        "c": acc[0],
                        "t": acc[1],
                        "n": acc[2],
                        "ei": acc[3],
                        "et": acc[4],
                        "wm": self.watermark,
                    }
                )

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
        # forget days the watermark has left (their ids stay in the alert log)
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
        self, sid: str, state: SessionState, reason: str, event_id: str, event_time: int, now: int
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
            runaway_alert_id(sid, reason),
            now,
            text,
            spent,
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

    # ------------------------------------------------------------------ expiry and rollups

    def _expire(self, out: Stage1Output) -> None:
        cfg = self.config
        wm = self.watermark
        horizon = wm - cfg.allowed_lateness_ms
        for minute in [m for m in self.seen_by_minute if m + MINUTE_MS <= horizon]:
            self.seen.difference_update(self.seen_by_minute.pop(minute))
            self.saved_ids.pop(minute, None)
        for minute in [m for m in self._accs if m + MINUTE_MS <= horizon]:
            del self._accs[minute]
        for minute in [m for m in self._budget_accs if m + MINUTE_MS <= horizon]:
            del self._budget_accs[minute]
        # rollups: close windows once the watermark passes their end + grace; late additions
        # within the allowed lateness are published as further revisions
        for minute in sorted(self.windows):
            end = minute + MINUTE_MS
            if end + cfg.rollup_grace_ms > wm:
                break
            rows = self.windows[minute]
            if rows:
                revision = self.revisions.get(minute, 0)
                out.rollup_windows.append((self.partition, minute, rows, revision))
                self.revisions[minute] = revision + 1
                self.windows[minute] = {}
                self._accs.pop(minute, None)  # they point at the rows just published
            if end <= horizon:
                del self.windows[minute]
                self.revisions.pop(minute, None)
        # budget partials of periods that can no longer change
        for pkey in [k for k, acc in self.partials.items() if acc[5] <= horizon]:
            del self.partials[pkey]
        keep_from = horizon - self.config.spike_keep_minutes * MINUTE_MS
        for okey in [k for k in self.org_minutes if k[1] < keep_from]:
            del self.org_minutes[okey]
        if wm >= self._next_session_sweep:  # a scan of every session: once a minute
            self._next_session_sweep = wm + MINUTE_MS
            idle = wm - cfg.session_idle_ms
            for sid in [s for s, st in self.sessions.items() if st.last_time < idle]:
                del self.sessions[sid]

    # ------------------------------------------------------------------ state

    def take_new_ids(self) -> list[list[Any]]:
        """Ids counted since the last call, as [[minute, packed int64 ids], ...]."""
        chunk = []
        for minute, ids in self.seen_by_minute.items():
            saved = self.saved_ids.get(minute, 0)
            if len(ids) > saved:
                chunk.append([minute, array.array("q", ids[saved:]).tobytes()])
                self.saved_ids[minute] = len(ids)
        return chunk

    def load_ids(self, chunk: Sequence[Sequence[Any]]) -> None:
        horizon = self.watermark - self.config.allowed_lateness_ms
        for minute, packed in chunk:
            if minute + MINUTE_MS <= horizon:
                continue
            ids = array.array("q")
            ids.frombytes(packed)
            self.seen.update(ids)
            self.seen_by_minute.setdefault(minute, []).extend(ids)
            self.saved_ids[minute] = len(self.seen_by_minute[minute])

    def snapshot(self) -> dict[str, Any]:
        """Everything but the dedup ids (written apart, incrementally), as msgpack-able data."""
        return {
            "applied": self.applied,
            "wm": self.watermark,
            "partials": [[k[0], k[1], *v] for k, v in self.partials.items()],
            "orgs": [[k[0], k[1], *v] for k, v in self.org_minutes.items()],
            "sessions": {sid: st.to_list() for sid, st in self.sessions.items()},
            # msgpack writes tuple keys as arrays; restore() turns them back into tuples
            "windows": [[minute, list(rows.items())] for minute, rows in self.windows.items()],
            "revisions": [[m, r] for m, r in self.revisions.items()],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.applied = int(state["applied"])
        self.watermark = int(state["wm"])
        self.partials = {(p[0], p[1]): list(p[2:]) for p in state["partials"]}
        self.org_minutes = {(o[0], o[1]): list(o[2:]) for o in state["orgs"]}
        self.sessions = {s: SessionState.from_list(v) for s, v in state["sessions"].items()}
        self.windows = {
            minute: {_key_from_plain(d): list(c) for d, c in rows}
            for minute, rows in state["windows"]
        }
        self.revisions = {m: r for m, r in state["revisions"]}
        self._accs = {}
        self._budget_accs = {}


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
#: loop unpacks them by name in this order (so a literal, not read from the schema; the
#: columnar test pins it equal to the schema's field order)
EVENT_FIELDS: Final = (
    "event_id",
    "event_time",
    "org_id",
    "team_id",
    "user_id",
    "project_id",
    "api_key_id",
    "session_id",
    "turn",
    "client",
    "task_type",
    "provider",
    "model",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "status",
    "labels",
)
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
