"""Budgets on the compacted ``spendstream.budgets`` topic: the live view every worker reads.

The topic is the source of truth (key: budget_id, value: Avro Budget, tombstone: deleted);
every worker and CLI call reads it to the end, so there is no other database to keep in sync.
"""

from __future__ import annotations

import logging
import threading

from streams.budgets.model import Budget, BudgetError, BudgetMatcher
from streams.errors import DecodeError
from streams.sdk import CompactedView
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics

log = logging.getLogger(__name__)


class BudgetView:
    """The current budgets, decoded, with a matcher rebuilt only when budgets change."""

    def __init__(self, settings: Settings) -> None:
        self.codec = AvroCodec("budget")
        self._budgets: dict[str, Budget] = {}
        self._matcher = BudgetMatcher(())
        self._lock = threading.Lock()
        self.view = CompactedView(settings, settings.topic_budgets, self._on_change)

    def _on_change(self, key: str, value: bytes | None) -> None:
        with self._lock:
            if value is None:
                self._budgets.pop(key, None)
            else:
                try:
                    self._budgets[key] = Budget.from_record(self.codec.decode(value))
                except (DecodeError, BudgetError, TypeError) as exc:
                    log.error("ignoring unreadable budget %r: %s", key, exc)
                    return
            self._matcher = BudgetMatcher(self._budgets.values())

    def start(self, timeout: float = 30.0) -> BudgetView:
        self.view.start().wait_ready(timeout)
        return self

    def stop(self) -> None:
        self.view.stop()

    @property
    def matcher(self) -> BudgetMatcher:
        return self._matcher

    def get(self, budget_id: str) -> Budget | None:
        return self._budgets.get(budget_id)

    def all(self) -> list[Budget]:
        return sorted(self._budgets.values(), key=lambda b: b.budget_id)


class StaticBudgets:
    """A fixed set of budgets with the BudgetView interface (tests, benchmarks)."""

    def __init__(self, budgets: list[Budget]) -> None:
        self._budgets = {b.budget_id: b for b in budgets}
        self.matcher = BudgetMatcher(budgets)

    def get(self, budget_id: str) -> Budget | None:
        return self._budgets.get(budget_id)

    def all(self) -> list[Budget]:
        return sorted(self._budgets.values(), key=lambda b: b.budget_id)


def budget_topics(settings: Settings) -> list[TopicSpec]:
    compacted = {"cleanup.policy": "compact"}
    return [
        TopicSpec(settings.topic_budgets, 1, compacted),
        TopicSpec(settings.topic_enforcement, 1, compacted),
    ]


def read_budgets(settings: Settings, timeout: float = 30.0) -> list[Budget]:
    ensure_topics(settings, budget_topics(settings))
    view = BudgetView(settings)
    try:
        view.start(timeout)
        return view.all()
    finally:
        view.stop()
