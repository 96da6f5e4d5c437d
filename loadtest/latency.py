"""The latency phase of loadtest/bench_worker.py: where an alert's and a block's time goes.

One real worker (a child process) runs over fresh topics; for each of ``--rates`` in turn, the
main process produces background traffic at that rate (the generated events, fresh ids) for
``--seconds``, plus two kinds of probes:

* alert probes, ``ALERT_PROBES_PER_S``: one event that pushes a dedicated $1 budget over 100%;
* block probes, one starting every ``BLOCK_EVERY_S`` in ANOTHER process (an agent using the
  SDK's ``check()``): a block-mode budget of ``BLOCK_LIMIT_USD``; the agent first spends
  ``BLOCK_PRESPEND`` of it, then makes ``BLOCK_REQUESTS_PER_S`` requests a second, each
  costing ``1 / (60 * BLOCK_REQUESTS_PER_S)`` of the limit (the whole budget in a minute: a
  runaway agent), calling ``check()`` before each and stopping once it answers blocked.
  Overshoot = what it spent after the crossing request and before ``check()`` said blocked,
  in % of the limit.

Every probe's way is timed hop by hop, with the broker's own append times (the benchmark's
topics use LogAppendTime) and the worker's stamps (``f``: stage 1 handed the batch, ``at``:
partial handed to the producer, in each partials pack; the alert's and enforcement record's
``spendstream-fetched-ms`` / ``-handed-ms`` headers: stage 2 handed the batch, record handed
over). An observer process (an ordinary subscriber) reads the partials, alerts and
enforcement topics; all processes share this machine's wall clock.

The worker's own hop histograms (/metrics, per batch) are scraped before and after each rate
and reported beside (bucket upper bounds: "<= x ms").
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import random
import socket
import statistics
import threading
import time
import urllib.request
import uuid
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams.events import now_ms, partition_key
from streams.generate import Shape, generate_events
from streams.serde import AvroCodec
from streams.settings import Settings
from streams.topics import TopicSpec, delete_topics_containing, ensure_topics

ALERT_PROBES_PER_S = 10
ALERT_PROBE_LIMIT_USD = 1
BLOCK_EVERY_S = 0.5
BLOCK_LIMIT_USD = 10
BLOCK_PRESPEND = 0.96
BLOCK_REQUESTS_PER_S = 20
#: how often the block agent asks check() (its figures are this much coarser)
SEEN_POLL_S = 0.005
NANOS = 1_000_000_000
BLOCK_LIMIT = BLOCK_LIMIT_USD * NANOS
BLOCK_COST = BLOCK_LIMIT // (60 * BLOCK_REQUESTS_PER_S)
HEADER_FETCHED = "spendstream-fetched-ms"
#: longest wait for the worker to answer a first probe (a loaded 2-core machine: minutes)
WARMUP_S = 480
HEADER_HANDED = "spendstream-handed-ms"

#: (hop, from stamp, to stamp) of an alert probe
ALERT_HOPS = (
    ("produced->appended", "produced", "appended"),
    ("appended->stage1 fetched", "appended", "fetched1"),
    ("stage1 (fetched->partial handed)", "fetched1", "partial"),
    ("partial handed->appended", "partial", "partial_appended"),
    ("partial appended->stage2 fetched", "partial_appended", "fetched2"),
    ("stage2 (fetched->record handed)", "fetched2", "handed"),
    ("record handed->appended", "handed", "record_appended"),
    ("alert appended->received", "record_appended", "received"),
)
BLOCK_HOPS = (*ALERT_HOPS[:-1], ("block appended->check() blocked", "record_appended", "seen"))

CODEC = AvroCodec("token_event")


def probe_specs(phases: int, seconds: int) -> list[dict[str, Any]]:
    """The probes' budgets: per phase, alert probes and block probes (plus one warm-up)."""
    specs: list[dict[str, Any]] = [
        {"id": "probe-warm", "scope": {"user": "probe-user-warm"}, "limit_usd": 1}
    ]
    for phase in range(phases):
        for n in range(ALERT_PROBES_PER_S * seconds + 5):
            specs.append(
                {
                    "id": f"probe-{phase}-{n}",
                    "scope": {"user": f"probe-user-{phase}-{n}"},
                    "limit_usd": ALERT_PROBE_LIMIT_USD,
                    "thresholds": [100],
                }
            )
        for n in range(int(seconds / BLOCK_EVERY_S) + 2):
            specs.append(
                {
                    "id": f"block-{phase}-{n}",
                    "scope": {"user": f"block-user-{phase}-{n}"},
                    "limit_usd": BLOCK_LIMIT_USD,
                    "mode": "block",
                    "thresholds": [100],
                }
            )
    return specs


