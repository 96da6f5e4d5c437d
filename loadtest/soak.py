"""Resource-bounds soak: a worker and a sink under high-cardinality traffic, RSS over time.

    make soak                                           # 15 minutes, the documented run
    /work/team/heavy -x python -m loadtest.soak         # the same on the shared machine
    python -m loadtest.soak --minutes 3 --rate 1000 --warmup-min 1   # a quick one

Starts its own local stack (fresh home, free loopback ports), migrates ClickHouse, then runs
the real worker and sink as child processes (``spendstream worker`` / ``spendstream sink``) and
produces ``--rate`` events/s for ``--minutes``: users drawn from ``--users`` (1M), sessions
from ``--sessions`` (10M, each session belongs to one user), 50 orgs, 500 teams, a label with
1,000 values. So nearly every event carries a user and a session the worker has not seen for
a while, and every 1-minute rollup key is new: the state keyed by them must expire.

The horizons that decide how long state lives are shortened so that 10 minutes hold several
lifetimes of each (the defaults hold state for 10 minutes to 24 hours, see the README):
``SPENDSTREAM_ALLOWED_LATENESS_S=30`` (rollup windows), ``SPENDSTREAM_WORKER_DEDUP_MEMORY_S=
100`` (ids in memory), ``SPENDSTREAM_WORKER_SESSION_IDLE_S=120`` (sessions),
``SPENDSTREAM_DEDUP_HORIZON_HOURS=1`` (held budget periods).

Every ``--sample-s`` the RSS of each process (/proc/<pid>/status VmRSS) is written to
``samples.csv``; at the end ``rss.png`` (RSS over time), ``summary.json`` and ``summary.md``
(the verdict and the table for tests/faults/README.md). The rule, "flat after warm-up": after
the first ``--warmup-min`` minutes (twice the longest time any state is kept, see
``state_horizons``: 2 x 280 s, the ids' checkpoint chunks, dedup memory + 3 minutes), a
least-squares line through the RSS samples may rise by at most 5% of their
mean over the rest of the run, and the median of the last minute may exceed the median of the
first minute after warm-up by at most 5%. It also checks that nothing was lost: every event
produced is in ``token_events`` and none was dead-lettered.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from loadtest.machine import Machine
from streams import events
from streams.clickhouse import Target, connect
from streams.local import stack
from streams.local._common import free_ports
from streams.migrate import Migrator
from streams.serde import AvroCodec
from streams.settings import Settings

CODEC = AvroCodec("token_event")
ROOT = Path(__file__).resolve().parents[1]
MODELS = (
    ("anthropic", "claude-sonnet-4-5-20250929"),
    ("anthropic", "claude-haiku-4-5"),
    ("openai", "gpt-5-mini"),
)
#: the shortened horizons (see the module doc)
SOAK_ENV = {
    "ALLOWED_LATENESS_S": "30",
    "WORKER_DEDUP_MEMORY_S": "100",
    "WORKER_SESSION_IDLE_S": "120",
    "DEDUP_HORIZON_HOURS": "1",
}
GROWTH_LIMIT = 0.05


def state_horizons(env: dict[str, str] = SOAK_ENV) -> dict[str, int]:
    """The longest time (s) each kind of the worker's state is kept at these settings: the
    time it takes to reach its steady size under steady traffic (stage1.PartitionAggregator.
    _expire and Worker._checkpoint1). Budget periods (DEDUP_HORIZON_HOURS) are not among them:
    the soak publishes no budget."""
    lateness = int(env["ALLOWED_LATENESS_S"])
    memory = int(env["WORKER_DEDUP_MEMORY_S"])
    idle = int(env["WORKER_SESSION_IDLE_S"])
    return {
        # a minute's window closes at the minute's end + the lateness + 5 s of grace
        "rollup windows": 60 + lateness + 5,
        # ids are kept by event minute, from (clock - memory - 1 min) floored to its minute
        "ids in memory": memory + 2 * 60,
        # the ids' checkpoint chunks in the state table go once their newest minute is older
        # than clock - memory - 2 min (Worker._checkpoint1, memory_horizon)
        "ids in the state table": memory + 3 * 60,
        # idle sessions go at the next sweep, once a minute of partition clock
        "sessions": idle + 60,
    }


#: the rule's warm-up: twice the longest horizon (see the module doc)
WARMUP_S = 2 * max(state_horizons().values())


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def make_event(rng: random.Random, users: int, sessions: int, now: int) -> dict[str, Any]:
    session = rng.randrange(sessions)
    user = session % users  # a session belongs to one user
    provider, model = MODELS[session % len(MODELS)]
    out = rng.randrange(1, 2_000)
    return events.make_event(
        event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        event_time=now,
        org_id=f"org-{user % 50}",
        team_id=f"team-{user % 500}",
        user_id=f"user-{user}",
        project_id=f"proj-{user % 2_000}",
        session_id=f"sess-{session}",
        turn=rng.randrange(1, 30),
        client="claude-code",
        task_type="agentic",
        provider=provider,
        model=model,
        input_tokens=rng.randrange(100, 50_000),
        cache_read_tokens=rng.randrange(0, 20_000),
        output_tokens=out,
        reasoning_tokens=out // 3,
        labels={"repo": f"repo-{session % 1_000}"},
    )


def child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")}
    values = {
        "HOME": str(settings.home),
        "KAFKA_BOOTSTRAP": settings.kafka_client_config()["bootstrap.servers"],
        "CLICKHOUSE_URL": settings.clickhouse_http_url,
        "CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "EVENT_PARTITIONS": str(settings.event_partitions),
        "LOG_LEVEL": "INFO",
        **SOAK_ENV,
    }
    env.update({f"SPENDSTREAM_{k}": v for k, v in values.items()})
    return env


def start(
    command: str, settings: Settings, out: Path, probe: float = 0, garbage_at: float | None = None
) -> subprocess.Popen[bytes]:
    """``spendstream COMMAND`` as a child; with ``probe`` (seconds) it samples what its memory
    is made of into ``COMMAND-probe.jsonl`` (loadtest/memprobe.py)."""
    log = (out / f"{command}.log").open("wb")
    code = "from streams.cli import main; main()"
    if probe:
        path = str(out / f"{command}-probe.jsonl")
        args = f"{path!r}, {probe}, {garbage_at}, {command == 'worker'}"
        code = f"import loadtest.memprobe as m; m.start({args}); {code}"
    return subprocess.Popen(
        [sys.executable, "-c", code, command],
        env=child_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def judge(times: list[float], values: list[float], warmup_s: float) -> dict[str, Any]:
    """The "flat after warm-up" rule of the module doc, on one process's samples."""
    after = [(t, v) for t, v in zip(times, values, strict=True) if t >= warmup_s and v > 0]
    before = [v for t, v in zip(times, values, strict=True) if t < warmup_s]
    if len(after) < 6:
        return {"flat": False, "why": "too few samples after warm-up"}
    xs, ys = [t for t, _ in after], [v for _, v in after]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    fitted_growth = slope * (xs[-1] - xs[0]) / mean_y
    first = statistics.median(y for x, y in after if x < xs[0] + 60)
    last = statistics.median(y for x, y in after if x > xs[-1] - 60)
    step_growth = last / first - 1
    return {
        "flat": fitted_growth <= GROWTH_LIMIT and step_growth <= GROWTH_LIMIT,
        "fitted_growth_pct": round(100 * fitted_growth, 1),
        "last_vs_first_minute_pct": round(100 * step_growth, 1),
        "first_minute_after_warmup_mib": round(first / 1024, 1),
        "last_minute_mib": round(last / 1024, 1),
        "peak_mib": round(max(values) / 1024, 1),
        "warmup_peak_mib": round(max(before or [0]) / 1024, 1),
    }


