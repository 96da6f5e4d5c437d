"""Runtime price lookup: a versioned catalog of list prices, strict model matching, overlays.

Prices are integer nano-USD per MILLION tokens (exact for every published price down to
$0.000000001/M); each bucket is multiplied exactly and the sum divided once, rounding half up,
so no float ever touches money.

Matching is strict: a (provider, model) resolves to exactly one model or to none, never to a
sibling's price. Patterns are full matches (``spendstream prices sync`` writes them without
open ``.*`` tails), and two models that both match are refused as ambiguous, not guessed.
This module never imports ``genai_prices`` (that is the offline sync's job): a cached lookup
is one dict hit, an uncached one a scan of the provider's patterns.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from streams.errors import PricingError

DATA_DIR: Final = Path(__file__).resolve().parent / "data"
CATALOG_PATH: Final = DATA_DIR / "catalog.json"
OVERLAY_PATH: Final = DATA_DIR / "overlay.json"
NANOS_PER_USD: Final = 1_000_000_000
TOKENS_PER_PRICE_UNIT: Final = 1_000_000
#: the catalog format the sync writes (1 was the hand-written file of 2025-11-24)
CATALOG_FORMAT: Final = 2
#: effective date of a price the source gives no start date for (no event is older)
FLOOR_DATE: Final = "2020-01-01"
#: Legacy (format 1) files only: cache multipliers of the input price where an entry gives
#: none (Anthropic's). Format 2 writes every bucket explicitly: these are wrong for OpenAI.
CACHE_READ_X: Final = Decimal("0.1")
CACHE_WRITE_5M_X: Final = Decimal("1.25")
CACHE_WRITE_1H_X: Final = Decimal("2.0")

SOURCE_REPORTED: Final = "reported"
SOURCE_CATALOG: Final = "catalog"
SOURCE_UNPRICED: Final = "unpriced"

RATE_FIELDS: Final = (
    "input",
    "output",
    "reasoning",
    "cache_read",
    "cache_write_5m",
    "cache_write_1h",
)

#: Provider names events used before OpenTelemetry's ``gen_ai.provider.name`` values, and
#: common spellings, mapped to those values. ``google`` was in the 2025-11-24 catalog.
PROVIDER_ALIASES: Final[Mapping[str, str]] = {
    "google": "gcp.gemini",
    "gemini": "gcp.gemini",
    "google_genai": "gcp.gen_ai",
    "vertex": "gcp.vertex_ai",
    "vertex_ai": "gcp.vertex_ai",
    "vertexai": "gcp.vertex_ai",
    "google_vertex": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "aws": "aws.bedrock",
    "amazon_bedrock": "aws.bedrock",
    "azure": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "xai": "x_ai",
    "x-ai": "x_ai",
    "mistral": "mistral_ai",
    "mistralai": "mistral_ai",
}

#: Bedrock model ids: optional ARN path, optional inference-profile region, vendor, model
_BEDROCK_ID: Final = re.compile(
    r"(?:arn:aws[\w-]*:bedrock:[^/]*/)?"
    r"(?:(?:us|eu|apac|au|jp|ca|in|us-gov|global)\.)?"
    r"(?P<vendor>anthropic|amazon|meta|mistral|cohere|deepseek|openai|qwen|writer|google|"
    r"moonshotai|nvidia|zai|ai21)\.[a-z0-9].*",
    re.IGNORECASE,
)
#: the first-party provider of a Bedrock vendor prefix
_BEDROCK_VENDOR: Final[Mapping[str, str]] = {
    "anthropic": "anthropic",
    "openai": "openai",
    "mistral": "mistral_ai",
    "cohere": "cohere",
    "deepseek": "deepseek",
}


def canonical_provider(provider: str) -> str:
    """The OpenTelemetry ``gen_ai.provider.name`` for ``provider`` (aliases mapped)."""
    lowered = provider.strip().lower()
    return PROVIDER_ALIASES.get(lowered, lowered)


def cloud_route(provider: str, model: str) -> str | None:
    """The cloud a model id names by its form when given with the model's own provider:
    Bedrock's ``us.anthropic.claude-...-v1:0`` is billed by AWS, Vertex's ``claude-...@date``
    by Google, whatever the event says the provider is."""
    if provider != "aws.bedrock":
        found = _BEDROCK_ID.fullmatch(model)
        if found and _BEDROCK_VENDOR.get(found["vendor"].lower()) == provider:
            return "aws.bedrock"
    if provider == "anthropic" and "@" in model:
        return "gcp.vertex_ai"
    return None


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
    """One price version of one model: in force from ``effective_from`` until a newer one."""

    model_id: str
    providers: frozenset[str]
    effective_from_ms: int
    effective_from: str
    rates: Rates
    tiers: tuple[Tier, ...]  # ascending threshold
    #: the stored rows' price_version (a tier adds ``>threshold``); never changes for an entry
    label: str = ""
    #: catalog | overlay | org:<org id>
    origin: str = "catalog"

    def rates_for(self, prompt_tokens: int) -> tuple[Rates, int | None]:
        chosen, threshold = self.rates, None
        for tier in self.tiers:
            if prompt_tokens > tier.above_prompt_tokens:
                chosen, threshold = tier.rates, tier.above_prompt_tokens
        return chosen, threshold


class ModelDef:
    """A model: who sells it, which ids name it, and its price versions (newest first).

    The match pattern is compiled on first use, and only for a model one of whose ``names``
    (literal fragments every id it matches contains) occurs in the id looked up: loading
    500 models stays cheap and a lookup tries a handful of patterns, not all of them.
    """

    __slots__ = (
        "_compiled",
        "fallback_for",
        "match",
        "model_id",
        "names",
        "providers",
        "unpriced_reason",
        "versions",
    )

    def __init__(
        self,
        model_id: str,
        providers: frozenset[str],
        fallback_for: frozenset[str],
        match: str,
        names: tuple[str, ...],
        versions: tuple[PriceEntry, ...],
        unpriced_reason: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.providers = providers
        self.fallback_for = fallback_for
        self.match = match
        self.names = names
        self.versions = versions
        self.unpriced_reason = unpriced_reason
        self._compiled: re.Pattern[str] | None = None

    @property
    def pattern(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = _compile(self.match, self.model_id)
        return self._compiled

    def may_match(self, lowered: str) -> bool:
        return not self.names or any(name in lowered for name in self.names)

    def __repr__(self) -> str:
        return f"ModelDef({self.model_id!r}, {len(self.versions)} versions)"


@dataclasses.dataclass(frozen=True)
class Resolution:
    """How a (provider, model) was resolved, for ``prices show`` and the unpriced report."""

    provider: str
    model: str
    looked_under: str
    definition: ModelDef | None
    why: str
    #: the models an ambiguous id matches (it resolves to none of them)
    candidates: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Price:
    cost_nanos: int
    price_version: str
    source: str  # reported | catalog | unpriced


def usd_to_nanos_per_million(raw: Any, where: str) -> int:
    """USD per million tokens (decimal text) as integer nano-USD; refuses what is not exact."""
    try:
        value = Decimal(str(raw)) * NANOS_PER_USD
    except InvalidOperation as exc:
        raise PricingError(f"{where}: price {raw!r} is not a decimal number") from exc
    if not value.is_finite() or value < 0 or value != value.to_integral_value():
        raise PricingError(f"{where}: price {raw!r} is negative or below 1e-9 USD per M")
    return int(value)


_nanos_per_million = usd_to_nanos_per_million  # the name of 2025-11-24


def nanos_to_usd_text(nanos: int) -> str:
    """Integer nano-USD as exact decimal USD text (``3000000000`` -> ``"3"``)."""
    text = format(Decimal(nanos) / NANOS_PER_USD, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _legacy_rates(spec: Mapping[str, Any], where: str, base: Rates | None = None) -> Rates:
    """Format 1: reasoning defaults to output, cache buckets to Anthropic's multipliers."""

    def get(name: str, fallback: int | None) -> int:
        if name in spec:
            return usd_to_nanos_per_million(spec[name], f"{where}.{name}")
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


