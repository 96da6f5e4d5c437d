"""What the stage tests share: the record stage 1 reads, the events codec, and stage 1's
output handed to stage 2 as the partials topic would carry it (one copy for
test_processors_stages.py and truth_harness.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

from streams.processors.stage1 import Stage1Output
from streams.processors.stage2 import pack_partials
from streams.serde import AvroCodec

CODEC = AvroCodec("token_event")


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
