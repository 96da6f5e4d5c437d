"""``spendstream prices sync``: snapshot the pinned genai-prices into our catalog, append-only.

Offline and dev-only (genai-prices is in the dev extra; the runtime never imports it). What it
writes, from pydantic's genai-prices data for the providers that have an OpenTelemetry
``gen_ai.provider.name``:

* every bucket explicitly: genai-prices falls a missing sub-price back to its parent (cache
  read to input, 1-hour cache write to the cache write, reasoning to output); we write what
  that fallback gives, so no default of ours applies to any provider;
* tiers with their thresholds (genai-prices' "cliff" on total input tokens, like ours);
* start dates as ``effective_from`` (undated prices from ``FLOOR_DATE``);
* match rules as full-match patterns with strict tails: a prefix rule ``claude-opus-4-1``
  accepts dates, ``-latest``, Bedrock ``-v1:0`` and Vertex ``@...`` suffixes, never
  ``claude-opus-4-10``; overlapping rules are made disjoint in genai-prices' own order;
* prices finer than 1e-9 USD per million tokens rounded half up, with a report;
* what our format cannot hold, listed (batch/flex/priority variants, time-of-day prices: the
  highest kept, per-request and search fees, modality prices).

Append-only: a price version already in the catalog is never edited; a source change to one
is refused (reported, exit status 1) unless the overlay accepts it. Same inputs (pinned
package, current catalog, overlay, ``today``), same bytes out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Final

from streams.errors import PricingError
from streams.pricing.catalog import (
    CATALOG_FORMAT,
    FLOOR_DATE,
    NANOS_PER_USD,
    RATE_FIELDS,
    PriceCatalog,
    Rates,
    nanos_to_usd_text,
    rates_spec,
)

#: genai-prices provider id -> the OpenTelemetry gen_ai.provider.name values it serves
GENAI_PROVIDERS: Final[Mapping[str, tuple[str, ...]]] = {
    "anthropic": ("anthropic",),
    "openai": ("openai",),
    "google": ("gcp.gemini", "gcp.vertex_ai", "gcp.gen_ai"),
    "aws": ("aws.bedrock",),
    "azure": ("azure.ai.openai", "azure.ai.inference"),
    "x-ai": ("x_ai",),
    "deepseek": ("deepseek",),
    "mistral": ("mistral_ai",),
    "cohere": ("cohere",),
    "groq": ("groq",),
    "perplexity": ("perplexity",),
}
#: version suffixes that name the same model: dates, -latest, Bedrock versions, Vertex @...
TAIL_SEGMENT: Final = (
    r"-\d{8}|-\d{4}-\d{2}-\d{2}|-\d{2}-\d{4}|-\d{2}-\d{2}|-\d{3,4}|-latest"
    r"|-v\d+(?::\d+)?|:\d+|@[\w.-]+"
)
TAIL: Final = f"(?:{TAIL_SEGMENT})*"
#: what may stand before a ``contains``/``ends_with`` literal: an ARN/path or a dotted prefix
PREFIX: Final = r"(?:.*[/.])?"
_TOKEN_KEYS: Final = frozenset(
    {
        "input_mtok",
        "output_mtok",
        "cache_read_mtok",
        "cache_write_mtok",
        "cache_write_5m_mtok",
        "cache_write_1h_mtok",
        "output_reasoning_mtok",
    }
)
_OUTPUT_MODALITY = re.compile(r"^output_(audio|image|video)_")
_INPUT_MODALITY = re.compile(r"^(input|cache)_(audio|image|video)_")
_TOKEN_UNIT = re.compile(r"_mtok$")
_DASHED_DATE_END = re.compile(r"-(20\d\d)-(\d\d)-(\d\d)$")
_PARTIAL_DATE_END = re.compile(r"-(20\d{0,5})$")

# what our format cannot hold, by kind (keys of the catalog's "unsupported")
KIND_VARIANTS: Final = "batch/flex/priority variants (standard price kept)"
KIND_TIME_OF_DAY: Final = "time-of-day prices (the day's highest kept)"
KIND_REQUESTS: Final = "per-request fees (not charged)"
KIND_SEARCH: Final = "web/storage search fees (not charged)"
KIND_INPUT_MODALITY: Final = "audio/image/video input tokens (priced at the text rate)"
KIND_OUTPUT_MODALITY: Final = "audio/image/video output tokens (model left unpriced)"
KIND_OTHER_UNITS: Final = "priced per audio hour, character or page (model left unpriced)"
KIND_OTHER: Final = "other price units (not charged)"


@dataclasses.dataclass
class SyncReport:
    """What a sync did and what it could not do; ``ok`` is False when it refused something."""

    appended: list[str] = dataclasses.field(default_factory=list)
    conflicts: list[str] = dataclasses.field(default_factory=list)
    accepted: list[str] = dataclasses.field(default_factory=list)
    rounded: list[str] = dataclasses.field(default_factory=list)
    disjoint: list[str] = dataclasses.field(default_factory=list)
    retired: list[str] = dataclasses.field(default_factory=list)
    unsupported: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    models: int = 0
    prices: int = 0

    @property
    def ok(self) -> bool:
        return not self.conflicts

    def lines(self) -> list[str]:
        out = [
            f"{self.models} models, {self.prices} price versions; "
            f"{len(self.appended)} appended, {len(self.conflicts)} refused"
        ]
        out += [f"  appended {x}" for x in self.appended]
        out += [f"  REFUSED {x}" for x in self.conflicts]
        out += [f"  accepted by the overlay: {x}" for x in self.accepted]
        out += [f"  rounded {x}" for x in self.rounded]
        out += [f"  retired (no longer matched) {x}" for x in self.retired]
        if self.disjoint:
            out.append(f"  {len(self.disjoint)} overlapping rules made disjoint (source order)")
        for kind, models in sorted(self.unsupported.items()):
            out.append(f"  not held: {kind}: {len(models)} models")
        return out


# -- match rules ---------------------------------------------------------------------------


def _literal(text: str) -> str:
    """A literal id as regex; a dashed date at its end also accepts the compact form."""
    found = _DASHED_DATE_END.search(text)
    if found is None:
        return re.escape(text)
    y, m, d = found.groups()
    return re.escape(text[: found.start()]) + f"-{y}-?{m}-?{d}"


def _starts_with(text: str) -> str:
    if text.startswith("ft:") or ".ft-" in text:  # fine-tunes: the user's suffix follows
        return _literal(text) + r"[\w.:-]*"
    if text.endswith("@"):
        return _literal(text) + r"[\w.-]+" + TAIL
    if text.endswith("-"):
        return _literal(text[:-1]) + f"(?:{TAIL_SEGMENT})+"
    partial = _PARTIAL_DATE_END.search(text)
    if partial is not None:  # "claude-sonnet-4-2025": the rest of an 8-digit date
        return _literal(text) + rf"\d{{{8 - len(partial.group(1))}}}" + TAIL
    return _literal(text) + TAIL


def _regex(text: str) -> str:
    if text.endswith("$"):
        return f"(?:{text})"
    if re.fullmatch(r"\^\(\?[=!<].*\)", text):  # a pure lookaround guard (used inside "and")
        return f"(?:{text}).*"
    if text.endswith("-\\d"):  # "^gemini-3\.5-flash-\d": a version suffix must follow
        return f"(?:{text[:-3]})(?:{TAIL_SEGMENT})+"
    return f"(?:{text}){TAIL}"


def clause_pattern(clause: Any) -> str:
    """A genai-prices match clause as a strict full-match regex (see the module doc)."""
    name = type(clause).__name__
    if name == "ClauseEquals":
        return _literal(clause.equals)
    if name == "ClauseStartsWith":
        return _starts_with(clause.starts_with)
    if name == "ClauseEndsWith":
        return PREFIX + _literal(clause.ends_with)
    if name == "ClauseContains":
        text = clause.contains
        if text.endswith("@"):
            return PREFIX + _literal(text) + r"[\w.-]+" + TAIL
        return PREFIX + _literal(text) + TAIL
    if name == "ClauseRegex":
        return _regex(clause.regex)
    if name == "ClauseOr":
        return "(?:" + "|".join(clause_pattern(c) for c in clause.or_) + ")"
    if name == "ClauseAnd":
        first, *rest = (clause_pattern(c) for c in clause.and_)
        return "".join(f"(?=(?:{r})$)" for r in rest) + f"(?:{first})"
    raise PricingError(f"unknown genai-prices match clause {name}")


def clause_names(clause: Any) -> tuple[list[str], bool]:
    """The literal ids a clause names, and whether every id it matches contains one of them
    (then a lookup may skip the model for ids that contain none: see ``ModelDef.names``)."""
    name = type(clause).__name__
    if name in ("ClauseOr", "ClauseAnd"):
        parts = [clause_names(c) for c in (clause.or_ if name == "ClauseOr" else clause.and_)]
        names = [n for found, _ in parts for n in found]
        anchored = [a for _, a in parts]
        return names, all(anchored) if name == "ClauseOr" else any(anchored)
    if name == "ClauseRegex":  # the literal the regex starts with, if any
        head = re.match(r"\^((?:[\w-]|\\\.)+)", clause.regex)
        if head is None:
            return [], False
        return [head.group(1).replace("\\.", ".")], True
    for attr in ("equals", "starts_with", "ends_with", "contains"):
        value = getattr(clause, attr, None)
        if isinstance(value, str):
            return [value], bool(value.rstrip("-@"))
    return [], False


def _prefilter_name(literal: str) -> str:
    """A fragment every id the literal's rule matches contains (dates may be compacted)."""
    found = _DASHED_DATE_END.search(literal)
    return (literal[: found.start()] if found else literal).rstrip("-@").lower()


