"""The project's Kafka topics and their creation (idempotent) with confluent-kafka's admin API."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.errors import AuthError, SpendstreamError
from streams.preflight import denied, kafka_metadata
from streams.settings import Settings


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = dataclasses.field(default_factory=dict)


#: the events topic: the broker stamps each record with its own clock (LogAppendTime), the
#: clock every consumer decides lateness and windows by, the same on every replay
EVENTS_TOPIC_CONFIG = {"compression.type": "producer", "message.timestamp.type": "LogAppendTime"}


def standard_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic spendstream owns, with partitioning and retention/compaction choices."""
    parts = settings.event_partitions
    compacted = {"cleanup.policy": "compact"}
    return [
        TopicSpec(settings.topic_events, parts, dict(EVENTS_TOPIC_CONFIG)),
        TopicSpec(settings.topic_deadletter, parts, {"retention.ms": str(30 * 86_400_000)}),
        TopicSpec(settings.topic_alerts, parts),
        TopicSpec(settings.topic_rollups, parts),
        TopicSpec(settings.topic_budgets, 1, compacted),
        TopicSpec(settings.topic_enforcement, 1, compacted),
    ]


def admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_client_config())


def ensure_topics(
    settings: Settings, specs: Iterable[TopicSpec] | None = None, timeout: float = 30.0
) -> None:
    """Create missing topics; existing ones are left as they are.

    Also the services' start-up check: wrong credentials, an untrusted certificate or a
    user whose ACLs do not allow creating a missing topic raise AuthError at once.
    """
    wanted = list(standard_topics(settings) if specs is None else specs)
    existing = set(kafka_metadata(settings, timeout).topics)
    client = admin(settings)
    missing = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=s.config)
        for s in wanted
        if s.name not in existing
    ]
    if not missing:
        return
    for name, future in client.create_topics(missing, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                refused = denied(settings, exc)
                if refused is not None:
                    raise AuthError(f"cannot create topic {name}: {refused}") from exc
                raise SpendstreamError(f"cannot create topic {name}: {exc}") from exc


def delete_topics_containing(settings: Settings, marker: str, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name contains ``marker`` (a benchmark run's id); their names.

    For the benchmarks: each run makes fresh topics, and a broker holding hundreds of old ones
    spends a large part of a core on them, which skews the next run."""
    client = admin(settings)
    try:
        names = [t for t in client.list_topics(timeout=timeout).topics if marker in t]
        if names:
            for future in client.delete_topics(names, request_timeout=timeout).values():
                future.result()
    except KafkaException as exc:
        raise SpendstreamError(f"cannot delete the topics containing {marker!r}: {exc}") from exc
    return names
