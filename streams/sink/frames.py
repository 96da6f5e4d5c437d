"""Whole-batch work of the sink on decoded columns: validity, prices, Arrow rows.

Each function here is the column-at-a-time twin of a per-event one (``events.surely_valid``,
``PriceCatalog.price``, ``rows.Buffer.add``); unit tests pin each pair equal on generated and
hand-made events. Money stays integral: costs are computed in 128-bit integers and refused
(the batch falls back to the per-event path) if one is above ``events.MAX_COST_NANOS``, the
bound the worker applies too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import polars as pl

from streams import events
from streams.pricing import (
    SOURCE_CATALOG,
    SOURCE_REPORTED,
    SOURCE_UNPRICED,
    TOKENS_PER_PRICE_UNIT,
    PriceCatalog,
    precedence,
)
from streams.sink.columns import ARROW_SCHEMA, MS_PER_HOUR

#: a value that Python's str.strip() cannot empty: it has a visible ASCII character (stricter
#: than strip(), so a row that passes is surely valid; others go to events.problems())
_VISIBLE: Final = r"[!-~]"
_RATE_COLUMNS: Final = ("r_in", "r_cr", "r_cw5", "r_cw1", "r_out", "r_reas")


def surely_valid(max_time_ms: int | pl.Expr) -> pl.Expr:
    """``events.surely_valid`` for a whole decoded frame: True only where problems() is empty.

    ``max_time_ms`` is the latest event_time accepted: one bound, or one per row (the sink
    passes each record's broker timestamp plus ``events.MAX_FUTURE_MS``).
    """
    col = pl.col
    tokens = [col(name).is_between(0, events.MAX_TOKENS) for name in events.TOKEN_FIELDS]
    required = [col(name).str.contains(_VISIBLE) for name in events.REQUIRED_IDS]
    optional = [
        col(name).is_null() | col(name).str.contains(_VISIBLE) for name in events.OPTIONAL_IDS
    ]
    return pl.all_horizontal(
        col("event_time").is_between(events.MIN_EVENT_TIME_MS, max_time_ms),
        col("event_id").str.contains(f"^{events.CANONICAL_UUID_PATTERN}$"),
        *required,
        *optional,
        *tokens,
        col("reasoning_tokens") <= col("output_tokens"),
        col("cost_nanos").is_null() | col("cost_nanos").is_between(0, events.MAX_COST_NANOS),
        col("turn").is_null() | (col("turn") >= 1),
    ).fill_null(False)


def as_events(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as the per-event path's dicts (labels a dict, enums strings): for the few rows
    the column path hands back, such as those ``surely_valid`` is not sure of."""
    rows = frame.select(_event_columns(frame)).to_dicts()
    for row in rows:
        row["labels"] = {entry["key"]: entry["value"] for entry in row["labels"] or ()}
    return rows


def _event_columns(frame: pl.DataFrame) -> list[pl.Expr]:
    return [
        pl.col(name).cast(pl.String) if name in ("task_type", "status") else pl.col(name)
        for name in frame.columns
        if not name.startswith("__")
    ]


class FramePricer:
    """``PriceCatalog.price`` for every row of a frame at once (one join per batch)."""

    def __init__(self, catalog: PriceCatalog) -> None:
        self.catalog = catalog
        self._candidates: dict[tuple[str, str, str | None], list[tuple[Any, ...]]] = {}

    def _rows_for(self, provider: str, model: str, org: str | None = None) -> list[tuple[Any, ...]]:
        """Every (version, tier) a (provider, model) can be priced at: from when, above which
        prompt size, at what rates, under which price_version label (an org's negotiated
        versions included when ``org`` is given)."""
        found = self._candidates.get((provider, model, org))
        if found is None:
            found = []
            for entry in self.catalog.resolve_for(org, provider, model):
                label = entry.label
                tiers = [(-1, entry.rates, label)]
                tiers += [
                    (t.above_prompt_tokens, t.rates, f"{label}>{t.above_prompt_tokens}")
                    for t in entry.tiers
                ]
                org_rank, _, overlay_rank = precedence(entry)
                for above, rates, name in tiers:
                    found.append(
                        (
                            *((org,) if org is not None else ()),
                            provider,
                            model,
                            int(org_rank),
                            entry.effective_from_ms,
                            int(overlay_rank),
                            above,
                            rates.input,
                            rates.cache_read,
                            rates.cache_write_5m,
                            rates.cache_write_1h,
                            rates.output,
                            rates.reasoning,
                            name,
                        )
                    )
            self._candidates[(provider, model, org)] = found
        return found

    def price(self, frame: pl.DataFrame) -> pl.DataFrame | None:
        """``frame`` plus cost_nanos (UInt64), cost_source and price_version; None when a cost
        is above ``events.MAX_COST_NANOS`` (the caller prices those rows one by one and
        dead-letters them, as the worker does)."""
        col = pl.col
        unpriced = frame.filter(col("cost_nanos").is_null())
        if unpriced.height == 0:
            return frame.with_columns(
                col("cost_nanos").cast(pl.UInt64),
                pl.lit(SOURCE_REPORTED).alias("cost_source"),
                pl.lit(SOURCE_REPORTED).alias("price_version"),
            )
        by_org = self.catalog.has_org_rates  # negotiated rates: the org is part of the key
        keys = ["org_id", "provider", "model"] if by_org else ["provider", "model"]
        pairs = unpriced.select(keys).unique().rows()
        if by_org:
            candidates = [row for o, p, m in pairs for row in self._rows_for(p, m, o)]
        else:
            candidates = [row for pair in pairs for row in self._rows_for(*pair)]
        table = pl.DataFrame(
            candidates,
            schema={
                **({"org_id": pl.String} if by_org else {}),
                "provider": pl.String,
                "model": pl.String,
                "__org": pl.Int8,
                "__from": pl.Int64,
                "__ovl": pl.Int8,
                "__above": pl.Int64,
                **{name: pl.Int64 for name in _RATE_COLUMNS},
                "__version": pl.String,
            },
            orient="row",
        )
        prompt = (
            col("input_tokens")
            + col("cache_read_tokens")
            + col("cache_write_5m_tokens")
            + col("cache_write_1h_tokens")
        )
        needed = [*keys, "event_time", "cost_nanos", *events.TOKEN_FIELDS]
        indexed = frame.lazy().select(needed).with_row_index("__row")
        # the winning version in force at event_time (catalog.precedence: an org's, then the
        # newest, then an overlay's), then the highest tier below the prompt size
        chosen = (
            indexed.filter(col("cost_nanos").is_null())
            .select("__row", *keys, "event_time", prompt.alias("__prompt"))
            .join(table.lazy(), on=keys, how="inner")
            .filter((col("__from") <= col("event_time")) & (col("__prompt") > col("__above")))
            .sort("__row", "__org", "__from", "__ovl", "__above")
            .unique(subset="__row", keep="last", maintain_order=True)
            .select("__row", *_RATE_COLUMNS, "__version")
        )
        big = pl.Int128
        reasoning = pl.min_horizontal("reasoning_tokens", "output_tokens").cast(big)
        total = (
            col("input_tokens").cast(big) * col("r_in").cast(big)
            + col("cache_read_tokens").cast(big) * col("r_cr").cast(big)
            + col("cache_write_5m_tokens").cast(big) * col("r_cw5").cast(big)
            + col("cache_write_1h_tokens").cast(big) * col("r_cw1").cast(big)
            + (col("output_tokens").cast(big) - reasoning) * col("r_out").cast(big)
            + reasoning * col("r_reas").cast(big)
        )
        half, unit = TOKENS_PER_PRICE_UNIT // 2, TOKENS_PER_PRICE_UNIT
        catalog_cost = (total + pl.lit(half, big)) // pl.lit(unit, big)
        priced = (
            indexed.join(chosen, on="__row", how="left", maintain_order="left")
            .with_columns(
                pl.when(col("cost_nanos").is_not_null())
                .then(col("cost_nanos").cast(big))
                .when(col("__version").is_not_null())
                .then(catalog_cost)
                .otherwise(pl.lit(0, big))
                .alias("__cost"),
                pl.when(col("cost_nanos").is_not_null())
                .then(pl.lit(SOURCE_REPORTED))
                .when(col("__version").is_not_null())
                .then(pl.lit(SOURCE_CATALOG))
                .otherwise(pl.lit(SOURCE_UNPRICED))
                .alias("cost_source"),
            )
            .select("__cost", "cost_source", "__version", "provider", "model")
            .collect(engine="in-memory")  # measured ~1.5x faster than streaming at this size
        )
        if priced["__cost"].max() > events.MAX_COST_NANOS:  # type: ignore[operator]
            return None
        missing = priced.filter(col("cost_source") == SOURCE_UNPRICED)
        for provider, model in missing.select("provider", "model").rows():
            self.catalog.unpriced[(provider, model)] += 1
        computed = priced.select(
            col("__cost").cast(pl.UInt64).alias("cost_nanos"),
            col("cost_source"),
            pl.when(col("cost_source") == SOURCE_CATALOG)
            .then(col("__version"))
            .otherwise(col("cost_source"))
            .alias("price_version"),
        )
        return frame.with_columns(computed.get_columns())


def insert_frame(
    frame: pl.DataFrame, partitions: Sequence[int], offsets: Sequence[int]
) -> pl.DataFrame:
    """A priced frame as the sink's rows: ARROW_SCHEMA's columns (polars types) plus ``hour``
    (UTC hour in epoch seconds, for the dedup lookup)."""
    col = pl.col
    return frame.with_columns(
        col("event_id").str.to_lowercase(),
        col("event_time").cast(pl.Datetime("ms", "UTC")),
        (col("event_time") // MS_PER_HOUR * 3600).alias("hour"),
        col("turn").cast(pl.UInt32),
        col("task_type").cast(pl.String),
        col("status").cast(pl.String),
        *(col(name).cast(pl.UInt64) for name in events.TOKEN_FIELDS),
        pl.Series("kafka_partition", partitions, dtype=pl.UInt32),
        pl.Series("kafka_offset", offsets, dtype=pl.UInt64),
    ).select(*ARROW_SCHEMA.names, "hour")
