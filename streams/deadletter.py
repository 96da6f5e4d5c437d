"""Dead-letter records: the original bytes and key, with the reason in Kafka headers.

Every stage that rejects input (sink, worker) writes the SAME shape so that one tool can read
and replay the dead-letter topic: value and key untouched, headers say why and from where.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

HEADER_REASON = "spendstream.reason"
HEADER_STAGE = "spendstream.stage"
HEADER_TOPIC = "spendstream.source.topic"
HEADER_PARTITION = "spendstream.source.partition"
HEADER_OFFSET = "spendstream.source.offset"
HEADER_KIND = "spendstream.kind"

#: Reason kinds, also used as a Prometheus label: keep the set small and stable.
KINDS = ("decode", "invalid", "late", "unpriceable")


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    kind: str
    reason: str
    stage: str
    topic: str
    partition: int
    offset: int

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (HEADER_KIND, self.kind.encode()),
            (HEADER_REASON, self.reason.encode()),
            (HEADER_STAGE, self.stage.encode()),
            (HEADER_TOPIC, self.topic.encode()),
            (HEADER_PARTITION, str(self.partition).encode()),
            (HEADER_OFFSET, str(self.offset).encode()),
        ]

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes | None]] | None) -> DeadLetter:
        found = {k: (v or b"").decode() for k, v in (headers or [])}
        return cls(
            kind=found.get(HEADER_KIND, ""),
            reason=found.get(HEADER_REASON, ""),
            stage=found.get(HEADER_STAGE, ""),
            topic=found.get(HEADER_TOPIC, ""),
            partition=int(found.get(HEADER_PARTITION, "-1")),
            offset=int(found.get(HEADER_OFFSET, "-1")),
        )