def _ms() -> float:
    return time.time() * 1000.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _probe_event(user: str, cost: int, session: str | None = None) -> dict[str, Any]:
    event = next(generate_events(1, seed=random.getrandbits(32)))
    event.update(
        event_id=str(uuid.uuid4()),
        event_time=now_ms(),
        user_id=user,
        cost_nanos=cost,
        session_id=session,
    )
    return event


# ---------------------------------------------------------------------------- observer


def run_observer(settings: Settings, partials: str, stop: Any, live: Any, result: Any) -> None:
    """Child process: an ordinary subscriber of the partials, alerts and enforcement topics;
    stamps each probe's partial, record and (alerts) receipt."""
    from loadtest.bench_worker import die_with_parent

    die_with_parent()
    decode_pack = msgspec.msgpack.Decoder().decode
    alerts = AvroCodec("budget_alert")
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"observer-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    parts: list[TopicPartition] = []
    for name in (partials, settings.topic_alerts, settings.topic_enforcement):
        meta = consumer.list_topics(name, timeout=30).topics[name]
        parts += [TopicPartition(name, p, OFFSET_BEGINNING) for p in meta.partitions]
    consumer.assign(parts)
    stamps: dict[str, dict[str, float]] = {}
    block_costs: dict[str, dict[int, int]] = {}

    def headers(msg: Any) -> dict[str, float]:
        found = {}
        for name, value in msg.headers() or ():
            if name == HEADER_FETCHED:
                found["fetched2"] = float(value)
            elif name == HEADER_HANDED:
                found["handed"] = float(value)
        return found

    while not stop.is_set():
        for msg in consumer.consume(num_messages=500, timeout=0.05):
            value = msg.value()
            if msg.error() or value is None:
                continue
            now = _ms()
            topic = msg.topic()
            appended = float(msg.timestamp()[1])
            if topic == partials:
                pack = decode_pack(value)
                for item in pack.get("b", ()):
                    bid, cost = item[0], item[4]
                    if bid.startswith("probe-"):
                        if cost < ALERT_PROBE_LIMIT_USD * NANOS or "partial" in stamps.get(bid, {}):
                            continue
                    elif bid.startswith("block-"):
                        costs = block_costs.setdefault(bid, {})
                        costs[pack["p"]] = cost
                        if sum(costs.values()) < BLOCK_LIMIT or "partial" in stamps.get(bid, {}):
                            continue
                    else:
                        continue
                    entry = stamps.setdefault(bid, {})
                    entry.update(partial=float(pack["at"]), partial_appended=appended)
                    if "f" in pack:
                        entry["fetched1"] = float(pack["f"])
            elif topic == settings.topic_alerts:
                alert = alerts.decode(value)
                bid = alert["budget_id"] or ""
                if bid.startswith("probe-") and "received" not in stamps.get(bid, {}):
                    entry = stamps.setdefault(bid, {})
                    entry.update(headers(msg), record_appended=appended, received=now)
                    if bid == "probe-warm":
                        live.put(bid)
            else:
                bid = (msg.key() or b"").decode()
                if bid.startswith("block-") and value and json.loads(value).get("blocked"):
                    entry = stamps.setdefault(bid, {})
                    if "record_appended" not in entry:
                        entry.update(headers(msg), record_appended=appended)
    consumer.close()
    result.put(stamps)


# ---------------------------------------------------------------------------- block agent


