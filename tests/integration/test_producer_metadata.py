"""The worker's stall (issue 13): aiokafka's producer drops a topic it is sending to from its
metadata, and the batch waits for a leader for faust's 20-minute request timeout.

While aiokafka's client tracks no topic, a metadata update (its periodic refresh, or one after
a broken connection) fetches every topic; ``send`` to a topic it then knows does not add it
to the topics it tracks (``_wait_on_metadata`` returns early); once some other topic is
tracked, every update asks for the tracked topics only and replaces the whole partition map,
so the untracked topic's partitions vanish. A batch for it that was
not sent yet then has no leader: the sender loop asks for metadata again and again
(``unknown_leaders_exist``), which never brings the topic back. On the real broker.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import NotLeaderForPartitionError
from aiokafka.structs import TopicPartition

from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics
from streams.worker.fastpath import track_topic

pytestmark = pytest.mark.integration


async def _stuck_batch(settings: Settings, early: str, late: str, fix: bool) -> bool:
    """Send to ``early`` (known from a full metadata update) while ``late`` becomes tracked;
    True when the send is still not acknowledged 5 s later."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_client_config()["bootstrap.servers"],
        linger_ms=3000,  # the batch waits while the metadata update runs (the race, made sure)
        request_timeout_ms=12_000,  # the stuck batch expires then (faust: 1,200 s)
    )
    await producer.start()
    try:
        client = producer.client
        assert not client._topics
        await client.force_metadata_update()  # what the 5-minute refresh does: every topic
        assert client.cluster.partitions_for_topic(early), "a full update has every topic"
        if fix:
            await track_topic(client, early)
        ensure_topics(settings, [TopicSpec(late, 1, {})])  # created after that update
        delivery = await producer.send(early, b"x", partition=0)
        await producer.send(late, b"y", partition=0)  # a first send to a newer topic
        done, _ = await asyncio.wait([delivery], timeout=5)
        if not done:
            leader = client.cluster.leader_for_partition(TopicPartition(early, 0))
            assert leader is None, "the stuck batch's partition left the metadata"
            assert early not in client._topics
            # nothing brings it back: it fails when it expires, the request timeout later
            with pytest.raises(NotLeaderForPartitionError):
                await asyncio.wait_for(delivery, 30)
        return not done
    finally:
        await asyncio.wait_for(producer.stop(), 30)


def test_untracked_topic_batch_waits_for_a_leader_forever(
    kafka_settings: Settings, new_topic: object
) -> None:
    early = new_topic("stall-early")  # type: ignore[operator]
    assert asyncio.run(_stuck_batch(kafka_settings, early, early + ".late", fix=False))


def test_tracked_topic_batch_is_delivered(kafka_settings: Settings, new_topic: object) -> None:
    early = new_topic("stall-fixed")  # type: ignore[operator]
    assert not asyncio.run(_stuck_batch(kafka_settings, early, early + ".late", fix=True))