def _is_prefix_rule(clause: Any) -> bool:
    name = type(clause).__name__
    if name in ("ClauseOr", "ClauseAnd"):
        parts = clause.or_ if name == "ClauseOr" else clause.and_
        return any(_is_prefix_rule(c) for c in parts)
    return name in ("ClauseStartsWith", "ClauseContains")


# -- prices --------------------------------------------------------------------------------


def _nanos(value: Decimal, where: str, report: SyncReport) -> int:
    scaled = value * NANOS_PER_USD
    if scaled < 0 or not scaled.is_finite():
        raise PricingError(f"{where}: price {value} is negative or not finite")
    exact = scaled.to_integral_value(rounding=ROUND_HALF_UP)
    if exact != scaled:
        report.rounded.append(f"{where}: ${value}/M -> ${nanos_to_usd_text(int(exact))}/M")
    return int(exact)


def _round_usd(value: Any, where: str, report: SyncReport) -> Decimal:
    return Decimal(nanos_to_usd_text(_nanos(Decimal(value), where, report)))


def _rounded(value: Any, where: str, report: SyncReport) -> Any:
    """A genai-prices price (plain or tiered) rounded to what the catalog holds, reported."""
    if not isinstance(value, (Decimal, int)) and type(value).__name__ != "TieredPrices":
        return value  # not a token price: listed as not held, never converted
    if type(value).__name__ != "TieredPrices":
        return _round_usd(value, where, report)
    return dataclasses.replace(
        value,
        base=_round_usd(value.base, where, report),
        tiers=[
            dataclasses.replace(t, price=_round_usd(t.price, f"{where}>{t.start}", report))
            for t in value.tiers
        ],
    )


