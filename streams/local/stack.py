"""The whole local stack in one call each: what ``spendstream local`` and the tests use.

A service whose external address is configured (``SPENDSTREAM_KAFKA_BOOTSTRAP``,
``SPENDSTREAM_CLICKHOUSE_URL``) is never started here, only checked for reachability.
"""

from __future__ import annotations

import dataclasses
import time

from streams import clickhouse as _clickhouse
from streams.local import kafka as _kafka
from streams.local._common import ServiceStatus
from streams.local.clickhouse import LocalClickHouse
from streams.local.kafka import LocalKafka
from streams.settings import Settings
from streams.topics import ensure_topics


@dataclasses.dataclass(frozen=True)
class UpResult:
    """What ``up`` did for one service: started, reused or (external) checked."""

    name: str
    action: str  # "started", "reused", "external"
    endpoint: str
    seconds: float
    detail: str = ""


def up_kafka(settings: Settings, create_topics: bool = True) -> UpResult:
    """Start (or reuse) the local broker and create the standard topics; external: check."""
    t0 = time.monotonic()
    if not settings.kafka_is_local:
        brokers = _kafka.check_reachable(settings, timeout=settings.start_timeout_s)
        endpoint = settings.kafka_client_config()["bootstrap.servers"]
        return UpResult(
            "kafka", "external", endpoint, time.monotonic() - t0, f"{brokers} broker(s)"
        )
    local = LocalKafka(settings)
    started = local.up()
    admin = local.client_settings
    if create_topics:
        ensure_topics(admin, timeout=settings.start_timeout_s)
    if settings.local_secure:
        _kafka.ensure_acls(admin, _kafka.sdk_acls(settings), settings.start_timeout_s)
    return UpResult(
        "kafka",
        "started" if started else "reused",
        local.bootstrap,
        time.monotonic() - t0,
        f"pid {local.pid()}, log {local.log_path}",
    )


def up_clickhouse(settings: Settings) -> UpResult:
    """Start (or reuse) the local server with its database; external: check."""
    t0 = time.monotonic()
    if not settings.clickhouse_is_local:
        version = _clickhouse.check_reachable(settings, timeout=settings.start_timeout_s)
        return UpResult(
            "clickhouse",
            "external",
            settings.clickhouse_http_url,
            time.monotonic() - t0,
            f"version {version}",
        )
    local = LocalClickHouse(settings)
    started = local.up()
    return UpResult(
        "clickhouse",
        "started" if started else "reused",
        local.url,
        time.monotonic() - t0,
        f"pid {local.pid()}, log {local.log_path}",
    )


def up(settings: Settings, kafka: bool = True, clickhouse: bool = True) -> list[UpResult]:
    """Bring up the chosen services; returns once each answers (raises LocalStackError)."""
    results = []
    if kafka:
        results.append(up_kafka(settings))
    if clickhouse:
        results.append(up_clickhouse(settings))
    return results


def down(settings: Settings, kafka: bool = True, clickhouse: bool = True) -> list[ServiceStatus]:
    """Stop the local services (external ones are left alone); returns their new status."""
    if clickhouse and settings.clickhouse_is_local:
        LocalClickHouse(settings).down()
    if kafka and settings.kafka_is_local:
        LocalKafka(settings).down()
    return status(settings)


def status(settings: Settings) -> list[ServiceStatus]:
    return [LocalKafka(settings).status(), LocalClickHouse(settings).status()]
