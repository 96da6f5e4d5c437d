"""The ids of the alerts recently published: the last guard against publishing one twice.

Stage state remembers what it alerted, and a partition is checkpointed only once its alerts
are acknowledged; but a worker killed between that acknowledgement and the checkpoint would
raise them again when its partitions are replayed. A background thread follows the alerts
topic from ``window`` ago (not from its beginning: memory and start-up stay bounded however
long the topic is), so a (re)assignment needs no re-read: ``ready()`` waits only for the first
catch-up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.settings import Settings

log = logging.getLogger(__name__)

#: ids older than this are forgotten: a replay re-raises only what was published after the
#: replayed partition's last checkpoint, seconds before a crash
WINDOW_S = 6 * 3600.0


class AlertLog:
    """Alert ids on the alerts topic in the last ``window_s`` seconds (plus those just sent)."""

    def __init__(self, settings: Settings, window_s: float = WINDOW_S) -> None:
        self.settings = settings
        self.window_s = window_s
        self._ids: dict[str, float] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def seen(self, alert_id: str) -> bool:
        with self._lock:
            return alert_id in self._ids

    def claim(self, alert_id: str) -> bool:
        """True once per id: the caller publishes it (several partitions of this process may
        raise the same alert, e.g. unpriced_model). Kept as sent from now on; a send that
        fails stops the worker, and the replay raises it again."""
        with self._lock:
            if alert_id in self._ids:
                return False
            self._ids[alert_id] = time.time()
            return True

    def add(self, alert_id: str, at: float | None = None) -> None:
        with self._lock:
            self._ids[alert_id] = time.time() if at is None else at

    def __len__(self) -> int:
        return len(self._ids)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alert-log", daemon=True)
            self._thread.start()

    async def ready(self) -> None:
        """Return once the topic has been read up to where it was at start (or it failed)."""
        while not self._ready.is_set():
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        config = dict(self.settings.kafka_client_config())
        config.update({"group.id": "spendstream-alert-log", "enable.auto.commit": False})
        consumer = Consumer(config)
        topic = self.settings.topic_alerts
        try:
            meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
            if meta is None or meta.error is not None:
                return
            since_ms = int((time.time() - self.window_s) * 1000)
            wanted = [TopicPartition(topic, p, since_ms) for p in meta.partitions]
            starts = consumer.offsets_for_times(wanted, timeout=30)
            ends: dict[int, int] = {}
            parts = []
            for tp in starts:
                _, high = consumer.get_watermark_offsets(tp, timeout=30)
                start = tp.offset if tp.offset >= 0 else high
                if high > start:
                    ends[tp.partition] = high
                parts.append(TopicPartition(topic, tp.partition, start))
            consumer.assign(parts)
            if not ends:
                self._ready.set()
            next_expiry = time.monotonic() + 60
            while not self._stop.is_set():
                for msg in consumer.consume(num_messages=1000, timeout=0.2):
                    if msg.error():
                        continue
                    key = msg.key()
                    if key:
                        self.add(key.decode(), msg.timestamp()[1] / 1000)
                    partition, offset = msg.partition(), msg.offset()
                    if partition in ends and offset is not None and offset + 1 >= ends[partition]:
                        del ends[partition]
                        if not ends:
                            self._ready.set()
                if time.monotonic() > next_expiry:
                    next_expiry = time.monotonic() + 60
                    self._expire()
        except KafkaException as exc:
            log.warning("could not read alert ids from %s: %s", topic, exc)
        finally:
            self._ready.set()
            consumer.close()

    def _expire(self) -> None:
        oldest = time.time() - self.window_s
        with self._lock:
            for alert_id in [a for a, at in self._ids.items() if at < oldest]:
                del self._ids[alert_id]
