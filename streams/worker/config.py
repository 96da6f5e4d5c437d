"""The worker's configuration: faust/aiokafka connection settings, stage settings, its topics."""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any

import faust

from streams.errors import SettingsError
from streams.processors.stage1 import Stage1Config
from streams.processors.stage2 import Stage2Config
from streams.settings import Settings
from streams.topics import TopicSpec, standard_topics


def broker_settings(settings: Settings) -> dict[str, Any]:
    """faust/aiokafka connection settings from our librdkafka-style settings (SASL/TLS)."""
    config = settings.kafka_client_config()
    servers = config["bootstrap.servers"].split(",")
    out: dict[str, Any] = {"broker": [f"aiokafka://{s.strip()}" for s in servers]}
    protocol = settings.kafka_security_protocol
    context: ssl.SSLContext | None = None
    if protocol in ("SSL", "SASL_SSL"):
        try:
            context = ssl.create_default_context(
                cafile=str(settings.kafka_tls_ca) if settings.kafka_tls_ca else None
            )
            if settings.kafka_tls_cert and settings.kafka_tls_key:
                context.load_cert_chain(str(settings.kafka_tls_cert), str(settings.kafka_tls_key))
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError([f"Kafka TLS files unusable: {exc}"]) from exc
    if protocol.startswith("SASL"):
        out["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=settings.kafka_sasl_password.reveal() if settings.kafka_sasl_password else "",
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    elif context is not None:
        out["broker_credentials"] = faust.SSLCredentials(context)
    return out


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    stage1: Stage1Config = dataclasses.field(default_factory=Stage1Config)
    stage2: Stage2Config = dataclasses.field(default_factory=Stage2Config)
    flush_interval_s: float = 1.0
    #: budget changes, idle partitions and rolling windows are looked at this often
    tick_interval_s: float = 1.0
    publish_rollups: bool = True
    #: also run the faust web server (off: workers need no HTTP port)
    web: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        stage1 = Stage1Config(
            allowed_lateness_ms=settings.allowed_lateness_s * 1000,
            dedup_memory_ms=settings.worker_dedup_memory_s * 1000,
            hold_ms=settings.dedup_horizon_hours * 3_600_000,
            session_idle_ms=settings.worker_session_idle_s * 1000,
        )
        stage2 = Stage2Config(
            partitions=settings.event_partitions,
            close_after_ms=stage1.close_after_ms,
            hold_ms=stage1.hold_ms,
        )
        return cls(stage1=stage1, stage2=stage2, flush_interval_s=settings.worker_flush_seconds)


def partials_topic(settings: Settings) -> str:
    return f"{settings.worker_id}-budget-partials"


def worker_topics(settings: Settings) -> list[TopicSpec]:
    """The standard topics and the worker's own partials topic."""
    partials = TopicSpec(
        partials_topic(settings), settings.event_partitions, {"retention.ms": str(7 * 86_400_000)}
    )
    return [*standard_topics(settings), partials]
