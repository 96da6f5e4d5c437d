"""The demo's two agents, each a thread with its own SDK producer and ledger file.

``RunawayAgent`` sends its looping session's turns on a clock; ``BlockedTeamAgent`` asks the
SDK's ``check()`` before each request and sends nothing while it is refused. Both record
every acknowledged event in a ledger (``streams.loadtest.LedgerProducer``) for the checker,
and stop when ``stop`` is set (Ctrl-C, or the end of the traffic), flushing what they sent.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

from streams import events
from streams.loadtest import LedgerProducer, LedgerWriter
from streams.pricing import default_catalog
from streams.sdk import Block
from streams.settings import Settings

#: librdkafka's lines of the agents' clients, through Python logging (into the demo's log)
kafka_log = logging.getLogger("streams.demo.librdkafka")
FLUSH_S = 30.0


class _Agent(threading.Thread):
    def __init__(self, name: str, settings: Settings, ledger: Path, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.settings = settings
        self.ledger_path = ledger
        self.stop = stop
        self.sent = 0
        self.spent = 0  # nano-USD, as the catalog prices what was sent
        self.error: BaseException | None = None
        self._catalog = default_catalog()

    def _producer(self, ledger: LedgerWriter) -> LedgerProducer:
        return LedgerProducer(self.settings, ledger, check_timeout=0, config={"logger": kafka_log})

    def _send(self, producer: LedgerProducer, planned: events.Event) -> int:
        event = dict(planned)
        event["event_time"] = events.now_ms()
        producer.send(event)
        producer.flush(0)  # serve delivery callbacks (the ledger) without waiting
        self.sent += 1
        cost = self._catalog.price(event).cost_nanos
        self.spent += cost
        return cost

    def run(self) -> None:
        try:
            with LedgerWriter(self.ledger_path) as ledger:
                producer = self._producer(ledger)
                try:
                    self.act(producer)
                finally:
                    producer.close(FLUSH_S)
        except BaseException as exc:  # reported by the run, never a thread traceback
            self.error = exc

    def act(self, producer: LedgerProducer) -> None:
        raise NotImplementedError


class RunawayAgent(_Agent):
    """An agentic session stuck in a loop: one turn every ``every_s``, context growing."""

    def __init__(
        self,
        settings: Settings,
        ledger: Path,
        stop: threading.Event,
        turns: list[events.Event],
        every_s: float,
    ) -> None:
        super().__init__("runaway-agent", settings, ledger, stop)
        self.turns = turns
        self.every_s = every_s
        self.context = 0  # tokens the last turn sent

    def act(self, producer: LedgerProducer) -> None:
        started = time.monotonic()
        for i, turn in enumerate(self.turns):
            if self.stop.wait(max(0.0, started + i * self.every_s - time.monotonic())):
                return
            self._send(producer, turn)
            self.context = sum(
                turn[f] for f in ("input_tokens", "cache_read_tokens", "cache_write_5m_tokens")
            )


@dataclasses.dataclass
class Refusal:
    """What ``check()`` answered the first time it refused the team."""

    block: Block
    at_ms: int


class BlockedTeamAgent(_Agent):
    """A team's agent under a block-mode budget: ``check()`` before each request."""

    def __init__(
        self,
        settings: Settings,
        ledger: Path,
        stop: threading.Event,
        requests: list[events.Event],
        every_s: float,
        limit: int,
    ) -> None:
        super().__init__("blocked-team-agent", settings, ledger, stop)
        self.requests = requests
        self.every_s = every_s
        self.limit = limit
        self.refused = 0
        self.first_refusal: Refusal | None = None
        self.crossed_at_ms: int | None = None  # when the request that reached the limit went
        self.overshoot = 0  # nano-USD sent after the crossing request, before the refusal
        self.watching = False

    def act(self, producer: LedgerProducer) -> None:
        producer.watch_enforcement(timeout=60)
        self.watching = True
        started = time.monotonic()
        first = self.requests[0]
        who = (first["org_id"], first["team_id"], first["user_id"])
        tick = 0
        pending = iter(self.requests)
        while not self.stop.wait(max(0.0, started + tick * self.every_s - time.monotonic())):
            tick += 1
            block = producer.check(*who, model=first["model"], client=first["client"])
            if block is not None:
                self.refused += 1
                if self.first_refusal is None:
                    self.first_refusal = Refusal(block, events.now_ms())
                continue
            planned = next(pending, None)
            if planned is None:
                producer.flush(0)
                continue
            cost = self._send(producer, planned)
            if self.crossed_at_ms is not None:
                self.overshoot += cost
            elif self.spent >= self.limit:
                self.crossed_at_ms = events.now_ms()
