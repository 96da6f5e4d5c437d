"""The ground-truth checker, in the manner of Jepsen's queue checker.

A run's producers write a *ledger*: every event the SDK saw acknowledged by the broker (and
the ids of those it saw fail: they may or may not have got through). After the run, with
everything drained, ``check`` compares the real ClickHouse and the real topics with it:

* every acked event is in ``token_events`` exactly once: ``lost`` (acked, absent),
  ``duplicated`` (extra copies), ``invented`` (rows of ids nobody sent); a failed send that
  still arrived (``unacked_present``) is allowed, as in Jepsen's "recovered" count;
* no dedup key without its row (``orphan_keys``: an id in ``event_ids`` absent from
  ``token_events``, OpenMeter's failure: a replay of that event would be dropped as a
  duplicate and the spend lost for good);
* every row is priced as the catalog prices the ledger's event (``mispriced``);
* ``token_events``' sums and every rollup table, key by key, equal the ledger's sums;
* each budget's total (per period, from ClickHouse) equals the ledger's; each alert's
  ``spent`` lies between its threshold and the ledger's total; the enforcement topic's last
  state of every block-mode budget is "blocked" exactly when the ledger's total reached the
  limit;
* every alert the ledger implies is on the alerts topic once (``missing``, ``duplicate``)
  and no other of a modelled kind is (``extra``). Expected alerts come from an
  ``expected_alerts`` function: by default ``reference_expected_alerts``, the reference
  model of streams/loadtest/reference.py over the acked messages in broker order.
  Alerts of kinds the model does not cover are counted in ``unmodelled``, not failed.

``CheckResult.ok`` is True only when every count is zero and every comparison holds.
The ledger is a JSON-lines file (``LedgerWriter`` in a producer process, ``Ledger.load``),
held in memory as integer columns (streams/loadtest/compact.py); the per-id questions and
the sums are asked of ClickHouse over a copy of it, so a run of millions of events checks in
bounded memory (1.5M events: 681 MiB peak and 84 s for the ledger side on the shared 2-core
machine at load average 8-9, where the dicts of the former ledger took 1.29 GB and 190 s
for 300k; loadtest/bench_checker.py).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from streams import events
from streams.budgets import Budget
from streams.clickhouse import connect, quote_identifier
from streams.loadtest import reference
from streams.loadtest.compact import Ledger, accepted, group_sum, period_starts
from streams.pricing import PriceCatalog
from streams.processors.alerts import threshold_alert_id
from streams.processors.detectors import crossed
from streams.processors.periods import calendar_period
from streams.serde import AvroCodec
from streams.settings import Settings

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
SUMS = (*events.TOKEN_FIELDS, "cost_nanos")
_DIMENSIONS = (
    "org_id", "team_id", "user_id", "project_id", "provider", "model", "client", "task_type",
    "status",
)  # fmt: skip
#: every rollup table: its time column and its grouping columns
ROLLUPS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "spend_hourly": ("hour", _DIMENSIONS),
    "spend_daily": ("day", _DIMENSIONS),
    "spend_user_hourly": ("hour", ("org_id", "team_id", "user_id")),
    "spend_user_daily": ("day", ("org_id", "team_id", "user_id")),
    "spend_team_hourly": ("hour", ("org_id", "team_id")),
    "spend_team_daily": ("day", ("org_id", "team_id")),
}
#: ids shown per failing count in ``CheckResult.samples``
SAMPLE = 5

#: (ledger) -> {alert_id: kind}, and the kinds it models (others are only counted)
ExpectedAlerts = Callable[["Ledger"], Mapping[str, str]]


# ---------------------------------------------------------------------------- the ledger


class LedgerWriter:
    """Appends to a ledger file: ``acked(event)`` from the SDK's delivery callback,
    ``failed(event_id)`` for a reported failure. Line-buffered: a SIGKILLed producer loses
    at most the line it was writing (``Ledger.load`` skips it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def acked(
        self, event: Mapping[str, Any], partition: int = -1, offset: int = -1, ts: int = -1
    ) -> None:
        """``partition``, ``offset``, ``ts``: where the broker put it (its append time)."""
        entry: dict[str, Any] = {"e": dict(event)}
        if partition >= 0 and offset >= 0:
            entry["at"] = [partition, offset, ts]
        self._fh.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def failed(self, event_id: str) -> None:
        self._fh.write(json.dumps({"f": event_id}) + "\n")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- expectations


def budget_amounts(
    budget: Budget, acked: Iterable[events.Event], catalog: PriceCatalog
) -> dict[int, int]:
    """The budget's total per period start (calendar periods only), in its unit."""
    out: dict[int, int] = defaultdict(int)
    for event in acked:
        if not budget.matches(event) or event["event_time"] < budget.counting_from:
            continue
        tokens = sum(event[f] for f in events.TOKEN_FIELDS) - event["reasoning_tokens"]
        cost = catalog.price(event).cost_nanos
        start = calendar_period(event["event_time"], budget.period, budget.timezone).start
        out[start] += budget.amount(cost, tokens)
    return dict(out)


def simple_expected_alerts(ledger: Ledger) -> dict[str, str]:
    """Threshold alerts of calendar-period budgets defined before the run (created_at 0).

    Stands in for the reference model until it is given: the run must then avoid what this
    does not model (rolling windows, budgets created mid-run); forecasts, spikes, runaway
    sessions and unpriced models are counted as ``unmodelled``.
    """
    out: dict[str, str] = {}
    for budget in ledger.budgets:
        if budget.period == "rolling":
            continue
        for start, spent in ledger.amounts(budget).items():
            for pct in crossed(spent, budget.limit, budget.thresholds_pct):
                aid = threshold_alert_id(budget.budget_id, budget.definition_version, start, pct)
                out[aid] = "threshold_crossed"
    return out


simple_expected_alerts.kinds = frozenset({"threshold_crossed"})  # type: ignore[attr-defined]


def reference_expected_alerts(ledger: Ledger) -> dict[str, str]:
    """The threshold alerts of streams.loadtest.reference (docs/budget-truth.md) for the
    ledger's acked messages in broker order, the budgets set before the first; without the
    messages' positions, ``simple_expected_alerts``."""
    if not ledger.fully_positioned:
        return simple_expected_alerts(ledger)
    return {
        threshold_alert_id(budget_id, version, start, pct): "threshold_crossed"
        for budget_id, version, start, pct in reference_alert_keys(ledger)
    }


reference_expected_alerts.kinds = frozenset({"threshold_crossed"})  # type: ignore[attr-defined]


def reference_alert_keys(
    ledger: Ledger, hold_ms: int = reference.HOLD_MS, horizon_ms: int = reference.HORIZON_MS
) -> set[reference.AlertKey]:
    """``reference.evaluate(steps).alerts`` for the ledger's steps (its budgets, then every
    acked message as an arrival: the ledger's only shape), computed over its columns.

    With every budget set before the first arrival, each definition still current at the
    end sees every arrival with clock 0, and a replaced one sees none; the statuses are the
    model's (``_statuses``): an arrival of an id that arrived once is counted when the sink
    accepts it, the copies of an id are judged in partition and offset order against the
    copies already inserted. tests/unit/test_loadtest_checker.py checks this equals
    ``reference.evaluate`` on random ledgers.
    """
    steps: list[reference.Step] = [reference.SetBudget(b) for b in ledger.budgets]
    frozen = ledger.frozen()
    counted = _counted(ledger, horizon_ms)
    rank, ts = frozen.m_rank[counted], frozen.m_ts[counted]
    times_all = frozen.u("event_time")[rank]
    found: set[reference.AlertKey] = set()
    for d in reference.definitions(steps):
        if d.end != len(steps):
            continue  # replaced before the first arrival: it saw none
        budget = d.budget
        take = ledger.match(budget)[rank]
        times, arrived = times_all[take], ts[take]
        if budget.period == "rolling":
            size = reference.bucket_ms(budget)
            starts = times - times % size
            ends = starts + size
        else:

            def period(ms: int, b: Budget = budget) -> tuple[int, int]:
                return reference.calendar_period(ms, b.period, b.timezone)

            starts = period_starts(times, lambda ms: period(ms)[0])
            end_of = {s: period(s)[1] for s in np.unique(starts).tolist()}
            ends = np.array([end_of[s] for s in starts.tolist()], dtype=np.int64)
        held = arrived < ends + hold_ms
        starts = starts[held]
        cost = group_sum(starts, frozen.u("cost")[rank][take][held])
        tokens = group_sum(starts, frozen.u("tokens")[rank][take][held])
        requests = group_sum(starts, np.ones(len(starts), dtype=np.int64))
        buckets = {s: reference.Total(cost[s], tokens[s], requests[s]) for s in cost}
        found |= reference.alerts_of(d, buckets, hold_ms)
    return found


def _counted(ledger: Ledger, horizon_ms: int) -> Any:
    """Per acked message: does the reference model count it (``reference._statuses``)."""
    frozen = ledger.frozen()
    counted = frozen.m_valid.copy()
    copies = np.bincount(frozen.m_rank, minlength=len(frozen.u_first))
    several = np.flatnonzero(copies[frozen.m_rank] > 1)
    if not len(several):
        return counted
    by_id: dict[int, list[int]] = defaultdict(list)
    for m in several.tolist():
        by_id[int(frozen.m_rank[m])].append(m)
    for r, messages in by_id.items():
        event = ledger.event(int(frozen.u_first[r]))  # every copy is judged as the first
        cost = int(frozen.u("cost")[r])
        inserted: dict[int, list[int]] = defaultdict(list)
        for m in sorted(messages, key=lambda m: (frozen.m_partition[m], frozen.m_offset[m])):
            t = int(frozen.m_ts[m])
            earlier = inserted[int(frozen.m_partition[m])]
            counted[m] = accepted(event, t, cost) and not any(t - e < horizon_ms for e in earlier)
            if counted[m]:
                earlier.append(t)
    return counted


# ---------------------------------------------------------------------------- the result


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Every count of one check; ``ok`` when nothing was lost, doubled, invented or wrong."""

    acked: int  # distinct acked event ids
    acked_messages: int  # acked sends, re-sends included
    unacked: int  # ids whose send failed (may or may not be stored)
    rows: int  # rows in token_events
    stored: int  # distinct ids in token_events
    lost: int
    duplicated: int  # extra copies (a row stored 3 times counts 2)
    invented: int
    unacked_present: int  # failed sends that were stored anyway: allowed
    mispriced: int
    totals_diff: Mapping[str, tuple[int, int]]  # column -> (ledger, ClickHouse)
    rollup_diffs: Mapping[str, int]  # table -> keys that differ
    budget_diffs: Mapping[str, str]  # "budget@period" -> what differs
    enforcement_diffs: Mapping[str, str]  # budget -> what differs
    alerts_expected: int
    alerts_seen: int  # distinct alert ids on the topic
    missing_alerts: int
    duplicate_alerts: int  # extra copies on the topic
    extra_alerts: int  # of a modelled kind, not implied by the ledger
    unmodelled_alerts: Mapping[str, int]  # kind -> distinct ids (not judged)
    samples: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    orphan_keys: int = 0  # ids in event_ids (the sink's dedup keys) without a row

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.orphan_keys
            or self.duplicated
            or self.invented
            or self.mispriced
            or self.totals_diff
            or self.rollup_diffs
            or self.budget_diffs
            or self.enforcement_diffs
            or self.missing_alerts
            or self.duplicate_alerts
            or self.extra_alerts
        )

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ok"] = self.ok
        return out

    def summary(self) -> str:
        head = (
            f"{'OK' if self.ok else 'FAILED'}: {self.acked} acked events ({self.acked_messages} "
            f"acked sends, {self.unacked} failed sends, {self.unacked_present} of them stored); "
            f"ClickHouse {self.rows} rows; lost {self.lost}, duplicated {self.duplicated}, "
            f"invented {self.invented}, mispriced {self.mispriced}, orphan keys "
            f"{self.orphan_keys}; alerts expected "
            f"{self.alerts_expected}, seen {self.alerts_seen}, missing {self.missing_alerts}, "
            f"duplicate {self.duplicate_alerts}, extra {self.extra_alerts}"
        )
        parts = [head]
        if self.unmodelled_alerts:
            parts.append(f"unmodelled alerts {dict(self.unmodelled_alerts)}")
        for name in ("totals_diff", "rollup_diffs", "budget_diffs", "enforcement_diffs"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name} {dict(value)}")
        if self.samples:
            parts.append(f"samples {dict(self.samples)}")
        return "; ".join(parts)


# ---------------------------------------------------------------------------- checking


def read_topic(settings: Settings, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every record of ``topic`` up to its current end (confluent-kafka messages)."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"checker-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        ends: dict[int, int] = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        found: list[Any] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            found.append(msg)
            partition, offset = msg.partition(), msg.offset()
            if (
                partition is not None
                and offset is not None
                and offset + 1 >= ends.get(partition, 0)
            ):
                ends.pop(partition, None)
        if ends:
            raise TimeoutError(f"{topic}: not read to its end in {timeout}s: {ends}")
        return found
    finally:
        consumer.close()


def check(
    settings: Settings,
    ledger: Ledger,
    *,
    expected_alerts: ExpectedAlerts | None = None,
    modelled_kinds: Iterable[str] | None = None,
    alerts: bool = True,
) -> CheckResult:
    """Compare ClickHouse (``settings.clickhouse_database``, which only this run wrote) and
    the alerts and enforcement topics of ``settings`` with the ledger.

    ``expected_alerts``: the model of the alerts (default ``reference_expected_alerts``);
    ``modelled_kinds``: the kinds it covers (default: its ``kinds`` attribute, else every
    kind it returned). ``alerts=False`` skips the topics (a sink-only run).

    The ledger's distinct events (id, catalog price, hour, day, dimensions, tokens) and its
    failed ids are copied into a table of the run's database for the check's length, so
    that ClickHouse answers the per-id questions (lost, duplicated, invented, mispriced:
    joins over ids) and the sums (totals, every rollup key by key) on both sides; only
    counts and a few sample ids come back.
    """
    samples: dict[str, tuple[str, ...]] = {}
    unacked = ledger.unacked
    amounts = {b.budget_id: ledger.amounts(b) for b in ledger.budgets if b.period != "rolling"}
    table = quote_identifier(f"checker_ledger_{uuid.uuid4().hex[:12]}")
    client = connect(settings, database=settings.clickhouse_database)
    try:
        _upload(client, table, ledger, unacked)
        ids = _ids_check(client, table, samples)
        totals_diff: dict[str, tuple[int, int]] = {}
        rollup_diffs: dict[str, int] = {}
        # sums: the ledger plus whatever failed sends were stored (their values are unknown
        # to the ledger, so a run with any of them stored compares only what it can)
        if not ids["unacked_present"] and not ids["invented"]:
            want, got = _totals(client, table)
            for column, w, g in zip(("requests", *SUMS), want, got, strict=True):
                if w != g:
                    totals_diff[column] = (w, g)
            for name, spec in ROLLUPS.items():
                bad = _rollup_diff(client, table, name, spec)
                if bad:
                    rollup_diffs[name] = bad
        budget_got = {
            b.budget_id: _budget_spend(client, b, amounts[b.budget_id])
            for b in ledger.budgets
            if b.period != "rolling"
        }
    finally:
        try:
            client.command(f"DROP TABLE IF EXISTS {table}")
        finally:
            client.close()

    budget_diffs: dict[str, str] = {}
    for budget in ledger.budgets:
        if budget.period == "rolling":
            continue
        wanted = amounts[budget.budget_id]
        found = budget_got[budget.budget_id]
        for start in sorted(wanted.keys() | found.keys()):
            if wanted.get(start, 0) != found.get(start, 0) and not ids["unacked_present"]:
                budget_diffs[f"{budget.budget_id}@{start}"] = (
                    f"ClickHouse {found.get(start, 0)}, ledger {wanted.get(start, 0)}"
                )

    seen_alerts: dict[str, dict[str, Any]] = {}
    copies: Counter[str] = Counter()
    enforcement_diffs: dict[str, str] = {}
    expected: Mapping[str, str] = {}
    missing: list[str] = []
    extra: list[str] = []
    unmodelled: Counter[str] = Counter()
    if alerts:
        model = expected_alerts or reference_expected_alerts
        expected = model(ledger)
        kinds = set(
            modelled_kinds
            if modelled_kinds is not None
            else getattr(model, "kinds", None) or set(expected.values())
        )
        codec = AvroCodec("budget_alert")
        for msg in read_topic(settings, settings.topic_alerts):
            alert = codec.decode(msg.value())
            copies[alert["alert_id"]] += 1
            seen_alerts.setdefault(alert["alert_id"], alert)
        missing = [aid for aid in expected if aid not in seen_alerts]
        for aid, alert in seen_alerts.items():
            if aid in expected:
                continue
            if alert["kind"] in kinds:
                extra.append(aid)
            else:
                unmodelled[alert["kind"]] += 1
        _check_alert_spend(ledger, seen_alerts, amounts, budget_diffs)
        enforcement_diffs = _check_enforcement(settings, ledger, amounts)
        if missing:
            samples["missing_alerts"] = tuple(sorted(missing)[:SAMPLE])
        if extra:
            samples["extra_alerts"] = tuple(
                f"{aid} {seen_alerts[aid]['kind']}: {seen_alerts[aid]['message']}"
                for aid in sorted(extra)[:SAMPLE]
            )
        dup_ids = [aid for aid, n in copies.items() if n > 1]
        if dup_ids:
            samples["duplicate_alerts"] = tuple(sorted(dup_ids)[:SAMPLE])

    return CheckResult(
        acked=len(ledger.acked),
        acked_messages=ledger.acked_messages,
        unacked=len(unacked),
        rows=ids["rows"],
        stored=ids["stored"],
        lost=ids["lost"],
        duplicated=ids["duplicated"],
        invented=ids["invented"],
        unacked_present=ids["unacked_present"],
        mispriced=ids["mispriced"],
        totals_diff=totals_diff,
        rollup_diffs=rollup_diffs,
        budget_diffs=budget_diffs,
        enforcement_diffs=enforcement_diffs,
        alerts_expected=len(expected),
        alerts_seen=len(seen_alerts),
        missing_alerts=len(missing),
        duplicate_alerts=sum(n - 1 for n in copies.values() if n > 1),
        extra_alerts=len(extra),
        unmodelled_alerts=dict(unmodelled),
        samples=samples,
        orphan_keys=ids["orphan_keys"],
    )


#: the ledger table's grouping columns (None stored as '', as token_events stores it)
_LEDGER_DIMS = _DIMENSIONS
#: rows per insert into the ledger table
_CHUNK = 100_000


def _upload(client: Any, table: str, ledger: Ledger, unacked: Iterable[str]) -> None:
    """The ledger's distinct acked events (kind 0) and failed ids (kind 1) into ``table``."""
    dims = ", ".join(f"{d} String" for d in _LEDGER_DIMS)
    tokens = ", ".join(f"{f} Int64" for f in events.TOKEN_FIELDS)
    client.command(
        f"CREATE TABLE {table} (kind UInt8, event_id UUID, cost Int64, source String, "
        f"hour UInt32, day UInt32, {dims}, {tokens}) ENGINE = MergeTree ORDER BY tuple()"
    )
    names = ["kind", "event_id", "cost", "source", "hour", "day", *_LEDGER_DIMS]
    names += list(events.TOKEN_FIELDS)
    frozen = ledger.frozen()
    # TabSeparated bytes built here and sent as they are: clickhouse-connect 1.12's Native
    # insert kept ~50 MB per 100k-row block of Python lists (1.1 GB over a 2M-event check)
    text = [_tsv("" if v is None else v) for v in ledger.strings.values]
    total = len(frozen.u_first)
    for lo in range(0, total, _CHUNK):
        part = slice(lo, min(total, lo + _CHUNK))
        times = frozen.u("event_time")[part]
        columns: list[Any] = [
            ["0"] * (part.stop - part.start),
            [ledger.event_id(m) for m in frozen.u_first[part].tolist()],
            map(str, frozen.u("cost")[part].tolist()),
            [text[c] for c in frozen.u("source")[part].tolist()],
            map(str, (times // HOUR_MS * 3600).tolist()),
            map(str, (times // DAY_MS).tolist()),
            *([text[c] for c in frozen.u(d)[part].tolist()] for d in _LEDGER_DIMS),
            *(map(str, frozen.u(f)[part].tolist()) for f in events.TOKEN_FIELDS),
        ]
        _insert_tsv(client, table, names, zip(*columns, strict=True))
    failed = sorted(unacked)
    if failed:
        rest = ["0", "", "0", "0", *([""] * len(_LEDGER_DIMS)), *(["0"] * len(events.TOKEN_FIELDS))]
        _insert_tsv(client, table, names, (["1", eid, *rest] for eid in failed))


def _tsv(value: str) -> str:
    """``value`` escaped for ClickHouse's TabSeparated format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _insert_tsv(client: Any, table: str, names: list[str], rows: Iterable[Iterable[str]]) -> None:
    body = "".join("\t".join(row) + "\n" for row in rows).encode()
    if body:
        client.raw_insert(table, names, body, fmt="TabSeparated")


def _ids_check(client: Any, table: str, samples: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Per-id counts, ClickHouse side: rows, stored, lost, duplicated, invented,
    unacked_present, mispriced, orphan_keys; ``samples`` gets a few ids of each failing one."""

    def one(sql: str) -> int:
        return int(client.query(sql).result_rows[0][0])

    def sample(name: str, ids_sql: str) -> None:
        rows = client.query(f"SELECT s FROM ({ids_sql}) ORDER BY s LIMIT {SAMPLE}").result_rows
        samples[name] = tuple(str(r[0]) for r in rows)

    out: dict[str, int] = {}
    rows, stored = client.query(
        "SELECT count(), uniqExact(event_id) FROM token_events"
    ).result_rows[0]
    out["rows"], out["stored"] = int(rows), int(stored)
    stored_ids = "SELECT event_id FROM token_events"
    queries = {
        "lost": f"SELECT toString(event_id) AS s FROM {table} "
        f"WHERE kind = 0 AND event_id NOT IN ({stored_ids})",
        "invented": f"SELECT toString(event_id) AS s FROM (SELECT DISTINCT event_id FROM "
        f"token_events) WHERE event_id NOT IN (SELECT event_id FROM {table})",
        "mispriced": "SELECT toString(t.event_id) AS s FROM (SELECT event_id, "
        "min(cost_nanos) AS low, max(cost_nanos) AS high, any(cost_source) AS src "
        f"FROM token_events GROUP BY event_id) AS t INNER JOIN (SELECT event_id, cost, source "
        f"FROM {table} WHERE kind = 0) AS l ON t.event_id = l.event_id WHERE t.low != t.high "
        "OR toInt128(t.low) != toInt128(l.cost) OR t.src != l.source",
        "orphan_keys": "SELECT toString(event_id) AS s FROM (SELECT DISTINCT event_id FROM "
        f"event_ids) WHERE event_id NOT IN ({stored_ids})",
    }
    for name, sql in queries.items():
        out[name] = one(f"SELECT count() FROM ({sql})")
        if out[name]:
            sample(name, sql)
    copies = "SELECT event_id, count() AS c FROM token_events GROUP BY event_id HAVING c > 1"
    out["duplicated"] = one(f"SELECT sum(c - 1) FROM ({copies})")
    if out["duplicated"]:
        sample("duplicated", f"SELECT toString(event_id) AS s FROM ({copies})")
    out["unacked_present"] = one(
        f"SELECT uniqExact(event_id) FROM {table} WHERE kind = 1 AND event_id IN ({stored_ids})"
    )
    return out


def _totals(client: Any, table: str) -> tuple[list[int], list[int]]:
    """(ledger, ClickHouse): requests, every token sum and cost."""
    got = ", ".join(f"sum(toInt128({c}))" for c in SUMS)
    want = ", ".join(f"sum(toInt128({c}))" for c in (*events.TOKEN_FIELDS, "cost"))
    ledger_row = client.query(f"SELECT count(), {want} FROM {table} WHERE kind = 0")
    stored_row = client.query(f"SELECT count(), {got} FROM token_events")
    return (
        [int(v) for v in ledger_row.result_rows[0]],
        [int(v) for v in stored_row.result_rows[0]],
    )


def _rollup_diff(client: Any, table: str, rollup: str, spec: tuple[str, tuple[str, ...]]) -> int:
    """Keys of ``rollup`` whose sums differ from the ledger's (or that only one side has)."""
    time_column, dims = spec
    stored_key = "toUnixTimestamp(hour)" if time_column == "hour" else "toUInt32(day)"
    ledger_key = "hour" if time_column == "hour" else "day"
    keys = ", ".join(("k", *dims))
    dim_cols = ", ".join(f"toString({d}) AS {d}" for d in dims)
    names = ("requests", *SUMS)
    got = ", ".join(f"sum(toInt128({c})) AS {c}" for c in names)
    want = ", ".join(
        ["toInt128(count()) AS requests"]
        + [f"sum(toInt128({c})) AS {c}" for c in events.TOKEN_FIELDS]
        + ["sum(toInt128(cost)) AS cost_nanos"]
    )
    differs = " OR ".join(["g.present != w.present", *(f"g.{c} != w.{c}" for c in names)])
    sql = (
        f"SELECT count() FROM (SELECT toUInt32({stored_key}) AS k, {dim_cols}, {got}, "
        f"toUInt8(1) AS present FROM {quote_identifier(rollup)} GROUP BY {keys}) AS g "
        f"FULL OUTER JOIN (SELECT toUInt32({ledger_key}) AS k, {dim_cols}, {want}, "
        f"toUInt8(1) AS present FROM {table} WHERE kind = 0 GROUP BY {keys}) AS w "
        f"USING ({keys}) WHERE {differs}"
    )
    return int(client.query(sql, settings={"join_use_nulls": 0}).result_rows[0][0])


def _budget_spend(client: Any, budget: Budget, periods: Mapping[int, int]) -> dict[int, int]:
    """The budget's total from token_events for each period the ledger has spend in."""
    out: dict[int, int] = {}
    amount = (
        "sum(input_tokens + cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens "
        "+ output_tokens)"
        if budget.unit == "tokens"
        else "sum(cost_nanos)"
    )
    where: list[str] = []
    params: dict[str, Any] = {}
    for field, value in budget.scope.items():
        if field.startswith("label."):
            name = f"l{len(params)}"
            params[name + "k"], params[name + "v"] = field[len("label.") :], value
            where.append(f"labels[{{{name}k:String}}] = {{{name}v:String}}")
        else:
            params[field] = value
            where.append(f"{quote_identifier(field)} = {{{field}:String}}")
    for start in periods:
        end = calendar_period(start, budget.period, budget.timezone).end
        bounds = {"s": max(start, budget.counting_from), "e": end}
        sql = f"SELECT {amount} FROM token_events WHERE " + " AND ".join(
            [
                *where,
                "event_time >= fromUnixTimestamp64Milli({s:Int64})",
                "event_time < fromUnixTimestamp64Milli({e:Int64})",
            ]
        )
        out[start] = int(client.query(sql, parameters={**params, **bounds}).result_rows[0][0])
    return out


def _ms(value: Any) -> int:
    if hasattr(value, "timestamp"):
        return round(value.timestamp() * 1000)
    return int(value)


def _check_alert_spend(
    ledger: Ledger,
    seen: Mapping[str, Mapping[str, Any]],
    amounts: Mapping[str, Mapping[int, int]],
    diffs: dict[str, str],
) -> None:
    """A threshold alert's ``spent``: at least its threshold, at most the period's total."""
    by_id = {b.budget_id: b for b in ledger.budgets}
    for aid, alert in seen.items():
        budget = by_id.get(alert.get("budget_id") or "")
        if alert["kind"] != "threshold_crossed" or budget is None or budget.period == "rolling":
            continue
        start = _ms(alert["period_start"])
        total = amounts[budget.budget_id].get(start, 0)
        pct = alert["threshold_pct"] or 0
        if not (alert["spent"] * 100 >= budget.limit * pct and alert["spent"] <= total):
            diffs[f"{budget.budget_id}@{start} alert {aid}"] = (
                f"alert spent {alert['spent']}, threshold {pct}% of {budget.limit}, "
                f"ledger total {total}"
            )


def _check_enforcement(
    settings: Settings, ledger: Ledger, amounts: Mapping[str, Mapping[int, int]]
) -> dict[str, str]:
    """The last block state of every block-mode budget against the ledger's current period."""
    state: dict[str, dict[str, Any] | None] = {}
    for msg in read_topic(settings, settings.topic_enforcement):
        key = msg.key().decode() if msg.key() else ""
        state[key] = json.loads(msg.value()) if msg.value() else None
    now = events.now_ms()
    diffs: dict[str, str] = {}
    for budget in ledger.budgets:
        if budget.mode != "block" or budget.period == "rolling":
            continue
        start = calendar_period(now, budget.period, budget.timezone).start
        total = amounts[budget.budget_id].get(start, 0)
        record = state.get(budget.budget_id)
        blocked = bool(record and record.get("blocked"))
        if blocked != (total >= budget.limit):
            diffs[budget.budget_id] = (
                f"blocked={blocked}, ledger total {total} against limit {budget.limit}"
            )
        elif record is not None and not (budget.limit <= record["spent"] <= total):
            diffs[budget.budget_id] = (
                f"block record spent {record['spent']}, limit {budget.limit}, ledger {total}"
            )
    return diffs
