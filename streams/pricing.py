"""Token pricing: a catalog of public list prices and a pure function to integer nano-USD.

Prices are kept as integer nano-USD per MILLION tokens (exact for every published price down
to $0.000000001/M), each bucket is multiplied exactly and the sum is divided once, rounding
half up, so no float ever touches money.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from streams.errors import PricingError

CATALOG_PATH: Final = Path(__file__).resolve().parent / "data" / "prices.json"
NANOS_PER_USD: Final = 1_000_000_000
TOKENS_PER_PRICE_UNIT: Final = 1_000_000
#: Cache multipliers of the input price where an entry gives none (Anthropic's published ones).
CACHE_READ_X: Final = Decimal("0.1")
CACHE_WRITE_5M_X: Final = Decimal("1.25")
CACHE_WRITE_1H_X: Final = Decimal("2.0")

SOURCE_REPORTED: Final = "reported"
SOURCE_CATALOG: Final = "catalog"
SOURCE_UNPRICED: Final = "unpriced"


@dataclasses.dataclass(frozen=True)
class Rates:
    """Nano-USD per million tokens, one per bucket."""

    input: int
    output: int
    reasoning: int
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int


@dataclasses.dataclass(frozen=True)
class Tier:
    above_prompt_tokens: int
    rates: Rates


@dataclasses.dataclass(frozen=True)
class PriceEntry:
    model_id: str
    providers: frozenset[str]
    pattern: re.Pattern[str]
    effective_from_ms: int
    effective_from: str
    rates: Rates
    tiers: tuple[Tier, ...]  # ascending threshold

    def rates_for(self, prompt_tokens: int) -> tuple[Rates, int | None]:
        chosen, threshold = self.rates, None
        for tier in self.tiers:
            if prompt_tokens > tier.above_prompt_tokens:
                chosen, threshold = tier.rates, tier.above_prompt_tokens
        return chosen, threshold


@dataclasses.dataclass(frozen=True)
class Price:
    cost_nanos: int
    price_version: str
    source: str  # reported | catalog | unpriced


def _nanos_per_million(raw: Any, where: str) -> int:
    try:
        value = Decimal(str(raw)) * NANOS_PER_USD
    except InvalidOperation as exc:
        raise PricingError(f"{where}: price {raw!r} is not a decimal number") from exc
    if value < 0 or value != value.to_integral_value():
        raise PricingError(f"{where}: price {raw!r} is negative or below 1e-9 USD per M")
    return int(value)


def _rates(spec: Mapping[str, Any], where: str, base: Rates | None = None) -> Rates:
    def get(name: str, fallback: int | None) -> int:
        if name in spec:
            return _nanos_per_million(spec[name], f"{where}.{name}")
        if fallback is None:
            raise PricingError(f"{where}: missing price {name!r}")
        return fallback

    input_rate = get("input", base.input if base else None)
    output_rate = get("output", base.output if base else None)
    in_dec = Decimal(input_rate)
    return Rates(
        input=input_rate,
        output=output_rate,
        reasoning=get("reasoning", output_rate),
        cache_read=get("cache_read", int(in_dec * CACHE_READ_X)),
        cache_write_5m=get("cache_write_5m", int(in_dec * CACHE_WRITE_5M_X)),
        cache_write_1h=get("cache_write_1h", int(in_dec * CACHE_WRITE_1H_X)),
    )


def _date_ms(raw: str, where: str) -> int:
    try:
        day = dt.date.fromisoformat(raw)
    except (TypeError, ValueError) as exc:
        raise PricingError(f"{where}: effective_from {raw!r} is not YYYY-MM-DD") from exc
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1000


def cost_nanos(rates: Rates, event: Mapping[str, Any]) -> int:
    """Exact cost of one request's buckets; reasoning is the part of output priced apart."""
    output = event.get("output_tokens", 0)
    reasoning = min(event.get("reasoning_tokens", 0), output)
    total = (
        event.get("input_tokens", 0) * rates.input
        + event.get("cache_read_tokens", 0) * rates.cache_read
        + event.get("cache_write_5m_tokens", 0) * rates.cache_write_5m
        + event.get("cache_write_1h_tokens", 0) * rates.cache_write_1h
        + (output - reasoning) * rates.output
        + reasoning * rates.reasoning
    )
    return (total + TOKENS_PER_PRICE_UNIT // 2) // TOKENS_PER_PRICE_UNIT


def prompt_tokens(event: Mapping[str, Any]) -> int:
    """Everything sent as input, cached or not: what long-context tiers are decided on."""
    return (
        event.get("input_tokens", 0)
        + event.get("cache_read_tokens", 0)
        + event.get("cache_write_5m_tokens", 0)
        + event.get("cache_write_1h_tokens", 0)
    )


class PriceCatalog:
    """Price entries by model, resolved once per (provider, model) and cached."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.version = str(spec.get("version", "unversioned"))
        self.taken_on = str(spec.get("taken_on", ""))
        entries: list[PriceEntry] = []
        for index, raw in enumerate(spec.get("models", [])):
            where = f"models[{index}]({raw.get('id', '?')})"
            try:
                pattern = re.compile(raw["match"], re.IGNORECASE)
                base = _rates(raw, where)
                tiers = tuple(
                    sorted(
                        (
                            Tier(int(t["above_prompt_tokens"]), _rates(t, f"{where}.tier", base))
                            for t in raw.get("tiers", [])
                        ),
                        key=lambda t: t.above_prompt_tokens,
                    )
                )
                entries.append(
                    PriceEntry(
                        model_id=raw["id"],
                        providers=frozenset(p.lower() for p in raw["providers"]),
                        pattern=pattern,
                        effective_from_ms=_date_ms(raw["effective_from"], where),
                        effective_from=raw["effective_from"],
                        rates=base,
                        tiers=tiers,
                    )
                )
            except (KeyError, re.error, TypeError, ValueError) as exc:
                raise PricingError(f"{where}: {exc!r}") from exc
        self.entries: tuple[PriceEntry, ...] = tuple(entries)
        self.unpriced: Counter[tuple[str, str]] = Counter()
        self._resolve = functools.lru_cache(maxsize=4096)(self._resolve_uncached)
        #: price_version labels by (model id, effective date, tier threshold), built once
        self._labels: dict[tuple[str, str, int | None], str] = {}

    @classmethod
    def from_file(cls, path: Path) -> PriceCatalog:
        try:
            return cls(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise PricingError(f"cannot read price catalog {path}: {exc}") from exc

    def _resolve_uncached(self, provider: str, model: str) -> Sequence[PriceEntry]:
        """The versions of the first model id (file order) whose pattern matches, newest first."""
        provider = provider.lower()
        for entry in self.entries:
            if provider in entry.providers and entry.pattern.fullmatch(model):
                same = [e for e in self.entries if e.model_id == entry.model_id]
                return tuple(sorted(same, key=lambda e: e.effective_from_ms, reverse=True))
        return ()

    def lookup(self, provider: str, model: str, event_time_ms: int) -> PriceEntry | None:
        for entry in self._resolve(provider, model):
            if entry.effective_from_ms <= event_time_ms:
                return entry
        return None

    def price(self, event: Mapping[str, Any]) -> Price:
        """Cost of one event: the provider's reported cost wins, else the catalog, else 0."""
        reported = event.get("cost_nanos")
        if reported is not None:
            return Price(int(reported), SOURCE_REPORTED, SOURCE_REPORTED)
        entry = self.lookup(event["provider"], event["model"], event["event_time"])
        if entry is None:
            self.unpriced[(event["provider"], event["model"])] += 1
            return Price(0, SOURCE_UNPRICED, SOURCE_UNPRICED)
        rates, threshold = entry.rates_for(prompt_tokens(event))
        label_key = (entry.model_id, entry.effective_from, threshold)
        version = self._labels.get(label_key)
        if version is None:
            version = f"{self.version}:{entry.model_id}@{entry.effective_from}"
            if threshold is not None:
                version += f">{threshold}"
            self._labels[label_key] = version
        return Price(cost_nanos(rates, event), version, SOURCE_CATALOG)


@functools.cache
def default_catalog() -> PriceCatalog:
    """The catalog shipped in the package (loaded once per process)."""
    return PriceCatalog.from_file(CATALOG_PATH)