def _price_at(value: Any, threshold: int | None) -> Decimal | None:
    """A (possibly tiered) genai-prices price for prompts just above ``threshold``."""
    if value is None:
        return None
    if type(value).__name__ != "TieredPrices":
        return Decimal(value)
    chosen = Decimal(value.base)
    for tier in sorted(value.tiers, key=lambda t: t.start):
        if threshold is not None and tier.start <= threshold:
            chosen = Decimal(tier.price)
    return chosen


def _set_keys(model_price: Any) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(model_price).items()
        if not k.startswith("_") and v is not None and k not in ("constraint",)
    }


def _rates_at(values: Mapping[str, Any], threshold: int | None) -> dict[str, Decimal]:
    """Our six buckets as genai-prices computes them: a missing sub-price is its parent's."""

    def get(key: str) -> Decimal | None:
        return _price_at(values.get(key), threshold)

    inp = get("input_mtok") or Decimal(0)
    out = get("output_mtok") or Decimal(0)
    write = get("cache_write_mtok")
    read = get("cache_read_mtok")
    w5 = get("cache_write_5m_mtok")
    w1 = get("cache_write_1h_mtok")
    reasoning = get("output_reasoning_mtok")
    return {
        "input": inp,
        "output": out,
        "reasoning": out if reasoning is None else reasoning,
        "cache_read": inp if read is None else read,
        "cache_write_5m": w5 if w5 is not None else (write if write is not None else inp),
        "cache_write_1h": w1 if w1 is not None else (write if write is not None else inp),
    }


