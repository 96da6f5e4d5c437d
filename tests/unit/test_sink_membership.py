"""The sink's static group membership: stable ids per host slot, a short session."""

from __future__ import annotations

import socket
from pathlib import Path

from streams.settings import Settings
from streams.sink.runner import InstanceSlot, consumer_config


def test_slots_give_distinct_ids_and_a_restart_gets_its_old_one(tmp_path: Path) -> None:
    settings = Settings.from_env({}, home=tmp_path)
    host = socket.gethostname().split(".")[0]
    first, second = InstanceSlot(settings), InstanceSlot(settings)
    assert (first.instance_id, second.instance_id) == (f"{host}-sink-0", f"{host}-sink-1")
    first.release()  # the process died: the kernel drops its lock
    again = InstanceSlot(settings)
    assert again.instance_id == f"{host}-sink-0"
    other_group = InstanceSlot(Settings.from_env({}, home=tmp_path, sink_group="other"))
    assert other_group.instance_id == f"{host}-sink-0"  # ids are per consumer group
    for slot in (second, again, other_group):
        slot.release()


def test_the_consumer_is_a_static_member_with_a_short_session() -> None:
    settings = Settings.from_env({})
    config = consumer_config(settings, "pod-a-sink-0")
    assert config["group.instance.id"] == "pod-a-sink-0"
    assert config["session.timeout.ms"] == 10_000  # librdkafka's default: 45 s
    assert config["heartbeat.interval.ms"] < config["session.timeout.ms"] / 3
    named = Settings.from_env({"SPENDSTREAM_SINK_INSTANCE_ID": "sink-x"})
    assert consumer_config(named)["group.instance.id"] == "sink-x"
