"""The embedded local stack: a real Kafka broker and a real ClickHouse server on 127.0.0.1.

``spendstream local up|down|status`` and the test suite's session fixtures both use this code.
"""

from __future__ import annotations

from streams.local._common import ServiceStatus
from streams.local.clickhouse import LocalClickHouse
from streams.local.kafka import LocalKafka
from streams.local.stack import UpResult, down, status, up

__all__ = ["LocalClickHouse", "LocalKafka", "ServiceStatus", "UpResult", "down", "status", "up"]
