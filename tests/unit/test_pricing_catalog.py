"""Quotes for the rows of issue 14's table, and for tiers, cache buckets, reasoning, effective
dates across a price change, cloud ids, aliases and strictness; through `spendstream prices
quote` (what users check us with) and through the catalog's own lookup."""

import json
import re

import pytest
from click.testing import CliRunner

from streams.errors import PricingError
from streams.pricing import (
    FLOOR_DATE,
    PriceCatalog,
    cost_nanos,
    default_catalog,
)
from streams.pricing.cli import prices

M = 1_000_000
B = 1_000_000_000  # nano-USD per USD


def quote(provider, model, at="2026-11-01", **usage):
    flags = ["--provider", provider, "--model", model, "--at", at, "--json"]
    for name, value in usage.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    result = CliRunner().invoke(prices, ["quote", *flags])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# (provider, model, usage, at, nano-USD, model the id resolves to): the issue's table
TABLE = [
    # claude-opus-4-6/7/8 were priced by opus-4-1's greedy pattern at $15/$75
    (
        "anthropic",
        "claude-opus-4-6",
        dict(input=M, output=M),
        "2026-11-01",
        30 * B,
        "anthropic/claude-opus-4-6",
    ),
    (
        "anthropic",
        "claude-opus-4-7",
        dict(input=M, output=M),
        "2026-11-01",
        30 * B,
        "anthropic/claude-opus-4-7",
    ),
    (
        "anthropic",
        "claude-opus-4-8",
        dict(input=M, output=M),
        "2026-11-01",
        30 * B,
        "anthropic/claude-opus-4-8",
    ),
    (
        "anthropic",
        "claude-opus-4-1",
        dict(input=M, output=M),
        "2026-11-01",
        90 * B,
        "anthropic/claude-opus-4-1",
    ),
    # sonnet-4-6 and sonnet-4 got sonnet-4-5's entry, tier included; sonnet-4 has no tier
    (
        "anthropic",
        "claude-sonnet-4-6",
        dict(input=M),
        "2026-11-01",
        3 * B,
        "anthropic/claude-sonnet-4-6",
    ),
    (
        "anthropic",
        "claude-sonnet-4",
        dict(input=300_000),
        "2026-11-01",
        900_000_000,
        "anthropic/claude-sonnet-4-0",
    ),
    (
        "anthropic",
        "claude-sonnet-4-20250514",
        dict(input=M),
        "2026-11-01",
        3 * B,
        "anthropic/claude-sonnet-4-0",
    ),
    # Bedrock inference profiles: geo profiles at Bedrock's regional price (+10%), global not
    (
        "aws.bedrock",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        dict(output=M),
        "2026-11-01",
        16_500_000_000,
        "aws/regional.anthropic.claude-sonnet-4-5-20250929-v1:0",
    ),
    (
        "aws.bedrock",
        "eu.anthropic.claude-opus-4-6-v1:0",
        dict(input=M),
        "2026-11-01",
        5_500_000_000,
        "aws/regional.anthropic.claude-opus-4-6-v1:0",
    ),
    (
        "aws.bedrock",
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        dict(output=M),
        "2026-11-01",
        15 * B,
        "aws/global.anthropic.claude-sonnet-4-5-20250929-v1:0",
    ),
    (
        "aws.bedrock",
        "global.anthropic.claude-opus-4-6-v1:0",
        dict(input=M),
        "2026-11-01",
        5 * B,
        "aws/global.anthropic.claude-opus-4-6-v1:0",
    ),
    # unpriced before, priced now
    (
        "openai",
        "gpt-4o-mini",
        dict(input=M, output=M),
        "2026-11-01",
        750_000_000,
        "openai/gpt-4o-mini",
    ),
    ("openai", "gpt-4.1-mini", dict(input=M, output=M), "2026-11-01", 2 * B, "openai/gpt-4.1-mini"),
    ("openai", "o3-mini", dict(input=M, output=M), "2026-11-01", 5_500_000_000, "openai/o3-mini"),
    (
        "openai",
        "gpt-5.1-codex-mini",
        dict(input=M, output=M),
        "2026-11-01",
        2_250_000_000,
        "openai/gpt-5.1-codex-mini",
    ),
    (
        "anthropic",
        "claude-3-7-sonnet-20250219",
        dict(input=M, output=M),
        "2026-11-01",
        18 * B,
        "anthropic/claude-3-7-sonnet-latest",
    ),
    ("openai", "gpt-5.2", dict(input=M, output=M), "2026-11-01", 15_750_000_000, "openai/gpt-5.2"),
    (
        "openai",
        "gpt-5.4-2026-03-05",
        dict(input=100_000, output=100_000),
        "2026-11-01",
        1_750_000_000,
        "openai/gpt-5.4",
    ),
    (
        "gcp.gemini",
        "gemini-3-pro-preview",
        dict(input=M),
        "2026-11-01",
        4 * B,
        "google/gemini-3-pro-preview",
    ),  # a 1M prompt is above the 200K tier: $4/M
    (
        "gcp.gemini",
        "gemini-3.1-pro-preview",
        dict(input=100_000),
        "2026-11-01",
        200_000_000,
        "google/gemini-3.1-pro-preview",
    ),
    (
        "gcp.gemini",
        "gemini-3-flash-preview",
        dict(input=M, output=M),
        "2026-11-01",
        3_500_000_000,
        "google/gemini-3-flash-preview",
    ),
    ("x_ai", "grok-4", dict(input=M, output=M), "2026-11-01", 18 * B, "x-ai/grok-4-0709"),
    (
        "deepseek",
        "deepseek-reasoner",
        dict(input=M, output=M),
        "2026-11-01",
        2_740_000_000,
        "deepseek/deepseek-reasoner",
    ),  # the day's highest (00:30-16:30 UTC) of two prices
    (
        "mistral_ai",
        "codestral-latest",
        dict(input=M, output=M),
        "2026-11-01",
        1_200_000_000,
        "mistral/codestral",
    ),
    (
        "mistral_ai",
        "devstral-2512",
        dict(input=M, output=M),
        "2026-11-01",
        2_400_000_000,
        "mistral/devstral-2512",
    ),
    # the text model's entry before: now their own entries, or unpriced
    (
        "gcp.gemini",
        "gemini-2.5-pro-preview-tts",
        dict(input=M, output=M),
        "2026-11-01",
        21 * B,
        "google/gemini-2.5-pro-tts",
    ),
    (
        "gcp.gemini",
        "gemini-3-pro-image-preview",
        dict(input=M, output=M),
        "2026-11-01",
        0,
        "google/gemini-3-pro-image-preview",
    ),  # image output tokens: deliberately unpriced
]


