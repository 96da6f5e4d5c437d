"""Pins the faust-streaming internals the fast path (streams/worker/fastpath.py) relies on.

If one of these fails after an upgrade, do not just bump the pin: re-read the named faust
function and check that a ConsumerMessage carrying a whole partition batch is still acked and
committed correctly (tests/integration/test_worker*.py prove it end to end).
"""

from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict
from typing import Any

import faust
import pytest
from faust.app import base as app_base
from faust.tables.base import Collection
from faust.transport import consumer as consumer_mod
from faust.transport.conductor import ConductorCompiler
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from intervaltree import IntervalTree

from streams.worker import fastpath as app_mod


def _explain(what: str) -> str:
    return (
        f"faust-streaming internals changed ({what}); streams/worker/fastpath.py relies on "
        f"them: see the docstring of tests/unit/test_faust_internals.py"
    )


def _source_has(function: Any, *needles: str) -> None:
    source = inspect.getsource(function)
    for needle in needles:
        assert needle in source, _explain(f"{function.__qualname__} no longer has {needle!r}")


def test_faust_version_is_the_pinned_one() -> None:
    assert faust.__version__ == app_mod.FAUST_VERSION, _explain(
        f"version {faust.__version__} != {app_mod.FAUST_VERSION}"
    )


def test_consumer_fetch_and_drain_hooks_exist() -> None:
    base = consumer_mod.Consumer
    for name in ("_wait_next_records", "_to_message", "_add_gap", "perform_seek", "getmany"):
        assert callable(getattr(base, name, None)), _explain(f"Consumer.{name} missing")
    params = list(inspect.signature(base._wait_next_records).parameters)
    assert params == ["self", "timeout"], _explain("Consumer._wait_next_records signature")
    assert aiokafka_driver.Transport.Consumer is aiokafka_driver.Consumer, _explain(
        "aiokafka Transport.Consumer"
    )
    assert "_new_transport" in vars(faust.App), _explain("App._new_transport")


def test_drain_loop_turns_offset_jumps_into_gaps() -> None:
    _source_has(
        consumer_mod.Consumer._drain_messages,
        "getmany(timeout=1.0)",
        "gap = offset - (r_offset or 0)",
        "await self._add_gap(tp, r_offset + 1, offset)",
        "callback(message)",
        "set_read_offset(tp, offset)",
    )


def test_conductor_decodes_through_the_channel() -> None:
    source = inspect.getsource(ConductorCompiler.build)
    assert "await chan.decode(message, propagate=True)" in source, _explain("conductor decode")
    assert "self.decode = self.schema.compile(" in inspect.getsource(faust.Topic._compile_decode)


def test_consumer_message_positional_fields() -> None:
    names = list(inspect.signature(ConsumerMessage.__init__).parameters)[1:13]
    assert names == [
        "topic",
        "partition",
        "offset",
        "timestamp",
        "timestamp_type",
        "headers",
        "key",
        "value",
        "checksum",
        "serialized_key_size",
        "serialized_value_size",
        "tp",
    ], _explain("ConsumerMessage signature")


def test_table_send_changelog_takes_an_explicit_partition() -> None:
    params = list(inspect.signature(Collection.send_changelog).parameters)
    assert params[:4] == ["self", "partition", "key", "value"], _explain("send_changelog")


class _FakeConsumer:
    """Just the bookkeeping attributes that Consumer._add_gap/_new_offset read and write."""

    def __init__(self, committed: int | None) -> None:
        self._acked: Any = defaultdict(list)
        self._acked_index: Any = defaultdict(set)
        self._gap: Any = defaultdict(IntervalTree)
        self._committed_offset: Any = defaultdict(lambda: None)
        tp = TP("t", 0)
        self._committed_offset[tp] = committed


@pytest.mark.parametrize("committed", [None, 0, 100])
def test_acking_the_last_offset_of_a_batch_commits_the_whole_batch(committed: int | None) -> None:
    """The semantics BatchConsumer depends on: for a batch first..last it registers the gap
    first..last-1; acking last alone makes last+1 committable, never more."""
    tp = TP("t", 0)
    fake = _FakeConsumer(committed)
    start = committed if committed is not None else 0
    batches = [(start, start + 499), (start + 500, start + 1200)]
    read = committed
    for first, last in batches:
        # what BatchConsumer.getmany registers (faust's drain loop skips it after offset 0)
        asyncio.run(consumer_mod.Consumer._add_gap(fake, tp, first, last - 1))  # type: ignore[arg-type]
        if read and last - read > 1:  # what faust's drain loop adds on its own
            asyncio.run(consumer_mod.Consumer._add_gap(fake, tp, read + 1, last))  # type: ignore[arg-type]
        read = last
        fake._acked[tp].append(last)
        fake._acked_index[tp].add(last)
        # faust's gap includes the acked offset itself, so a duplicate can hold the commit
        # back by one call (never ahead): the commit timer catches up on its next tick
        offered = [consumer_mod.Consumer._new_offset(fake, tp) for _ in range(3)]  # type: ignore[arg-type]
        best = max(o for o in offered if o is not None)
        assert best == last + 1, _explain(f"batch {first}..{last} commits {offered}")
        fake._committed_offset[tp] = best


