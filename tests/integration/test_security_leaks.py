"""A whole secure run (migrate, sink, worker, budgets CLI, SDK, reports, failed logins) prints
no credential: every password is looked for in everything the services and commands wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from streams.budgets import budget_from_spec, publish
from streams.cli import main
from streams.clickhouse import connect
from streams.events import now_ms
from streams.local._common import free_ports

SPENDSTREAM = [sys.executable, "-m", "streams"]

#: this test's own org: other tests write events to the same stack
ORG = "sec-leak-org"

SDK_SCRIPT = """
import sys, time, logging
from streams.generate import Shape, generate_events
from streams.sdk.producer import TokenEventProducer
from streams.settings import Settings
logging.basicConfig(level=logging.DEBUG)
count, ORG = int(sys.argv[1]), sys.argv[2]
settings = Settings.from_env()
print(repr(settings))
start_ms = int(time.time() * 1000)
shape = Shape(orgs=1, start_ms=start_ms, span_ms=2_000)
sent = [{**e, "org_id": ORG} for e in generate_events(count, seed=31, shape=shape)]
with TokenEventProducer(settings) as producer:
    producer.watch_enforcement(60)
    for event in sent:
        producer.record(event)
    assert producer.flush(60) == 0
    print(repr(producer), flush=True)
    print(f"start_ms={start_ms}", flush=True)
    org = ORG
    deadline = time.monotonic() + 150
    while producer.check(org_id=org) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    print("blocked" if producer.check(org_id=org) is not None else "not blocked", flush=True)