def explicit_rates(spec: Mapping[str, Any], where: str) -> Rates:
    """Format 2 and overlays: every bucket written out, none guessed."""
    missing = [name for name in RATE_FIELDS if name not in spec]
    if missing:
        raise PricingError(f"{where}: missing price(s) {', '.join(missing)} (write every bucket)")
    values = {name: usd_to_nanos_per_million(spec[name], f"{where}.{name}") for name in RATE_FIELDS}
    return Rates(**values)


def rates_spec(rates: Rates) -> dict[str, str]:
    """Rates as the catalog writes them (decimal USD per million tokens)."""
    return {name: nanos_to_usd_text(getattr(rates, name)) for name in RATE_FIELDS}


def date_ms(raw: str, where: str) -> int:
    try:
        day = dt.date.fromisoformat(raw)
    except (TypeError, ValueError) as exc:
        raise PricingError(f"{where}: effective_from {raw!r} is not YYYY-MM-DD") from exc
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1000


_date_ms = date_ms


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


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise PricingError(f"{where}: bad match pattern: {exc}") from exc


def _tiers(raw: Mapping[str, Any], where: str, base: Rates, legacy: bool) -> tuple[Tier, ...]:
    tiers = []
    for t in raw.get("tiers", []):
        above = t["above_prompt_tokens"]
        if not isinstance(above, int) or above < 0:
            raise PricingError(f"{where}.tier: above_prompt_tokens {above!r} is not a count")
        rates = _legacy_rates(t, f"{where}.tier", base) if legacy else explicit_rates(t, where)
        tiers.append(Tier(above, rates))
    return tuple(sorted(tiers, key=lambda t: t.above_prompt_tokens))


