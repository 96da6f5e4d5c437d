"""``spendstream prices``: where a price comes from (show), what a request costs (quote), and
the offline snapshot of genai-prices into the shipped catalog (sync, dev extra)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from streams import events
from streams.errors import PricingError
from streams.pricing.catalog import (
    CATALOG_PATH,
    OVERLAY_PATH,
    PriceCatalog,
    PriceEntry,
    Rates,
    cost_nanos,
    nanos_to_usd_text,
    overlay_paths,
    prompt_tokens,
)
from streams.settings import env_name

_OVERLAY_HELP = "Your overlay file (negotiated rates, by org) on top of the shipped one."


def _at_ms(text: str | None) -> int:
    """ISO date or datetime (naive = UTC) as epoch ms; now when not given."""
    if text is None:
        return events.now_ms()
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not an ISO date or datetime") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return events.to_epoch_ms(value)


def _catalog(overlay: Path | None) -> PriceCatalog:
    return PriceCatalog.from_file(CATALOG_PATH, overlay_paths(overlay))


def _rates_json(rates: Rates) -> dict[str, str]:
    return {
        name: nanos_to_usd_text(getattr(rates, name))
        for name in ("input", "output", "reasoning", "cache_read", "cache_write_5m")
    } | {"cache_write_1h": nanos_to_usd_text(rates.cache_write_1h)}


def _entry_json(entry: PriceEntry) -> dict[str, Any]:
    return {
        "price_version": entry.label,
        "model": entry.model_id,
        "effective_from": entry.effective_from,
        "origin": entry.origin,
        "usd_per_million": _rates_json(entry.rates),
        "tiers": [
            {"above_prompt_tokens": t.above_prompt_tokens, "usd_per_million": _rates_json(t.rates)}
            for t in entry.tiers
        ],
    }


@click.group("prices")
def prices() -> None:
    """The price catalog: show a model's prices, quote a request, sync from genai-prices."""


@prices.command("show")
@click.argument("model")
@click.option("--provider", help="gen_ai.provider.name (anthropic, openai, aws.bedrock, ...).")
@click.option("--at", "at", help="ISO date/time the price is for (naive = UTC; default now).")
@click.option("--org", help="Show this org's negotiated rates where it has any.")
@click.option(
    "--overlay",
    type=click.Path(path_type=Path),
    envvar=env_name("prices_overlay"),
    help=_OVERLAY_HELP,
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_command(
    model: str,
    provider: str | None,
    at: str | None,
    org: str | None,
    overlay: Path | None,
    as_json: bool,
) -> None:
    """Which catalog model MODEL resolves to, and the price version in force."""
    catalog = _catalog(overlay)
    at_ms = _at_ms(at)
    providers = (
        [provider]
        if provider
        else sorted({p for d in catalog.models.values() for p in d.providers})
    )
    found: list[dict[str, Any]] = []
    for name in providers:
        resolution = catalog.resolution(name, model)
        if resolution.definition is None and (not provider and "ambiguous" not in resolution.why):
            continue
        entry = catalog.lookup(name, model, at_ms, org)
        definition = resolution.definition
        found.append(
            {
                "provider": name,
                "looked_under": resolution.looked_under,
                "model": definition.model_id if definition else None,
                "why": resolution.why,
                "unpriced_reason": definition.unpriced_reason if definition else None,
                "price": _entry_json(entry) if entry else None,
                "versions": [e.label for e in catalog.resolve_for(org, name, model)],
            }
        )
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"{model}: no model of any provider matches (unpriced: cost 0, alerted)")
        raise SystemExit(1)
    for item in found:
        click.echo(f"{item['provider']} / {model}: {item['why']}")
        if item["model"] is None:
            click.echo("  unpriced (cost 0, an unpriced_model alert)")
            continue
        click.echo(f"  model {item['model']}")
        if item["unpriced_reason"]:
            click.echo(f"  deliberately unpriced: {item['unpriced_reason']}")
        price = item["price"]
        if price is None:
            click.echo("  no price in force at that time (unpriced)")
        else:
            rates = price["usd_per_million"]
            click.echo(
                f"  {price['price_version']} (from {price['effective_from']}, {price['origin']})"
            )
            click.echo(
                "  USD per million tokens: " + ", ".join(f"{k} {v}" for k, v in rates.items())
            )
            for tier in price["tiers"]:
                shown = ", ".join(f"{k} {v}" for k, v in tier["usd_per_million"].items())
                click.echo(f"  prompts above {tier['above_prompt_tokens']:,} tokens: {shown}")
        if len(item["versions"]) > 1:
            click.echo("  all versions: " + ", ".join(item["versions"]))