def run_block_agent(
    settings: Settings, phase: int, count: int, start_at: float, result: Any
) -> None:
    """Child process: ``count`` runaway agents, one starting every BLOCK_EVERY_S from
    ``start_at`` (wall s), each spending until the SDK's ``check()`` answers blocked."""
    from loadtest.bench_worker import die_with_parent
    from streams.sdk.enforcement import EnforcementWatcher

    die_with_parent()
    watcher = EnforcementWatcher(settings, poll_s=0.05).start(60)
    producer = Producer(
        {
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 5,
        }
    )
    probes: list[dict[str, Any]] = [
        {
            "id": f"block-{phase}-{n}",
            "user": f"block-user-{phase}-{n}",
            "start": start_at + n * BLOCK_EVERY_S,
            "spent": 0,
            "after": 0,
            "next": 0.0,
        }
        for n in range(count)
    ]
    lock = threading.Lock()
    done = threading.Event()

    def appended(probe: dict[str, Any]) -> Any:
        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                probe["appended"] = float(msg.timestamp()[1])

        return delivered

    def watch_seen() -> None:
        """check() every SEEN_POLL_S for the probes past their crossing: when it says blocked
        (every millisecond, this thread alone took a fifth of a core from the worker)."""
        while not done.is_set():
            with lock:
                waiting = [p for p in probes if "produced" in p and "seen" not in p]
            for probe in waiting:
                if watcher.check(user_id=probe["user"]) is not None:
                    probe["seen"] = _ms()
            time.sleep(SEEN_POLL_S)

    seer = threading.Thread(target=watch_seen, daemon=True)
    seer.start()
    deadline = start_at + count * BLOCK_EVERY_S + 30
    while time.time() < deadline:
        now = time.time()
        active = False
        for probe in probes:
            if "stopped" in probe:
                continue
            active = True
            if now < probe["start"] or now < probe["next"]:
                continue
            if watcher.check(user_id=probe["user"]) is not None:  # the request is refused
                probe["stopped"] = _ms()
                continue
            cost = int(BLOCK_LIMIT * BLOCK_PRESPEND) if not probe["spent"] else BLOCK_COST
            event = _probe_event(probe["user"], cost, session=f"{probe['user']}-session")
            crossing = probe["spent"] < BLOCK_LIMIT <= probe["spent"] + cost
            if probe["spent"] >= BLOCK_LIMIT:
                probe["after"] += cost  # spent after the crossing, the block not seen yet
            probe["spent"] += cost
            with lock:
                if crossing:
                    probe["produced"] = _ms()
                producer.produce(
                    settings.topic_events,
                    CODEC.encode(event),
                    partition_key(event),
                    on_delivery=appended(probe) if crossing else None,
                )
            producer.poll(0)
            probe["next"] = now + 1.0 / BLOCK_REQUESTS_PER_S
        if not active:
            break
        producer.poll(0)
        time.sleep(SEEN_POLL_S)
    producer.flush(10)
    done.set()
    seer.join(2)
    watcher.stop()
    result.put(
        {
            p["id"]: {
                **{k: p[k] for k in ("produced", "appended", "seen") if k in p},
                "overshoot_pct": 100.0 * p["after"] / BLOCK_LIMIT,
            }
            for p in probes
        }
    )


# ---------------------------------------------------------------------------- metrics


def scrape(port: int) -> dict[str, dict[float, float]]:
    """The worker's hop histograms: hop -> {bucket upper bound: cumulative count}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "spendstream_worker_hop_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                hop = sample.labels["hop"]
                out.setdefault(hop, {})[float(sample.labels["le"])] = sample.value
    return out


def _progress(port: int) -> str:
    """The worker's lag and event counts from /metrics (why a warm-up did not come back)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        return f"/metrics unreachable ({exc})"
    wanted = ("spendstream_worker_lag", "spendstream_worker_events", "spendstream_worker_alerts")
    found = []
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            found += [f"{s.name}{s.labels}={s.value:g}" for s in family.samples]
    return "; ".join(found) or "no lag or event metrics yet"