@pytest.mark.parametrize(("provider", "model", "usage", "at", "nanos", "resolved"), TABLE)
def test_issue_table(provider, model, usage, at, nanos, resolved):
    got = quote(provider, model, at, **usage)
    assert (got["cost_nanos"], got["resolved"]) == (nanos, resolved)


def test_a_deliberately_unpriced_model_says_why():
    got = quote("gcp.gemini", "gemini-3-pro-image-preview", input=10)
    assert got["source"] == "unpriced"
    definition = default_catalog().models["google/gemini-3-pro-image-preview"]
    assert "output tokens" in (definition.unpriced_reason or "")


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("anthropic", "claude-opus-4-10"),  # a new sibling is not opus-4-1
        ("anthropic", "claude-opus-4-9"),
        ("anthropic", "claude-sonnet-4-7"),
        ("openai", "gpt-4o-mini-2"),
        ("openai", "gpt-5.9"),
        ("gcp.gemini", "gemini-2.5-pro-ultra"),
        ("gcp.gemini", "gemini-9-pro"),
        ("aws.bedrock", "us.anthropic.claude-opus-4-9-v1:0"),
        ("anthropic", "mystery-9000"),
    ],
)
def test_a_new_model_never_gets_a_siblings_price(provider, model):
    got = quote(provider, model, input=M)
    assert (got["cost_nanos"], got["source"], got["resolved"]) == (0, "unpriced", None)


