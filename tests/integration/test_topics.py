"""Topic admin against the real broker: creation is idempotent, deletion is by run marker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from streams.settings import Settings
from streams.topics import TopicSpec, admin, delete_topics_containing, ensure_topics

pytestmark = pytest.mark.integration


def listed(settings: Settings, done: Callable[[set[str]], bool]) -> set[str]:
    """The broker's topic names once ``done`` holds for them (metadata lags creates and
    deletes a little)."""
    deadline = time.monotonic() + 15
    while not done(names := set(admin(settings).list_topics(timeout=10).topics)):
        assert time.monotonic() < deadline, f"topics never reached the expected state: {names}"
        time.sleep(0.2)
    return names


def test_delete_topics_containing_deletes_only_the_runs_topics(kafka_settings: Settings) -> None:
    run = uuid.uuid4().hex[:8]
    mine = [f"bench.{run}.events", f"bench-worker-{run}-changelog"]
    other = f"bench.{uuid.uuid4().hex[:8]}.events"
    ensure_topics(kafka_settings, [TopicSpec(name, 1) for name in [*mine, other]])
    ensure_topics(kafka_settings, [TopicSpec(mine[0], 1)])  # again: a no-op
    listed(kafka_settings, lambda names: {*mine, other} <= names)

    assert sorted(delete_topics_containing(kafka_settings, run)) == sorted(mine)

    left = listed(kafka_settings, lambda names: not names & set(mine))
    assert other in left
    assert delete_topics_containing(kafka_settings, run) == []
