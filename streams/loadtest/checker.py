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
The ledger is a JSON-lines file (``LedgerWriter`` in a producer process, ``Ledger.load``).
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

from confluent_kafka import Consumer, TopicPartition

from streams import events
from streams.budgets import Budget
from streams.clickhouse import connect, quote_identifier
from streams.loadtest import reference
from streams.pricing import PriceCatalog, default_catalog
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


@dataclasses.dataclass
class Ledger:
    """What the producers saw: acked events (first copy by id), failed ids, the budgets."""

    acked: dict[str, events.Event] = dataclasses.field(default_factory=dict)
    unacked: set[str] = dataclasses.field(default_factory=set)
    budgets: list[Budget] = dataclasses.field(default_factory=list)
    #: acknowledged messages, re-sends of one id included
    acked_messages: int = 0
    #: where each acked message landed, when the producer said: (partition, offset, broker
    #: append time, event_id), for the reference model's arrivals
    positions: list[tuple[int, int, int, str]] = dataclasses.field(default_factory=list)

    def add_acked(self, event: events.Event, position: tuple[int, int, int] | None = None) -> None:
        self.acked_messages += 1
        eid = str(event["event_id"])
        self.acked.setdefault(eid, event)
        self.unacked.discard(eid)
        if position is not None:
            self.positions.append((*position, eid))

    def add_failed(self, event_id: str) -> None:
        if event_id not in self.acked:
            self.unacked.add(event_id)

    @classmethod
    def load(cls, *paths: Path, budgets: Iterable[Budget] = ()) -> Ledger:
        """The ledger of one or more ``LedgerWriter`` files (several producer processes)."""
        ledger = cls(budgets=list(budgets))
        failed: list[str] = []
        for path in paths:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if not line.endswith("\n"):
                        break  # a writer killed mid-line: that event was not recorded
                    entry = json.loads(line)
                    if "e" in entry:
                        where = entry.get("at")
                        ledger.add_acked(entry["e"], tuple(where) if where else None)
                    else:
                        failed.append(entry["f"])
        for eid in failed:
            ledger.add_failed(eid)
        return ledger


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
    catalog = default_catalog()
    out: dict[str, str] = {}
    for budget in ledger.budgets:
        if budget.period == "rolling":
            continue
        for start, spent in budget_amounts(budget, ledger.acked.values(), catalog).items():
            for pct in crossed(spent, budget.limit, budget.thresholds_pct):
                aid = threshold_alert_id(budget.budget_id, budget.definition_version, start, pct)
                out[aid] = "threshold_crossed"
    return out


simple_expected_alerts.kinds = frozenset({"threshold_crossed"})  # type: ignore[attr-defined]


def reference_expected_alerts(ledger: Ledger) -> dict[str, str]:
    """The threshold alerts of streams.loadtest.reference (docs/budget-truth.md) for the
    ledger's acked messages in broker order, the budgets set before the first; without the
    messages' positions, ``simple_expected_alerts``."""
    if len(ledger.positions) != ledger.acked_messages or not ledger.positions:
        return simple_expected_alerts(ledger)
    steps: list[reference.Step] = [reference.SetBudget(b) for b in ledger.budgets]
    for partition, offset, ts, eid in sorted(ledger.positions, key=lambda p: (p[2], p[0], p[1])):
        steps.append(reference.Arrival(partition, offset, ts, ledger.acked[eid]))
    result = reference.evaluate(steps)
    return {
        threshold_alert_id(budget_id, version, start, pct): "threshold_crossed"
        for budget_id, version, start, pct in result.alerts
    }


