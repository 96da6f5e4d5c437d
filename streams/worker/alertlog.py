"""The ids of every alert already on the alerts topic."""

from __future__ import annotations

import logging
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from streams.settings import Settings

log = logging.getLogger(__name__)


class AlertLog:
    """Ids of every alert already on the alerts topic: the last guard against duplicates.

    Stage state remembers what it alerted, but a worker killed between publishing an alert
    and checkpointing would raise it again when replaying; reading the topic's ids on every
    (re)assignment closes that gap. Alerts are few, so reading them all is cheap.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ids: set[str] = set()
        self.generation: int | None = None

    def load(self, timeout: float = 30.0) -> int:
        config = dict(self.settings.kafka_client_config())
        config.update({"group.id": "spendstream-alert-log", "enable.auto.commit": False})
        consumer = Consumer(config)
        topic = self.settings.topic_alerts
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
            if meta is None or meta.error is not None:
                return 0
            ends: dict[int, int] = {}
            parts = []
            for p in meta.partitions:
                tp = TopicPartition(topic, p, OFFSET_BEGINNING)
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
                if high > low:
                    ends[p] = high
                    parts.append(tp)
            if not parts:
                return 0
            consumer.assign(parts)
            deadline = time.monotonic() + timeout
            while ends and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=1000, timeout=0.2):
                    if msg.error():
                        continue
                    key = msg.key()
                    if key:
                        self.ids.add(key.decode())
                    offset, partition = msg.offset(), msg.partition()
                    if offset is None or partition is None:
                        continue
                    if offset + 1 >= ends.get(partition, 0):
                        ends.pop(partition, None)
            return len(self.ids)
        except KafkaException as exc:
            log.warning("could not read alert ids from %s: %s", topic, exc)
            return len(self.ids)
        finally:
            consumer.close()