@dataclasses.dataclass(frozen=True)
class _Version:
    effective_from: str
    spec: dict[str, Any]  # six rates (USD/M text) and tiers
    by: str | None = None

    @property
    def key(self) -> str:
        return json.dumps(self.spec, sort_keys=True)


def _to_spec(
    values: Mapping[str, Any],
    where: str,
    report: SyncReport,
    one_hour_x: Decimal | None,
) -> tuple[dict[str, Any], bool]:
    """Our price spec of one genai-prices ModelPrice; True when the 1h-cache rule applied."""
    values = {k: _rounded(v, f"{where}.{k}", report) for k, v in values.items()}
    thresholds = sorted(
        {t.start for v in values.values() if type(v).__name__ == "TieredPrices" for t in v.tiers}
    )
    ruled = (
        one_hour_x is not None
        and "cache_write_mtok" in values
        and "cache_write_1h_mtok" not in values
        and "cache_write_5m_mtok" not in values
    )

    def rates(threshold: int | None) -> dict[str, str]:
        found = _rates_at(values, threshold)
        if ruled and one_hour_x is not None:
            found["cache_write_1h"] = found["input"] * one_hour_x
        nanos = {k: _nanos(v, f"{where}.{k}", report) for k, v in found.items()}
        return rates_spec(Rates(**nanos))

    spec: dict[str, Any] = rates(None)  # (values were rounded once, where they came from)
    tiers = [{"above_prompt_tokens": t, **rates(t)} for t in thresholds]
    if tiers:
        spec["tiers"] = tiers
    return spec, ruled


def _day_samples(day: dt.date) -> list[dt.datetime]:
    return [
        dt.datetime.combine(day, dt.time(h, m), tzinfo=dt.UTC)
        for h in range(24)
        for m in (0, 15, 30, 45)
    ]


def _breakpoints(model: Any) -> list[dt.date]:
    floor = dt.date.fromisoformat(FLOOR_DATE)
    found = {floor}
    if isinstance(model.prices, list):
        for conditional in model.prices:
            start = getattr(conditional.constraint, "start_date", None)
            if start is not None:
                found.add(max(start, floor))
    return sorted(found)


def _weight(values: Mapping[str, Any]) -> tuple[Decimal, ...]:
    r = _rates_at(values, None)
    return (r["input"] + r["output"], r["input"], r["output"], r["cache_read"])


# -- the catalog ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Model:
    model_id: str
    providers: list[str]
    fallback_for: list[str]
    match: str
    names: list[str]
    versions: list[_Version]
    unpriced: str | None = None
    order: int = 0


def _rule_1h(overlay: Mapping[str, Any]) -> tuple[re.Pattern[str] | None, Decimal | None]:
    rule = overlay.get("rules", {}).get("cache_write_1h")
    if not rule:
        return None, None
    return re.compile(rule["models"]), Decimal(str(rule["times_input"]))


