"""What a benchmark ran on, and a calibration figure measured in the same run.

Every loadtest/bench_* script prints this block and reports its own figures as ratios to the
calibration: absolute events/s depend on the machine (and on what else it was doing) far more
than on the code, so a ratio to a plain loop measured in the same run is what compares across
machines and runs.

The calibration is the plainest thing that reads our events: a confluent-kafka consumer that
fetches a topic of Avro token events and decodes each value with fastavro (``kafka`` kind). A
benchmark without a broker (bench_stage1, bench_queries) calibrates with the decode alone over
the same bytes (``decode`` kind); its block says which.

``saturated`` is set when the machine was not ours to measure on, by either rule:

* load: the 1-minute load average before the run exceeded ``LOAD_SATURATED`` x cores (other
  processes already wanted most of the CPUs), or
* calibration: the calibration came out below ``CALIBRATION_SATURATED`` x this machine's usual
  figure (the median of its earlier calibrations of the same kind, kept in
  ``$SPENDSTREAM_HOME/bench/calibration.json``): something slowed the plain loop itself.

Figures from a saturated run are printed, but say so; they are not the ones to quote.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: load average before the run above this many times the core count: saturated
LOAD_SATURATED = 0.75
#: calibration below this fraction of the machine's usual figure: saturated
CALIBRATION_SATURATED = 0.6
#: earlier calibrations kept per kind (the usual figure is their median)
HISTORY = 20


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


@dataclasses.dataclass
class Machine:
    """The block every benchmark prints: start it before the run, ``finish()`` after."""

    cpu: str = dataclasses.field(default_factory=cpu_model)
    cores: int = dataclasses.field(default_factory=cores)
    load_before: tuple[float, float, float] = dataclasses.field(default_factory=load)
    load_after: tuple[float, float, float] | None = None
    #: events/s of the plain loop in this run; its kind ("kafka" or "decode")
    calibration: float | None = None
    calibration_kind: str = ""
    #: this machine's usual calibration of that kind (median of earlier runs), if any
    usual: float | None = None
    reasons: list[str] = dataclasses.field(default_factory=list)

    def calibrated(self, rate: float, kind: str, history: Path | None = None) -> None:
        """Record this run's calibration; compare it with (and add it to) the history."""
        self.calibration, self.calibration_kind = rate, kind
        path = history or history_path()
        past = _read_history(path)
        runs = past.get(kind, [])
        self.usual = statistics.median(runs) if runs else None
        # a calibration of a saturated run would drag the usual figure down: not kept
        if not self._load_saturated() and not self._calibration_saturated():
            past[kind] = [*runs, rate][-HISTORY:]
            _write_history(path, past)

    def finish(self) -> Machine:
        self.load_after = load()
        self.reasons = []
        if self._load_saturated():
            self.reasons.append(
                f"load average {self.load_before[0]} before the run > "
                f"{LOAD_SATURATED} x {self.cores} cores"
            )
        if self._calibration_saturated():
            self.reasons.append(
                f"calibration {self.calibration:,.0f}/s < {CALIBRATION_SATURATED} x this "
                f"machine's usual {self.usual:,.0f}/s"
            )
        return self

    def _load_saturated(self) -> bool:
        return self.load_before[0] > LOAD_SATURATED * self.cores

    def _calibration_saturated(self) -> bool:
        return bool(
            self.calibration is not None
            and self.usual
            and self.calibration < CALIBRATION_SATURATED * self.usual
        )

    @property
    def saturated(self) -> bool:
        return bool(self.reasons)

    def ratio(self, rate: float) -> float | None:
        """``rate`` (events/s) as a ratio to this run's calibration."""
        return round(rate / self.calibration, 3) if self.calibration else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu,
            "cores": self.cores,
            "load_before": list(self.load_before),
            "load_after": list(self.load_after) if self.load_after else None,
            "calibration": round(self.calibration) if self.calibration else None,
            "calibration_kind": self.calibration_kind,
            "usual_calibration": round(self.usual) if self.usual else None,
            "saturated": self.saturated,
            "saturated_because": self.reasons,
        }

    def text(self) -> str:
        after = " ".join(map(str, self.load_after)) if self.load_after else "?"
        what = {
            "kafka": "plain confluent-kafka consume + fastavro decode",
            "decode": "fastavro decode only (no broker in this benchmark)",
        }.get(self.calibration_kind, self.calibration_kind)
        lines = [
            f"machine    : {self.cpu}, {self.cores} cores",
            f"load avg   : {' '.join(map(str, self.load_before))} before, {after} after",
        ]
        if self.calibration:
            usual = f" (usual here {self.usual:,.0f}/s)" if self.usual else ""
            lines.append(f"calibration: {self.calibration:,.0f} events/s, {what}{usual}")
        lines.append(
            "saturated  : " + ("YES: " + "; ".join(self.reasons) if self.saturated else "no")
        )
        return "\n".join(lines)


def history_path() -> Path:
    from streams.settings import Settings

    return Settings.from_env().home / "bench" / "calibration.json"


def _read_history(path: Path) -> dict[str, list[float]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: [float(x) for x in v] for k, v in data.items() if isinstance(v, list)}


def _write_history(path: Path, data: dict[str, list[float]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    except OSError:
        pass  # a read-only home: no history, the load rule still holds


# ---------------------------------------------------------------------------- the plain loops


def decode_rate(values: Iterable[bytes], repeat: int = 3) -> float:
    """Events/s of fastavro decoding ``values`` (best of ``repeat``, CPU time)."""
    from streams.serde import AvroCodec

    decode = AvroCodec("token_event").decode
    data = list(values)
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for value in data:
            decode(value)
        best = min(best, time.process_time() - start)
    return len(data) / max(best, 1e-9)


def kafka_rate(settings: Any, topic: str, events: int, timeout: float = 300.0) -> float:
    """Events/s (wall) of a plain confluent-kafka consumer reading ``events`` records of
    ``topic`` from the start and decoding each with fastavro: the calibration loop."""
    import uuid

    from confluent_kafka import Consumer

    from streams.serde import AvroCodec

    decode = AvroCodec("token_event").decode
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"calibration-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 8 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
        }
    )
    consumer.subscribe([topic])
    done = 0
    first = 0.0
    deadline = time.monotonic() + timeout
    try:
        while done < events and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error():
                    continue
                if not first:
                    first = time.perf_counter()  # from the first record: no group join
                decode(msg.value())
                done += 1
        wall = time.perf_counter() - first if first else 0.0
    finally:
        consumer.close()
    if done < events:
        raise RuntimeError(f"calibration read {done} of {events} records of {topic}")
    return (done - 1) / max(wall, 1e-9)


def sample_values(n: int = 20_000, seed: int = 3) -> list[bytes]:
    """``n`` encoded generated events (for a decode-only calibration)."""
    from streams.generate import generate_events
    from streams.serde import AvroCodec

    encode = AvroCodec("token_event").encode
    return [encode(e) for e in generate_events(n, seed=seed)]