@pytest.mark.parametrize(
    ("provider", "model", "resolved"),
    [
        # version suffixes name the same model: dates, -latest, Vertex @..., Bedrock -v1:0
        ("anthropic", "claude-opus-4-6-20260205", "anthropic/claude-opus-4-6"),
        ("anthropic", "claude-sonnet-4-5-latest", "anthropic/claude-sonnet-4-5"),
        ("gcp.vertex_ai", "claude-opus-4-1@20250805", "google/claude-4-opus"),
        ("gcp.vertex_ai", "claude-sonnet-4-5@20250929", "google/claude-sonnet-4-5"),
        ("openai", "gpt-5.2-20251211", "openai/gpt-5.2"),  # compact date of gpt-5.2-2025-12-11
        # cloud ids given with the model's own provider are priced by their cloud
        (
            "anthropic",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "aws/regional.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "anthropic",
            "global.anthropic.claude-opus-4-6-v1:0",
            "aws/global.anthropic.claude-opus-4-6-v1:0",
        ),
        ("anthropic", "claude-sonnet-4-5@20250929", "google/claude-sonnet-4-5"),
        # legacy provider names are aliases of the OpenTelemetry ones
        ("google", "gemini-2.5-pro", "google/gemini-2.5-pro"),
        (
            "bedrock",
            "global.anthropic.claude-opus-4-6-v1:0",
            "aws/global.anthropic.claude-opus-4-6-v1:0",
        ),
        ("xai", "grok-4", "x-ai/grok-4-0709"),
        ("mistral", "codestral-latest", "mistral/codestral"),
    ],
)
def test_ids_resolve_to_one_model(provider, model, resolved):
    assert quote(provider, model, input=1)["resolved"] == resolved


def test_what_the_generator_demo_and_tests_send_stays_priced():
    from streams.generate import MODELS

    catalog = default_catalog()
    for provider, model, _ in MODELS:
        assert catalog.lookup(provider, model, 1_764_547_200_000) is not None, model


def test_tiers_price_the_whole_request_above_the_threshold():
    # gemini-2.5-pro: $1.25/$10 up to 200K prompt tokens, $2.5/$15 above, cache read $0.125
    at = dict(at="2026-11-01")
    assert quote("gcp.gemini", "gemini-2.5-pro", input=200_000, **at)["cost_nanos"] == 250_000_000
    above = quote("gcp.gemini", "gemini-2.5-pro", input=150_000, cache_read=50_001, output=1000)
    # 150000*2.5 + 50001*0.25 + 1000*15 = 402500.25 USD/M
    assert above["cost_nanos"] == 402_500_250
    assert above["tier_above_prompt_tokens"] == 200_000
    assert above["price_version"].endswith(">200000")


@pytest.mark.parametrize(
    ("provider", "model", "bucket", "nanos"),
    [
        # Anthropic: read 0.1x, 5-minute write 1.25x, 1-hour write 2x of input ($5)
        ("anthropic", "claude-opus-4-6", "cache_read", 500_000_000),
        ("anthropic", "claude-opus-4-6", "cache_write_5m", 6_250_000_000),
        ("anthropic", "claude-opus-4-6", "cache_write_1h", 10 * B),
        # OpenAI bills no cache write above input: Anthropic's multipliers would be wrong
        ("openai", "gpt-5.2", "cache_read", 175_000_000),
        ("openai", "gpt-5.2", "cache_write_5m", 1_750_000_000),
        ("openai", "gpt-5.2", "cache_write_1h", 1_750_000_000),
        # Gemini: an explicit cache read price, writes at input
        ("gcp.gemini", "gemini-3-flash-preview", "cache_read", 50_000_000),
        ("gcp.gemini", "gemini-3-flash-preview", "cache_write_5m", 500_000_000),
        # the overlay's choice: genai-prices has no 1-hour price here and would use the 5m one
        ("aws.bedrock", "global.anthropic.claude-sonnet-4-20250514-v1:0", "cache_write_1h", 6 * B),
        (
            "aws.bedrock",
            "global.anthropic.claude-sonnet-4-20250514-v1:0",
            "cache_write_5m",
            3_750_000_000,
        ),
    ],
)
def test_cache_buckets(provider, model, bucket, nanos):
    assert quote(provider, model, **{bucket: M})["cost_nanos"] == nanos


def test_reasoning_is_part_of_output_and_priced_apart_where_the_provider_does():
    # gemini-2.5-flash preview (2025-04-17..06-16): output $0.60, thinking output $3.50
    preview = quote("gcp.gemini", "gemini-2.5-flash", "2025-05-01", output=M, reasoning=400_000)
    assert preview["cost_nanos"] == 600_000 * 600 + 400_000 * 3500
    ga = quote("gcp.gemini", "gemini-2.5-flash", "2025-07-01", output=M, reasoning=400_000)
    assert ga["cost_nanos"] == 2_500_000_000
    # o3: reasoning at the output price
    assert quote("openai", "o3", output=M, reasoning=M)["cost_nanos"] == 8 * B