"""


def _run(args: list[str], env: dict[str, str], out: Path, name: str, timeout: float = 120):
    result = subprocess.run(
        [*SPENDSTREAM, *args], env=env, capture_output=True, timeout=timeout, check=False
    )
    (out / f"{name}.stdout").write_bytes(result.stdout)
    (out / f"{name}.stderr").write_bytes(result.stderr)
    return result


def _start(args: list[str], env: dict[str, str], out: Path, name: str) -> subprocess.Popen[bytes]:
    log = (out / f"{name}.log").open("wb")
    return subprocess.Popen([*SPENDSTREAM, *args], env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode


def _helps(env: dict[str, str]) -> str:
    """``--help`` of every command and group, with the credentials in the environment."""
    texts = []
    runner = CliRunner(env=env)

    def walk(command, path):
        texts.append(runner.invoke(main, [*path, "--help"]).output)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(main, [])
    return "\n".join(texts)


def test_secure_run_prints_no_credential(secure_stack, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    services = secure_stack.services
    (metrics_port,) = free_ports(1)
    env = secure_stack.env("services", SPENDSTREAM_LOG_LEVEL="DEBUG")
    count = 400
    org = ORG

    assert _run(["migrate"], env, out, "migrate").returncode == 0
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(
        "budgets:\n  - {id: sec-alert, scope: {org: other}, period: day, limit_usd: '5'}\n"
    )
    applied = _run(["budgets", "apply", "-f", str(budgets)], env, out, "budgets-apply")
    assert applied.returncode == 0, applied.stderr.decode()
    # the block budget made days ago: the stream counts from now on (a budget made now
    # would count this minute from ClickHouse, as docs say, and the test would wait for it)
    block = budget_from_spec(
        {"id": "sec-block", "scope": {"org": org}, "mode": "block", "limit_usd": "0.01"},
        now_ms=now_ms() - 3 * 86_400_000,
    )
    publish(services, {block.budget_id: block})
    sink = _start(
        ["sink", "--flush-seconds", "0.5", "--metrics-port", str(metrics_port)], env, out, "sink"
    )
    worker = _start(["worker"], secure_stack.env("services"), out, "worker")
    try:
        listed = _run(["budgets", "list", "--json"], env, out, "budgets-list")
        assert {json.loads(line)["budget_id"] for line in listed.stdout.splitlines()} == {
            "sec-alert",
            "sec-block",
        }

        # the SDK, as its restricted user: produce, follow enforcement until blocked
        sdk = subprocess.run(
            [sys.executable, "-c", SDK_SCRIPT, str(count), ORG],
            env=secure_stack.env("sdk"),
            capture_output=True,
            timeout=300,
            check=False,
        )
        (out / "sdk.stdout").write_bytes(sdk.stdout)
        (out / "sdk.stderr").write_bytes(sdk.stderr)
        assert sdk.returncode == 0, sdk.stderr.decode()[-3000:]
        # the worker (aiokafka, SASL_SSL) counted the events and published the block
        assert b"\nblocked" in sdk.stdout, sdk.stdout.decode()[-2000:]

        start_ms = int(sdk.stdout.split(b"start_ms=")[1].split()[0])

        # the sink (confluent-kafka + the ClickHouse writer) stored every event
        client = connect(services, database=services.clickhouse_database)
        try:
            deadline = time.monotonic() + 120
            stored = 0
            while time.monotonic() < deadline:
                stored = client.query(
                    "SELECT count() FROM token_events WHERE org_id = {org:String}",
                    parameters={"org": ORG},
                ).result_rows[0][0]
                if stored >= count:
                    break
                time.sleep(0.5)
        finally:
            client.close()
        assert stored == count
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            (out / "sink-metrics.txt").write_bytes(r.read())

        # reports as the read-only user: from the services' env and from reports.env
        window = ["--from", _iso(start_ms - 60_000), "--to", _iso(start_ms + 120_000)]
        for role, role_env in (("services", env), ("reports", secure_stack.env("reports"))):
            report = _run(
                ["report", "spend", "--by", "org", "--org", ORG, *window, "--format", "json"],
                role_env,
                out,
                f"report-{role}",
            )
            assert report.returncode == 0, report.stderr.decode()
            rows = json.loads(report.stdout)["rows"]
            assert sum(row["requests"] for row in rows) == count

        # wrong credentials: each command stops with one clear line, no traceback
        wrong_kafka = {**env, "SPENDSTREAM_KAFKA_SASL_PASSWORD": "wrong-kafka-pw"}
        wrong_clickhouse = {**env, "SPENDSTREAM_CLICKHOUSE_REPORTS_PASSWORD": "wrong-ch-pw"}
        wrong_writer = {**env, "SPENDSTREAM_CLICKHOUSE_PASSWORD": "wrong-ch-pw"}
        seen: list[list[str]] = []
        for args, bad_env, expected in (
            (["budgets", "list"], wrong_kafka, b"rejected the login of user 'admin'"),
            (["sink"], wrong_kafka, b"rejected the login of user 'admin'"),
            (["worker"], wrong_kafka, b"rejected the login of user 'admin'"),
            (
                ["report", "spend", *window],
                wrong_clickhouse,
                b"refused user 'reports' (AUTHENTICATION_FAILED): check "
                b"SPENDSTREAM_CLICKHOUSE_REPORTS_USER",
            ),
            (["migrate"], wrong_writer, b"refused user 'writer'"),
            (["sink"], wrong_writer, b"refused user 'writer'"),
        ):
            failed = _run(args, bad_env, out, f"wrong-{len(seen)}-{args[0]}", timeout=90)
            seen.append(args)
            assert failed.returncode != 0, args
            assert expected in failed.stderr, (args, failed.stderr.decode()[-2000:])
            assert b"Traceback" not in failed.stderr, (args, failed.stderr.decode()[-3000:])
            error_lines = [line for line in failed.stderr.splitlines() if b"Error:" in line]
            assert len(error_lines) == 1, (args, failed.stderr.decode()[-3000:])
    finally:
        sink_code, worker_code = _stop(sink), _stop(worker)
    assert sink_code == 0, (out / "sink.log").read_text()[-3000:]
    (out / "help.txt").write_text(_helps(env))

    passwords = [*secure_stack.passwords, "wrong-kafka-pw", "wrong-ch-pw"]
    looked_at = _grep_for(passwords, [out, secure_stack.settings.home])
    # everything was looked at: the services' logs and every command's output
    names = {p.name for p in looked_at}
    assert {"kafka.log", "clickhouse.log", "sink.log", "worker.log", "sdk.stderr"} <= names
    assert worker_code is not None


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _grep_for(passwords: list[str], roots: list[Path]) -> list[Path]:
    """Assert no password is in any file under ``roots`` but the credential store itself."""
    looked_at = []
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file() or "secure" in path.relative_to(root).parts[:1]:
                continue
            data = path.read_bytes()
            looked_at.append(path)
            for password in passwords:
                assert password.encode() not in data, f"a password is in {path}"
    return looked_at
