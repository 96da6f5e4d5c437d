"""The hot paths that price without ``PriceCatalog.price`` (stage 1 inlines the formula over
``catalog._resolve``; the sink prices whole frames) give its costs and labels exactly, also
with an overlay's list prices and an org's negotiated rates."""

from __future__ import annotations

from typing import Any

from streams.budgets import StaticBudgets, budget_from_spec
from streams.generate import generate_events
from streams.pricing import CATALOG_PATH, OVERLAY_PATH, PriceCatalog
from streams.pricing.catalog import read_json
from streams.processors.stage1 import PartitionAggregator, Stage1Config
from streams.serde import AvroCodec
from streams.sink import frames
from tests.unit.test_sink_frames import _frame

CODEC = AvroCodec("token_event")
RATES = ("input", "output", "reasoning", "cache_read", "cache_write_5m", "cache_write_1h")


def _version(model: str, effective_from: str, usd: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "effective_from": effective_from, **dict.fromkeys(RATES, usd), **extra}


def _catalog() -> PriceCatalog:
    overlay = {
        # a list-price correction from 2026-06-01, and an org's contract (tiered) for two models
        "prices": [_version("openai/gpt-5", "2026-06-01", "1")],
        "orgs": {
            "org-1": [
                _version(
                    "anthropic/claude-sonnet-4-5",
                    "2025-01-01",
                    "2",
                    tiers=[{"above_prompt_tokens": 100_000, **dict.fromkeys(RATES, "2.5")}],
                ),
                _version("google/gemini-2.5-pro", "2020-01-01", "0.5"),
            ]
        },
    }
    return PriceCatalog(read_json(CATALOG_PATH), [read_json(OVERLAY_PATH), overlay])


def _events(n: int) -> list[dict[str, Any]]:
    events = [dict(e, cost_nanos=None) for e in generate_events(n, seed=11)]
    for e in events[:60]:
        e["cache_read_tokens"] = 150_000  # some above the org's and the list's tiers
    return events


def test_the_frame_pricer_equals_price_with_overlay_and_org_rates() -> None:
    catalog = _catalog()
    events = _events(400)
    priced = frames.FramePricer(catalog).price(_frame(events))
    assert priced is not None
    got = priced.select("cost_nanos", "cost_source", "price_version").rows()
    expected = [
        (p.cost_nanos, p.source, p.price_version)
        for p in (catalog.price(CODEC.decode(CODEC.encode(e))) for e in events)
    ]
    assert got == expected
    versions = {v for _, _, v in got}
    assert {v.split(":", 1)[0] for v in versions} >= {"org", "overlay"}
    assert any(v.startswith("org:org-1:") and v.endswith(">100000") for v in versions)


def test_stage1_equals_price_with_overlay_and_org_rates() -> None:
    catalog = _catalog()
    events = sorted(_events(2000), key=lambda e: e["event_time"])
    everything = budget_from_spec({"id": "all", "period": "month", "limit_usd": 1})
    agg = PartitionAggregator(
        0,
        CODEC.decode,
        catalog,
        StaticBudgets([everything]),
        Stage1Config(),
        now_ms=lambda: max(e["event_time"] for e in events) + 1,
    )
    records = [
        type(
            "Rec",
            (),
            {"offset": i, "key": None, "value": CODEC.encode(e), "timestamp": e["event_time"]},
        )()
        for i, e in enumerate(events)
    ]
    out = agg.process(records)
    assert not out.dead
    expected = sum(catalog.price(e).cost_nanos for e in events)
    assert sum(acc[0] for acc in agg.partials.values()) == expected
    default = PriceCatalog(read_json(CATALOG_PATH), [read_json(OVERLAY_PATH)])
    assert expected != sum(default.price(e).cost_nanos for e in events)  # the overlay counted