def test_seek_to_committed_leaves_partitions_without_commit_where_they_are() -> None:
    """Why BatchConsumer.seek_to_committed also seeks partitions with nothing committed."""
    import aiokafka

    source = inspect.getsource(aiokafka.AIOKafkaConsumer.seek_to_committed)
    assert "if offset and offset > 0:" in source, _explain("aiokafka seek_to_committed")
    assert "await self.seek_to_committed()" in inspect.getsource(consumer_mod.Consumer.perform_seek)
    delegate = consumer_mod.ThreadDelegateConsumer
    for name in ("seek_to_committed", "earliest_offsets", "_seek"):
        assert name in vars(delegate), _explain(f"ThreadDelegateConsumer.{name}")


def test_batch_partitions_without_commit_are_sought_to_their_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events, partials, other = TP("ev", 0), TP("ev", 1), TP("changelog", 0)
    committed = {events: None, partials: 7, other: None, TP("ev", 2): 0}
    sought: list[tuple[TP, int]] = []

    async def fake_committed(self: Any) -> dict[TP, Any]:
        return committed

    async def fake_earliest(self: Any, *tps: TP) -> dict[TP, int]:
        return {tp: 3 for tp in tps}

    async def fake_seek(self: Any, tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    delegate = consumer_mod.ThreadDelegateConsumer
    monkeypatch.setattr(delegate, "seek_to_committed", fake_committed)
    monkeypatch.setattr(delegate, "earliest_offsets", fake_earliest)
    monkeypatch.setattr(delegate, "_seek", fake_seek)
    consumer = object.__new__(app_mod.BatchConsumer)

    class FakeApp:
        batch_topics = {"ev"}

    consumer.app = FakeApp()  # type: ignore[assignment]
    result = asyncio.run(consumer.seek_to_committed())
    assert result == committed
    assert sorted(sought) == [(TP("ev", 0), 3), (TP("ev", 2), 3)]


def test_batch_topic_buffers_survive_flow_resume() -> None:
    """faust empties channel buffers on every flow resume; the batch topics' must keep theirs."""
    assert "clear_on_resume=True" in inspect.getsource(faust.Channel.queue.fget), _explain(
        "Channel.queue"
    )

    async def scenario() -> None:
        app = faust.App("pin-batch-queue", store="memory://")
        topic = app_mod.BatchTopic(app, topics=["events"])
        clone = topic.clone(is_iterator=True)
        assert isinstance(clone, app_mod.BatchTopic)
        plain = faust.Topic(app, topics=["other"]).clone(is_iterator=True)
        clone.queue.put_nowait("batch")
        plain.queue.put_nowait("message")
        app.flow_control.suspend()
        app.flow_control.resume()
        assert clone.queue.qsize() == 1
        assert plain.queue.qsize() == 0, _explain("flow_control.resume no longer clears")

    asyncio.run(scenario())


def test_fetch_wait_is_shortened_where_aiokafka_reads_it() -> None:
    """BatchConsumerThread sets aiokafka's private _fetch_max_wait_ms before start()."""
    import aiokafka

    create = inspect.getsource(aiokafka_driver.AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms=1500" in create, _explain("faust's fetch wait")
    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start, _explain("aiokafka fetch wait")
    thread = inspect.getsource(aiokafka_driver.Consumer._new_consumer_thread)
    assert "AIOKafkaConsumerThread(self, loop=self.loop, beacon=self.beacon)" in thread

    async def build() -> Any:
        return aiokafka.AIOKafkaConsumer(fetch_max_wait_ms=1500)

    consumer = asyncio.run(build())
    assert consumer._fetch_max_wait_ms == 1500, _explain("AIOKafkaConsumer._fetch_max_wait_ms")


def _oracle(fake: _FakeConsumer, tp: TP) -> int | None:
    """What is committable: the consecutive run, from the committed offset, of the acked
    offsets and the gaps below the highest acked one, each offset once."""
    acked = list(fake._acked[tp])
    if not acked:
        return None
    for entry in fake._gap[tp].overlap(0, max(acked)):
        acked.extend(range(entry.begin, entry.end))
    committed = fake._committed_offset[tp]
    values = sorted({v for v in acked if not committed or v >= committed})
    if not values or (committed and values[0] - committed > 1):
        return None
    last = values[0]
    for v in values[1:]:
        if v != last + 1:
            break
        last = v
    return last + 1


def test_new_offset_override_commits_the_whole_run_never_behind_fausts() -> None:
    """BatchConsumer._new_offset against faust's own and against the oracle, on random acks,
    gaps, duplicates and committed offsets: what the oracle says (faust's when there are no
    duplicates, more when a duplicate ends faust's run early), never less than faust's."""
    import copy
    import random

    _source_has(
        consumer_mod.Consumer._new_offset,
        "candidates = gap_for_tp.overlap(0, max_offset)",
        "stuff_to_add.extend(range(entry.begin, entry.end))",
        "new_max_offset = max(stuff_to_add[-1], max_offset + 1)",
        "gap_for_tp.chop(0, new_max_offset)",
        "if min(acked) - committed_offset > 1:",
        "batch = next(consecutive_numbers(acked))",
        "self._acked_index[tp].difference_update(batch)",
        "return batch[-1] + 1",
    )
    rng = random.Random(7)
    tp = TP("t", 0)
    for case in range(400):
        committed = rng.choice([None, 0, 5, 40])
        theirs, ours = _FakeConsumer(committed), _FakeConsumer(committed)
        start = (committed or 0) + rng.choice([0, 1, 1, 1, 3])
        offset = start
        for _ in range(rng.randint(1, 6)):
            size = rng.randint(1, 30)
            last = offset + size - 1
            acks = [last]
            if size > 1 and rng.random() < 0.2:  # acked out of order, the last not yet
                acks = rng.sample(range(offset, last + 1), 2)
            gap = size > 1 and rng.random() < 0.9
            for fake in (theirs, ours):
                if gap:
                    fake._gap[tp].addi(offset, last)
                    fake._gap[tp].merge_overlaps()
                for a in acks + ([last] if case % 5 == 0 else []):  # some duplicates
                    fake._acked[tp].append(a)
                    fake._acked_index[tp].add(a)
            offset = last + 1 + rng.choice([0, 0, 0, 2])
        for _ in range(3):
            want = _oracle(copy.deepcopy(ours), tp)
            expected = consumer_mod.Consumer._new_offset(theirs, tp)  # type: ignore[arg-type]
            got = app_mod.BatchConsumer._new_offset(ours, tp)  # type: ignore[arg-type]
            assert got == want, f"case {case}"
            if expected is not None and got is not None:
                assert got >= expected, f"case {case}"
            if got is not None:
                ours._committed_offset[tp] = max(got, ours._committed_offset[tp] or 0)
                assert all(o >= got for o in ours._acked[tp]), f"case {case}"
                assert all(o >= got for o in ours._acked_index[tp]), f"case {case}"
            if expected is not None:
                theirs._committed_offset[tp] = max(expected, theirs._committed_offset[tp] or 0)


def test_small_batches_commit_in_one_tick_not_one_batch_per_tick() -> None:
    """The commit crawl the fault runs found: at 200 events/s a batch holds 1-4 records, and
    with faust's own gap (up to and including each batch's last offset, which is acked too)
    faust's _new_offset committed one batch per commit tick, so the committed offsets fell
    minutes behind. One tick must commit every acked batch."""
    import random

    rng = random.Random(3)
    tp = TP("t", 0)
    fake = _FakeConsumer(100)
    first, read = 100, 99
    for _ in range(200):
        last = first + rng.randint(0, 3)
        if last > first:  # what BatchConsumer.getmany registers
            asyncio.run(consumer_mod.Consumer._add_gap(fake, tp, first, last - 1))  # type: ignore[arg-type]
        if last - read > 1:  # what faust's drain loop adds on its own
            asyncio.run(consumer_mod.Consumer._add_gap(fake, tp, read + 1, last))  # type: ignore[arg-type]
        fake._acked[tp].append(last)
        fake._acked_index[tp].add(last)
        read, first = last, last + 1
    assert app_mod.BatchConsumer._new_offset(fake, tp) == read + 1  # type: ignore[arg-type]
    assert not fake._acked[tp] and not fake._acked_index[tp]
    # faust's own needs a tick per batch (the crawl): pinned, so that a fix upstream is seen
    fake = _FakeConsumer(100)
    first, read = 100, 99
    for _ in range(50):
        last = first + 2
        asyncio.run(consumer_mod.Consumer._add_gap(fake, tp, first, last - 1))  # type: ignore[arg-type]
        asyncio.run(consumer_mod.Consumer._add_gap(fake, tp, read + 1, last))  # type: ignore[arg-type]
        fake._acked[tp].append(last)
        fake._acked_index[tp].add(last)
        read, first = last, last + 1
    assert consumer_mod.Consumer._new_offset(fake, tp) < read + 1  # type: ignore[arg-type]


def test_stop_waits_for_every_ack_through_the_paths_spendapp_overrides() -> None:
    """SpendApp._stop_consumer / BatchConsumer.wait_empty skip faust's wait for unacked
    messages on stop (a SIGTERMed worker hung: its batches are acked only at checkpoints)."""
    _source_has(app_base.App._stop_consumer, "await self._consumer_wait_empty(consumer, self.log)")
    _source_has(app_base.App._consumer_wait_empty, "await consumer.wait_empty()")
    _source_has(consumer_mod.Consumer.on_stop, "await self.wait_empty()")
    assert "_stop_consumer" in vars(app_mod.SpendApp)
    assert "wait_empty" in vars(app_mod.BatchConsumer)