@pytest.mark.parametrize(
    ("provider", "model", "usage", "before", "after", "change"),
    [
        # claude-opus-4-6: the >200K tier was dropped on 2026-03-13
        (
            "anthropic",
            "claude-opus-4-6",
            dict(input=250_000),
            2_500_000_000,
            1_250_000_000,
            "2026-03-13",
        ),
        # o3: $10/$40 until 2025-06-09, $2/$8 from 2025-06-10
        ("openai", "o3", dict(input=M, output=M), 50 * B, 10 * B, "2025-06-10"),
        # gpt-5.6-sol: a price cut on 2026-08-21
        ("openai", "gpt-5.6-sol", dict(input=100_000), 500_000_000, 400_000_000, "2026-08-21"),
    ],
)
def test_effective_dates_across_a_price_change(provider, model, usage, before, after, change):
    day_before = f"{change[:8]}{int(change[8:]) - 1:02d}T23:59:59+00:00"
    got_before = quote(provider, model, day_before, **usage)
    got_after = quote(provider, model, f"{change}T00:00:00Z", **usage)
    assert (got_before["cost_nanos"], got_after["cost_nanos"]) == (before, after)
    assert got_after["price_version"].endswith(f"@{change}")


def test_reported_cost_wins_over_the_catalog():
    event = dict(
        provider="anthropic",
        model="claude-opus-4-6",
        event_time=1_790_000_000_000,
        input_tokens=M,
        output_tokens=0,
        reasoning_tokens=0,
        cache_read_tokens=0,
        cache_write_5m_tokens=0,
        cache_write_1h_tokens=0,
        cost_nanos=42,
    )
    assert default_catalog().price(event).cost_nanos == 42
    assert default_catalog().price(dict(event, cost_nanos=None)).cost_nanos == 5 * B


def test_the_2025_11_24_prices_keep_their_labels_and_costs():
    """Append-only: every row of the hand-written catalog is in the new one unchanged."""
    from streams.pricing.catalog import DATA_DIR, read_json

    legacy = PriceCatalog(read_json(DATA_DIR / "legacy-2025-11-24.json"))
    shipped = PriceCatalog(read_json(DATA_DIR / "catalog.json"))
    by_label = {e.label: e for e in shipped.entries}
    assert legacy.entries
    for old in legacy.entries:
        new = by_label[old.label]
        assert (new.rates, new.tiers, new.effective_from_ms) == (
            old.rates,
            old.tiers,
            old.effective_from_ms,
        )


def test_every_shipped_pattern_is_strict():
    """No model's rule matches one of its names followed by a new version number or variant."""
    catalog = PriceCatalog.from_file(__import__("streams.pricing", fromlist=["x"]).CATALOG_PATH)
    greedy = []
    for definition in catalog.models.values():
        if not definition.providers or definition.model_id.split("/", 1)[1].startswith("ft:"):
            continue
        for name in definition.names:
            if name.startswith("ft:") or not definition.pattern.fullmatch(name):
                continue
            for suffix in ("-9", ".9", "-10", "-mini", "-pro", "-preview", "-tts", "-image"):
                if definition.pattern.fullmatch(name + suffix) and name + suffix not in (
                    n for d in catalog.models.values() for n in d.names
                ):
                    greedy.append(f"{definition.model_id}: {name + suffix}")
    assert greedy == []


def _spec(*models, prices=()):
    return {"format": 2, "version": "t", "models": list(models), "prices": list(prices)}


def _price(model, effective_from="2025-01-01", **rates):
    full = dict.fromkeys(
        ("input", "output", "reasoning", "cache_read", "cache_write_5m", "cache_write_1h"), "1"
    )
    return {"model": model, "effective_from": effective_from, "added_in": "t", **full, **rates}


def test_two_models_matching_one_id_resolve_to_none():
    spec = _spec(
        {"id": "p/a", "providers": ["p"], "match": "x-.*"},
        {"id": "p/b", "providers": ["p"], "match": "x-1"},
        prices=[_price("p/a"), _price("p/b")],
    )
    catalog = PriceCatalog(spec)
    assert catalog.lookup("p", "x-1", 1_800_000_000_000) is None
    assert catalog.ambiguous[("p", "x-1")] == ("p/a", "p/b")
    assert catalog.lookup("p", "x-2", 1_800_000_000_000).model_id == "p/a"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(input="0.0000000001"), "below 1e-9"),
        (dict(input="-1"), "negative"),
        (dict(input="abc"), "not a decimal"),
    ],
)
def test_prices_finer_than_the_catalog_holds_are_rejected(change, message):
    spec = _spec({"id": "p/a", "providers": ["p"], "match": "a"}, prices=[_price("p/a", **change)])
    with pytest.raises(PricingError, match=message):
        PriceCatalog(spec)


