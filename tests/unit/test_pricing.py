import pytest

from streams.errors import PricingError
from streams.pricing import PriceCatalog, cost_nanos, default_catalog

T_2025_12 = 1_764_547_200_000  # 2025-12-01T00:00Z


def event(**kw):
    base = dict(
        provider="anthropic",
        model="claude-sonnet-4-5-20250929",
        event_time=T_2025_12,
        input_tokens=0,
        cache_read_tokens=0,
        cache_write_5m_tokens=0,
        cache_write_1h_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        cost_nanos=None,
    )
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("kw", "nanos"),
    [
        # $3/M input, $15/M output
        (dict(input_tokens=100_000), 300_000_000),
        (dict(output_tokens=1_000), 15_000_000),
        # cache read 0.1x, 5m write 1.25x, 1h write 2x of input
        (dict(cache_read_tokens=100_000), 30_000_000),
        (dict(cache_write_5m_tokens=100_000), 375_000_000),
        (dict(cache_write_1h_tokens=100_000), 600_000_000),
        # reasoning is part of output and priced like output by default
        (dict(output_tokens=1_000, reasoning_tokens=400), 15_000_000),
        # one token of input is 3000 nano-USD exactly
        (dict(input_tokens=1), 3_000),
        # long context: a prompt above 200K prices the WHOLE request at $6/$22.5
        # (150000*6 + 50001*0.6 + 1000*22.5 = 952500.6 USD/M)
        (dict(input_tokens=150_000, cache_read_tokens=50_001, output_tokens=1_000), 952_500_600),
        (dict(input_tokens=150_000, cache_read_tokens=50_000, output_tokens=1_000), 480_000_000),
    ],
)
def test_sonnet_buckets(kw, nanos):
    assert default_catalog().price(event(**kw)).cost_nanos == nanos


def test_long_context_tier_named_in_version():
    price = default_catalog().price(event(input_tokens=300_000))
    assert price.price_version.endswith(">200000")
    assert price.source == "catalog"


def test_reported_cost_wins():
    price = default_catalog().price(event(input_tokens=10**6, cost_nanos=123))
    assert (price.cost_nanos, price.source, price.price_version) == (123, "reported", "reported")


def test_unknown_model_is_unpriced_and_counted():
    catalog = PriceCatalog.from_file(default_catalog_path())
    price = catalog.price(event(model="mystery-9000", input_tokens=5))
    assert (price.cost_nanos, price.source) == (0, "unpriced")
    assert catalog.unpriced[("anthropic", "mystery-9000")] == 1


def default_catalog_path():
    from streams.pricing import CATALOG_PATH

    return CATALOG_PATH


def test_effective_dates_pick_the_price_in_force():
    # gemini-2.5-flash: preview $0.15/$0.60 from 2025-04-17, GA $0.30/$2.50 from 2025-06-17
    preview = event(provider="gcp.gemini", model="gemini-2.5-flash", event_time=1_748_000_000_000)
    ga = dict(preview, event_time=1_751_000_000_000)
    before = dict(preview, event_time=1_700_000_000_000)
    catalog = default_catalog()
    assert catalog.price(dict(preview, input_tokens=10**6)).cost_nanos == 150_000_000
    assert catalog.price(dict(ga, input_tokens=10**6)).cost_nanos == 300_000_000
    assert catalog.price(dict(before, input_tokens=10**6)).source == "unpriced"


def test_first_matching_model_wins_over_broader_patterns():
    catalog = default_catalog()
    assert catalog.price(event(model="claude-opus-4-5", input_tokens=10**6)).cost_nanos == 5 * 10**9
    assert (
        catalog.price(event(model="claude-opus-4-1", input_tokens=10**6)).cost_nanos == 15 * 10**9
    )
    # Bedrock in-region ids cost Bedrock's regional price, 10% above first party ($5.50/M
    # output; the 2025-11-24 catalog gave the first-party $5); global profiles cost $5
    bedrock = event(provider="aws.bedrock", model="anthropic.claude-haiku-4-5-20251001-v1:0")
    assert catalog.price(dict(bedrock, output_tokens=10**6)).cost_nanos == 5_500_000_000
    world = dict(bedrock, model="global.anthropic.claude-haiku-4-5-20251001-v1:0")
    assert catalog.price(dict(world, output_tokens=10**6)).cost_nanos == 5 * 10**9


def test_explicit_reasoning_price_and_openai_cache():
    catalog = default_catalog()
    e = event(provider="openai", model="gpt-5", cache_read_tokens=10**6, output_tokens=10**6)
    assert catalog.price(e).cost_nanos == 125_000_000 + 10_000_000_000


def test_rounding_is_half_up_on_the_total_not_per_bucket():
    from streams.pricing import Rates

    rates = Rates(input=1, output=1, reasoning=1, cache_read=1, cache_write_5m=1, cache_write_1h=1)
    assert cost_nanos(rates, dict(input_tokens=499_999)) == 0
    assert cost_nanos(rates, dict(input_tokens=500_000)) == 1
    assert cost_nanos(rates, dict(input_tokens=250_000, output_tokens=250_000)) == 1


def test_price_catalog_rejects_float_like_garbage():
    with pytest.raises(PricingError):
        PriceCatalog(
            {
                "models": [
                    {
                        "id": "x",
                        "providers": ["p"],
                        "match": "x",
                        "effective_from": "2025-01-01",
                        "input": "abc",
                        "output": "1",
                    }
                ]
            }
        )
    with pytest.raises(PricingError):
        PriceCatalog(
            {
                "models": [
                    {
                        "id": "x",
                        "providers": ["p"],
                        "match": "x",
                        "effective_from": "2025-01-01",
                        "input": "0.0000000001",
                        "output": "1",
                    }
                ]
            }
        )


def test_shipped_catalog_covers_the_main_models():
    catalog = default_catalog()
    for provider, model in [
        ("anthropic", "claude-opus-4-5"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("openai", "gpt-5"),
        ("openai", "gpt-5-mini"),
        ("openai", "gpt-4.1"),
        ("openai", "o3"),
        ("gcp.gemini", "gemini-2.5-pro"),
        ("gcp.gemini", "gemini-2.5-flash"),
        ("gcp.gemini", "gemini-3-pro-preview"),
    ]:
        assert catalog.lookup(provider, model, T_2025_12) is not None, model
    assert catalog.taken_on
