"""Issue 13's worker stall, end to end: a real `spendstream worker` under load whose producer's
first send to a topic its metadata does not hold must not strand a record of another topic.

aiokafka 0.14's producer (without ``streams.worker.fastpath.TrackingProducer``) tracks no
topic until its first send to a topic missing from its partition map; that send makes the
client ask for the tracked topics only and replace the whole map, so a batch appended for
another topic and not yet sent loses its leader and waits for faust's 20-minute request
timeout (tests/faults/README.md, "The worker stall"). Here the missing topic is the alerts
topic: it is deleted under the running worker, the producer's periodic full refresh (shortened
with faust's ``PRODUCER_METADATA_MAX_AGE_MS``; the linger is made 50 ms so that the race is
always lost) drops it from the map, then one event crosses a
block budget: stage 2 appends the block record (enforcement topic, in the map, untracked) and
then sends the first alert, the first send to a topic the map does not hold. The alerts topic
is recreated a few seconds later. On the code without the fix the block record never reached
the enforcement topic, no partition was committed again (faust's commit waits for
``producer.flush()``, which waits for the stranded batch) and /healthz turned 503
(tests/faults/README.md: the runs and the dumps); with the fix both records arrive and the
worker drains.
"""

from __future__ import annotations

import json
import time
import urllib.error
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.budgets import budget_from_spec, publish
from streams.events import now_ms
from streams.local._common import free_ports
from streams.sdk import TokenEventProducer
from streams.settings import Settings
from streams.topics import ensure_topics, standard_topics
from streams.worker import partials_topic, worker_topics
from tests.integration.test_worker_metrics import _get
from tests.integration.test_worker_scenario import Workers, _unique_settings

pytestmark = pytest.mark.integration

#: the producer's periodic full metadata refresh (aiokafka: 5 minutes): shortened so that the
#: deleted alerts topic leaves its map within a second
METADATA_MAX_AGE_MS = 1000
#: the producer's linger (the worker's: 2 ms), longer than the metadata round trip for sure
LINGER_S = 0.05


def _ends(settings: Settings, topic: str, partitions: int, group: str | None = None) -> list[int]:
    """End offsets of ``topic`` (or ``group``'s committed offsets on it)."""
    consumer = Consumer(
        {**settings.kafka_client_config(), "group.id": group or "stall-probe",
         "enable.auto.commit": False}
    )  # fmt: skip
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        if group:
            return [max(0, tp.offset) for tp in consumer.committed(tps, timeout=10)]
        return [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
    finally:
        consumer.close()


def test_first_send_to_a_topic_missing_from_the_metadata_strands_nothing(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    settings = _unique_settings(kafka_settings)
    parts = settings.event_partitions
    ensure_topics(settings, worker_topics(settings))
    budget = budget_from_spec(
        {"id": "big", "scope": {"org": "big"}, "period": "day", "limit_usd": "1",
         "thresholds": [100], "mode": "block"},
        now_ms=now_ms() - 86_400_000,
    )  # fmt: skip
    publish(settings, {"big": budget})
    workers = Workers(
        settings,
        tmp_path,
        extra={"METRICS_PORT": str(port), "WORKER_SINK_CHECKS": "false", "WORKER_STALL_S": "10"},
    )
    workers.extra["PRODUCER_METADATA_MAX_AGE_MS"] = str(METADATA_MAX_AGE_MS)  # faust's own
    # the worker's producer lingers 2 ms, about a metadata round trip here: the record appended
    # just before the first alert was stranded in 4 of 5 runs without the fix; 50 ms makes it
    # every run (faust's env setting, seconds)
    workers.extra["PRODUCER_LINGER"] = str(LINGER_S)
    producer = TokenEventProducer(settings)
    base = f"http://127.0.0.1:{port}"

    def send(n: int, org: str = "acme", cost: int = 1_000_000) -> None:
        for i in range(n):
            producer.record(
                org_id=org,
                team_id=f"t{i % 7}",
                user_id=f"u{i % 13}",
                client="c",
                provider="anthropic",
                model="claude-sonnet-4-5",
                event_id=str(uuid.uuid4()),
                cost_nanos=cost,
            )
        producer.flush()

    def load(seconds: float) -> None:
        """Steady traffic (about 100 events/s) while waiting."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            workers.assert_alive()
            send(10)
            time.sleep(0.1)

    try:
        workers.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            workers.assert_alive()
            try:
                _get(base + "/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        load(8)  # partials, changelogs: sends to topics the producer's map holds
        admin = AdminClient(settings.kafka_client_config())
        admin.delete_topics([settings.topic_alerts])[settings.topic_alerts].result(30)
        load(3 * METADATA_MAX_AGE_MS / 1000)  # a full refresh without the alerts topic
        # a fresh stage 2 may have written its first decision on the budget (not blocked)
        (enforced,) = _ends(settings, settings.topic_enforcement, 1)
        send(1, org="big", cost=2_000_000_000)  # crosses the block budget: block + alert
        load(3)
        alerts = [t for t in standard_topics(settings) if t.name == settings.topic_alerts]
        ensure_topics(settings, alerts)

        found: dict[str, int] = {}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            load(2)
            found = {
                "enforcement": _ends(settings, settings.topic_enforcement, 1)[0] - enforced,
                "alerts": sum(_ends(settings, settings.topic_alerts, parts)),
            }
            if found["enforcement"] >= 1 and found["alerts"] == 1:
                break
        assert found["enforcement"] >= 1, f"the block record never reached its topic: {found}"
        assert found["alerts"] == 1, found

        # every partition keeps being checkpointed: the worker commits what was sent so far
        target = {
            topic: _ends(settings, topic, parts)
            for topic in (settings.topic_events, partials_topic(settings))
        }
        committed: dict[str, list[int]] = {}

        def caught_up() -> bool:
            return all(
                c >= e
                for topic, ends in target.items()
                for c, e in zip(committed[topic], ends, strict=True)
            )

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers.assert_alive()
            committed = {
                topic: _ends(settings, topic, parts, settings.worker_id) for topic in target
            }
            if caught_up():
                break
            time.sleep(1)
        assert caught_up(), f"not committed: {committed}, ends {target}"
        status, body = _get(base + "/healthz")
        assert status == 200, body
        assert json.loads(body)["ok"] is True
    finally:
        workers.stop_all()
        producer.close()
