"""Events/s of the pure stage-1 path (no Kafka), beside raw Avro decode in the same run.

    python -m loadtest.bench_stage1                  # 200k events, 6 partitions, best of 3
    python -m loadtest.bench_stage1 --events 400000 --profile

Pre-encodes ``--events`` generated events (dense in event time, as at 100k/s, the budgets of
loadtest/bench_worker.py), splits them by partition key like the producer does, then times
``PartitionAggregator.process`` over fetch-sized batches (decode, validation, dedup, pricing,
rollups, budget partials, spikes, runaway sessions, expiry). Decode alone is timed on the same
bytes so the ratio stage1/decode compares across machines and runs. Times are CPU seconds of
this process (time.process_time): the machines are shared and wall time varies with the load.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import time
import zlib
from typing import Any

from loadtest.bench_worker import _budgets, budget_specs
from loadtest.machine import Machine
from streams.events import now_ms, partition_key
from streams.generate import Shape, generate_events
from streams.pricing import default_catalog
from streams.processors.stage1 import PartitionAggregator
from streams.serde import AvroCodec
from streams.serde.columnar import ColumnarDecoder

CODEC = AvroCodec("token_event")


@dataclasses.dataclass
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


def prepare(n: int, partitions: int) -> tuple[list[list[Rec]], Shape]:
    span = max(1, n // 100)
    shape = Shape(span_ms=span, start_ms=now_ms() - span)
    events = sorted(generate_events(n, seed=42, shape=shape), key=lambda e: e["event_time"])
    parts: list[list[Rec]] = [[] for _ in range(partitions)]
    for e in events:
        key = partition_key(e)
        part = parts[zlib.crc32(key) % partitions]
        part.append(Rec(len(part), key, CODEC.encode(e)))
    return parts, shape


def run_decode(parts: list[list[Rec]]) -> float:
    decode = CODEC.decode
    start = time.process_time()
    for part in parts:
        for rec in part:
            decode(rec.value)
    return time.process_time() - start


def run_stage1(
    parts: list[list[Rec]], budgets: Any, batch: int, columnar: bool = True
) -> tuple[float, int]:
    catalog = default_catalog()
    decoder = ColumnarDecoder(CODEC.current) if columnar else None
    counted = 0
    elapsed = 0.0
    for p, part in enumerate(parts):
        agg = PartitionAggregator(p, CODEC.decode, catalog, budgets, columnar=decoder)
        start = time.process_time()
        for i in range(0, len(part), batch):
            counted += agg.process(part[i : i + batch]).counted
        elapsed += time.process_time() - start
    return elapsed, counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2_000, help="records per process() call")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--profile", action="store_true", help="cProfile one stage-1 run")
    args = parser.parse_args()

    machine = Machine()
    parts, shape = prepare(args.events, args.partitions)
    budgets = _budgets(budget_specs(shape))
    n = sum(len(p) for p in parts)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_stage1(parts, budgets, args.batch)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    best_dec = min(run_decode(parts) for _ in range(args.repeat))
    per_record = [run_stage1(parts, budgets, args.batch, False) for _ in range(args.repeat)]
    runs = [run_stage1(parts, budgets, args.batch) for _ in range(args.repeat)]
    best_pr = min(r[0] for r in per_record)
    best_s1 = min(r[0] for r in runs)
    counted = runs[0][1]
    assert counted == per_record[0][1]
    dec_rate, s1_rate, pr_rate = n / best_dec, n / best_s1, n / best_pr
    machine.calibrated(dec_rate, "decode")
    print(machine.finish().text())
    print(
        f"events {n:,} ({counted:,} counted), {args.partitions} partitions, batch {args.batch}\n"
        f"fastavro decode only      : {dec_rate:>10,.0f} events/s\n"
        f"stage 1, record by record : {pr_rate:>10,.0f} events/s\n"
        f"stage 1, columnar batches : {s1_rate:>10,.0f} events/s  (x{s1_rate / pr_rate:.2f})\n"
        f"stage 1 / decode (calibration): {machine.ratio(s1_rate)} columnar, "
        f"{machine.ratio(pr_rate)} record by record"
    )


if __name__ == "__main__":
    main()
