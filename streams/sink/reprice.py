"""``spendstream backfill --reprice``: price stored events again with the current catalog.

When a price for a previously unpriced model arrives (a sync, an overlay entry, an org's
contract), the rows the sink stored at $0 are re-priced in ClickHouse: each (provider, model)
of the range that is not provider-reported gets its catalog versions as one SQL expression (the
lookup's own precedence: the first version in force, the highest tier exceeded, the cost formula
of ``streams.pricing.cost_nanos`` in 128-bit integers), rows whose cost, price_version or source
would change are updated by a mutation; ``backfill.reprice_and_rebuild`` then rebuilds the
rollups for the range.

Every value goes in as a query parameter. Append-only prices mean a row already priced by a
version that is still in the catalog keeps its cost: only what the catalog now says otherwise
changes. Rows the sink inserts into the range meanwhile may be missed: stop the sink first for
live ranges (as for ``spendstream backfill``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from streams.clickhouse import Target
from streams.errors import SinkError
from streams.pricing import (
    SOURCE_CATALOG,
    SOURCE_REPORTED,
    SOURCE_UNPRICED,
    TOKENS_PER_PRICE_UNIT,
    PriceCatalog,
    PriceEntry,
    Rates,
    nanos_to_usd_text,
)

_PROMPT = "(input_tokens + cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens)"
_REASONING = "least(reasoning_tokens, output_tokens)"
_RANGE = (
    "event_time >= {start:DateTime64(3, 'UTC')} AND event_time < {end:DateTime64(3, 'UTC')} "
    f"AND cost_source != '{SOURCE_REPORTED}'"
)


@dataclasses.dataclass
class Change:
    """One (old price_version -> new) move of one model's rows."""

    provider: str
    model: str
    org: str | None
    old_version: str
    new_version: str
    rows: int
    old_cost: int
    new_cost: int

    def line(self) -> str:
        who = f" (org {self.org})" if self.org else ""
        return (
            f"{self.provider}/{self.model}{who}: {self.rows:,} rows {self.old_version} -> "
            f"{self.new_version}, ${nanos_to_usd_text(self.old_cost)} -> "
            f"${nanos_to_usd_text(self.new_cost)}"
        )


@dataclasses.dataclass
class RepriceReport:
    changes: list[Change] = dataclasses.field(default_factory=list)
    groups: int = 0
    rollups: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.changes)

    def lines(self) -> list[str]:
        delta = sum(c.new_cost - c.old_cost for c in self.changes)
        sign = "+" if delta >= 0 else "-"
        head = (
            f"repriced {self.rows:,} rows of {self.groups} models "
            f"({sign}${nanos_to_usd_text(abs(delta))})"
        )
        rebuilt = [f"  {name}: rebuilt ({n} rows)" for name, n in self.rollups.items()]
        return [head, *(f"  {c.line()}" for c in self.changes), *rebuilt]


def _cost_sql(rates: Rates, key: str, params: dict[str, Any]) -> str:
    names = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output", "reasoning")
    for name in names:
        params[f"{key}_{name}"] = getattr(rates, name)
    p = {name: f"{{{key}_{name}:UInt64}}" for name in names}
    return (
        "intDiv("
        f"toUInt128(input_tokens) * {p['input']}"
        f" + toUInt128(cache_read_tokens) * {p['cache_read']}"
        f" + toUInt128(cache_write_5m_tokens) * {p['cache_write_5m']}"
        f" + toUInt128(cache_write_1h_tokens) * {p['cache_write_1h']}"
        f" + (toUInt128(output_tokens) - {_REASONING}) * {p['output']}"
        f" + toUInt128({_REASONING}) * {p['reasoning']}"
        f" + {TOKENS_PER_PRICE_UNIT // 2}, {TOKENS_PER_PRICE_UNIT})"
    )


