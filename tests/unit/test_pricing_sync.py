"""`spendstream prices sync` on the pinned genai-prices (dev extra): deterministic, append-only,
rounding reported; and the drift test: the shipped catalog against the pinned package, every
difference either chosen in the overlay or a failure."""

from __future__ import annotations

import datetime as dt
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from click.testing import CliRunner
from genai_prices import Usage, data, types

from streams.pricing import CATALOG_PATH, OVERLAY_PATH, PriceCatalog, cost_nanos, prompt_tokens
from streams.pricing import sync as sync_mod
from streams.pricing.catalog import DATA_DIR, date_ms, read_json
from streams.pricing.cli import prices

LEGACY = DATA_DIR / "legacy-2025-11-24.json"
SHIPPED = read_json(CATALOG_PATH)


def test_the_shipped_catalog_is_what_the_pinned_package_gives(tmp_path: Path) -> None:
    """Rebuilt from the 2025-11-24 file on the shipped version's date: byte for byte."""
    out = tmp_path / "catalog.json"
    report = sync_mod.sync(LEGACY, OVERLAY_PATH, SHIPPED["version"], out_path=out)
    assert report.ok, report.conflicts
    assert out.read_bytes() == CATALOG_PATH.read_bytes()


def test_sync_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    first, second, again = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    sync_mod.sync(LEGACY, OVERLAY_PATH, "2030-01-01", out_path=first)
    sync_mod.sync(LEGACY, OVERLAY_PATH, "2030-01-01", out_path=second)
    assert first.read_bytes() == second.read_bytes()
    report = sync_mod.sync(first, OVERLAY_PATH, "2031-01-01", out_path=again)
    assert (report.appended, report.conflicts) == ([], [])
    assert again.read_bytes() == first.read_bytes()  # nothing new: not even the version moves


def _edited(tmp_path: Path, model: str, effective_from: str, **change: str) -> Path:
    """The shipped catalog with one row changed: ours and the source now disagree on it."""
    spec = read_json(CATALOG_PATH)
    (row,) = [
        r for r in spec["prices"] if (r["model"], r["effective_from"]) == (model, effective_from)
    ]
    row.update(change)
    path = tmp_path / f"edited-{model.replace('/', '_')}.json"
    path.write_text(sync_mod.render(spec))
    return path


def test_an_edited_old_price_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    # ours and the source disagree on a price already in the catalog: never overwritten
    edited = _edited(tmp_path, "anthropic/claude-opus-4-6", "2026-03-13", input="4")
    out = tmp_path / "out.json"
    report = sync_mod.sync(edited, OVERLAY_PATH, "2030-01-01", out_path=out)
    assert report.conflicts == ["anthropic/claude-opus-4-6@2026-03-13: the source edited it"]
    assert not report.ok
    kept = [
        r
        for r in read_json(out)["prices"]
        if r["model"] == "anthropic/claude-opus-4-6" and r["effective_from"] == "2026-03-13"
    ]
    assert [r["input"] for r in kept] == ["4"]
    # an undated price edited the same way
    undated = _edited(tmp_path, "openai/gpt-4o-mini", "2020-01-01", output="0.7")
    report = sync_mod.sync(undated, OVERLAY_PATH, "2030-01-01", out_path=out)
    assert report.conflicts == [
        "openai/gpt-4o-mini@2020-01-01: ours differs from the source's undated price"
    ]
    # the command says so and fails
    result = CliRunner().invoke(
        prices, ["sync", "--catalog", str(edited), "--out", str(out), "--today", "2030-01-01"]
    )
    assert result.exit_code == 1
    assert "REFUSED anthropic/claude-opus-4-6@2026-03-13" in result.output


def test_an_overlay_accept_is_a_choice(tmp_path: Path) -> None:
    edited = _edited(tmp_path, "anthropic/claude-opus-4-6", "2026-03-13", input="4")
    overlay = read_json(OVERLAY_PATH)
    overlay["accept"] = [{"model": "anthropic/claude-opus-4-6", "why": "our contract"}]
    path = tmp_path / "overlay.json"
    path.write_text(json.dumps(overlay))
    report = sync_mod.sync(edited, path, "2030-01-01", out_path=tmp_path / "out.json")
    assert report.ok
    assert report.accepted and "our contract" in report.accepted[0]


def _provider(gp_id: str, models: list[types.ModelInfo]) -> types.Provider:
    return types.Provider(id=gp_id, name=gp_id, api_pattern=gp_id, models=models)


def test_new_prices_are_appended_with_their_start_dates_and_rounding_is_reported() -> None:
    model = types.ModelInfo(
        id="claude-test-1",
        match=types.ClauseStartsWith(starts_with="claude-test-1"),
        prices=[
            types.ConditionalPrice(
                prices=types.ModelPrice(
                    input_mtok=Decimal("1.0000000004"), output_mtok=Decimal("5")
                )
            ),
            types.ConditionalPrice(
                constraint=types.StartDateConstraint(start_date=dt.date(2026, 5, 1)),
                prices=types.ModelPrice(input_mtok=Decimal("0.8"), output_mtok=Decimal("4")),
            ),
        ],
    )
    providers = [
        _provider(p, [model] if p == "anthropic" else []) for p in sync_mod.GENAI_PROVIDERS
    ]
    report = sync_mod.SyncReport()
    models = sync_mod.genai_models(providers, read_json(OVERLAY_PATH), report)
    spec = sync_mod.merge(read_json(LEGACY), models, {}, "2030-01-01", report)
    rows = [r for r in spec["prices"] if r["model"] == "anthropic/claude-test-1"]
    assert [(r["effective_from"], r["input"], r["added_in"]) for r in rows] == [
        ("2020-01-01", "1", "2030-01-01"),
        ("2026-05-01", "0.8", "2030-01-01"),
    ]
    assert report.rounded == [
        "anthropic/claude-test-1@2020-01-01.input_mtok: $1.0000000004/M -> $1/M"
    ]
    catalog = PriceCatalog(spec)
    assert catalog.lookup("anthropic", "claude-test-1-20260101", date_ms("2026-06-01", "t"))
    assert catalog.lookup("anthropic", "claude-test-10", date_ms("2026-06-01", "t")) is None