def plot(out: Path, times: list[float], series: dict[str, list[float]], warmup_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, values in series.items():
        ax.plot([t / 60 for t in times], [v / 1024 for v in values], label=name)
    ax.axvline(warmup_s / 60, color="grey", linestyle="--", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("spendstream soak: RSS of the worker and the sink")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "rss.png", dpi=110)
    plt.close(fig)


def count_rows(settings: Settings) -> tuple[int, int]:
    client = connect(settings)
    try:
        db = settings.clickhouse_database
        rows = int(str(client.command(f"SELECT count() FROM `{db}`.token_events")))
        sessions = client.command(f"SELECT uniqExact(session_id) FROM `{db}`.token_events")
        return rows, int(str(sessions))
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=3_000, help="events per second")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=10_000_000)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--warmup-min", type=float, default=WARMUP_S / 60)
    parser.add_argument("--out", type=Path, default=None, help="default loadtest/results/soak-*")
    parser.add_argument(
        "--probe",
        type=float,
        default=10.0,
        help="every N seconds, what each child's memory is made of (loadtest/memprobe.py; 0: off)",
    )
    parser.add_argument(
        "--garbage-at",
        type=float,
        default=None,
        help="with --probe: one full collection at this second, the types it found unreachable",
    )
    args = parser.parse_args()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "loadtest" / "results" / f"soak-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="spendstream-soak-"))
    kafka_port, controller_port, http_port, tcp_port = free_ports(4)
    settings = Settings.from_env(
        {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")},
        home=home,
        local_kafka_port=kafka_port,
        local_kafka_controller_port=controller_port,
        local_clickhouse_http_port=http_port,
        local_clickhouse_tcp_port=tcp_port,
    )
    settings = dataclasses.replace(settings, clickhouse_database="soak")
    machine = Machine()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    produced = 0
    try:
        print(f"soak: stack in {home}, output in {out}", flush=True)
        stack.up(settings)
        Migrator(connect(settings), Target.from_settings(settings)).migrate()
        procs = {
            name: start(name, settings, out, args.probe, args.garbage_at)
            for name in ("worker", "sink")
        }
        producer = Producer(
            {**settings.kafka_client_config(), "linger.ms": 20, "compression.type": "lz4"}
        )
        rng = random.Random(20261202)
        samples: list[dict[str, float]] = []
        begin = time.monotonic()
        end = begin + args.minutes * 60
        next_sample = begin
        while (now := time.monotonic()) < end:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"soak: the {name} exited ({proc.returncode}): see {out}")
            due = int((now - begin) * args.rate) - produced
            stamp_ms = events.now_ms()
            for _ in range(min(due, args.rate)):
                event = make_event(rng, args.users, args.sessions, stamp_ms)
                value = CODEC.encode(event)
                while True:
                    try:
                        producer.produce(
                            settings.topic_events, value=value, key=events.partition_key(event)
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
                produced += 1
            producer.poll(0)
            if now >= next_sample:
                row = {"t_s": round(now - begin, 1), "produced": produced}
                row.update({f"{n}_rss_kib": rss_kib(p.pid) for n, p in procs.items()})
                samples.append(row)
                next_sample += args.sample_s
                print(
                    f"{row['t_s']:7.0f} s  produced {produced:>9,}  "
                    + "  ".join(f"{n} {row[f'{n}_rss_kib'] / 1024:7.1f} MiB" for n in procs),
                    flush=True,
                )
            time.sleep(0.01)
        producer.flush(60)
        del producer  # before the stack goes down (it would log its reconnects)
        # the backlog drains, then nothing may be missing
        deadline = time.monotonic() + 120
        rows = sessions_seen = 0
        while time.monotonic() < deadline:
            rows, sessions_seen = count_rows(settings)
            if rows >= produced:
                break
            time.sleep(2)
        dead = dead_letters(settings)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    machine.finish()
    with (out / "samples.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(samples[0]))
        writer.writeheader()
        writer.writerows(samples)
    times = [s["t_s"] for s in samples]
    series = {n: [s[f"{n}_rss_kib"] for s in samples] for n in ("worker", "sink")}
    warmup_s = args.warmup_min * 60
    plot(out, times, series, warmup_s)
    verdicts = {n: judge(times, v, warmup_s) for n, v in series.items()}
    summary = {
        "minutes": args.minutes,
        "rate": args.rate,
        "users": args.users,
        "sessions": args.sessions,
        "produced": produced,
        "in_clickhouse": rows,
        "distinct_sessions": sessions_seen,
        "dead_letters": dead,
        "horizons": SOAK_ENV,
        "state_horizons_s": state_horizons(),
        "warmup_s": warmup_s,
        "machine": machine.as_dict(),
        "verdicts": verdicts,
        "worker_memory": made_of(out / "worker-probe.jsonl", warmup_s),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = [
        f"machine: {machine.cpu}, {machine.cores} cores, load average {machine.load_before} "
        f"before, {machine.load_after} after",
        f"soak {stamp}: {args.minutes:g} min at {args.rate:,} events/s, {args.users:,} users, "
        f"{args.sessions:,} sessions; produced {produced:,}, in ClickHouse {rows:,} "
        f"({sessions_seen:,} distinct sessions), dead letters {dead}",
        "",
        "| process | warm-up peak MiB | first min after warm-up MiB | last min MiB | peak MiB "
        "| fitted growth after warm-up | last vs first minute | flat |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, v in verdicts.items():
        lines.append(
            f"| {name} | {v.get('warmup_peak_mib')} | {v.get('first_minute_after_warmup_mib')} "
            f"| {v.get('last_minute_mib')} | {v.get('peak_mib')} | {v.get('fitted_growth_pct')}% "
            f"| {v.get('last_vs_first_minute_pct')}% | {'yes' if v['flat'] else 'NO'} |"
        )
    parts = summary["worker_memory"]
    if parts:
        lines += [
            "",
            "What the worker's memory is made of (loadtest/memprobe.py; medians of the first "
            "minute after warm-up and of the last minute):",
            "",
            "| part | first min after warm-up | last min | change |",
            "|---|---:|---:|---:|",
        ]
        for part, (first, last) in parts.items():
            change = f"{100 * (last / first - 1):+.1f}%" if first else ""
            lines.append(f"| {part} | {first:,.1f} | {last:,.1f} | {change} |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    print(machine.text())
    ok = rows >= produced and dead == 0 and all(v["flat"] for v in verdicts.values())
    return 0 if ok else 1


#: what memprobe writes, and how the summary names it (values scaled to MiB or millions)
PROBE_PARTS = {
    "RSS MiB": lambda r: r["rss_kib"] / 1024,
    "malloc in use MiB": lambda r: r["malloc_in_use_kib"] / 1024,
    "malloc free in its heap MiB": lambda r: r["malloc_free_kib"] / 1024,
    "Python blocks (millions)": lambda r: r["py_blocks"] / 1e6,
    "sessions (thousands)": lambda r: r["PartitionAggregator"]["sessions"] / 1e3,
    "ids in memory (thousands)": lambda r: r["PartitionAggregator"]["memory"] / 1e3,
    "state table 1 MiB": lambda r: r["table1"]["kib"] / 1024,
}


def made_of(path: Path, warmup_s: float) -> dict[str, tuple[float, float]]:
    """Medians of each PROBE_PARTS part over the first minute after warm-up and the last one."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "rss_kib" in r and "table1" in r and r["t_s"] >= warmup_s]
    if len(rows) < 2:
        return {}
    start, end = rows[0]["t_s"], rows[-1]["t_s"]
    first = [r for r in rows if r["t_s"] < start + 60]
    last = [r for r in rows if r["t_s"] > end - 60]
    return {
        part: (
            round(statistics.median(get(r) for r in first), 1),
            round(statistics.median(get(r) for r in last), 1),
        )
        for part, get in PROBE_PARTS.items()
    }


def dead_letters(settings: Settings) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"soak-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(settings.topic_deadletter, timeout=10)
        total = 0
        for partition in meta.topics[settings.topic_deadletter].partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(settings.topic_deadletter, partition), timeout=10
            )
            total += high - low
        return total
    finally:
        consumer.close()


if __name__ == "__main__":
    raise SystemExit(main())