def price_sql(versions: Sequence[PriceEntry], params: dict[str, Any]) -> tuple[str, str, str]:
    """(cost, price_version, cost_source) of a row as SQL over its columns, for ``versions``
    in lookup order: the first in force wins, and in it the highest tier the prompt exceeds."""
    costs, labels, sources = [], [], []
    for i, entry in enumerate(versions):
        params[f"v{i}_from"] = entry.effective_from_ms
        in_force = f"toUnixTimestamp64Milli(event_time) >= {{v{i}_from:Int64}}"
        tiers = [(t.above_prompt_tokens, t.rates) for t in reversed(entry.tiers)]
        for j, (above, rates) in enumerate([*tiers, (None, entry.rates)]):
            key = f"v{i}t{j}"
            cond = in_force
            label = entry.label
            if above is not None:
                params[f"{key}_above"] = above
                cond += f" AND {_PROMPT} > {{{key}_above:UInt64}}"
                label = f"{entry.label}>{above}"
            params[f"{key}_label"] = label
            costs += [cond, _cost_sql(rates, key, params)]
            labels += [cond, f"{{{key}_label:String}}"]
            sources += [cond, f"'{SOURCE_CATALOG}'"]
    if not costs:
        return "toUInt128(0)", f"'{SOURCE_UNPRICED}'", f"'{SOURCE_UNPRICED}'"
    return (
        f"multiIf({', '.join(costs)}, toUInt128(0))",
        f"multiIf({', '.join(labels)}, '{SOURCE_UNPRICED}')",
        f"multiIf({', '.join(sources)}, '{SOURCE_UNPRICED}')",
    )


def reprice(
    client: Any,
    target: Target,
    catalog: PriceCatalog,
    start: dt.datetime,
    end: dt.datetime,
) -> RepriceReport:
    """Re-price the range's non-reported rows with ``catalog`` (the rollups are left to
    ``streams.sink.backfill.reprice_and_rebuild``)."""
    if target.cluster:
        raise SinkError("reprice runs on one server; on a cluster run it on each shard")
    table = target.table("token_events")
    bounds = {
        "start": start.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        "end": end.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
    }
    by_org = catalog.has_org_rates
    keys = "org_id, provider, model" if by_org else "provider, model"
    groups = client.query(
        f"SELECT DISTINCT {keys} FROM {table} WHERE {_RANGE} ORDER BY {keys}",
        parameters=bounds,
    ).result_rows
    report = RepriceReport(groups=len(groups))
    for group in groups:
        org, provider, model = group if by_org else (None, *group)
        versions = catalog.resolve_for(org, provider, model)
        params: dict[str, Any] = dict(bounds, provider=provider, model=model)
        cost, label, source = price_sql(versions, params)
        where = f"{_RANGE} AND provider = {{provider:String}} AND model = {{model:String}}"
        if org is not None:
            params["org"] = org
            where += " AND org_id = {org:String}"
        changed = (
            f"(toUInt128(cost_nanos) != {cost} OR price_version != {label} "
            f"OR cost_source != {source})"
        )
        found = client.query(
            f"SELECT price_version, {label} AS new_version, count(), sum(cost_nanos), "
            f"sum({cost}) AS new_cost, max({cost}) FROM {table} WHERE {where} AND {changed} "
            "GROUP BY price_version, new_version ORDER BY price_version, new_version",
            parameters=params,
        ).result_rows
        if not found:
            continue
        if max(int(r[5]) for r in found) >= 1 << 64:
            raise SinkError(f"{provider}/{model}: a re-priced cost does not fit UInt64")
        for old_version, new_version, rows, old_cost, new_cost, _ in found:
            report.changes.append(
                Change(
                    provider,
                    model,
                    org,
                    old_version,
                    new_version,
                    int(rows),
                    int(old_cost),
                    int(new_cost),
                )
            )
        client.command(
            f"ALTER TABLE {table} UPDATE cost_nanos = toUInt64({cost}), "
            f"price_version = {label}, cost_source = {source} WHERE {where} AND {changed}",
            parameters=params,
            settings={"mutations_sync": 2},
        )
    return report