# -- the drift test --------------------------------------------------------------------------

USAGES = [
    # every bucket, under the long-context thresholds
    dict(
        input_tokens=1000,
        cache_read_tokens=2000,
        cache_write_5m_tokens=3000,
        cache_write_1h_tokens=4000,
        output_tokens=5000,
        reasoning_tokens=600,
    ),
    # above every tier threshold genai-prices has (the largest is 272K)
    dict(
        input_tokens=300_000,
        cache_read_tokens=20_000,
        cache_write_5m_tokens=0,
        cache_write_1h_tokens=0,
        output_tokens=7000,
        reasoning_tokens=0,
    ),
]


def _genai_nanos(info: types.ModelInfo, provider: types.Provider, usage: dict, when: dt.datetime):
    gp = Usage(
        input_tokens=prompt_tokens(usage),
        cache_read_tokens=usage["cache_read_tokens"],
        cache_write_tokens=usage["cache_write_5m_tokens"] + usage["cache_write_1h_tokens"],
        cache_write_1h_tokens=usage["cache_write_1h_tokens"],
        output_tokens=usage["output_tokens"],
        output_reasoning_tokens=usage["reasoning_tokens"],
    )
    # token prices only: per-request and search fees are listed as not held
    prices = info.get_prices(when)
    tokens = types.ModelPrice(
        **{k: v for k, v in vars(prices).items() if k in TOKEN_KEYS and v is not None}
    )
    price = tokens.calc_price(gp)["total_price"]
    return int((price * 10**9).to_integral_value(rounding=ROUND_HALF_UP))


TOKEN_KEYS = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",
    "cache_write_5m_mtok",
    "cache_write_1h_mtok",
    "output_reasoning_mtok",
)


def _comparison_days(info: types.ModelInfo, first: str) -> list[dt.date]:
    days = {dt.date.fromisoformat(SHIPPED["version"])}
    for conditional in info.prices if isinstance(info.prices, list) else ():
        start = getattr(conditional.constraint, "start_date", None)
        if start is not None:
            days.add(start)
    floor = dt.date.fromisoformat(first)
    return sorted({max(d, floor) for d in days})


def test_drift_the_shipped_catalog_equals_the_pinned_genai_prices() -> None:
    """Every model we take from genai-prices quotes the same nano-USD as the package itself,
    at each of its start dates and on the catalog's date, unless the overlay chose otherwise
    (its 1-hour cache rule, an 'accept') or the sync's documented rules apply (time-of-day
    prices: the day's highest; audio/image/video output: unpriced)."""
    catalog = PriceCatalog(SHIPPED)
    overlay = read_json(OVERLAY_PATH)
    accepted = {a["model"]: a for a in overlay.get("accept", [])}
    time_of_day = set(SHIPPED["unsupported"].get(sync_mod.KIND_TIME_OF_DAY, ()))
    by_id = {p.id: p for p in data.providers}
    drift, checked = [], 0
    for gp_id in sync_mod.GENAI_PROVIDERS:
        provider = by_id[gp_id]
        for info in provider.models:
            model_id = f"{gp_id}/{info.id}"
            definition = catalog.models[model_id]
            if definition.unpriced_reason:
                assert not definition.versions
                continue
            first = definition.versions[-1].effective_from
            for day in _comparison_days(info, first):
                noon = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
                at_ms = int(noon.timestamp() * 1000)
                entry = next(e for e in definition.versions if e.effective_from_ms <= at_ms)
                ruled = any(
                    r.get("by") == "overlay:cache_write_1h"
                    for r in SHIPPED["prices"]
                    if r["model"] == model_id and r["effective_from"] == entry.effective_from
                )
                for usage in USAGES:
                    if ruled:
                        usage = dict(usage, cache_write_1h_tokens=0)
                    rates, _ = entry.rates_for(prompt_tokens(usage))
                    ours = cost_nanos(rates, usage)
                    samples = (
                        [noon.replace(hour=h, minute=m) for h in range(24) for m in (0, 30)]
                        if model_id in time_of_day
                        else [noon]
                    )
                    theirs = max(_genai_nanos(info, provider, usage, t) for t in samples)
                    checked += 1
                    if ours != theirs:
                        why = accepted.get(model_id, {})
                        before = why.get("before")
                        if why and (before is None or day.isoformat() < before):
                            continue
                        drift.append(f"{model_id} on {day}: ours {ours}, genai-prices {theirs}")
                if ruled:
                    assert rates.cache_write_1h == 2 * rates.input, model_id
    assert checked > 900
    assert drift == []


def test_drift_every_model_is_reachable_by_its_own_names() -> None:
    """Each model we take can be looked up under its provider by one of its names."""
    catalog = PriceCatalog(SHIPPED)
    unreachable = []
    for definition in catalog.models.values():
        if not definition.providers:
            continue
        provider = sorted(definition.providers)[0]
        names = [definition.model_id.split("/", 1)[1], *definition.names]
        if not any(
            (r := catalog.resolution(provider, name + tail)).definition is definition
            for name in names
            for tail in ("", "-20260101", "x1")
        ):
            unreachable.append(f"{definition.model_id}: {r.why}")
    assert unreachable == []
