"""The long fuzz run: every target of tests/unit/test_fuzz.py for a million inputs (or more).

    make fuzz                                   # 1,000,000 inputs per target (about an hour)
    python -m tests.fuzz.run --runs 20000       # a quick one
    python -m tests.fuzz.run --target budget_yaml --runs 5000000
    python -m tests.fuzz.run --replay OUT/crash-...   # re-run one saved input

Each target is driven by atheris (libFuzzer, coverage-guided over our code and the parsers it
calls) from a seed corpus of valid inputs, with the property checks of the suite's hypothesis
tests (``check_*`` in tests/unit/test_fuzz.py): no crash, no hang (``-timeout`` per input), every
reject one typed error, record and columnar paths in agreement. Hypothesis' own engine costs
~1-5 ms per input here (fuzz_one_input measured at 200-900 inputs/s), so the suite keeps it for
its structured strategies and shrinking, and the long run uses libFuzzer's byte-level engine.

Each target runs in its own process (libFuzzer exits on the first failure and writes the input
to ``OUT/<target>/crash-*``); the summary table gives inputs, seconds and inputs/s per target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGETS = (
    "single_object",
    "confluent",
    "columnar",
    "validator",
    "budget_yaml",
    "report_range",
)
ROOT = Path(__file__).resolve().parents[2]
#: longest input per target (bytes): a budgets file of a few entries, four batched events
MAX_LEN = {"budget_yaml": 1024, "report_range": 256, "validator": 512}


# ------------------------------------------------------------------ inputs from raw bytes


def _frames(data: bytes) -> list[bytes]:
    """Bodies of a columnar batch: each a 1-byte length then that many bytes (the seeds use
    the same framing, so libFuzzer mutates real bodies)."""
    out: list[bytes] = []
    at = 0
    while at < len(data) and len(out) < 8:
        size = data[at]
        out.append(data[at + 1 : at + 1 + size])
        at += 1 + size
    return out or [b""]


def frame_bodies(bodies: list[bytes]) -> bytes:
    return b"".join(bytes([len(b)]) + b for b in bodies if len(b) < 256)


class _Reader:
    """Values of every Python type an SDK caller might pass, read from fuzzer bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            return 0
        self.at += 1
        return self.data[self.at - 1]

    def take(self, n: int) -> bytes:
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def value(self, depth: int = 0) -> Any:
        from streams import events

        kind = self.byte() % 14
        if kind == 0:
            return None
        if kind == 1:
            return bool(self.byte() & 1)
        if kind == 2:
            return int.from_bytes(self.take(8), "little", signed=True)
        if kind == 3:
            return self.byte() - 3
        if kind == 4:
            return [
                0,
                1,
                events.MAX_TOKENS,
                events.MAX_TOKENS + 1,
                events.MAX_COST_NANOS,
                events.MAX_COST_NANOS + 1,
                events.MIN_EVENT_TIME_MS,
                events.MIN_EVENT_TIME_MS - 1,
                (1 << 63) - 1,
                -(1 << 63),
                1 << 64,
            ][self.byte() % 11]
        if kind in (5, 6, 7, 8):
            return self.take(self.byte() % 40).decode("utf-8", "replace")
        if kind == 9:
            return str(__import__("uuid").UUID(bytes=self.take(16).ljust(16, b"\0")))
        if kind == 10:
            return float(int.from_bytes(self.take(2), "little", signed=True)) / 7
        if kind == 11:
            return self.take(self.byte() % 8)
        if kind == 12 and depth < 2:
            return [self.value(depth + 1) for _ in range(self.byte() % 3)]
        if depth < 2:
            key = self.byte() - 128 if self.byte() & 1 else self.take(2).decode("utf-8", "replace")
            return {key: self.value(depth + 1)}
        return None


def _event(data: bytes) -> dict[str, Any]:
    """A dict shaped like an event: each schema field kept from a valid base, dropped, or
    replaced by a value of any type; plus a few unknown keys."""
    from tests.unit import test_fuzz as t

    reader = _Reader(data)
    event = dict(_BASE_EVENT)
    for name in t.FIELDS:
        action = reader.byte() % 4
        if action == 1:
            event[name] = reader.value()
        elif action == 2:
            del event[name]
    for _ in range(reader.byte() % 3):
        event[reader.take(4).decode("utf-8", "replace")] = reader.value()
    return event


def _texts(data: bytes, count: int) -> list[str | None]:
    parts: list[str | None] = [
        p.decode("utf-8", "replace") for p in data.split(b"\x1f", count)[:count]
    ]
    parts += [None] * (count - len(parts))
    return [None if p == "\x00" else p for p in parts]


_BASE_EVENT: dict[str, Any] = {}


