"""Budgets on the compacted ``spendstream.budgets`` topic: a live view, publishing, the CLI.

The topic is the source of truth (key: budget_id, value: Avro Budget, tombstone: deleted);
every worker and CLI call reads it to the end, so there is no other database to keep in sync.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from streams.errors import DecodeError, SpendstreamError
from streams.events import now_ms
from streams.processors.alerts import format_amount
from streams.processors.budgets import (
    Budget,
    BudgetError,
    BudgetMatcher,
    budget_from_spec,
    parse_budgets_yaml,
)
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics

log = logging.getLogger(__name__)


class CompactedView:
    """Follows a compacted topic from the beginning in a background thread: key -> value.

    ``wait_ready()`` returns once everything present at start has been read, so a reader
    never acts on a partial view. ``on_change`` runs in the view's thread for every update.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        on_change: Callable[[str, bytes | None], None] | None = None,
        poll_s: float = 0.05,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.values: dict[str, bytes] = {}
        self.on_change = on_change
        self.poll_s = poll_s
        self.version = 0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> CompactedView:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"view-{self.topic}", daemon=True
            )
            self._thread.start()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self._ready.wait(timeout):
            raise SpendstreamError(f"could not read topic {self.topic} within {timeout:.0f}s")
        if self._error is not None:
            raise SpendstreamError(f"reading {self.topic} failed: {self._error}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @staticmethod
    def _ends(consumer: Consumer, parts: list[TopicPartition]) -> dict[int, int]:
        """High watermarks, retried while a new topic's leaders are being elected."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return {
                    tp.partition: consumer.get_watermark_offsets(tp, timeout=15)[1] for tp in parts
                }
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _run(self) -> None:
        config = dict(self.settings.kafka_client_config())
        config.update(
            {
                "group.id": f"spendstream-view-{self.topic}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
        consumer = Consumer(config)
        try:
            meta = consumer.list_topics(self.topic, timeout=15)
            info = meta.topics.get(self.topic)
            if info is None or info.error is not None:
                raise SpendstreamError(f"topic {self.topic} does not exist")
            parts = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in info.partitions]
            ends = self._ends(consumer, parts)
            consumer.assign(parts)
            pending = {p for p, high in ends.items() if high > 0}
            if not pending:
                self._ready.set()
            while not self._stop.is_set():
                for msg in consumer.consume(num_messages=1000, timeout=self.poll_s):
                    if msg.error():
                        continue
                    raw_key = msg.key()
                    key = raw_key.decode() if raw_key else ""
                    value = msg.value()
                    if value is None:
                        self.values.pop(key, None)
                    else:
                        self.values[key] = value
                    self.version += 1
                    if self.on_change is not None:
                        self.on_change(key, value)
                    partition, offset = msg.partition(), msg.offset()
                    if (
                        partition in pending
                        and offset is not None
                        and offset + 1 >= ends[partition]
                    ):
                        pending.discard(partition)
                        if not pending:
                            self._ready.set()
        except (KafkaException, SpendstreamError) as exc:
            self._error = exc
            self._ready.set()
        finally:
            consumer.close()


class BudgetView:
    """The current budgets, decoded, with a matcher rebuilt only when budgets change."""

    def __init__(self, settings: Settings) -> None:
        self.codec = AvroCodec("budget")
        self._budgets: dict[str, Budget] = {}
        self._matcher = BudgetMatcher(())
        self._lock = threading.Lock()
        self.view = CompactedView(settings, settings.topic_budgets, self._on_change)

    def _on_change(self, key: str, value: bytes | None) -> None:
        with self._lock:
            if value is None:
                self._budgets.pop(key, None)
            else:
                try:
                    self._budgets[key] = Budget.from_record(self.codec.decode(value))
                except (DecodeError, BudgetError, TypeError) as exc:
                    log.error("ignoring unreadable budget %r: %s", key, exc)
                    return
            self._matcher = BudgetMatcher(self._budgets.values())

    def start(self, timeout: float = 30.0) -> BudgetView:
        self.view.start().wait_ready(timeout)
        return self

    def stop(self) -> None:
        self.view.stop()

    @property
    def matcher(self) -> BudgetMatcher:
        return self._matcher

    def get(self, budget_id: str) -> Budget | None:
        return self._budgets.get(budget_id)

    def all(self) -> list[Budget]:
        return sorted(self._budgets.values(), key=lambda b: b.budget_id)


class StaticBudgets:
    """A fixed set of budgets with the BudgetView interface (tests, benchmarks)."""

    def __init__(self, budgets: list[Budget]) -> None:
        self._budgets = {b.budget_id: b for b in budgets}
        self.matcher = BudgetMatcher(budgets)

    def get(self, budget_id: str) -> Budget | None:
        return self._budgets.get(budget_id)

    def all(self) -> list[Budget]:
        return sorted(self._budgets.values(), key=lambda b: b.budget_id)


def budget_topics(settings: Settings) -> list[TopicSpec]:
    compacted = {"cleanup.policy": "compact"}
    return [
        TopicSpec(settings.topic_budgets, 1, compacted),
        TopicSpec(settings.topic_enforcement, 1, compacted),
    ]


def read_budgets(settings: Settings, timeout: float = 30.0) -> list[Budget]:
    ensure_topics(settings, budget_topics(settings))
    view = BudgetView(settings)
    try:
        view.start(timeout)
        return view.all()
    finally:
        view.stop()


def _producer(settings: Settings) -> Producer:
    config = dict(settings.kafka_client_config())
    config.update({"enable.idempotence": True, "acks": "all"})
    return Producer(config)


def publish(
    settings: Settings, changes: Mapping[str, Budget | None], timeout: float = 30.0
) -> None:
    """Write budgets (None: delete) and wait until the broker has them all."""
    ensure_topics(settings, budget_topics(settings))
    codec = AvroCodec("budget")
    producer = _producer(settings)
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(f"{msg.key()!r}: {err}")

    for budget_id, budget in changes.items():
        value = None if budget is None else codec.encode(budget.to_record())
        producer.produce(
            settings.topic_budgets, value=value, key=budget_id.encode(), on_delivery=delivered
        )
    remaining = producer.flush(timeout)
    if remaining or failures:
        raise SpendstreamError(f"budgets not all written: {failures or f'{remaining} pending'}")


def plan_apply(
    current: list[Budget], wanted: list[Budget], prune: bool, now: int
) -> dict[str, Budget | None]:
    """Changes that make the topic equal ``wanted``: new, changed (created_at kept), pruned."""
    have = {b.budget_id: b for b in current}
    changes: dict[str, Budget | None] = {}
    for budget in wanted:
        old = have.get(budget.budget_id)
        if old is not None and old.same_definition(budget):
            continue
        record = budget.to_record()
        record["created_at"] = old.created_at if old is not None else now
        record["updated_at"] = now
        changes[budget.budget_id] = Budget.from_record(record)
    if prune:
        keep = {b.budget_id for b in wanted}
        changes.update({bid: None for bid in have if bid not in keep})
    return changes


# ---------------------------------------------------------------------------- CLI


def _describe(budget: Budget) -> dict[str, Any]:
    record = budget.to_record()
    record["limit_text"] = format_amount(budget.limit, budget.unit)
    return record


@click.group("budgets")
def budgets_cli() -> None:
    """Create, list and delete budgets (the compacted budgets topic)."""


@budgets_cli.command("set")
@click.argument("budget_id")
@click.option("--scope", "scopes", multiple=True, help="field=value, e.g. team=platform (repeat)")
@click.option("--period", type=click.Choice(["day", "week", "month", "rolling"]), default="month")
@click.option("--window", help="rolling window length, e.g. 6h (period rolling)")
@click.option(
    "--timezone", "tz", default="UTC", show_default=True, help="IANA zone of calendar periods"
)
@click.option("--limit-usd", help="limit in USD, e.g. 500 or 12.50")
@click.option("--limit-tokens", help="limit in tokens, e.g. 20M")
@click.option(
    "--thresholds", default="50,80,100", show_default=True, help="percents, comma separated"
)
@click.option("--mode", type=click.Choice(["alert", "block"]), default="alert", show_default=True)
@click.option("--forecast/--no-forecast", default=False, help="alert on projected breach")
@click.option("--description")
def set_cmd(
    budget_id: str,
    scopes: tuple[str, ...],
    period: str,
    window: str | None,
    tz: str,
    limit_usd: str | None,
    limit_tokens: str | None,
    thresholds: str,
    mode: str,
    forecast: bool,
    description: str | None,
) -> None:
    """Create or update one budget."""
    from streams.cli import load_settings

    settings = load_settings()
    scope: dict[str, str] = {}
    for item in scopes:
        field, sep, value = item.partition("=")
        if not sep or not value:
            raise click.BadParameter(f"expected field=value, got {item!r}", param_hint="--scope")
        scope[field.strip()] = value.strip()
    spec: dict[str, Any] = {
        "id": budget_id,
        "scope": scope,
        "period": period,
        "timezone": tz,
        "mode": mode,
        "forecast": forecast,
        "description": description,
    }
    if window:
        spec["window"] = window
    if limit_usd is not None:
        spec["limit_usd"] = limit_usd
    if limit_tokens is not None:
        spec["limit_tokens"] = limit_tokens
    try:
        spec["thresholds"] = [int(t) for t in thresholds.split(",") if t.strip()]
        wanted = budget_from_spec(spec)
    except (BudgetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    changes = plan_apply(read_budgets(settings), [wanted], prune=False, now=now_ms())
    publish(settings, changes)
    click.echo(f"{budget_id}: {'saved' if changes else 'unchanged'}")


@budgets_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_cmd(as_json: bool) -> None:
    """Show every budget."""
    from streams.cli import load_settings

    for budget in read_budgets(load_settings()):
        if as_json:
            click.echo(json.dumps(_describe(budget), sort_keys=True))
        else:
            scope = ", ".join(f"{k}={v}" for k, v in budget.scope.items()) or "*"
            period = budget.period + (
                f" {budget.rolling_window_s}s"
                if budget.period == "rolling"
                else f" {budget.timezone}"
            )
            columns = [
                budget.budget_id,
                scope,
                period,
                format_amount(budget.limit, budget.unit),
                ",".join(map(str, budget.thresholds_pct)) + "%",
                budget.mode + (" +forecast" if budget.forecast else ""),
            ]
            click.echo("\t".join(columns))


@budgets_cli.command("delete")
@click.argument("budget_ids", nargs=-1, required=True)
def delete_cmd(budget_ids: tuple[str, ...]) -> None:
    """Delete budgets (tombstones on the compacted topic)."""
    from streams.cli import load_settings

    settings = load_settings()
    known = {b.budget_id for b in read_budgets(settings)}
    missing = [b for b in budget_ids if b not in known]
    if missing:
        raise click.ClickException(f"no such budget: {', '.join(missing)}")
    publish(settings, {b: None for b in budget_ids})
    click.echo(f"deleted {len(budget_ids)}")


@budgets_cli.command("apply")
@click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
)
@click.option("--prune", is_flag=True, help="also delete budgets missing from the file")
@click.option("--dry-run", is_flag=True, help="show the changes only")
def apply_cmd(path: Path, prune: bool, dry_run: bool) -> None:
    """Make the budgets equal to a YAML file (budgets: [...])."""
    from streams.cli import load_settings

    try:
        wanted = parse_budgets_yaml(path.read_text())
    except BudgetError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = load_settings()
    changes = plan_apply(read_budgets(settings), wanted, prune=prune, now=now_ms())
    for budget_id, budget in sorted(changes.items()):
        click.echo(f"{'delete' if budget is None else 'set'} {budget_id}")
    if not dry_run and changes:
        publish(settings, changes)
    click.echo(f"{len(changes)} change(s){' (dry run)' if dry_run else ''}")


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# ---------------------------------------------------------------------------- ClickHouse baseline

#: budget scope field -> token_events column (nullable scope values are stored as '')
_SCOPE_COLUMNS = {
    "org_id": "org_id",
    "team_id": "team_id",
    "user_id": "user_id",
    "project_id": "project_id",
    "model": "model",
    "client": "client",
    "task_type": "task_type",
}


def baseline_query(
    budget: Budget, start: int, until: int, bucket_ms: int = 0
) -> tuple[str, dict[str, Any]]:
    """SQL + parameters: cost and tokens of ``budget``'s scope with start <= event_time < until.

    One row ``(start, cost, tokens)``; with ``bucket_ms``, one row per bucket of that length
    counted from ``start`` (what a rolling window needs: its baseline slides out bucket by
    bucket). Groups by event_id first so that a duplicate row, should one exist, is counted
    once.
    """
    params: dict[str, Any] = {"start": start, "until": until}
    where = [
        "event_time >= fromUnixTimestamp64Milli({start:Int64}, 'UTC')",
        "event_time < fromUnixTimestamp64Milli({until:Int64}, 'UTC')",
    ]
    for field, column in _SCOPE_COLUMNS.items():
        value = getattr(budget, field)
        if value is not None:
            params[field] = value
            where.append(f"{column} = {{{field}:String}}")
    for index, (name, value) in enumerate(sorted(budget.labels.items())):
        params[f"lk{index}"], params[f"lv{index}"] = name, value
        where.append(f"labels[{{lk{index}:String}}] = {{lv{index}:String}}")
    if bucket_ms > 0:
        params["bucket"] = bucket_ms
        bucket = (
            "{start:Int64} + intDiv(toUnixTimestamp64Milli(event_time) - {start:Int64},"
            " {bucket:Int64}) * {bucket:Int64}"
        )
    else:
        bucket = "{start:Int64}"
    sql = (
        "SELECT bucket, toInt64(sum(cost)), toInt64(sum(tokens)) FROM ("
        f" SELECT any({bucket}) AS bucket, any(cost_nanos) AS cost,"
        " any(input_tokens + cache_read_tokens + cache_write_5m_tokens"
        " + cache_write_1h_tokens + output_tokens) AS tokens"
        f" FROM token_events WHERE {' AND '.join(where)} GROUP BY event_id)"
        " GROUP BY bucket ORDER BY bucket"
    )
    return sql, params


def read_baseline(
    settings: Settings, budget: Budget, start: int, until: int, bucket_ms: int = 0
) -> list[tuple[int, int, int]]:
    """(bucket start, cost nano-USD, tokens) already spent in [start, until) for the scope."""
    from streams.local.clickhouse import connect

    sql, params = baseline_query(budget, start, until, bucket_ms)
    client = connect(settings, database=settings.clickhouse_database)
    try:
        rows = client.query(sql, parameters=params).result_rows
    finally:
        client.close()
    return [(int(b), int(c or 0), int(t or 0)) for b, c, t in rows]