def histogram_quantiles(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> dict[str, dict[str, Any]]:
    """Per hop, observations between the scrapes and the bucket bounds of their p50/p99."""
    found: dict[str, dict[str, Any]] = {}
    for hop, buckets in after.items():
        diff = {le: n - before.get(hop, {}).get(le, 0.0) for le, n in buckets.items()}
        count = diff.get(float("inf"), 0.0)
        if not count:
            continue

        def bound(q: float, diff: dict[float, float] = diff, count: float = count) -> str:
            for le in sorted(diff):
                if diff[le] >= q * count:
                    return "inf" if le == float("inf") else f"<={le * 1000:g}"
            return "inf"

        found[hop] = {"n": int(count), "p50_ms": bound(0.5), "p99_ms": bound(0.99)}
    return found


# ---------------------------------------------------------------------------- figures


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 0.5),
        "p95": pct(values, 0.95),
        "p99": pct(values, 0.99),
        "max": round(max(values), 1) if values else None,
    }


def hop_table(probes: list[dict[str, float]], hops: Any) -> dict[str, dict[str, Any]]:
    table = {}
    for name, a, b in hops:
        values = [p[b] - p[a] for p in probes if a in p and b in p]
        table[name] = summary(values)
    return table


# ---------------------------------------------------------------------------- the phase


