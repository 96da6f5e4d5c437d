"""Unpriced spend on the real stack: the worker's unpriced_model alert (once per model and day,
across partitions and a SIGKILL), `spendstream report unpriced`, and `backfill --reprice`
checked exactly against a recomputation by the pricing engine."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from streams import events as ev
from streams.cli import main
from streams.clickhouse import Target, connect
from streams.generate import Shape, generate_events
from streams.migrate import Migrator
from streams.pricing import CATALOG_PATH, OVERLAY_PATH, PriceCatalog, default_catalog
from streams.pricing.catalog import read_json
from streams.processors.alerts import DAY_MS, unpriced_alert_id
from streams.query.ranges import TimeRange
from streams.query.report import Reports
from streams.serde import AvroCodec
from streams.settings import Settings, env_name
from streams.sink.backfill import reprice_and_rebuild as reprice
from streams.sink.rows import Buffer
from streams.sink.store import EventStore
from streams.topics import ensure_topics
from streams.worker import worker_topics
from tests.integration.test_worker_scenario import (
    Workers,
    _produce,
    _read_all,
    _unique_settings,
    _wait_caught_up,
)

pytestmark = pytest.mark.integration

CODEC = AvroCodec("token_event")
ALERTS = AvroCodec("budget_alert")
NEW = "claude-opus-4-9"  # not in the shipped catalog: unpriced until the overlay below
NEVER = "mystery-model-x"
RATES = ("input", "output", "reasoning", "cache_read", "cache_write_5m", "cache_write_1h")


def _with(events: list[dict[str, Any]], every: int, **change: Any) -> None:
    for e in events[::every]:
        e.update(change, cost_nanos=None)


def _events(n: int, start_ms: int, span_ms: int, seed: int) -> list[dict[str, Any]]:
    shape = Shape(orgs=3, start_ms=start_ms, span_ms=span_ms)
    found = list(generate_events(n, seed=seed, shape=shape))
    _with(found, 7, provider="anthropic", model=NEW)
    _with(found[3:], 11, provider="openai", model=NEVER)
    for e in found[::5]:
        e["cost_nanos"] = None  # more catalog-priced rows (generated ones are often reported)
    return found


def test_the_worker_alerts_once_per_unpriced_model_across_partitions_and_a_kill(
    stack_settings: Settings, clickhouse_client: Any, tmp_path: Path
) -> None:
    settings = _unique_settings(stack_settings)
    Migrator(clickhouse_client, Target.from_settings(settings)).migrate()
    ensure_topics(settings, worker_topics(settings))
    now = ev.now_ms()
    first = _events(600, now - 120_000, 60_000, seed=1)
    keys = {ev.partition_key(e) for e in first if e["model"] == NEW}
    assert len(keys) > 8  # the same model under many keys: on several of the 4 partitions
    workers = Workers(settings, tmp_path)
    try:
        _produce(settings, [(ev.partition_key(e), CODEC.encode(e)) for e in first])
        proc = workers.start()
        _wait_caught_up(settings, workers)
        workers.kill(proc)
        second = _events(300, now - 50_000, 40_000, seed=2)
        _produce(settings, [(ev.partition_key(e), CODEC.encode(e)) for e in second])
        workers.start()
        _wait_caught_up(settings, workers)
    finally:
        workers.stop_all()
    alerts = [ALERTS.decode(m.value()) for m in _read_all(settings, settings.topic_alerts)]
    unpriced = [a for a in alerts if a["kind"] == "unpriced_model"]
    days = {e["event_time"] - e["event_time"] % DAY_MS for e in first + second}
    expected = {
        unpriced_alert_id(provider, model, day)
        for provider, model in (("anthropic", NEW), ("openai", NEVER))
        for day in days
        if any(
            e["model"] == model and e["event_time"] - e["event_time"] % DAY_MS == day
            for e in first + second
        )
    }
    assert Counter(a["alert_id"] for a in unpriced) == dict.fromkeys(expected, 1)
    by_model = {a["scope"]["model"]: a for a in unpriced}
    assert by_model[NEW]["details"]["why"] == "no model of this provider matches"
    assert by_model[NEW]["unit"] == "tokens" and by_model[NEW]["spent"] > 0


def _overlay() -> dict[str, Any]:
    """What arrives later: a price for NEW, and org-1's contract on claude-sonnet-4-5."""
    price = {"effective_from": "2026-01-01", **dict.fromkeys(RATES, "5")}
    return {
        "models": [
            {
                "id": "anthropic/claude-opus-4-9",
                "providers": ["anthropic"],
                "match": "claude-opus-4-9(?:-\\d{8})?",
                "names": ["claude-opus-4-9"],
            }
        ],
        "prices": [dict(price, model="anthropic/claude-opus-4-9", output="25", reasoning="25")],
        "orgs": {"org-1": [dict(price, model="anthropic/claude-sonnet-4-5", input="2.5")]},
    }


@dataclasses.dataclass
class Stored:
    settings: Settings
    client: Any
    target: Target
    events: list[dict[str, Any]]
    rng: TimeRange