def targets() -> dict[str, Callable[[bytes], None]]:
    """Target name -> the function libFuzzer calls with each input."""
    from tests.unit import test_fuzz as t

    def single_object(data: bytes) -> None:
        t.check_decoded(data)

    def confluent(data: bytes) -> None:
        t.check_decoded(b"\x00" + data)

    def columnar(data: bytes) -> None:
        t.check_columnar(_frames(data))

    def validator(data: bytes) -> None:
        t.check_validator(_event(data))

    def budget_yaml(data: bytes) -> None:
        t.check_budget_yaml(data.decode("utf-8", "replace"))

    def report_range(data: bytes) -> None:
        spec, zone, start, end = _texts(data[8:], 4)
        seconds = int.from_bytes(data[:8].ljust(8, b"\0"), "little") % (9998 * 365 * 86_400)
        now = dt.datetime(1, 1, 2, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
        t.check_range(spec, zone or "UTC", start, end, now)

    return {
        "single_object": single_object,
        "confluent": confluent,
        "columnar": columnar,
        "validator": validator,
        "budget_yaml": budget_yaml,
        "report_range": report_range,
    }


# ------------------------------------------------------------------ seed corpora


def write_seeds(target: str, folder: Path) -> None:
    """Valid inputs (and a few classic bad ones) for libFuzzer to start mutating from."""
    from streams.generate import generate_events
    from tests.unit import test_fuzz as t

    folder.mkdir(parents=True, exist_ok=True)
    generated = list(generate_events(40, seed=7))
    seeds: list[bytes] = []
    if target == "single_object":
        seeds = [t.CODEC.encode(e) for e in generated]
    elif target == "confluent":
        seeds = [t.CODEC.encode_confluent(e, t.CONFLUENT_ID)[1:] for e in generated]
    elif target == "columnar":
        bodies = [t._body(e) for e in generated]
        seeds = [frame_bodies(bodies[i : i + 1 + i % 4]) for i in range(0, 36, 2)]
    elif target == "validator":
        seeds = [bytes([i % 4]) * 30 + bytes(range(i, i + 40)) for i in range(20)]
    elif target == "budget_yaml":
        readme = (ROOT / "README.md").read_text()
        blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
        seeds = [b.encode() for b in blocks if "budgets" in b] or [b"budgets: []\n"]
        seeds.append(
            b"budgets:\n  - id: burst\n    scope: {org: acme, label.env: prod}\n"
            b"    period: rolling\n    window: 6h\n    limit_tokens: 2M\n    mode: block\n"
        )
    elif target == "report_range":
        now = (123_456_789_012).to_bytes(8, "little")
        for words in (
            b"today\x1fEurope/Paris\x1f\x00\x1f\x00",
            b"7d\x1fUTC\x1f\x00\x1f\x00",
            b"last:24h\x1fAsia/Tokyo\x1f\x00\x1f\x00",
            b"custom\x1fAmerica/New_York\x1f2026-03-08\x1f2026-03-09T12:00",
            b"\x00\x1fUTC\x1f2025-01-01T00:00+05:30\x1f\x00",
        ):
            seeds.append(now + words)
    for index, seed in enumerate(seeds):
        (folder / f"seed-{index:03d}").write_bytes(seed)


# ------------------------------------------------------------------ one target (child process)


def run_one(target: str, libfuzzer_args: list[str]) -> None:
    import atheris

    # coverage of our code guides every target; PyYAML's pure-Python scanner instrumented
    # runs at a third of the speed for little more than what the seeds reach already
    with atheris.instrument_imports(include=["streams"]):
        from streams.generate import generate_events
        from tests.unit import test_fuzz as t

    base = next(iter(generate_events(1, seed=3)))
    _BASE_EVENT.update(t.CODEC.decode(t.CODEC.encode(base)))
    body = targets()[target]
    atheris.Setup([sys.argv[0], *libfuzzer_args], body)
    atheris.Fuzz()


# ------------------------------------------------------------------ the whole run


_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--target", action="append", choices=TARGETS, help="default: all")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--out", type=Path, default=ROOT / ".fuzz", help="corpora and crashes")
    parser.add_argument("--replay", type=Path, help="run one saved input through its target")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.child:
        run_one(args.child, rest)
        return 0
    if args.replay:
        target = args.replay.parent.name
        targets()[target](args.replay.read_bytes())
        print(f"{target}: {args.replay} passes now")
        return 0
    rows: list[tuple[str, int, float, str]] = []
    failed = False
    for target in args.target or TARGETS:
        folder = args.out / target
        corpus = folder / "corpus"
        write_seeds(target, corpus)
        log = folder / "fuzz.log"
        started = time.monotonic()
        with log.open("w") as out:
            code = subprocess.call(
                [
                    sys.executable,
                    "-m",
                    "tests.fuzz.run",
                    "--child",
                    target,
                    f"-runs={args.runs}",
                    f"-timeout={args.timeout}",
                    "-rss_limit_mb=3072",
                    f"-max_len={MAX_LEN.get(target, 4096)}",
                    "-print_final_stats=1",
                    f"-artifact_prefix={folder}/",
                    str(corpus),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                # polars' panics on corrupt blocks are caught; their backtraces only cost time
                env={**os.environ, "PYTHONPATH": str(ROOT), "RUST_BACKTRACE": "0"},
            )
        seconds = time.monotonic() - started
        text = log.read_text(errors="replace")
        done = _DONE.findall(text)
        runs = int(done[-1][0]) if done else 0
        outcome = "ok" if code == 0 and runs >= args.runs else f"FAILED (exit {code}, see {log})"
        failed = failed or outcome != "ok"
        rows.append((target, runs, seconds, outcome))
        print(
            f"{target:14} {runs:>10,} inputs {seconds:8.1f} s {runs / seconds:9,.0f}/s  {outcome}"
        )
        sys.stdout.flush()
    load = os.getloadavg()
    print(
        f"\nmachine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print("| target | inputs | seconds | inputs/s | outcome |\n|---|---:|---:|---:|---|")
    for target, runs, seconds, outcome in rows:
        print(f"| {target} | {runs:,} | {seconds:.0f} | {runs / seconds:,.0f} | {outcome} |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
