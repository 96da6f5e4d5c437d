"""The worker's liveness rule, judged from outside the event loop.

``/healthz`` must fail when the worker makes no progress while it has records to read,
whatever is stuck: an agent, the event loop, aiokafka's consumer or producer (issue 13's
stall: the producer waited 10+ minutes for a leader while the old probe, judged on the loop
from aiokafka's own high-water marks, stayed green). So the rule is judged in a thread from
three observations: the broker's end offsets (asked with an independent librdkafka client),
the offsets the worker's stages applied, and the event loop's heartbeat; plus the loop's own
findings (sends not acknowledged, checkpoints waiting). ``judge`` is the pure rule.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

#: (topic, partition)
Key = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Sample:
    """What the loop last recorded, read by the monitor thread."""

    applied: Mapping[Key, int]  # every owned partition -> last offset its stage applied (-1)
    beat_at: float  # monotonic time the loop last ran its health timer
    problems: tuple[str, ...] = ()  # the loop's own findings


@dataclasses.dataclass
class Progress:
    applied: int
    since: float  # when ``applied`` last moved (or the partition was caught up / assigned)


def judge(
    now: float,
    stall_s: float,
    sample: Sample,
    ends: Mapping[Key, int],
    progress: dict[Key, Progress],
) -> tuple[bool, list[str]]:
    """Unhealthy when an owned partition has records past what its stage applied
    (``ends``: the broker's end offsets) and its applied offset did not move for ``stall_s``;
    or the loop did not beat for ``stall_s``; or the loop found problems. Updates
    ``progress`` (the caller keeps it between calls)."""
    reasons = list(sample.problems)
    if now - sample.beat_at > stall_s:
        reasons.append(f"event loop: no health beat for {now - sample.beat_at:.0f}s")
    for key in list(progress):
        if key not in sample.applied:
            del progress[key]  # revoked
    for key, applied in sorted(sample.applied.items()):
        seen = progress.get(key)
        end = ends.get(key)
        lag = max(0, end - applied - 1) if end is not None else 0
        if seen is None or seen.applied != applied or not lag:
            progress[key] = Progress(applied, now)
            continue
        if now - seen.since > stall_s:
            topic, partition = key
            reasons.append(
                f"{topic}[{partition}]: lag {lag}, no progress for {now - seen.since:.0f}s"
            )
    return not reasons, reasons


class HealthMonitor:
    """Judges ``judge`` every ``interval`` seconds in a daemon thread; ``verdict()`` for
    ``/healthz``. ``sample`` is read from the loop's records (plain attribute reads);
    ``end_offsets(keys)`` asks the broker."""

    def __init__(
        self,
        stall_s: float,
        sample: Callable[[], Sample],
        end_offsets: Callable[[Iterable[Key]], Mapping[Key, int]],
        interval: float | None = None,
    ) -> None:
        self.stall_s = stall_s
        self.sample = sample
        self.end_offsets = end_offsets
        self.interval = interval or max(0.5, min(5.0, stall_s / 4))
        self.progress: dict[Key, Progress] = {}
        self.ends: dict[Key, int] = {}
        self._verdict: tuple[bool, dict[str, Any]] = (True, {"stalled": []})
        self._judged_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> tuple[bool, dict[str, Any]]:
        """One judgement (the thread's body; tests call it directly)."""
        sample = self.sample()
        try:
            self.ends.update(self.end_offsets(sample.applied))
        except Exception as exc:  # the broker away: judge with the ends known before
            log.warning("health: end offsets not read: %s", exc)
        now = time.monotonic()
        ok, reasons = judge(now, self.stall_s, sample, self.ends, self.progress)
        self._verdict = (ok, {"stalled": reasons})
        self._judged_at = now
        if not ok:
            log.error("worker makes no progress: %s", "; ".join(reasons))
        return self._verdict

    def verdict(self) -> tuple[bool, dict[str, Any]]:
        ok, details = self._verdict
        age = time.monotonic() - self._judged_at
        if self._thread is not None and age > self.stall_s + 4 * self.interval:
            return False, {"stalled": [*details["stalled"], f"health monitor idle {age:.0f}s"]}
        return ok, details

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # never let the monitor die silently: verdict() ages out
                log.exception("health check failed")


def broker_end_offsets(config: Mapping[str, Any]) -> Callable[[Iterable[Key]], dict[Key, int]]:
    """``end_offsets`` through a librdkafka consumer of its own (no group, nothing committed)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer: Any = None

    def ends(keys: Iterable[Key]) -> dict[Key, int]:
        nonlocal consumer
        if consumer is None:
            consumer = Consumer(
                {**config, "group.id": "spendstream-health", "enable.auto.commit": False}
            )
        out = {}
        for topic, partition in keys:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=5, cached=False
            )
            out[(topic, partition)] = int(high)
        return out

    return ends