def genai_models(
    providers: Sequence[Any], overlay: Mapping[str, Any], report: SyncReport
) -> list[_Model]:
    """Our model definitions and price versions from genai-prices' provider list."""
    one_hour_models, one_hour_x = _rule_1h(overlay)
    by_id = {p.id: p for p in providers}
    fallback: dict[str, list[str]] = defaultdict(list)
    for gp_id, otel in GENAI_PROVIDERS.items():
        for target in getattr(by_id.get(gp_id), "fallback_model_providers", None) or ():
            if target in GENAI_PROVIDERS:
                fallback[target].extend(otel)
    unsupported: dict[str, set[str]] = defaultdict(set)
    models: list[_Model] = []
    order = 0
    for gp_id in GENAI_PROVIDERS:
        provider = by_id.get(gp_id)
        if provider is None:
            raise PricingError(f"genai-prices has no provider {gp_id!r}")
        for info in provider.models:
            order += 1
            model_id = f"{gp_id}/{info.id}"
            pattern = clause_pattern(info.match)
            names, anchored = clause_names(info.match)
            if _is_prefix_rule(info.match) and info.id not in names:
                pattern = f"(?:{pattern}|{_literal(info.id)}{TAIL})"
                names.append(info.id)
            names = [n for n in (_prefilter_name(x) for x in names) if n] if anchored else []
            model = _Model(
                model_id=model_id,
                providers=list(GENAI_PROVIDERS[gp_id]),
                fallback_for=sorted(set(fallback.get(gp_id, ()))),
                match=pattern,
                names=sorted(set(names)),
                versions=[],
                order=order,
            )
            apply_1h = one_hour_x if one_hour_models and one_hour_models.search(model_id) else None
            if info.price_variants:
                unsupported[KIND_VARIANTS].add(model_id)
            previous: _Version | None = None
            by_hour = isinstance(info.prices, list) and any(
                type(c.constraint).__name__ == "TimeOfDateConstraint" for c in info.prices
            )
            for day in _breakpoints(info):
                chosen = {}
                noon = [dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)]
                for moment in _day_samples(day) if by_hour else noon:
                    price = info.get_prices(moment)
                    values = _set_keys(price)
                    chosen[json.dumps({k: str(v) for k, v in values.items()}, sort_keys=True)] = (
                        values
                    )
                if len(chosen) > 1:
                    unsupported[KIND_TIME_OF_DAY].add(model_id)
                values = max(chosen.values(), key=_weight)
                kinds = _kinds(values)
                for kind in kinds:
                    unsupported[kind].add(model_id)
                if KIND_OUTPUT_MODALITY in kinds or KIND_OTHER_UNITS in kinds:
                    model.unpriced = (
                        KIND_OUTPUT_MODALITY if KIND_OUTPUT_MODALITY in kinds else KIND_OTHER_UNITS
                    )
                    model.versions = []
                    break
                spec, ruled = _to_spec(values, f"{model_id}@{day}", report, apply_1h)
                version = _Version(
                    day.isoformat(), spec, "overlay:cache_write_1h" if ruled else None
                )
                if previous is None or previous.key != version.key:
                    model.versions.append(version)
                    previous = version
            models.append(model)
    _make_disjoint(models, report)
    report.unsupported = {k: sorted(v) for k, v in sorted(unsupported.items())}
    return models


def _kinds(values: Mapping[str, Any]) -> list[str]:
    kinds = set()
    token_prices = False
    for key in values:
        if key in _TOKEN_KEYS:
            token_prices = True
        elif _OUTPUT_MODALITY.search(key):
            kinds.add(KIND_OUTPUT_MODALITY)
        elif _INPUT_MODALITY.search(key):
            kinds.add(KIND_INPUT_MODALITY)
        elif key.startswith("requests"):
            kinds.add(KIND_REQUESTS)
        elif "searches" in key:
            kinds.add(KIND_SEARCH)
        elif not _TOKEN_UNIT.search(key):
            kinds.add(KIND_OTHER_UNITS if not token_prices else KIND_OTHER)
        else:
            kinds.add(KIND_OTHER)
    if KIND_OTHER_UNITS in kinds and token_prices:
        kinds.discard(KIND_OTHER_UNITS)
        kinds.add(KIND_OTHER)
    return sorted(kinds)


_PROBE_TAILS: Final = ("", "-20250101", "-2025-01-01", "-v1:0", "@20250101", "-latest")


def _make_disjoint(models: list[_Model], report: SyncReport) -> None:
    """Where two models of one provider (same tier) match the same id, the later one in
    genai-prices' order (which that package's first-match lookup would never reach for the id)
    is made not to match what the earlier one matches: strict lookup refuses overlaps."""
    tiers: dict[tuple[str, str], list[_Model]] = defaultdict(list)
    for model in models:
        for p in model.providers:
            tiers[(p, "own")].append(model)
        for p in model.fallback_for:
            tiers[(p, "fallback")].append(model)
    compiled = {m.model_id: re.compile(m.match, re.IGNORECASE) for m in models}
    probes = sorted({n + t for m in models for n in m.names for t in _PROBE_TAILS})
    by_prefix: dict[str, set[str]] = defaultdict(set)  # 3-char head of a name -> models
    short: dict[str, set[str]] = defaultdict(set)  # names shorter than 3 characters
    nameless = {m.model_id for m in models if not m.names}
    for m in models:
        for n in m.names:
            (by_prefix[n[:3]] if len(n) >= 3 else short[n]).add(m.model_id)
    names_of = {m.model_id: m.names for m in models}
    guards: dict[str, set[str]] = defaultdict(set)
    candidates_of: dict[str, set[str]] = {}
    for probe in probes:  # the models one of whose names occurs in the probe, found by index
        low = probe.lower()
        found = set(nameless)
        for i in range(len(low) - 2):
            for model_id in by_prefix.get(low[i : i + 3], ()):
                if any(n in low for n in names_of[model_id]):
                    found.add(model_id)
        for n, ids in short.items():
            if n in low:
                found |= ids
        candidates_of[probe] = found
    for (_, _), members in sorted(tiers.items()):
        ordered = sorted(members, key=lambda m: m.order)
        for probe in probes:
            possible = candidates_of[probe]
            hits = [
                m
                for m in ordered
                if m.model_id in possible and compiled[m.model_id].fullmatch(probe)
            ]
            for later in hits[1:]:
                guards[later.model_id].add(hits[0].model_id)
    by_id = {m.model_id: m for m in models}
    for model_id, earlier in sorted(guards.items()):
        model = by_id[model_id]
        exclude = "|".join(f"(?:{by_id[e].match})" for e in sorted(earlier))
        model.match = f"(?!(?:{exclude})$)(?:{model.match})"
        report.disjoint.append(f"{model_id} yields to {', '.join(sorted(earlier))}")


