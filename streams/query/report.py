"""Reports: run the builder's SQL and shape the rows for people (tables) and machines (json/csv).

Money stays integer nano-USD in every row (``cost_nanos``); ``cost_usd`` is its exact decimal
rendering. Times are shown in the report's time zone.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from streams.clickhouse import Target
from streams.pricing import TOKENS_PER_PRICE_UNIT, PriceCatalog, default_catalog
from streams.query.builder import HOUR, Builder, Query
from streams.query.ranges import TimeRange, floor_utc, zone

UTC = dt.UTC


def usd(nanos: int | None) -> str | None:
    """Exact USD of an integer nano-USD amount."""
    return None if nanos is None else str(Decimal(int(nanos)).scaleb(-9))


#: short headers for the table view
LABELS = {
    "requests": "reqs",
    "input_tokens": "input",
    "cache_read_tokens": "cache rd",
    "cache_write_tokens": "cache wr",
    "output_tokens": "output",
    "reasoning_tokens": "reasoning",
    "prompt_tokens": "prompt",
    "cost_usd": "USD",
    "request_share": "req %",
    "cost_share": "cost %",
    "cost_per_request_usd": "USD/req",
    "hit_ratio": "hit %",
    "saved_usd": "saved USD",
    "write_premium_usd": "write prem. USD",
    "net_saved_usd": "net USD",
}


@dataclasses.dataclass
class Report:
    title: str
    columns: list[str]  # every column, for json/csv
    rows: list[dict[str, Any]]
    notes: list[str] = dataclasses.field(default_factory=list)
    table_columns: list[str] | None = None  # the narrower view for people

    def to_json(self) -> str:
        return json.dumps(
            {"title": self.title, "rows": self.rows, "notes": self.notes}, default=str, indent=2
        )

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()

    def print_table(self, console: Console | None = None) -> None:
        console = console or Console()
        table = Table(title=self.title)
        columns = self.table_columns or self.columns
        for column in columns:
            numeric = bool(self.rows) and isinstance(self.rows[0].get(column), int | float)
            numeric = numeric or column.endswith("_usd")
            label = LABELS.get(column, column.removesuffix("_id"))
            table.add_column(label, justify="right" if numeric else "left")
        for row in self.rows:
            table.add_row(*(_cell(row.get(c), c) for c in columns))
        console.print(table)
        for note in self.notes:
            console.print(note)


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if column.endswith("_usd"):
        return f"{Decimal(value):,.2f}"
    if column.endswith(("_share", "ratio")):
        return f"{100 * value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class Reports:
    """The canonical reports over one database; one client, created by the caller."""

    def __init__(
        self,
        client: Any,
        target: Target | None = None,
        catalog: PriceCatalog | None = None,
    ) -> None:
        self.client = client
        self.builder = Builder(target)
        self.catalog = catalog or default_catalog()

    def _rows(self, query: Query) -> list[dict[str, Any]]:
        result = self.client.query(query.sql, parameters=query.parameters)
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def spend(
        self,
        rng: TimeRange,
        by: Sequence[str] = ("org",),
        filters: Mapping[str, str] | None = None,
        limit: int | None = 50,
        sessions: bool = False,
    ) -> Report:
        query = self.builder.spend(rng.start, rng.end, by, filters, limit, sessions=sessions)
        rows = self._rows(query)
        for row in rows:
            row["cost_usd"] = usd(row["cost_nanos"])
            row["cache_write_tokens"] = row["cache_write_5m_tokens"] + row["cache_write_1h_tokens"]
        dims = [self.builder._dimension(d) for d in by]
        columns = [*dims, "requests", "input_tokens", "cache_read_tokens"]
        columns += ["cache_write_5m_tokens", "cache_write_1h_tokens", "output_tokens"]
        columns += ["reasoning_tokens", *(["sessions"] if sessions else []), "cost_usd"]
        columns.append("cost_nanos")
        view = [*dims, "requests", "input_tokens", "cache_read_tokens", "cache_write_tokens"]
        view += ["output_tokens", *(["sessions"] if sessions else []), "cost_usd"]
        return Report(_title("Spend", rng, by), columns, rows, _unpriced(rows), view)

    def top_sessions(
        self, rng: TimeRange, filters: Mapping[str, str] | None = None, limit: int = 10
    ) -> Report:
        rows = self._rows(self.builder.top_sessions(rng.start, rng.end, filters, limit))
        tz = zone(rng.timezone)
        for row in rows:
            row["cost_usd"] = usd(row["cost_nanos"])
            for key in ("first_seen", "last_seen"):
                row[key] = _local(row[key], tz)
        columns = ["session_id", "org", "user", "tool", "requests", "turns", "prompt_tokens"]
        columns += ["output_tokens", "first_seen", "last_seen", "cost_usd", "cost_nanos"]
        view = ["session_id", "user", "tool", "turns", "prompt_tokens", "last_seen", "cost_usd"]
        return Report(_title("Top sessions by cost", rng), columns, rows, table_columns=view)

    def burn_rate(
        self,
        hours: int = 24,
        timezone: str = "UTC",
        filters: Mapping[str, str] | None = None,
        now: dt.datetime | None = None,
    ) -> Report:
        """Spend per hour over the last ``hours`` hours (the current one is partial)."""
        now = (now or dt.datetime.now(UTC)).astimezone(UTC)
        start = floor_utc(now, HOUR) - (hours - 1) * HOUR
        query = self.builder.spend(start, now, (), filters, bucket_hours=True)
        found = {row["hour"].replace(tzinfo=UTC): row for row in self._rows(query)}
        tz = zone(timezone)
        rows: list[dict[str, Any]] = []
        for i in range(hours):
            hour = start + i * HOUR
            row = found.get(hour, {})
            cost = int(row.get("cost_nanos", 0))
            rows.append(
                {
                    "hour": _local(hour, tz),
                    "requests": int(row.get("requests", 0)),
                    "output_tokens": int(row.get("output_tokens", 0)),
                    "cost_usd": usd(cost),
                    "cost_nanos": cost,
                }
            )
        total = sum(r["cost_nanos"] for r in rows)
        whole = rows[:-1] or rows
        per_hour = sum(r["cost_nanos"] for r in whole) // len(whole)
        notes = [
            f"total {usd(total)} USD over {hours} h; {usd(per_hour)} USD/h over the whole hours "
            f"(~{usd(per_hour * 24)} USD/day at that rate)"
        ]
        rng = TimeRange(start, now, f"last {hours} hours", timezone)
        columns = ["hour", "requests", "output_tokens", "cost_usd", "cost_nanos"]
        view = ["hour", "requests", "output_tokens", "cost_usd"]
        return Report(_title("Burn rate", rng), columns, rows, notes, view)

    def cache(self, rng: TimeRange, filters: Mapping[str, str] | None = None) -> Report:
        """Cache hit ratio per model, and what the cache saved at the catalog's base prices."""
        rows = self._rows(self.builder.spend(rng.start, rng.end, ("provider", "model"), filters))
        at_ms = int(rng.end.timestamp() * 1000)
        for row in rows:
            reads, w5, w1h = (
                row[k]
                for k in ("cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens")
            )
            prompt = row["input_tokens"] + reads + w5 + w1h
            row["hit_ratio"] = round(reads / prompt, 4) if prompt else 0.0
            entry = self.catalog.lookup(row["provider"], row["model"], at_ms)
            if entry is None:
                row.update(saved_usd=None, write_premium_usd=None, net_saved_usd=None)
                continue
            rates = entry.rates
            saved = reads * (rates.input - rates.cache_read) // TOKENS_PER_PRICE_UNIT
            premium = (
                w5 * (rates.cache_write_5m - rates.input)
                + w1h * (rates.cache_write_1h - rates.input)
            ) // TOKENS_PER_PRICE_UNIT
            row.update(
                saved_usd=usd(saved),
                write_premium_usd=usd(premium),
                net_saved_usd=usd(saved - premium),
                net_saved_nanos=saved - premium,
            )
        columns = ["provider", "model", "input_tokens", "cache_read_tokens"]
        columns += ["cache_write_5m_tokens", "cache_write_1h_tokens", "hit_ratio"]
        columns += ["saved_usd", "write_premium_usd", "net_saved_usd"]
        notes = [
            "saved = cache reads x (input - cache read price); premium = cache writes x "
            "(write - input price); base-tier catalog prices at the range end"
        ]
        view = ["model", "cache_read_tokens", "hit_ratio", "saved_usd", "write_premium_usd"]
        view.append("net_saved_usd")
        return Report(_title("Prompt cache", rng), columns, rows, notes, view)

    def task_share(self, rng: TimeRange, filters: Mapping[str, str] | None = None) -> Report:
        """Agentic vs chat (every task type): share of cost and requests, cost per request."""
        query = self.builder.spend(rng.start, rng.end, ("task_type",), filters, sessions=True)
        rows = self._rows(query)
        cost = sum(r["cost_nanos"] for r in rows) or 1
        requests = sum(r["requests"] for r in rows) or 1
        for row in rows:
            row["cost_share"] = round(row["cost_nanos"] / cost, 4)
            row["request_share"] = round(row["requests"] / requests, 4)
            row["cost_per_request_usd"] = usd(row["cost_nanos"] // max(row["requests"], 1))
            row["cost_usd"] = usd(row["cost_nanos"])
        columns = ["task_type", "requests", "request_share", "sessions", "cost_usd"]
        columns += ["cost_share", "cost_per_request_usd", "cost_nanos"]
        view = [c for c in columns if c != "cost_nanos"]
        return Report(_title("Agentic vs chat", rng), columns, rows, table_columns=view)

    def unpriced(self, rng: TimeRange, filters: Mapping[str, str] | None = None) -> Report:
        """Models the catalog could not price (cost counted as 0), with request and token
        counts, and what the current catalog says about each now."""
        rows = self._rows(self.builder.unpriced(rng.start, rng.end, filters))
        tz = zone(rng.timezone)
        for row in rows:
            last = row["last_seen"]
            last_ms = int(last.replace(tzinfo=last.tzinfo or UTC).timestamp() * 1000)
            found = self.catalog.resolution(row["provider"], row["model"])
            entry = self.catalog.lookup(row["provider"], row["model"], last_ms)
            if entry is not None:
                row["now"] = f"priced now ({entry.label}): run `spendstream backfill --reprice`"
            elif found.definition is not None and found.definition.unpriced_reason:
                row["now"] = f"deliberately unpriced: {found.definition.unpriced_reason}"
            else:
                row["now"] = found.why
            for key in ("first_seen", "last_seen"):
                row[key] = _local(row[key], tz)
        columns = ["provider", "model", "requests", "prompt_tokens", "output_tokens"]
        columns += ["reasoning_tokens", "orgs", "first_seen", "last_seen", "now"]
        view = ["provider", "model", "requests", "prompt_tokens", "output_tokens", "orgs"]
        view += ["last_seen", "now"]
        total = sum(int(r["requests"]) for r in rows)
        notes = (
            [
                f"{total:,} requests counted as $0; add a price (overlay, or `spendstream prices "
                "sync`), then `spendstream backfill --reprice` for the range"
            ]
            if rows
            else ["every request in the range was priced"]
        )
        return Report(_title("Unpriced models", rng), columns, rows, notes, view)


def _local(value: dt.datetime, tz: Any) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(tz).isoformat(timespec="seconds")


def _title(what: str, rng: TimeRange, by: Sequence[str] = ()) -> str:
    tz = zone(rng.timezone)
    span = f"{_local(rng.start, tz)} .. {_local(rng.end, tz)}"
    grouped = f" by {', '.join(by)}" if by else ""
    return f"{what}{grouped}, {rng.label} ({span}, {rng.timezone})"


def _unpriced(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    count = sum(int(r.get("unpriced_requests", 0)) for r in rows)
    return (
        [f"{count:,} requests used models missing from the price catalog (cost 0)"] if count else []
    )