def test_format_2_writes_every_bucket_and_one_price_per_date():
    row = _price("p/a")
    del row["cache_write_1h"]
    with pytest.raises(PricingError, match="cache_write_1h"):
        PriceCatalog(_spec({"id": "p/a", "providers": ["p"], "match": "a"}, prices=[row]))
    with pytest.raises(PricingError, match="same model and date"):
        PriceCatalog(
            _spec({"id": "p/a", "providers": ["p"], "match": "a"}, prices=[_price("p/a")] * 2)
        )


def test_overlay_prices_win_from_their_date_and_org_rates_only_for_that_org():
    catalog = PriceCatalog(
        _spec({"id": "p/a", "providers": ["p"], "match": "a"}, prices=[_price("p/a", input="3")]),
        [
            {"prices": [_price("p/a", "2026-01-01", input="2.5")]},
            {"orgs": {"acme": [_price("p/a", "2025-06-01", input="2")]}},
        ],
    )
    at = 1_790_000_000_000  # 2026-09
    early = 1_740_000_000_000  # 2025-02
    assert catalog.lookup("p", "a", early).rates.input == 3 * B
    assert catalog.lookup("p", "a", at).rates.input == 2_500_000_000
    assert catalog.lookup("p", "a", at, org="acme").rates.input == 2 * B
    assert catalog.lookup("p", "a", early, org="acme").rates.input == 3 * B
    assert catalog.lookup("p", "a", at, org="other").rates.input == 2_500_000_000
    event = dict(provider="p", model="a", event_time=at, org_id="acme", input_tokens=M)
    price = catalog.price(event)
    assert (price.cost_nanos, price.price_version) == (2 * B, "org:acme:p/a@2025-06-01")


def test_the_runtime_never_imports_genai_prices():
    import subprocess
    import sys

    code = (
        "import sys, streams.pricing, streams.pricing.cli; "
        "from streams.pricing import default_catalog; default_catalog(); "
        "print('genai_prices' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_show_names_the_model_the_version_and_why():
    result = CliRunner().invoke(
        prices, ["show", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "--provider", "anthropic"]
    )
    assert result.exit_code == 0, result.output
    assert "aws/regional.anthropic.claude-sonnet-4-5-20250929-v1:0" in result.output
    assert "aws.bedrock id given with provider anthropic" in result.output
    assert re.search(r"input 3\.3, output 16\.5", result.output)
    missing = CliRunner().invoke(prices, ["show", "mystery-9000"])
    assert missing.exit_code == 1 and "unpriced" in missing.output


def test_floor_date_prices_cover_every_event():
    from streams.events import MIN_EVENT_TIME_MS
    from streams.pricing.catalog import date_ms

    assert date_ms(FLOOR_DATE, "floor") <= MIN_EVENT_TIME_MS
    rates = default_catalog().lookup("openai", "gpt-4o-mini", MIN_EVENT_TIME_MS).rates
    assert cost_nanos(rates, dict(input_tokens=M)) == 150_000_000


def test_the_documented_overlay_works_through_the_environment(tmp_path, monkeypatch):
    """docs/prices.md's example, as a user would use it: SPENDSTREAM_PRICES_OVERLAY."""
    from pathlib import Path

    from streams.settings import env_name

    text = (Path(__file__).resolve().parents[2] / "docs" / "prices.md").read_text()
    example = text.split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "prices.json"
    path.write_text(example)
    monkeypatch.setenv(env_name("prices_overlay"), str(path))
    runner = CliRunner()
    args = ["quote", "--provider", "anthropic", "--model", "claude-sonnet-4-5", "--input", "100000"]
    acme = json.loads(runner.invoke(prices, [*args, "--org", "acme", "--json"]).output)
    other = json.loads(runner.invoke(prices, [*args, "--org", "other", "--json"]).output)
    assert (acme["cost_nanos"], other["cost_nanos"]) == (240_000_000, 300_000_000)
    assert acme["price_version"] == "org:acme:anthropic/claude-sonnet-4-5@2026-07-01"
    ours = json.loads(
        runner.invoke(
            prices,
            [
                "quote",
                "--provider",
                "openai",
                "--model",
                "our-llm-v2",
                "--output",
                str(M),
                "--json",
            ],
        ).output
    )
    assert (ours["resolved"], ours["cost_nanos"]) == ("internal/our-llm", 1_500_000_000)
