"""What the stage tests share: an event with defaults, the record stage 1 reads, the events
codec, and stage 1's output handed to stage 2 as the partials topic would carry it (one copy
for test_processors_stages.py, truth_harness.py, test_budget_truth_rows.py and
test_loadtest_reference.py)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from streams import events
from streams.processors.stage1 import Stage1Output
from streams.processors.stage2 import pack_partials
from streams.serde import AvroCodec

CODEC = AvroCodec("token_event")
T0 = 1_780_000_000_000  # 2026-05-28T20:26:40Z


@dataclasses.dataclass
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None  # the broker's append time; None: the processor's clock


def packs_of(partition: int, out: Stage1Output, partitions: int) -> list[dict[str, Any]]:
    """Stage 1's output of ``partition`` as the partials packs it publishes (one per stage-2
    partition, a clock-only one included), in publication order."""
    packs = pack_partials(
        partition,
        out.seq,
        out.clock,
        out.budget_partials,
        out.org_partials,
        out.announces,
        partitions,
        everywhere=True,
        hold_clock=out.hold_clock,
    )
    return list(packs.values())


def event(**fields: Any) -> dict[str, Any]:
    """A valid token event of acme/platform/ana at T0; ``fields`` override."""
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_time": T0,
        "org_id": "acme",
        "team_id": "platform",
        "user_id": "ana",
        "client": "claude-code",
        "task_type": "agentic",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "input_tokens": 100,
        "output_tokens": 10,
        "cost_nanos": 1_000,
    }
    return events.make_event(**{**base, **fields})
