"""A compacted Kafka topic followed from the beginning in a background thread: key -> value.

The enforcement watcher (block states) and the budgets view both read their compacted topics
this way, so every reader acts on the whole topic, never on a partial view.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from streams.errors import AuthError, SpendstreamError
from streams.preflight import auth_failure, kafka_metadata
from streams.settings import Settings


class CompactedView:
    """Follows a compacted topic from the beginning in a background thread: key -> value.

    ``wait_ready()`` returns once everything present at start has been read, so a reader
    never acts on a partial view. ``on_change`` runs in the view's thread for every update.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        on_change: Callable[[str, bytes | None], None] | None = None,
        poll_s: float = 0.05,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.values: dict[str, bytes] = {}
        self.on_change = on_change
        self.poll_s = poll_s
        self.version = 0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> CompactedView:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"view-{self.topic}", daemon=True
            )
            self._thread.start()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self._ready.wait(timeout):
            raise SpendstreamError(f"could not read topic {self.topic} within {timeout:.0f}s")
        if isinstance(self._error, AuthError):
            raise self._error
        if self._error is not None:
            raise SpendstreamError(f"reading {self.topic} failed: {self._error}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @staticmethod
    def _ends(consumer: Consumer, parts: list[TopicPartition]) -> dict[int, int]:
        """High watermarks, retried while a new topic's leaders are being elected."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return {
                    tp.partition: consumer.get_watermark_offsets(tp, timeout=15)[1] for tp in parts
                }
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _run(self) -> None:
        config = dict(self.settings.kafka_client_config())
        config.update(
            {
                "group.id": f"spendstream-view-{self.topic}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
        consumer = Consumer(config)
        try:
            # start-up check first: a wrong login or certificate fails at once, clearly
            info = kafka_metadata(self.settings, 15, topic=self.topic).topics.get(self.topic)
            if info is not None and info.error is not None:
                refused = auth_failure(self.settings, info.error)
                if refused is not None:
                    raise refused
            if info is None or info.error is not None:
                raise SpendstreamError(f"topic {self.topic} does not exist")
            parts = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in info.partitions]
            ends = self._ends(consumer, parts)
            consumer.assign(parts)
            pending = {p for p, high in ends.items() if high > 0}
            if not pending:
                self._ready.set()
            while not self._stop.is_set():
                for msg in consumer.consume(num_messages=1000, timeout=self.poll_s):
                    if msg.error():
                        continue
                    raw_key = msg.key()
                    key = raw_key.decode() if raw_key else ""
                    value = msg.value()
                    if value is None:
                        self.values.pop(key, None)
                    else:
                        self.values[key] = value
                    self.version += 1
                    if self.on_change is not None:
                        self.on_change(key, value)
                    partition, offset = msg.partition(), msg.offset()
                    if (
                        partition in pending
                        and offset is not None
                        and offset + 1 >= ends[partition]
                    ):
                        pending.discard(partition)
                        if not pending:
                            self._ready.set()
        except (KafkaException, SpendstreamError) as exc:
            self._error = exc
            self._ready.set()
        finally:
            consumer.close()