reference_expected_alerts.kinds = frozenset({"threshold_crossed"})  # type: ignore[attr-defined]


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
    """
    catalog = default_catalog()
    samples: dict[str, tuple[str, ...]] = {}
    client = connect(settings, database=settings.clickhouse_database)
    try:
        stored: dict[str, tuple[int, int, int, str]] = {}
        rows = 0
        result = client.query(
            "SELECT toString(event_id), count(), min(cost_nanos), max(cost_nanos), "
            "any(cost_source) FROM token_events GROUP BY event_id"
        )
        for eid, count, low, high, source in result.result_rows:
            stored[eid] = (int(count), int(low), int(high), str(source))
            rows += int(count)
        orphans = [
            str(r[0])
            for r in client.query(
                "SELECT DISTINCT toString(event_id) FROM event_ids "
                "WHERE event_id NOT IN (SELECT event_id FROM token_events)"
            ).result_rows
        ]
        totals_got = _totals(client)
        rollups_got = {table: _rollup(client, table, spec) for table, spec in ROLLUPS.items()}
        budget_got = {
            b.budget_id: _budget_spend(client, b, budget_amounts(b, ledger.acked.values(), catalog))
            for b in ledger.budgets
            if b.period != "rolling"
        }
    finally:
        client.close()

    acked = ledger.acked
    lost = [eid for eid in acked if eid not in stored]
    duplicated = {eid: c - 1 for eid, (c, *_) in stored.items() if c > 1}
    invented = [eid for eid in stored if eid not in acked and eid not in ledger.unacked]
    unacked_present = sum(1 for eid in ledger.unacked if eid in stored)
    mispriced = []
    for eid, (_, low, high, source) in stored.items():
        event = acked.get(eid)
        if event is None:
            continue
        price = catalog.price(event)
        if low != high or low != price.cost_nanos or source != price.source:
            mispriced.append(eid)
    for name, ids in (
        ("lost", lost),
        ("duplicated", list(duplicated)),
        ("invented", invented),
        ("mispriced", mispriced),
        ("orphan_keys", orphans),
    ):
        if ids:
            samples[name] = tuple(sorted(ids)[:SAMPLE])

    # sums: the ledger plus whatever failed sends were stored (their values are unknown to
    # the ledger, so a run with any of them stored compares only what it can)
    truth_totals, truth_rollups = _truth(acked.values(), catalog)
    totals_diff: dict[str, tuple[int, int]] = {}
    rollup_diffs: dict[str, int] = {}
    if not unacked_present and not invented:
        for i, column in enumerate(("requests", *SUMS)):
            want, got = truth_totals[i], totals_got[i]
            if want != got:
                totals_diff[column] = (want, got)
        for table, got_rows in rollups_got.items():
            want_rows = truth_rollups[table]
            keys = want_rows.keys() | got_rows.keys()
            bad = sum(1 for k in keys if want_rows.get(k) != got_rows.get(k))
            if bad:
                rollup_diffs[table] = bad

    budget_diffs: dict[str, str] = {}
    for budget in ledger.budgets:
        if budget.period == "rolling":
            continue
        wanted = budget_amounts(budget, acked.values(), catalog)
        found = budget_got[budget.budget_id]
        for start in sorted(wanted.keys() | found.keys()):
            if wanted.get(start, 0) != found.get(start, 0) and not unacked_present:
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
        _check_alert_spend(ledger, seen_alerts, catalog, budget_diffs)
        enforcement_diffs = _check_enforcement(settings, ledger, catalog)
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
        acked=len(acked),
        acked_messages=ledger.acked_messages,
        unacked=len(ledger.unacked),
        rows=rows,
        stored=len(stored),
        lost=len(lost),
        duplicated=sum(duplicated.values()),
        invented=len(invented),
        unacked_present=unacked_present,
        mispriced=len(mispriced),
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
        orphan_keys=len(orphans),
    )


def _truth(
    acked: Iterable[events.Event], catalog: PriceCatalog
) -> tuple[list[int], dict[str, dict[tuple[Any, ...], tuple[int, ...]]]]:
    totals = [0] * (len(SUMS) + 1)
    rollups: dict[str, dict[tuple[Any, ...], list[int]]] = {
        name: defaultdict(lambda: [0] * (len(SUMS) + 1)) for name in ROLLUPS
    }
    for event in acked:
        values = [1, *(event[f] for f in events.TOKEN_FIELDS), catalog.price(event).cost_nanos]
        times = {
            "hour": event["event_time"] // HOUR_MS * 3600,
            "day": event["event_time"] // DAY_MS,
        }
        for i, value in enumerate(values):
            totals[i] += value
        for name, (time_column, dims) in ROLLUPS.items():
            row = rollups[name][(times[time_column], *(event.get(d) or "" for d in dims))]
            for i, value in enumerate(values):
                row[i] += value
    return totals, {n: {k: tuple(v) for k, v in r.items()} for n, r in rollups.items()}


def _totals(client: Any) -> list[int]:
    sums = ", ".join(f"sum({c})" for c in SUMS)
    row = client.query(f"SELECT count(), {sums} FROM token_events").result_rows[0]
    return [int(v) for v in row]


def _rollup(
    client: Any, table: str, spec: tuple[str, tuple[str, ...]]
) -> dict[tuple[Any, ...], tuple[int, ...]]:
    time_column, dims = spec
    key = "toUnixTimestamp(hour)" if time_column == "hour" else "toUInt32(day)"
    query = (
        f"SELECT {key}, {', '.join(dims)}, sum(requests), "
        f"{', '.join(f'sum({c})' for c in SUMS)} FROM {quote_identifier(table)} "
        f"GROUP BY {key}, {', '.join(dims)}"
    )
    return {
        tuple(r[: len(dims) + 1]): tuple(int(v) for v in r[len(dims) + 1 :])
        for r in client.query(query).result_rows
    }


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
    catalog: PriceCatalog,
    diffs: dict[str, str],
) -> None:
    """A threshold alert's ``spent``: at least its threshold, at most the period's total."""
    by_id = {b.budget_id: b for b in ledger.budgets}
    totals: dict[str, dict[int, int]] = {}
    for aid, alert in seen.items():
        budget = by_id.get(alert.get("budget_id") or "")
        if alert["kind"] != "threshold_crossed" or budget is None or budget.period == "rolling":
            continue
        if budget.budget_id not in totals:
            totals[budget.budget_id] = budget_amounts(budget, ledger.acked.values(), catalog)
        start = _ms(alert["period_start"])
        total = totals[budget.budget_id].get(start, 0)
        pct = alert["threshold_pct"] or 0
        if not (alert["spent"] * 100 >= budget.limit * pct and alert["spent"] <= total):
            diffs[f"{budget.budget_id}@{start} alert {aid}"] = (
                f"alert spent {alert['spent']}, threshold {pct}% of {budget.limit}, "
                f"ledger total {total}"
            )


def _check_enforcement(settings: Settings, ledger: Ledger, catalog: PriceCatalog) -> dict[str, str]:
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
        total = budget_amounts(budget, ledger.acked.values(), catalog).get(start, 0)
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