def _rows_of(catalog: PriceCatalog) -> dict[str, list[dict[str, Any]]]:
    """The current catalog's price versions as rows (format 1 converted, labels kept)."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for definition in catalog.models.values():
        for entry in reversed(definition.versions):
            if entry.origin != "catalog":
                continue
            added_in = entry.label.split(":", 1)[0]
            row: dict[str, Any] = {
                "model": entry.model_id,
                "effective_from": entry.effective_from,
                "added_in": added_in,
                **rates_spec(entry.rates),
            }
            if entry.tiers:
                row["tiers"] = [
                    {"above_prompt_tokens": t.above_prompt_tokens, **rates_spec(t.rates)}
                    for t in entry.tiers
                ]
            rows[entry.model_id].append(row)
    return rows


def _key(row: Mapping[str, Any]) -> str:
    spec = {k: row[k] for k in RATE_FIELDS}
    if row.get("tiers"):
        spec["tiers"] = row["tiers"]
    return json.dumps(spec, sort_keys=True)


def _in_force(rows: Sequence[Mapping[str, Any]], day: str, strict: bool = False) -> Any:
    found = None
    for row in sorted(rows, key=lambda r: r["effective_from"]):
        if row["effective_from"] < day or (not strict and row["effective_from"] == day):
            found = row
    return found


def merge(
    current: Mapping[str, Any],
    models: Sequence[_Model],
    overlay: Mapping[str, Any],
    today: str,
    report: SyncReport,
) -> dict[str, Any]:
    """The new catalog: current price rows kept byte for byte, genai-prices' new ones appended."""
    old = PriceCatalog(current)
    rows = _rows_of(old)
    if old.format == CATALOG_FORMAT:  # the rows as written, fields such as "by" included
        rows = defaultdict(list)
        for raw in current.get("prices", []):
            rows[raw["model"]].append(dict(raw))
    accepted = {a["model"]: a for a in overlay.get("accept", [])}
    fresh = {m.model_id: m for m in models}
    for model in models:
        mine = rows[model.model_id]
        if not mine:
            for v in model.versions:
                _append(rows, model.model_id, v, today, report)
            continue
        dated = [v for v in model.versions if v.effective_from != FLOOR_DATE]
        base = model.versions[0] if model.versions and model.versions[0] not in dated else None
        problems: list[str] = []
        for v in dated:
            same = [r for r in mine if r["effective_from"] == v.effective_from]
            if same:
                if _key(same[0]) != v.key:
                    problems.append(f"{model.model_id}@{v.effective_from}: the source edited it")
                continue
            force = _in_force(mine, v.effective_from)
            if force is None or _key(force) != v.key:
                _append(rows, model.model_id, v, today, report)
        if base is not None:
            first = dated[0].effective_from if dated else None
            ref = (
                _in_force(mine, first, strict=True)
                if first
                else max(mine, key=lambda r: r["effective_from"])
            )
            if ref is None:
                _append(rows, model.model_id, base, today, report)
            elif _key(ref) != base.key:
                problems.append(
                    f"{model.model_id}@{ref['effective_from']}: ours differs from the source's "
                    "undated price"
                )
        if problems and model.model_id in accepted:
            report.accepted.extend(f"{p} ({accepted[model.model_id]['why']})" for p in problems)
        else:
            report.conflicts.extend(problems)
    spec_models = [
        {
            "id": m.model_id,
            "providers": m.providers,
            **({"fallback_for": m.fallback_for} if m.fallback_for else {}),
            "match": m.match,
            "names": m.names,
            **({"unpriced": m.unpriced} if m.unpriced else {}),
        }
        for m in models
    ]
    for model_id, definition in old.models.items():
        if model_id in fresh:
            continue
        if old.format == 1:  # the hand-written rules were greedy: keep the prices, retire them
            report.retired.append(model_id)
            spec_models.append(
                {"id": model_id, "providers": [], "match": re.escape(model_id), "names": []}
            )
        else:
            spec_models.append(_keep_model(current, model_id, definition.match))
    price_rows = [r for model_id in sorted(rows) for r in rows[model_id]]
    price_rows.sort(key=lambda r: (r["model"], r["effective_from"]))
    changed = bool(report.appended)
    version = today if changed else str(current.get("version", today))
    report.models = len(spec_models)
    report.prices = len(price_rows)
    return {
        "format": CATALOG_FORMAT,
        "version": version,
        "taken_on": today if changed else str(current.get("taken_on", today)),
        "source": "genai-prices (pydantic, MIT) via `spendstream prices sync`; "
        "USD per million tokens",
        "note": (
            "every bucket explicit; tiers price the whole request when the prompt (input + "
            "cache read + cache writes) exceeds the threshold; prices are append-only: a row "
            "is never edited, its price_version is added_in:model@effective_from"
        ),
        "unsupported": report.unsupported,
        "models": sorted(spec_models, key=lambda m: m["id"]),
        "prices": price_rows,
    }


