"""Pins the aiokafka internals streams/worker/fetch.py relies on; its records equal aiokafka's.

If one of these fails after an upgrade, do not just bump the pin: re-read aiokafka's
``PartitionRecords._unpack_records`` and ``FetchResult.getall`` and check that ``drain`` still
returns the same records and moves the fetch position the same way.
"""

from __future__ import annotations

import inspect
import struct
import time
from typing import Any

import aiokafka
import pytest
from aiokafka.consumer import fetcher as fetcher_mod
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from streams.worker import fetch


def _explain(what: str) -> str:
    return f"aiokafka internals changed ({what}); see tests/unit/test_aiokafka_internals.py"


def test_aiokafka_version_is_the_pinned_one() -> None:
    assert aiokafka.__version__ == fetch.AIOKAFKA_VERSION, _explain(aiokafka.__version__)


def test_fetcher_builds_the_classes_by_module_name() -> None:
    source = inspect.getsource(fetcher_mod.Fetcher)
    assert "partition_records = PartitionRecords(" in source, _explain("Fetcher")
    assert "self._records[tp] = FetchResult(" in source, _explain("Fetcher")
    assert "res_or_error.getall(max_records)" in source, _explain("Fetcher.fetched_records")
    params = list(inspect.signature(fetcher_mod.PartitionRecords.__init__).parameters)
    assert params[1:] == [
        "tp",
        "records",
        "aborted_transactions",
        "fetch_offset",
        "key_deserializer",
        "value_deserializer",
        "check_crcs",
        "isolation_level",
    ], _explain("PartitionRecords.__init__")


def test_aiokafka_paths_that_drain_mirrors() -> None:
    unpack = inspect.getsource(fetcher_mod.PartitionRecords._unpack_records)
    for needle in (
        "if record.offset < self.next_fetch_offset:",
        "if next_batch.is_control_batch:",
        "self.next_fetch_offset = next_batch.next_offset",
        "not next_batch.validate_crc()",
    ):
        assert needle in unpack, _explain(f"_unpack_records lost {needle!r}")
    getall = inspect.getsource(fetcher_mod.FetchResult.getall)
    for needle in (
        "if not self.check_assignment(tp) or not self.has_more():",
        "self._update_position()",
        "self._partition_records = None",
    ):
        assert needle in getall, _explain(f"FetchResult.getall lost {needle!r}")


def _batches(spans: list[tuple[int, int]]) -> bytes:
    """Record batches with base offsets and counts as given, like a broker's fetch response."""
    out = bytearray()
    for base, count in spans:
        builder = DefaultRecordBatchBuilder(
            magic=2,
            compression_type=0,
            is_transactional=0,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=-1,
            batch_size=1 << 20,
        )
        for delta in range(count):
            offset = base + delta
            builder.append(
                delta,
                timestamp=1_000 + offset,
                key=b"k%d" % offset,
                value=b"v" * offset,
                headers=[],
            )
        built = bytearray(builder.build())
        struct.pack_into(">q", built, 0, base)  # the base offset, as the broker writes it
        out += built
    return bytes(out)


def _records(raw: bytes, fetch_offset: int, cls: type = fetcher_mod.PartitionRecords) -> Any:
    tp = TopicPartition("events", 0)
    return cls(tp, MemoryRecords(raw), None, fetch_offset, None, None, True, 0)


@pytest.mark.parametrize("fetch_offset", [0, 3, 6])
def test_drain_equals_aiokafka_iteration(fetch_offset: int) -> None:
    """A fetch returns whole batches from the one holding the fetch offset."""
    raw = _batches([(0, 7), (7, 5), (12, 9)])
    theirs = _records(raw, fetch_offset)
    expected = [(r.offset, r.key, r.value, r.timestamp) for r in theirs]
    fetch.install({"events"})
    ours = _records(raw, fetch_offset, fetch.BatchTopicRecords)
    assert ours.fast()
    got = [(r.offset, r.key, r.value, r.timestamp) for r in ours.drain()]
    assert got == expected
    assert got[0][0] == fetch_offset
    assert ours.next_fetch_offset == theirs.next_fetch_offset == 21


