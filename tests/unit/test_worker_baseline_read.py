"""Issue 12's baseline row, the parts nothing else pinned: a failed baseline read is retried
until it is read (it was logged and the total counted from 0 forever), and on a cluster the
baseline and the lookups read the Distributed table. The rest of the row (waiting for the
sink's progress, then an exact total) is tests/integration/test_budget_truth_rows_real.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from streams.budgets import baseline as baseline_module
from streams.budgets import budget_from_spec, read_baseline
from streams.processors.stage1 import Lookup
from streams.processors.stage2 import BaselineRequest, Stage2Output
from streams.settings import Settings
from streams.worker import Worker
from streams.worker import sinkview as sinkview_module
from streams.worker.sinkview import SinkView
from streams.worker.worker import _PartitionSlot

T = 1_781_092_800_000  # 2026-06-10 12:00 UTC
BUDGET = budget_from_spec({"id": "m", "scope": {"org": "acme"}, "limit_usd": "10"}, T)
REQUEST = BaselineRequest(BUDGET, partition=1, split=40, start=T - 3_600_000, until=T)


class FlakyView:
    """The sink committed long ago; ClickHouse fails the first ``failures`` reads."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.reads = 0

    def committed(self, partition: int) -> int:
        return 1_000

    def baseline(self, request: BaselineRequest) -> list[tuple[int, int, int]]:
        self.reads += 1
        if self.reads <= self.failures:
            raise ConnectionError("ClickHouse away")
        return [(request.start, 7_000, 70)]


def test_a_failed_baseline_read_is_retried_until_it_is_read(monkeypatch: Any) -> None:
    worker = Worker(Settings.from_env({}, event_partitions=2))
    view = FlakyView(failures=2)
    worker.sink_view = view  # type: ignore[assignment]
    answered: list[tuple[BaselineRequest, list[tuple[int, int, int]]]] = []

    def set_baseline(request: BaselineRequest, rows: list[tuple[int, int, int]]) -> Stage2Output:
        answered.append((request, rows))
        return Stage2Output()

    processor = SimpleNamespace(set_baseline=set_baseline)
    slot = _PartitionSlot(0, processor)
    worker.stage2 = {0: slot}

    async def publish(*_args: Any, **_kwargs: Any) -> None:
        return None

    monkeypatch.setattr(worker, "_publish_stage2", publish)
    try:
        asyncio.run(asyncio.wait_for(worker._load_baseline(slot, REQUEST), 30))
    finally:
        worker._pool.shutdown(wait=False)
    assert view.reads == 3
    assert answered == [(REQUEST, [(REQUEST.start, 7_000, 70)])]


class Recorder:
    """A clickhouse-connect client that records the SQL it is given."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def query(self, sql: str, parameters: Any = None) -> Any:
        self.sql.append(sql)
        return SimpleNamespace(result_rows=[])

    def close(self) -> None:
        pass


def test_on_a_cluster_the_baseline_and_the_lookups_read_the_distributed_table(
    monkeypatch: Any,
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(baseline_module, "connect", lambda *_a, **_k: recorder)
    monkeypatch.setattr(sinkview_module, "connect", lambda *_a, **_k: recorder)
    for cluster, table in (
        (None, "`spend`.`token_events` "),
        ("main", "`spend`.`token_events_all` "),
    ):
        recorder.sql.clear()
        settings = Settings.from_env({}, clickhouse_database="spend", clickhouse_cluster=cluster)
        read_baseline(settings, BUDGET, T - 3_600_000, T, partition=1, before_offset=40)
        view = SinkView(settings)
        view.counted(1, [Lookup(1, 7, "00000000-0000-4000-8000-000000000001", T, "acme")])
        assert len(recorder.sql) == 2
        for sql in recorder.sql:
            assert f"FROM {table}" in sql, sql