def _keep_model(current: Mapping[str, Any], model_id: str, pattern: str) -> dict[str, Any]:
    for raw in current.get("models", []):
        if raw.get("id") == model_id:
            return dict(raw)
    return {"id": model_id, "providers": [], "match": pattern, "names": []}


def _append(
    rows: dict[str, list[dict[str, Any]]],
    model_id: str,
    version: _Version,
    today: str,
    report: SyncReport,
) -> None:
    row: dict[str, Any] = {
        "model": model_id,
        "effective_from": version.effective_from,
        "added_in": today,
        **version.spec,
    }
    if version.by:
        row["by"] = version.by
    rows[model_id].append(row)
    report.appended.append(f"{model_id}@{version.effective_from}")


def render(spec: Mapping[str, Any]) -> str:
    """The catalog as text: one model or price per line, so diffs show what a sync did."""
    head = {k: v for k, v in spec.items() if k not in ("models", "prices", "unsupported")}
    lines = ["{"]
    for key, value in head.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
    lines.append('  "unsupported": {')
    kinds = list(spec.get("unsupported", {}).items())
    for i, (kind, names) in enumerate(kinds):
        comma = "," if i < len(kinds) - 1 else ""
        lines.append(f"    {json.dumps(kind)}: {json.dumps(names)}{comma}")
    lines.append("  },")
    for section in ("models", "prices"):
        items = spec.get(section, [])
        lines.append(f'  "{section}": [')
        for i, item in enumerate(items):
            comma = "," if i < len(items) - 1 else ""
            lines.append(f"    {json.dumps(item)}{comma}")
        lines.append("  ]," if section == "models" else "  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def genai_providers() -> tuple[list[Any], str]:
    """The pinned package's provider data and version (dev extra)."""
    try:
        import genai_prices
        from genai_prices.data import providers
    except ImportError as exc:
        raise PricingError(
            "`spendstream prices sync` needs genai-prices from the dev extra: "
            "pip install -e '.[dev]'"
        ) from exc
    return list(providers), str(genai_prices.__version__)


def sync(
    catalog_path: Path,
    overlay_path: Path,
    today: str,
    out_path: Path | None = None,
    providers: Iterable[Any] | None = None,
) -> SyncReport:
    """Read the current catalog and overlay, append what the pinned genai-prices adds, write."""
    from streams.pricing.catalog import read_json

    report = SyncReport()
    current = read_json(catalog_path)
    overlay = read_json(overlay_path)
    if providers is None:
        providers, _ = genai_providers()
    models = genai_models(list(providers), overlay, report)
    spec = merge(current, models, overlay, today, report)
    PriceCatalog(spec)  # what we write must load
    (out_path or catalog_path).write_text(render(spec))
    return report