@pytest.fixture
def stored(clickhouse_settings: Settings) -> Iterator[Stored]:
    settings = dataclasses.replace(
        clickhouse_settings, clickhouse_database=f"unpriced_{uuid.uuid4().hex[:8]}"
    )
    client = connect(settings, database=None)
    target = Target.from_settings(settings)
    Migrator(client, target).migrate()
    now = ev.now_ms()
    found = _events(5000, now - 3 * 86_400_000, 2 * 86_400_000, seed=3)
    buffer = Buffer()
    catalog = default_catalog()
    for i, event in enumerate(found):
        buffer.add(event, catalog.price(event), partition=0, offset=i)
    EventStore(client, target).insert(buffer.take().to_arrow(), "unpriced-load")
    start = ev.from_epoch_ms(now - 4 * 86_400_000)
    rng = TimeRange(start, ev.from_epoch_ms(now), "test", "UTC")
    yield Stored(settings, client, target, found, rng)
    client.command(f"DROP DATABASE `{settings.clickhouse_database}`")
    client.close()


def _truth(events: list[dict[str, Any]], model: str) -> dict[str, int]:
    rows = [e for e in events if e["model"] == model and e["cost_nanos"] is None]
    return {
        "requests": len(rows),
        "prompt_tokens": sum(
            e["input_tokens"]
            + e["cache_read_tokens"]
            + e["cache_write_5m_tokens"]
            + e["cache_write_1h_tokens"]
            for e in rows
        ),
        "output_tokens": sum(e["output_tokens"] for e in rows),
        "orgs": len({e["org_id"] for e in rows}),
    }


def test_report_unpriced_lists_models_with_their_requests_and_tokens(stored: Stored) -> None:
    report = Reports(stored.client, stored.target).unpriced(stored.rng)
    got = {r["model"]: r for r in report.rows}
    assert set(got) == {NEW, NEVER}
    for model in (NEW, NEVER):
        truth = _truth(stored.events, model)
        assert {k: int(got[model][k]) for k in truth} == truth
        assert got[model]["now"] == "no model of this provider matches"
    # and through the command, as JSON
    env = {
        env_name("clickhouse_url"): stored.settings.clickhouse_http_url,
        env_name("clickhouse_database"): stored.settings.clickhouse_database,
    }
    result = CliRunner().invoke(
        main,
        ["report", "unpriced", "--from", stored.rng.start.isoformat(), "--format", "json"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert {r["model"]: r["requests"] for r in rows} == {
        m: _truth(stored.events, m)["requests"] for m in (NEW, NEVER)
    }


def _stored_rows(stored: Stored) -> dict[str, tuple[int, str, str]]:
    result = stored.client.query(
        f"SELECT toString(event_id), cost_nanos, cost_source, price_version "
        f"FROM {stored.target.table('token_events')}"
    )
    return {eid: (int(c), s, v) for eid, c, s, v in result.result_rows}


def test_reprice_is_exact_against_a_recomputation_and_rebuilds_the_rollups(
    stored: Stored,
) -> None:
    before = _stored_rows(stored)
    later = PriceCatalog(read_json(CATALOG_PATH), [read_json(OVERLAY_PATH), _overlay()])
    report = reprice(stored.client, stored.target, later, stored.rng.start, stored.rng.end)
    after = _stored_rows(stored)
    expected = {}
    for e in stored.events:
        price = later.price(e)
        expected[e["event_id"]] = (price.cost_nanos, price.source, price.price_version)
    assert after == expected  # every row, exactly what the engine computes now
    changed = {eid for eid in after if after[eid] != before[eid]}
    assert changed  # the NEW model's rows and org-1's sonnet rows
    assert {e["model"] for e in stored.events if e["event_id"] in changed} <= {
        NEW,
        "claude-sonnet-4-5-20250929",
    }
    moves = {(c.model, c.old_version, c.new_version) for c in report.changes}
    assert (NEW, "unpriced", "overlay:anthropic/claude-opus-4-9@2026-01-01") in moves
    assert report.rows == len(changed)
    assert sum(c.new_cost - c.old_cost for c in report.changes) == sum(
        after[e][0] - before[e][0] for e in changed
    )
    # the rollups were rebuilt: hourly and daily sums equal the rows'
    totals = defaultdict(int)
    for e in stored.events:
        totals[(e["org_id"], e["model"])] += expected[e["event_id"]][0]
    for rollup in ("spend_hourly", "spend_daily"):
        result = stored.client.query(
            f"SELECT org_id, model, sum(cost_nanos), sum(unpriced_requests) "
            f"FROM {stored.target.table(rollup)} GROUP BY org_id, model"
        )
        assert {(o, m): int(c) for o, m, c, _ in result.result_rows} == dict(totals), rollup
        unpriced = {m: int(u) for _, m, _, u in result.result_rows if u}
        assert set(unpriced) == {NEVER}, rollup
    # nothing left to do: a second run changes nothing
    again = reprice(stored.client, stored.target, later, stored.rng.start, stored.rng.end)
    assert again.changes == []
    # and the report now lists only the model still unpriced
    rows = Reports(stored.client, stored.target, later).unpriced(stored.rng).rows
    assert [r["model"] for r in rows] == [NEVER]
