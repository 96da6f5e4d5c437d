"""The worker tells a restarted stage 2 when it has replayed its partials partition (to the
end offset it first saw): only then does stage 2 rewrite its predecessor's enforcement
records (streams/processors/stage2.py, ``BudgetTotals.caught_up``; docs/budget-truth.md,
Restarts). Earlier, a tombstone would lift a block the replay is about to re-derive."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.budgets import StaticBudgets
from streams.processors.stage2 import BudgetTotals
from streams.settings import Settings
from streams.worker import Worker
from streams.worker.config import partials_topic
from streams.worker.worker import _PartitionSlot


class Consumer:
    def __init__(self, high: dict[TP, int]) -> None:
        self.high = high

    def highwater(self, tp: TP) -> int | None:
        return self.high.get(tp)


def test_stage_2_is_caught_up_once_it_read_to_the_end_it_first_saw(monkeypatch: Any) -> None:
    worker = Worker(Settings.from_env({}, event_partitions=2), budgets=StaticBudgets([]))
    totals = BudgetTotals(StaticBudgets([]))
    slot = _PartitionSlot(0, totals)
    worker.stage2 = {0: slot}
    tp = TP(partials_topic(worker.settings), 0)
    consumer = Consumer({})
    monkeypatch.setattr(worker, "app", SimpleNamespace(consumer=consumer, producer=None))

    def tick() -> bool:
        asyncio.run(worker.tick_all())
        return totals.replayed

    assert not tick()  # no end known yet (nothing fetched)
    consumer.high[tp] = 10
    totals.applied = 4
    assert not tick()  # offsets 5..9 not replayed
    consumer.high[tp] = 30  # new partials keep coming: the end it first saw counts
    totals.applied = 9
    assert tick()