class PriceCatalog:
    """Models and their price versions, resolved once per (provider, model) and cached.

    ``spec`` is a catalog file's content (format 2, or the hand-written format 1); each overlay
    adds price versions that win over the catalog's from their date (``prices``) and
    negotiated rates that win for one org (``orgs``).
    """

    def __init__(self, spec: Mapping[str, Any], overlays: Sequence[Mapping[str, Any]] = ()) -> None:
        self.version = str(spec.get("version", "unversioned"))
        self.taken_on = str(spec.get("taken_on", ""))
        self.format = int(spec.get("format", 1))
        self.unsupported: tuple[str, ...] = tuple(spec.get("unsupported", ()))
        versions: dict[str, list[PriceEntry]] = {}
        heads: dict[str, dict[str, Any]] = {}
        if self.format == 1:
            self._load_legacy(spec, heads, versions)
        elif self.format == CATALOG_FORMAT:
            self._load_v2(spec, heads, versions)
        else:
            raise PricingError(f"price catalog format {self.format} is not known")
        self._org_versions: dict[str, dict[str, list[PriceEntry]]] = {}
        for index, overlay in enumerate(overlays):
            self._load_overlay(overlay, f"overlay[{index}]", heads, versions)
        self.models: dict[str, ModelDef] = {}
        for model_id, head in heads.items():
            self.models[model_id] = ModelDef(
                model_id=model_id,
                providers=head["providers"],
                fallback_for=head["fallback_for"],
                match=head["match"],
                names=head["names"],
                versions=_newest_first(versions.get(model_id, ())),
                unpriced_reason=head.get("unpriced"),
            )
        #: every price version, catalog and overlay (org-specific ones are apart)
        self.entries: tuple[PriceEntry, ...] = tuple(
            e for d in self.models.values() for e in reversed(d.versions)
        )
        self._own: dict[str, list[ModelDef]] = {}
        self._fallback: dict[str, list[ModelDef]] = {}
        for definition in self.models.values():  # file order: format 1 resolves by it
            for provider in definition.providers:
                self._own.setdefault(provider, []).append(definition)
            for provider in definition.fallback_for:
                self._fallback.setdefault(provider, []).append(definition)
        self.unpriced: Counter[tuple[str, str]] = Counter()
        self.ambiguous: dict[tuple[str, str], tuple[str, ...]] = {}
        self._resolve = functools.lru_cache(maxsize=4096)(self._resolve_uncached)
        self._org_cache: dict[tuple[str, str, str], Sequence[PriceEntry]] = {}
        #: price_version labels by (entry label, tier threshold), built once
        self._labels: dict[tuple[str, int | None], str] = {}

    # -- loading ---------------------------------------------------------------------------

    def _load_legacy(
        self,
        spec: Mapping[str, Any],
        heads: dict[str, dict[str, Any]],
        versions: dict[str, list[PriceEntry]],
    ) -> None:
        for index, raw in enumerate(spec.get("models", [])):
            where = f"models[{index}]({raw.get('id', '?')})"
            try:
                model_id = raw["id"]
                head = heads.get(model_id)
                if head is None:
                    _compile(raw["match"], where)  # a legacy file is small: check it now
                    head = heads[model_id] = {
                        "providers": frozenset(canonical_provider(p) for p in raw["providers"]),
                        "fallback_for": frozenset(),
                        "match": raw["match"],
                        "names": (),
                    }
                base = _legacy_rates(raw, where)
                entry = self._entry(
                    model_id, head, raw["effective_from"], base, _tiers(raw, where, base, True)
                )
                versions.setdefault(model_id, []).append(
                    dataclasses.replace(entry, label=f"{self.version}:{entry.label}")
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise PricingError(f"{where}: {exc!r}") from exc

    def _load_v2(
        self,
        spec: Mapping[str, Any],
        heads: dict[str, dict[str, Any]],
        versions: dict[str, list[PriceEntry]],
    ) -> None:
        for index, raw in enumerate(spec.get("models", [])):
            where = f"models[{index}]({raw.get('id', '?')})"
            try:
                if raw["id"] in heads:
                    raise PricingError(f"{where}: model id given twice")
                heads[raw["id"]] = self._head(raw, where)
            except (KeyError, TypeError, ValueError) as exc:
                raise PricingError(f"{where}: {exc!r}") from exc
        seen: set[tuple[str, str]] = set()
        for index, raw in enumerate(spec.get("prices", [])):
            where = f"prices[{index}]({raw.get('model', '?')}@{raw.get('effective_from', '?')})"
            try:
                model_id = raw["model"]
                head = heads.get(model_id)
                if head is None:
                    raise PricingError(f"{where}: no model {model_id!r} in the catalog")
                key = (model_id, raw["effective_from"])
                if key in seen:
                    raise PricingError(f"{where}: a second price for the same model and date")
                seen.add(key)
                base = explicit_rates(raw, where)
                entry = self._entry(
                    model_id, head, raw["effective_from"], base, _tiers(raw, where, base, False)
                )
                label = f"{raw['added_in']}:{entry.label}"
                versions.setdefault(model_id, []).append(dataclasses.replace(entry, label=label))
            except (KeyError, TypeError, ValueError) as exc:
                raise PricingError(f"{where}: {exc!r}") from exc

    @staticmethod
    def _head(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
        head: dict[str, Any] = {
            "providers": frozenset(canonical_provider(p) for p in raw.get("providers", ())),
            "fallback_for": frozenset(canonical_provider(p) for p in raw.get("fallback_for", ())),
            "match": str(raw["match"]),
            "names": tuple(str(n).lower() for n in raw.get("names", ())),
        }
        if raw.get("unpriced"):
            head["unpriced"] = str(raw["unpriced"])
        return head

    def _entry(
        self,
        model_id: str,
        head: Mapping[str, Any],
        effective_from: str,
        rates: Rates,
        tiers: tuple[Tier, ...],
        origin: str = "catalog",
    ) -> PriceEntry:
        return PriceEntry(
            model_id=model_id,
            providers=head["providers"],
            effective_from_ms=date_ms(effective_from, model_id),
            effective_from=effective_from,
            rates=rates,
            tiers=tiers,
            label=f"{model_id}@{effective_from}",
            origin=origin,
        )

    def _load_overlay(
        self,
        overlay: Mapping[str, Any],
        where: str,
        heads: dict[str, dict[str, Any]],
        versions: dict[str, list[PriceEntry]],
    ) -> None:
        """Runtime overlay: models we add, list prices we correct, rates an org negotiated."""
        for index, raw in enumerate(overlay.get("models", [])):
            at = f"{where}.models[{index}]({raw.get('id', '?')})"
            try:
                heads[raw["id"]] = self._head(raw, at)  # replaces a catalog model's matching
            except (KeyError, TypeError, ValueError) as exc:
                raise PricingError(f"{at}: {exc!r}") from exc
        for index, raw in enumerate(overlay.get("prices", [])):
            at = f"{where}.prices[{index}]"
            entry = self._overlay_entry(raw, at, heads, "overlay")
            versions.setdefault(entry.model_id, []).append(entry)
        orgs = overlay.get("orgs", {})
        if not isinstance(orgs, Mapping):
            raise PricingError(f"{where}.orgs: must map org ids to price lists")
        for org, prices in orgs.items():
            by_model = self._org_versions.setdefault(str(org), {})
            for index, raw in enumerate(prices):
                at = f"{where}.orgs[{org}][{index}]"
                entry = self._overlay_entry(raw, at, heads, f"org:{org}")
                by_model.setdefault(entry.model_id, []).append(entry)

    def _overlay_entry(
        self, raw: Mapping[str, Any], where: str, heads: Mapping[str, Any], origin: str
    ) -> PriceEntry:
        try:
            model_id = raw["model"]
            head = heads.get(model_id)
            if head is None:
                raise PricingError(
                    f"{where}: no model {model_id!r} (see `spendstream prices show`)"
                )
            base = explicit_rates(raw, where)
            entry = self._entry(
                model_id, head, raw["effective_from"], base, _tiers(raw, where, base, False), origin
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PricingError(f"{where}: {exc!r}") from exc
        return dataclasses.replace(entry, label=f"{origin}:{entry.label}")

    @classmethod
    def from_file(cls, path: Path, overlays: Iterable[Path] = ()) -> PriceCatalog:
        return cls(read_json(path), [read_json(p) for p in overlays])

    # -- resolving -------------------------------------------------------------------------

    def resolution(self, provider: str, model: str) -> Resolution:
        """Which model (provider, model) names, under which provider, and why; strict."""
        canon = canonical_provider(provider)
        routed = cloud_route(canon, model)
        lowered = model.lower()
        for under in (routed, canon) if routed else (canon,):
            for tier_name, tier in (("", self._own), (" (fallback)", self._fallback)):
                found = [
                    d
                    for d in tier.get(under, ())
                    if d.may_match(lowered) and d.pattern.fullmatch(model)
                ]
                if not found:
                    continue
                if len(found) > 1 and self.format != 1:  # format 1 resolved by file order
                    names = tuple(sorted(d.model_id for d in found))
                    why = f"ambiguous: matches {', '.join(names)}"
                    return Resolution(provider, model, under, None, why, names)
                why = f"matched under {under}{tier_name}"
                if under != canon:
                    why += f" (a {under} id given with provider {canon})"
                return Resolution(provider, model, under, found[0], why)
        return Resolution(provider, model, canon, None, "no model of this provider matches")

    def _resolve_uncached(self, provider: str, model: str) -> Sequence[PriceEntry]:
        """The versions of the one model (provider, model) names, newest first; () if none."""
        found = self.resolution(provider, model)
        if found.definition is None:
            if found.candidates:
                self.ambiguous[(provider, model)] = found.candidates
            return ()
        return found.definition.versions

    @property
    def has_org_rates(self) -> bool:
        return bool(self._org_versions)

    def resolve_for(self, org: str | None, provider: str, model: str) -> Sequence[PriceEntry]:
        """``_resolve`` with the org's negotiated versions first where it has any."""
        by_model = self._org_versions.get(org) if org is not None else None
        if not by_model:
            return self._resolve(provider, model)
        key = (org or "", provider, model)
        cached = self._org_cache.get(key)
        if cached is None:
            versions = self._resolve(provider, model)
            definition = self.resolution(provider, model).definition
            own = by_model.get(definition.model_id, ()) if definition else ()
            cached = self._org_cache[key] = _newest_first([*versions, *own]) if own else versions
        return cached

    def lookup(
        self, provider: str, model: str, event_time_ms: int, org: str | None = None
    ) -> PriceEntry | None:
        versions = (
            self.resolve_for(org, provider, model)
            if org is not None and self._org_versions
            else self._resolve(provider, model)
        )
        for entry in versions:
            if entry.effective_from_ms <= event_time_ms:
                return entry
        return None

    def label(self, entry: PriceEntry, threshold: int | None) -> str:
        key = (entry.label, threshold)
        version = self._labels.get(key)
        if version is None:
            version = entry.label if threshold is None else f"{entry.label}>{threshold}"
            self._labels[key] = version
        return version

    def price(self, event: Mapping[str, Any]) -> Price:
        """Cost of one event: the provider's reported cost wins, else the catalog, else 0."""
        reported = event.get("cost_nanos")
        if reported is not None:
            return Price(int(reported), SOURCE_REPORTED, SOURCE_REPORTED)
        provider, model, at = event["provider"], event["model"], event["event_time"]
        versions = (
            self.resolve_for(event.get("org_id"), provider, model)
            if self._org_versions
            else self._resolve(provider, model)
        )
        for entry in versions:
            if entry.effective_from_ms <= at:
                break
        else:
            self.unpriced[(provider, model)] += 1
            return Price(0, SOURCE_UNPRICED, SOURCE_UNPRICED)
        if not entry.tiers:
            return Price(cost_nanos(entry.rates, event), entry.label, SOURCE_CATALOG)
        rates, threshold = entry.rates_for(prompt_tokens(event))
        key = (entry.label, threshold)
        version = self._labels.get(key)
        if version is None:
            version = self._labels[key] = self.label(entry, threshold)
        return Price(cost_nanos(rates, event), version, SOURCE_CATALOG)


def precedence(entry: PriceEntry) -> tuple[int, int, int]:
    """Which version wins among those in force: an org's negotiated price over any list
    price, then the newest date, then (same date) an overlay's over the catalog's."""
    return (
        entry.origin.startswith("org:"),
        entry.effective_from_ms,
        entry.origin == "overlay",
    )


def _newest_first(entries: Iterable[PriceEntry]) -> tuple[PriceEntry, ...]:
    """Versions in the order a lookup tries them: the first in force wins (``precedence``)."""
    return tuple(sorted(entries, key=precedence, reverse=True))


def read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PricingError(f"cannot read price file {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise PricingError(f"price file {path}: not a JSON object")
    return loaded


def overlay_paths(user_overlay: Path | None = None) -> list[Path]:
    """The shipped overlay, then the user's (``SPENDSTREAM_PRICES_OVERLAY``) if any."""
    return [OVERLAY_PATH, *([user_overlay] if user_overlay else [])]


@functools.cache
def default_catalog() -> PriceCatalog:
    """The shipped catalog with the shipped overlay and the user's (loaded once per process)."""
    from streams.settings import Settings

    return PriceCatalog.from_file(CATALOG_PATH, overlay_paths(Settings.from_env().prices_overlay))