class _State:
    paused = False

    def __init__(self, position: int) -> None:
        self.position = position

    def consumed_to(self, position: int) -> None:
        self.position = position


class _Assignment:
    """What FetchResult reads of aiokafka's Assignment."""

    active = True

    def __init__(self, position: int) -> None:
        self.state = _State(position)

    def state_value(self, tp: TopicPartition) -> _State:
        return self.state


def test_getall_drains_batch_topics_and_leaves_others_to_aiokafka() -> None:
    raw = _batches([(0, 4), (4, 4)])
    fetch.install({"events"})
    for topic, fast in (("events", True), ("changelog", False)):
        tp = TopicPartition(topic, 0)
        records = fetch.BatchTopicRecords(tp, MemoryRecords(raw), None, 2, None, None, True, 0)
        assignment = _Assignment(2)
        result = fetch.BatchTopicFetchResult(
            tp, assignment=assignment, partition_records=records, backoff=0
        )
        got = result.getall()
        assert [r.offset for r in got] == [2, 3, 4, 5, 6, 7]
        assert isinstance(got[0], aiokafka.structs.ConsumerRecord) is not fast
        assert assignment.state.position == 8
        assert not result.has_more()


def test_a_drained_batch_says_when_it_was_received_and_handed_over() -> None:
    """The worker's fetch hops (streams/worker/metrics.py) read these two stamps."""
    fetch.install({"events"})
    tp = TopicPartition("events", 0)
    records = fetch.BatchTopicRecords(
        tp, MemoryRecords(_batches([(0, 3)])), None, 0, None, None, True, 0
    )
    result = fetch.BatchTopicFetchResult(
        tp, assignment=_Assignment(0), partition_records=records, backoff=0
    )
    result._created -= 0.5  # the response was parsed half a second ago
    before = time.time()
    got = result.getall()
    assert isinstance(got, fetch.FetchedBatch)
    assert [r.offset for r in got] == [0, 1, 2]
    assert before <= got.taken <= time.time()
    assert 0.45 <= got.taken - got.received <= 0.6


def test_getall_with_a_record_limit_is_aiokafkas() -> None:
    fetch.install({"events"})
    tp = TopicPartition("events", 0)
    records = fetch.BatchTopicRecords(
        tp, MemoryRecords(_batches([(0, 6)])), None, 0, None, None, True, 0
    )
    assignment = _Assignment(0)
    result = fetch.BatchTopicFetchResult(
        tp, assignment=assignment, partition_records=records, backoff=0
    )
    assert [r.offset for r in result.getall(4)] == [0, 1, 2, 3]
    assert assignment.state.position == 4
    assert [r.offset for r in result.getall(4)] == [4, 5]


def test_install_replaces_the_fetcher_module_classes() -> None:
    fetch.install(set())
    assert fetcher_mod.PartitionRecords is fetch.BatchTopicRecords
    assert fetcher_mod.FetchResult is fetch.BatchTopicFetchResult


# ---------------------------------------------------------------------------- producer metadata
# streams.worker.fastpath.track_topic works around how aiokafka's client keeps metadata (the
# worker's stall of issue 13, reproduced on the real broker in
# tests/integration/test_producer_metadata.py). If one of these fails, re-read
# AIOKafkaClient._wait_on_metadata / _metadata_update and ClusterMetadata.update_metadata: the
# workaround may be unneeded (aiokafka tracks every topic it sends to) or wrong.


def test_wait_on_metadata_does_not_track_a_topic_it_already_knows() -> None:
    from aiokafka.client import AIOKafkaClient

    source = inspect.getsource(AIOKafkaClient._wait_on_metadata)
    early = source.find("if partitions is not None:\n            return partitions")
    tracked = source.find("self.add_topic(topic)")
    assert 0 <= early < tracked, _explain("_wait_on_metadata returns before add_topic")