@dataclasses.dataclass
class LatencyRun:
    base: Settings
    partitions: int
    rates: list[int]
    seconds: int

    def run(self) -> dict[str, Any]:
        run = uuid.uuid4().hex[:8]
        try:
            return self._run(run)
        finally:
            delete_topics_containing(self.base, run)

    def _run(self, run: str) -> dict[str, Any]:
        from loadtest.bench_worker import bench_settings, budget_specs, run_fast_worker
        from streams.worker import worker_topics
        from streams.worker.config import partials_topic

        port = _free_port()
        settings = dataclasses.replace(
            bench_settings(self.base, run, self.partitions), metrics_port=port
        )
        partials = partials_topic(settings)
        # the broker's append time on every topic a probe crosses (the events topic has it)
        stamped = {partials, settings.topic_alerts, settings.topic_enforcement}
        ensure_topics(
            settings,
            [
                TopicSpec(
                    t.name,
                    t.partitions,
                    {**t.config, "message.timestamp.type": "LogAppendTime"}
                    if t.name in stamped
                    else t.config,
                )
                for t in worker_topics(settings)
            ],
        )
        shape = Shape()
        specs = budget_specs(shape) + probe_specs(len(self.rates), self.seconds)
        ctx = mp.get_context("spawn")
        unused = ctx.Queue()  # the worker reports nothing here (total 0); kept alive for it
        worker = ctx.Process(target=run_fast_worker, args=(settings, specs, 0, unused))
        worker.start()
        stop, live, observed = ctx.Event(), ctx.Queue(), ctx.Queue()
        observer = ctx.Process(target=run_observer, args=(settings, partials, stop, live, observed))
        observer.start()
        producer = Producer(
            {
                **settings.kafka_client_config(),
                "linger.ms": 1,
                "compression.type": "lz4",
                "enable.idempotence": True,
                "queue.buffering.max.messages": 2_000_000,
            }
        )
        sent: dict[str, dict[str, float]] = {}

        def probe(bid: str, user: str) -> None:
            event = _probe_event(user, 2 * ALERT_PROBE_LIMIT_USD * NANOS)
            stamps = sent[bid] = {}

            def delivered(err: Any, msg: Any) -> None:
                if err is None:
                    stamps["appended"] = float(msg.timestamp()[1])

            stamps["produced"] = _ms()
            producer.produce(
                settings.topic_events,
                CODEC.encode(event),
                partition_key(event),
                on_delivery=delivered,
            )
            producer.poll(0)

        try:
            # warm-up: the worker answers a first probe (its start, group joins, recovery)
            probe("probe-warm", "probe-user-warm")
            deadline = time.monotonic() + WARMUP_S
            while time.monotonic() < deadline:
                if not worker.is_alive():
                    raise SystemExit(f"the worker exited (code {worker.exitcode}) before warm-up")
                producer.poll(0.1)
                try:
                    live.get(timeout=0.1)
                    break
                except Exception:  # queue.Empty
                    continue
            else:
                raise SystemExit(
                    f"worker did not raise the warm-up alert within {WARMUP_S} s; its progress:"
                    f" {_progress(port)}"
                )
            generated = list(generate_events(max(self.rates) * self.seconds, seed=11, shape=shape))
            phases = []
            for phase, rate in enumerate(self.rates):
                phases.append(
                    self._phase(settings, port, phase, rate, generated, producer, probe, ctx)
                )
            time.sleep(3)
            stop.set()
            stamps = observed.get(timeout=60)
        finally:
            stop.set()
            observer.join(5)
            for proc in (worker, observer):
                if proc.is_alive():
                    proc.kill()
                proc.join(10)
        results = []
        for phase, (rate, achieved, blocks, metrics, load) in enumerate(phases):
            alert_probes = []
            for bid, mine in sent.items():
                if bid.startswith(f"probe-{phase}-"):
                    alert_probes.append({**stamps.get(bid, {}), **mine})
            block_probes = []
            for bid, mine in blocks.items():
                block_probes.append({**stamps.get(bid, {}), **mine})
            totals = [p["received"] - p["produced"] for p in alert_probes if "received" in p]
            delays = [
                p["seen"] - p["appended"] for p in block_probes if "seen" in p and "appended" in p
            ]
            from_record = [
                p["seen"] - p["record_appended"]
                for p in block_probes
                if "seen" in p and "record_appended" in p
            ]
            crossed = [p for p in block_probes if "produced" in p]
            results.append(
                {
                    "load_before": load,
                    "rate_target": rate,
                    "rate_achieved": round(achieved),
                    "alert": {
                        **summary(totals),
                        "probes": len(alert_probes),
                        "missing": len(alert_probes) - len(totals),
                        "hops": hop_table(alert_probes, ALERT_HOPS),
                    },
                    "block": {
                        **summary(delays),
                        "what": "crossing event appended -> check() in another process blocked",
                        "probes": len(crossed),
                        "missing": len(crossed) - len(delays),
                        "record_to_check": summary(from_record),
                        "overshoot_pct": summary([p["overshoot_pct"] for p in crossed]),
                        "hops": hop_table(block_probes, BLOCK_HOPS),
                    },
                    "worker_histograms": metrics,
                }
            )
        return {"run": run, "phases": results}

    def _phase(
        self,
        settings: Settings,
        port: int,
        phase: int,
        rate: int,
        generated: list[dict[str, Any]],
        producer: Producer,
        probe: Any,
        ctx: Any,
    ) -> tuple[int, float, dict[str, dict[str, Any]], dict[str, Any], list[float]]:
        load = [round(x, 2) for x in os.getloadavg()]
        total = rate * self.seconds
        blocks_n = int(self.seconds / BLOCK_EVERY_S)
        results = ctx.Queue()
        start_at = time.time() + 12.0  # the agent's watcher is ready, the traffic encoded
        agent = ctx.Process(
            target=run_block_agent, args=(settings, phase, blocks_n, start_at, results)
        )
        agent.start()
        rng = random.Random(phase)
        # generated and encoded before the clock starts (fresh ids: no re-sends of a phase
        # before), so that the producer side stays light
        stamp = now_ms()
        background = []
        for event in generated[:total]:
            fresh = dict(event, event_time=stamp)
            fresh["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            background.append((partition_key(fresh), CODEC.encode(fresh)))
        while time.time() < start_at:
            time.sleep(0.01)
        before = scrape(port)
        start = time.perf_counter()
        produced = 0
        next_probe = 0
        probes = ALERT_PROBES_PER_S * self.seconds
        while produced < total:
            elapsed = time.perf_counter() - start
            target = min(total, int(elapsed * rate))
            while produced < target:
                key, value = background[produced]
                try:
                    producer.produce(settings.topic_events, value, key)
                except BufferError:
                    producer.poll(0.01)
                    continue
                produced += 1
            if next_probe < int(elapsed * ALERT_PROBES_PER_S) and next_probe < probes:
                probe(f"probe-{phase}-{next_probe}", f"probe-user-{phase}-{next_probe}")
                next_probe += 1
            producer.poll(0)
            time.sleep(0.001)
        achieved = produced / (time.perf_counter() - start)
        producer.flush(30)
        blocks = results.get(timeout=120)
        agent.join(10)
        time.sleep(2)
        metrics = histogram_quantiles(before, scrape(port))
        return rate, achieved, blocks, metrics, load


def median_of(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return round(statistics.median(found), 1) if found else None
