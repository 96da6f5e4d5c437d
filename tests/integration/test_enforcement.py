"""Block mode end to end: worker -> compacted enforcement topic -> TokenEventProducer.check()."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_worker_scenario import Workers, _unique_settings

from streams.budgets import budget_from_spec, publish
from streams.events import now_ms
from streams.sdk import TokenEventProducer
from streams.settings import Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration

#: documented upper bound (streams/sdk/enforcement.py) from the crossing event being produced
#: to check() answering blocked, on a loaded 2-core test machine
MAX_DELAY_S = 10.0


def test_producer_check_reports_the_block(kafka_settings: Settings, tmp_path: Path) -> None:
    from streams.worker import worker_topics

    settings = _unique_settings(kafka_settings)
    ensure_topics(settings, worker_topics(settings))
    budget = budget_from_spec(
        {
            "id": "platform-cap",
            "scope": {"org": "acme", "team": "platform"},
            "mode": "block",
            "period": "day",
            "limit_usd": "1.00",
        },
        now_ms=now_ms() - 86_400_000 * 3,
    )
    publish(settings, {budget.budget_id: budget})
    workers = Workers(settings, tmp_path)
    producer = TokenEventProducer(settings)
    try:
        workers.start()
        producer.watch_enforcement()
        base = {
            "org_id": "acme",
            "team_id": "platform",
            "client": "claude-code",
            "provider": "anthropic",
            "model": "claude-sonnet-4-5",
        }
        # 60 cents: not blocked; the worker is up once the first event is counted
        producer.record(base | {"user_id": "ana", "cost_nanos": 600_000_000})
        producer.flush()
        time.sleep(2)
        assert producer.check(org_id="acme", team_id="platform", user_id="ana") is None
        producer.record(base | {"user_id": "bo", "cost_nanos": 500_000_000})  # crosses $1
        producer.flush()
        sent = time.monotonic()
        deadline = sent + 60
        block = None
        while block is None and time.monotonic() < deadline:
            workers.assert_alive()
            block = producer.check(org_id="acme", team_id="platform", user_id="ana")
            time.sleep(0.01)
        delay = time.monotonic() - sent
        assert block is not None, f"never blocked; logs in {tmp_path}"
        print(f"block visible to check() {delay:.3f}s after the crossing event was acked")
        assert delay <= MAX_DELAY_S
        assert block.budget_id == "platform-cap"
        assert block.spent == 1_100_000_000
        # other teams and orgs are not blocked
        assert producer.check(org_id="acme", team_id="data", user_id="cy") is None
        assert producer.check(org_id="bolt", team_id="platform", user_id="ana") is None
    finally:
        workers.stop_all()
        producer.close()
