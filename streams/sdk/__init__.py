"""The producer SDK: what an agent or gateway needs to record token events and honour blocks.

It imports only the event contract, serde, settings and errors of spendstream, and
confluent-kafka and fastavro: ``pip install spendstream`` (no extras) is enough for it.
"""

from streams.sdk.enforcement import Block, EnforcementCache, EnforcementWatcher, parse_block
from streams.sdk.producer import (
    DeliveryStats,
    TokenEventProducer,
    build_event,
    event_from_otel,
)
from streams.sdk.view import CompactedView

__all__ = [
    "Block",
    "CompactedView",
    "DeliveryStats",
    "EnforcementCache",
    "EnforcementWatcher",
    "TokenEventProducer",
    "build_event",
    "event_from_otel",
    "parse_block",
]
