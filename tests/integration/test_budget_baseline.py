"""The spend a budget created mid-period starts from, read from the real ClickHouse."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from streams.budgets import budget_from_spec, read_baseline
from streams.clickhouse import Target, connect
from streams.events import now_ms
from streams.generate import Shape, generate_events
from streams.migrate import Migrator
from streams.pricing import default_catalog
from streams.settings import Settings
from streams.sink.rows import Buffer
from streams.sink.store import EventStore

pytestmark = pytest.mark.integration
HOUR = 3_600_000
BUCKET = 10 * 60_000


def test_calendar_and_rolling_baselines_match_the_events(clickhouse_settings: Settings) -> None:
    settings = dataclasses.replace(
        clickhouse_settings, clickhouse_database=f"baseline_{uuid.uuid4().hex[:8]}"
    )
    client = connect(settings, database=None)
    try:
        Migrator(client, Target.from_settings(settings)).migrate()
        end = now_ms()
        start = end - 3 * HOUR
        buffer = Buffer()
        catalog = default_catalog()
        shape = Shape(orgs=3, start_ms=start, span_ms=3 * HOUR)
        for i, event in enumerate(generate_events(3_000, seed=8, shape=shape)):
            buffer.add(event, catalog.price(event), partition=0, offset=i)
        block = buffer.take()
        EventStore(client, Target.from_settings(settings)).insert(block.to_arrow(), "baseline")
        org = block.rows[0]["org_id"]
        budget = budget_from_spec({"id": "b", "scope": {"org": org}, "limit_usd": "1"})
        since, until = start + HOUR, start + 2 * HOUR
        mine = [r for r in block.rows if r["org_id"] == org and since <= r["event_time"] < until]
        assert mine

        def tokens(r: dict[str, object]) -> int:
            return sum(
                int(r[f])  # type: ignore[call-overload]
                for f in (
                    "input_tokens",
                    "cache_read_tokens",
                    "cache_write_5m_tokens",
                    "cache_write_1h_tokens",
                    "output_tokens",
                )
            )

        [(at, cost, toks)] = read_baseline(settings, budget, since, until)
        assert (at, cost, toks) == (
            since,
            sum(r["cost_nanos"] for r in mine),
            sum(tokens(r) for r in mine),
        )
        buckets = read_baseline(settings, budget, since, until, BUCKET)
        expected: dict[int, list[int]] = {}
        for r in mine:
            b = since + (r["event_time"] - since) // BUCKET * BUCKET
            got = expected.setdefault(b, [0, 0])
            got[0] += r["cost_nanos"]
            got[1] += tokens(r)
        assert {b: [c, t] for b, c, t in buckets} == expected
        assert len(buckets) == 6
        other = budget_from_spec({"id": "o", "scope": {"org": "nobody"}, "limit_usd": "1"})
        assert read_baseline(settings, other, since, until) == []
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}`")
        client.close()
