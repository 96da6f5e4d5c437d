"""/healthz turns unhealthy when a partition with records to read makes no progress, when the
event loop stops beating, or when sends wait for acknowledgement (issue 13's stall)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.settings import Settings
from streams.worker import Worker
from streams.worker.health import HealthMonitor, Progress, Sample, judge
from streams.worker.worker import CHECKPOINT_MAX_S, CHECKPOINT_SHARE, _PartitionSlot

A, B = ("events", 0), ("events", 1)


def test_lag_without_progress_for_the_stall_time_is_unhealthy() -> None:
    progress: dict[tuple[str, int], Progress] = {}
    ends = {A: 100, B: 50}
    assert judge(0.0, 30, Sample({A: 99, B: 9}, 0.0), ends, progress) == (True, [])
    # B does not move for 20 s: not yet; for 31 s: stalled. A is caught up all along.
    assert judge(20.0, 30, Sample({A: 99, B: 9}, 20.0), ends, progress)[0] is True
    ok, reasons = judge(31.0, 30, Sample({A: 99, B: 9}, 31.0), ends, progress)
    assert not ok and reasons == ["events[1]: lag 40, no progress for 31s"]
    # B moves: healthy again, and its clock restarts
    assert judge(32.0, 30, Sample({A: 99, B: 10}, 32.0), ends, progress)[0] is True
    assert judge(61.0, 30, Sample({A: 99, B: 10}, 61.0), ends, progress)[0] is True
    assert judge(63.0, 30, Sample({A: 99, B: 10}, 63.0), ends, progress)[0] is False


def test_an_idle_partition_that_gets_records_is_not_stalled_at_once() -> None:
    progress: dict[tuple[str, int], Progress] = {}
    judge(0.0, 30, Sample({A: 99}, 0.0), {A: 100}, progress)
    # an hour idle (caught up), then a record arrives: its clock starts at the last check
    judge(3600.0, 30, Sample({A: 99}, 3600.0), {A: 100}, progress)
    assert judge(3601.0, 30, Sample({A: 99}, 3601.0), {A: 101}, progress)[0] is True


def test_a_loop_that_stops_beating_or_reports_problems_is_unhealthy() -> None:
    progress: dict[tuple[str, int], Progress] = {}
    ok, reasons = judge(100.0, 30, Sample({}, 60.0), {}, progress)
    assert not ok and reasons == ["event loop: no health beat for 40s"]
    ok, reasons = judge(100.0, 30, Sample({}, 100.0, ("stage1[0]: 3 sends ...",)), {}, progress)
    assert not ok and reasons == ["stage1[0]: 3 sends ..."]


def test_revoked_partitions_are_forgotten() -> None:
    progress: dict[tuple[str, int], Progress] = {}
    judge(0.0, 30, Sample({A: 1, B: 1}, 0.0), {A: 5, B: 5}, progress)
    judge(1.0, 30, Sample({A: 1}, 1.0), {A: 5, B: 5}, progress)
    assert set(progress) == {A}


def test_the_monitor_judges_against_the_brokers_ends_and_ages_out() -> None:
    sample = Sample({A: 9}, time.monotonic())
    asked: list[list[tuple[str, int]]] = []

    def ends(keys: Any) -> dict[tuple[str, int], int]:
        asked.append(sorted(keys))
        return {A: 50}

    monitor = HealthMonitor(30, lambda: sample, ends)
    assert monitor.check()[0] is True and asked == [[A]]
    monitor.progress[A] = Progress(9, time.monotonic() - 31)  # 31 s without moving
    ok, details = monitor.check()
    assert not ok and details["stalled"][0].startswith("events[0]: lag 40, no progress for 3")

    def broken(keys: Any) -> dict[tuple[str, int], int]:
        raise RuntimeError("broker away")

    monitor = HealthMonitor(30, lambda: sample, broken)
    assert monitor.check()[0] is True  # nothing known to lag behind
    monitor._thread = SimpleNamespace()  # type: ignore[assignment]  # "running"
    monitor._judged_at = time.monotonic() - 60
    ok, details = monitor.verdict()
    assert not ok and "health monitor idle" in details["stalled"][-1]


def _worker(stall_s: float) -> Worker:
    return Worker(Settings.from_env({}, worker_stall_s=stall_s, event_partitions=2))


class Consumer:
    def __init__(self, high: dict[TP, int]) -> None:
        self.high = high

    def highwater(self, tp: TP) -> int | None:
        return self.high.get(tp)


def test_the_worker_records_applied_offsets_lag_and_unacknowledged_sends(monkeypatch: Any) -> None:
    worker = _worker(stall_s=30)
    events = worker.settings.topic_events
    tps = [TP(events, 0), TP(events, 1)]
    monkeypatch.setattr(worker, "_assigned", lambda topic: tps if topic == events else [])
    fresh = _PartitionSlot(0, SimpleNamespace(applied=99))
    stuck = _PartitionSlot(1, SimpleNamespace(applied=9))
    worker.stage1 = {0: fresh, 1: stuck}
    worker._check_health(Consumer({tps[0]: 100, tps[1]: 50}))
    assert worker.health() == (True, {"stalled": []})
    assert worker._health_sample.applied == {(events, 0): 99, (events, 1): 9}
    # partition 1 has not moved for 31 s (aiokafka's high-water mark says it has records)
    worker._loop_progress[(events, 1)] = Progress(9, time.monotonic() - 31)
    worker._check_health(Consumer({tps[0]: 100, tps[1]: 50}))
    ok, details = worker.health()
    assert not ok and details["stalled"][0].startswith(f"{events}[1]: lag 40, no progress")
    # caught up: no lag, however long it has been idle
    worker._check_health(Consumer({tps[0]: 100, tps[1]: 10}))
    assert worker.health()[0] is True

    # an alert handed to the producer 31 s ago and still not acknowledged (the stall's send)
    loop = asyncio.new_event_loop()
    try:
        fresh.track(loop.create_future(), time.monotonic() - 31)
        worker._check_health(Consumer({tps[0]: 100, tps[1]: 10}))
        ok, details = worker.health()
        assert not ok
        assert details["stalled"][0].startswith("stage1[0]: 1 sends not acknowledged for 3")
        assert worker._health_sample.problems == tuple(details["stalled"])
        fresh.sends[0].set_result(None)
        worker._check_health(Consumer({tps[0]: 100, tps[1]: 10}))
        assert worker.health()[0] is True and fresh.oldest_send_at == 0.0
    finally:
        loop.close()


def test_a_slow_checkpoint_spaces_the_next_ones_out() -> None:
    from streams.worker.worker import CHECKPOINT_MAX_S, checkpoint_wait

    assert checkpoint_wait(0.001, 12, 1.0) == 1.0  # small state: every flush interval
    assert checkpoint_wait(0.1, 12, 1.0) == pytest.approx(12.0)  # 12 x 0.1 s = 10% of 12 s
    assert checkpoint_wait(5.0, 12, 1.0) == CHECKPOINT_MAX_S


def test_a_slot_waits_for_its_next_checkpoint_time(monkeypatch: Any) -> None:
    import asyncio

    worker = _worker(stall_s=30)
    written: list[int] = []
    monkeypatch.setattr(worker, "_checkpoint1", lambda slot: written.append(slot.partition))
    due, later = _PartitionSlot(0, None), _PartitionSlot(1, None)
    due.held, later.held = [object()], [object()]
    later.next_checkpoint_at = time.monotonic() + 60
    worker.stage1 = {0: due, 1: later}
    asyncio.run(worker.checkpoint_all())
    assert written == [0]
    assert due.next_checkpoint_at == 0.0  # a cheap one: the next timer tick checkpoints it

    def slow(slot: _PartitionSlot) -> None:
        time.sleep(0.2)
        written.append(slot.partition)

    monkeypatch.setattr(worker, "_checkpoint1", slow)
    due.held = [object()]
    began = time.monotonic()
    asyncio.run(worker.checkpoint_all())
    took = time.monotonic() - began  # >= the checkpoint's 0.2 s (more on a loaded machine)
    assert written == [0, 0]
    # c x 2 slots / CHECKPOINT_SHARE from the checkpoint's start, c its cost: 0.2 s <= c <=
    # took (a fixed 4.0 s upper bound failed when the sleep overran at load 8)
    wait = due.next_checkpoint_at - began
    assert (
        0.2 * 2 / CHECKPOINT_SHARE
        <= wait
        <= took + min(CHECKPOINT_MAX_S, took * 2 / CHECKPOINT_SHARE)
    )


def test_sends_acknowledged_in_turn_never_look_stuck() -> None:
    """Under steady traffic some send is always in flight: the age that counts is the oldest
    send still waiting, not the first of an unbroken run (which made /healthz fail falsely)."""
    slot = _PartitionSlot(0, SimpleNamespace(applied=0))
    loop = asyncio.new_event_loop()
    try:
        older, newer = loop.create_future(), loop.create_future()
        slot.track(older, 100.0)
        slot.track(newer, 130.0)
        slot.settled()
        assert slot.oldest_send_at == 100.0
        older.set_result(None)
        assert not slot.settled() and slot.oldest_send_at == 130.0
        newest = loop.create_future()
        slot.track(newest, 160.0)
        newer.set_result(None)
        assert not slot.settled() and slot.oldest_send_at == 160.0
        newest.set_result(None)
        assert slot.settled() is True and slot.oldest_send_at == 0.0
    finally:
        loop.close()
