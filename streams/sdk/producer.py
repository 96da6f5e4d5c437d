"""The producer SDK: agents record one token event per LLM request, never blocking on Kafka.

``record()`` validates, encodes (Avro single-object) and hands the bytes to librdkafka's queue;
delivery happens in librdkafka's thread. Failures are never dropped silently: they are counted
and reported to ``on_error``. The producer is idempotent with acks=all, so broker restarts and
retries neither lose nor duplicate events.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams import events
from streams.errors import DecodeError, InvalidEventError, KafkaUnreachableError, ProducerError
from streams.preflight import kafka_metadata
from streams.sdk.enforcement import Block, EnforcementWatcher
from streams.serde import AvroCodec
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Serve delivery callbacks every this many sends (and in flush): amortises poll() cost.
POLL_EVERY = 512

ErrorCallback = Callable[[str, str], None]
"""Called from the delivery thread with (event_id, reason) for every event that failed."""

#: the contract's defaults (streams.events), what build_event fills in
DEFAULTS: Mapping[str, Any] = events.DEFAULTS

OTEL_TASK_TYPES: Mapping[str, str] = {
    "chat": "chat",
    "text_completion": "completion",
    "generate_content": "chat",
    "embeddings": "embedding",
    "invoke_agent": "agentic",
    "create_agent": "agentic",
    "execute_tool": "agentic",
}


@dataclasses.dataclass
class DeliveryStats:
    """Counters of what happened to recorded events (read any time, thread-safe enough)."""

    enqueued: int = 0
    delivered: int = 0
    failed: int = 0

    @property
    def in_flight(self) -> int:
        return self.enqueued - self.delivered - self.failed


def build_event(event: Mapping[str, Any] | None = None, /, **fields: Any) -> events.Event:
    """A complete, validated event dict from what the caller gave; fills ids and defaults.

    ``event_time`` may be an aware datetime or epoch milliseconds; it defaults to now.
    ``event_id`` defaults to a new UUID4: keep it to re-send the same event idempotently.
    """
    given = {**(event or {}), **fields}
    unknown = set(given) - set(DEFAULTS) - {*events.REQUIRED_IDS, "event_id", "event_time"}
    unknown.discard("labels")
    if unknown:
        raise InvalidEventError(f"unknown event fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {**DEFAULTS, **given}
    if "event_id" not in given:
        out["event_id"] = str(uuid.uuid4())
    elif isinstance(given["event_id"], uuid.UUID):
        out["event_id"] = str(given["event_id"])
    else:  # sent as stored: lowercase 8-4-4-4-12 (validate() refuses other spellings)
        out["event_id"] = events.canonical_event_id(given["event_id"]) or given["event_id"]
    when = given.get("event_time")
    if when is None:
        out["event_time"] = events.now_ms()
    elif isinstance(when, dt.datetime):
        out["event_time"] = events.to_epoch_ms(when)
    out["labels"] = dict(given.get("labels") or {})
    events.validate(out)
    return out


def event_from_otel(
    attributes: Mapping[str, Any], *, cache_write_ttl: str = "5m", **fields: Any
) -> events.Event:
    """An event from OpenTelemetry GenAI span attributes plus our own fields (org, team...).

    OTel's ``gen_ai.usage.input_tokens`` INCLUDES cached tokens; our buckets never overlap, so
    cache reads and cache writes are subtracted from it.
    """
    if cache_write_ttl not in ("5m", "1h"):
        raise InvalidEventError("cache_write_ttl must be '5m' or '1h'")

    def count(name: str) -> int:
        value = attributes.get(name, 0) or 0
        if not isinstance(value, int) or value < 0:
            raise InvalidEventError(f"{name} must be a non-negative integer, got {value!r}")
        return value

    total_input = count("gen_ai.usage.input_tokens")
    cache_read = count("gen_ai.usage.cache_read.input_tokens")
    cache_write = count("gen_ai.usage.cache_creation.input_tokens")
    if cache_read + cache_write > total_input:
        raise InvalidEventError(
            f"cached tokens ({cache_read} read + {cache_write} written) exceed "
            f"gen_ai.usage.input_tokens ({total_input}), which includes them"
        )
    provider = attributes.get("gen_ai.provider.name") or attributes.get("gen_ai.system")
    model = attributes.get("gen_ai.response.model") or attributes.get("gen_ai.request.model")
    derived: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "session_id": attributes.get("gen_ai.conversation.id"),
        "task_type": OTEL_TASK_TYPES.get(str(attributes.get("gen_ai.operation.name")), "other"),
        "input_tokens": total_input - cache_read - cache_write,
        "cache_read_tokens": cache_read,
        "cache_write_5m_tokens": cache_write if cache_write_ttl == "5m" else 0,
        "cache_write_1h_tokens": cache_write if cache_write_ttl == "1h" else 0,
        "output_tokens": count("gen_ai.usage.output_tokens"),
        "reasoning_tokens": count("gen_ai.usage.reasoning.output_tokens"),
    }
    return build_event({**{k: v for k, v in derived.items() if v is not None}, **fields})


class TokenEventProducer:
    """Publishes token events to Kafka; create one per process and share it."""

    _enforcement: EnforcementWatcher | None = None  # once watched

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        topic: str | None = None,
        on_error: ErrorCallback | None = None,
        config: Mapping[str, Any] | None = None,
        check_timeout: float | None = None,
    ) -> None:
        """``check_timeout``: seconds the start-up check waits for Kafka (default: the
        ``kafka_check_timeout_s`` setting; 0 skips it). Wrong credentials, an untrusted
        certificate or the wrong security protocol raise AuthError at once; an unreachable
        broker only logs a warning, events wait in the queue until it is back."""
        self.settings = settings or Settings.from_env()
        self.topic = topic or self.settings.topic_events
        self.stats = DeliveryStats()
        self._on_error = on_error
        self._lock = threading.Lock()
        self._codec = AvroCodec("token_event")
        producer_config: dict[str, Any] = {
            **self.settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "message.timeout.ms": 300_000,
            **(config or {}),
        }
        self._check(self.settings.kafka_check_timeout_s if check_timeout is None else check_timeout)
        try:
            self._producer = Producer(producer_config)
        except KafkaException as exc:
            raise ProducerError(f"cannot create Kafka producer: {exc}") from exc
        self._closed = False

    def _check(self, timeout: float) -> None:
        if timeout <= 0:
            return
        try:
            kafka_metadata(self.settings, timeout, topic=self.topic)
        except KafkaUnreachableError as exc:
            log.warning("%s; events are queued until it answers", exc)

    def __repr__(self) -> str:
        return f"TokenEventProducer(topic={self.topic!r}, stats={self.stats})"

    def record(self, event: Mapping[str, Any] | None = None, /, **fields: Any) -> str:
        """Validate, encode and enqueue one event; returns its event_id. Never waits on Kafka."""
        full = build_event(event, **fields)
        self.send(full)
        return str(full["event_id"])

    def record_otel(self, attributes: Mapping[str, Any], **fields: Any) -> str:
        """Record an event from OpenTelemetry GenAI attributes (see ``event_from_otel``)."""
        full = event_from_otel(attributes, **fields)
        self.send(full)
        return str(full["event_id"])

    def send(self, event: events.Event) -> None:
        """Enqueue an already complete and validated event (the fast path for gateways)."""
        if self._closed:
            raise ProducerError("producer is closed")
        try:
            value = self._codec.encode(event)
        except DecodeError as exc:
            raise InvalidEventError(str(exc)) from exc
        try:
            self._producer.produce(
                self.topic, value, events.partition_key(event), on_delivery=self._on_delivery
            )
        except BufferError:
            self._producer.poll(0)  # serve callbacks to free room, then try once more
            try:
                self._producer.produce(
                    self.topic, value, events.partition_key(event), on_delivery=self._on_delivery
                )
            except BufferError as exc:
                raise ProducerError(
                    "local producer queue is full (Kafka unreachable or too slow); "
                    "event not enqueued"
                ) from exc
        self.stats.enqueued += 1
        if not self.stats.enqueued % POLL_EVERY:
            self._producer.poll(0)  # serve delivery callbacks without a syscall per event

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """One bound callback for every message (no closure per event); ids only on failure."""
        with self._lock:
            if err is None:
                self.stats.delivered += 1
                return
            self.stats.failed += 1
        try:
            event_id = str(self._codec.decode(msg.value())["event_id"])
        except DecodeError:
            event_id = "?"
        reason = err.str()
        log.error("token event %s not delivered: %s", event_id, reason)
        if self._on_error is not None:
            self._on_error(event_id, reason)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every queued event to be acknowledged or failed; returns how many remain."""
        return int(self._producer.flush(timeout))

    def watch_enforcement(self, timeout: float = 30.0) -> None:
        """Follow the block states of block-mode budgets, so that ``check()`` answers locally."""
        if self._enforcement is None:
            self._enforcement = EnforcementWatcher(self.settings).start(timeout)

    def check(
        self,
        org_id: str | None = None,
        team_id: str | None = None,
        user_id: str | None = None,
        **attributes: Any,
    ) -> Block | None:
        """The Block stopping a request by this org/team/user, or None to go ahead (~1 us).

        Call ``watch_enforcement()`` once first; see streams/sdk/enforcement.py for the delay.
        """
        watcher = self._enforcement
        if watcher is None:
            return None
        return watcher.check(org_id, team_id, user_id, **attributes)

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        if self._enforcement is not None:
            self._enforcement.stop()
        remaining = self.flush(timeout)
        self._closed = True
        if remaining:
            raise ProducerError(f"{remaining} events still in flight after {timeout}s")

    def __enter__(self) -> TokenEventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