def test_metadata_updates_ask_for_the_tracked_topics_only() -> None:
    from aiokafka.client import AIOKafkaClient

    sync = inspect.getsource(AIOKafkaClient._md_synchronizer)
    assert "topics = self._topics" in sync, _explain("_md_synchronizer")
    update = inspect.getsource(AIOKafkaClient._metadata_update)
    assert "MetadataRequest(list(topics) if topics else None)" in update, _explain(
        "_metadata_update"
    )
    add = inspect.getsource(AIOKafkaClient.add_topic)
    assert "self._topics.add(topic)" in add and "force_metadata_update" in add, _explain(
        "add_topic"
    )


def test_an_update_without_a_topic_drops_its_partitions() -> None:
    from aiokafka.cluster import ClusterMetadata
    from aiokafka.protocol.metadata import MetadataResponse_v0

    cluster = ClusterMetadata()
    brokers = [(0, "127.0.0.1", 9092)]
    partition = [(0, 0, 0, [0], [0])]  # error, partition, leader, replicas, isr
    cluster.update_metadata(
        MetadataResponse_v0(brokers=brokers, topics=[(0, "a", partition), (0, "b", partition)])
    )
    assert cluster.leader_for_partition(TopicPartition("a", 0)) == 0
    cluster.update_metadata(MetadataResponse_v0(brokers=brokers, topics=[(0, "b", partition)]))
    assert cluster.leader_for_partition(TopicPartition("a", 0)) is None, _explain(
        "ClusterMetadata.update_metadata no longer replaces the partition map"
    )


def test_the_sender_retries_a_batch_without_leader_until_it_expires() -> None:
    from aiokafka.producer import message_accumulator, sender

    drain = inspect.getsource(message_accumulator.MessageAccumulator.drain_by_nodes)
    assert "if leader is None or leader == -1:" in drain, _explain("drain_by_nodes")
    assert "if self._batches[tp][0].expired():" in drain, _explain("drain_by_nodes")
    routine = inspect.getsource(sender.Sender._sender_routine)
    assert "fut = self.client.force_metadata_update()" in routine, _explain("_sender_routine")


def test_track_topic_adds_the_topic_to_the_clients_tracked_topics() -> None:
    import asyncio

    from aiokafka.client import AIOKafkaClient

    from streams.worker.fastpath import TrackingProducer, track_topic

    async def run() -> tuple[set[str], bool]:
        client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9")  # never connected
        assert client._topics == set(), _explain("AIOKafkaClient._topics")
        task = asyncio.ensure_future(track_topic(client, "t"))
        await asyncio.sleep(0)
        waiting = not task.done()  # for the metadata update add_topic forced
        task.cancel()
        client._topics.add("known")
        await asyncio.wait_for(track_topic(client, "known"), 1)  # tracked: no update asked
        return set(client._topics), waiting

    topics, waiting = asyncio.run(run())
    assert topics == {"t", "known"} and waiting
    assert "await track_topic(self._ensure_producer().client, topic)" in inspect.getsource(
        TrackingProducer.send
    )
    # faust: every send of the app (agents, changelogs) goes through the transport's Producer
    from faust.transport import base
    from faust.transport.drivers import aiokafka as aiokafka_driver

    from streams.worker.fastpath import BatchTransport

    def params(f: Any) -> list[tuple[str, Any]]:
        return [(p.name, p.kind) for p in inspect.signature(f).parameters.values()]

    assert params(TrackingProducer.send) == params(aiokafka_driver.Producer.send), (
        "faust's Producer.send changed; see tests/unit/test_aiokafka_internals.py"
    )
    assert "self.Producer(" in inspect.getsource(base.Transport.create_producer)
    assert BatchTransport.Producer is TrackingProducer