@prices.command("quote")
@click.option("--provider", required=True, help="gen_ai.provider.name of the request.")
@click.option("--model", required=True, help="Model id as the request named it.")
@click.option(
    "--input", "input_tokens", type=click.IntRange(min=0), default=0, help="Uncached input tokens."
)
@click.option(
    "--cache-read", type=click.IntRange(min=0), default=0, help="Cache-read input tokens."
)
@click.option(
    "--cache-write-5m", type=click.IntRange(min=0), default=0, help="5-minute cache writes."
)
@click.option(
    "--cache-write-1h", type=click.IntRange(min=0), default=0, help="1-hour cache writes."
)
@click.option(
    "--output",
    "output_tokens",
    type=click.IntRange(min=0),
    default=0,
    help="Output tokens (reasoning included).",
)
@click.option(
    "--reasoning", type=click.IntRange(min=0), default=0, help="Reasoning part of output."
)
@click.option("--at", "at", help="ISO date/time of the request (naive = UTC; default now).")
@click.option("--org", help="Price with this org's negotiated rates where it has any.")
@click.option(
    "--overlay",
    type=click.Path(path_type=Path),
    envvar=env_name("prices_overlay"),
    help=_OVERLAY_HELP,
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quote_command(
    provider: str,
    model: str,
    input_tokens: int,
    cache_read: int,
    cache_write_5m: int,
    cache_write_1h: int,
    output_tokens: int,
    reasoning: int,
    at: str | None,
    org: str | None,
    overlay: Path | None,
    as_json: bool,
) -> None:
    """What one request costs, in nano-USD and USD, with the entry and tier used."""
    if reasoning > output_tokens:
        raise click.BadParameter("reasoning tokens are part of output: --reasoning <= --output")
    catalog = _catalog(overlay)
    usage = {
        "input_tokens": input_tokens,
        "cache_read_tokens": cache_read,
        "cache_write_5m_tokens": cache_write_5m,
        "cache_write_1h_tokens": cache_write_1h,
        "output_tokens": output_tokens,
        "reasoning_tokens": reasoning,
    }
    at_ms = _at_ms(at)
    resolution = catalog.resolution(provider, model)
    entry = catalog.lookup(provider, model, at_ms, org)
    result: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "at": events.from_epoch_ms(at_ms).isoformat(),
        "usage": usage,
        "resolved": resolution.definition.model_id if resolution.definition else None,
        "why": resolution.why,
    }
    if entry is None:
        result |= {"cost_nanos": 0, "cost_usd": "0", "source": "unpriced", "price_version": None}
    else:
        rates, threshold = entry.rates_for(prompt_tokens(usage))
        nanos = cost_nanos(rates, usage)
        result |= {
            "cost_nanos": nanos,
            "cost_usd": nanos_to_usd_text(nanos),
            "source": "catalog",
            "price_version": catalog.label(entry, threshold),
            "tier_above_prompt_tokens": threshold,
            "usd_per_million": _rates_json(rates),
        }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if entry is None:
        click.echo(f"{provider} / {model}: unpriced ({resolution.why}): 0 nano-USD")
        return
    tier = f", tier above {threshold:,} prompt tokens" if threshold is not None else ""
    click.echo(f"{result['cost_nanos']:,} nano-USD = ${result['cost_usd']}")
    click.echo(f"  {result['price_version']}{tier} ({resolution.why})")


@prices.command("sync")
@click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(path_type=Path),
    default=CATALOG_PATH,
    help="Catalog to append to.",
)
@click.option(
    "--overlay",
    "overlay_path",
    type=click.Path(path_type=Path),
    default=OVERLAY_PATH,
    help="Our choices (rules, accepted differences).",
)
@click.option("--today", help="Date the new prices are added on (YYYY-MM-DD; default today, UTC).")
@click.option("--out", type=click.Path(path_type=Path), help="Write here instead of --catalog.")
@click.option("--verbose", is_flag=True, help="List every appended price and what is not held.")
def sync_command(
    catalog_path: Path, overlay_path: Path, today: str | None, out: Path | None, verbose: bool
) -> None:
    """Append what the pinned genai-prices (dev extra) adds to the catalog; never edit a price."""
    from streams.pricing import sync

    day = today or dt.datetime.now(dt.UTC).date().isoformat()
    try:
        dt.date.fromisoformat(day)
    except ValueError as exc:
        raise click.BadParameter(f"--today {day!r} is not YYYY-MM-DD") from exc
    report = sync.sync(catalog_path, overlay_path, day, out_path=out)
    lines = report.lines()
    if not verbose:
        lines = [line for line in lines if not line.startswith(("  appended", "  rounded"))]
        if report.rounded:
            lines.append(f"  {len(report.rounded)} prices rounded to 1e-9 USD/M (--verbose)")
    for line in lines:
        click.echo(line)
    if not report.ok:
        raise PricingError(
            f"{len(report.conflicts)} price(s) refused: the catalog is append-only; accept a "
            "source change in the overlay ('accept') or leave it"
        )
