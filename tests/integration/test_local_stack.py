"""``spendstream local up | down | status`` as a user runs it: separate processes, real services.

Each CLI call is its own process, so these tests also show that the services outlive the
command that started them and are found again through their pid files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from streams.clickhouse import connect
from streams.local._common import free_ports
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration


def run_cli(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", "from streams.cli import main; main()", "local", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def status(env: dict[str, str]) -> dict[str, dict[str, object]]:
    rows = json.loads(run_cli(env, "status", "--json").stdout)
    return {row["name"]: row for row in rows}


def pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in {"Z", "X"}


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A clean environment: a fresh home, free ports, the shared jar cache."""
    kafka, controller, http, tcp = free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")}
    env.update(
        SPENDSTREAM_HOME=str(tmp_path / "home"),
        SPENDSTREAM_LOCAL_KAFKA_PORT=str(kafka),
        SPENDSTREAM_LOCAL_KAFKA_CONTROLLER_PORT=str(controller),
        SPENDSTREAM_LOCAL_CLICKHOUSE_HTTP_PORT=str(http),
        SPENDSTREAM_LOCAL_CLICKHOUSE_TCP_PORT=str(tcp),
        SPENDSTREAM_LOCAL_KAFKA_HEAP="512m",
    )
    if "SPENDSTREAM_CACHE_DIR" in os.environ:
        env["SPENDSTREAM_CACHE_DIR"] = os.environ["SPENDSTREAM_CACHE_DIR"]
    yield env
    run_cli(env, "down", check=False)  # never leave a broker behind a failed test


def settings_of(env: dict[str, str]) -> Settings:
    return Settings.from_env({k: v for k, v in env.items() if k.startswith("SPENDSTREAM_")})


def kafka_round_trip(settings: Settings, topic: str, count: int = 100) -> list[bytes]:
    config = settings.kafka_client_config()
    producer = Producer({**config, "acks": "all", "enable.idempotence": True})
    for i in range(count):
        producer.produce(topic, value=f"v{i}".encode(), key=f"k{i}".encode())
    assert producer.flush(30) == 0
    return consume_all(settings, topic, count)


def consume_all(settings: Settings, topic: str, count: int) -> list[bytes]:
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                value = msg.value()
                assert msg.error() is None and value is not None, msg.error()
                got.append(value)
    finally:
        consumer.close()
    return got


def test_up_reuse_status_down_and_restart_on_the_same_data(cli_env: dict[str, str]) -> None:
    settings = settings_of(cli_env)

    first = run_cli(cli_env, "up")
    assert "kafka started" in first.stdout, first.stdout
    assert "clickhouse started" in first.stdout, first.stdout
    running = status(cli_env)
    assert running["kafka"]["state"] == "running"
    assert running["clickhouse"]["state"] == "running"
    kafka_pid, clickhouse_pid = running["kafka"]["pid"], running["clickhouse"]["pid"]
    assert isinstance(kafka_pid, int) and isinstance(clickhouse_pid, int)
    # the services outlived the CLI process that started them
    assert pid_running(kafka_pid) and pid_running(clickhouse_pid)
    for row in running.values():
        assert Path(str(row["log_path"])).is_file()
        assert Path(str(row["data_path"])).is_dir()

    again = run_cli(cli_env, "up")
    assert "kafka already running, reused" in again.stdout, again.stdout
    assert "clickhouse already running, reused" in again.stdout, again.stdout
    reused = status(cli_env)
    assert (reused["kafka"]["pid"], reused["clickhouse"]["pid"]) == (kafka_pid, clickhouse_pid)

    table = run_cli(cli_env, "status").stdout
    assert "running" in table and "kafka" in table and "clickhouse" in table

    # ClickHouse answers clickhouse-connect, with the database created by `up`
    client = connect(settings, database=settings.clickhouse_database)
    assert client.query("SELECT 1").result_rows == [(1,)]
    assert str(client.server_version).startswith("26.9")
    client.command("CREATE TABLE kept (x UInt32) ENGINE = MergeTree ORDER BY x")
    client.insert("kept", [[1], [2], [3]], column_names=["x"])
    client.close()

    # Kafka answers metadata, has the standard topics, and round-trips messages
    metadata = AdminClient(settings.kafka_client_config()).list_topics(timeout=10)
    assert len(metadata.brokers) == 1
    assert settings.topic_events in metadata.topics
    assert len(metadata.topics[settings.topic_events].partitions) == settings.event_partitions
    ensure_topics(settings, [TopicSpec("roundtrip", 3)])
    values = kafka_round_trip(settings, "roundtrip")
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(100))

    stopped = run_cli(cli_env, "down")
    assert "stopped" in stopped.stdout
    after = status(cli_env)
    assert after["kafka"]["state"] == "stopped" and after["kafka"]["pid"] is None
    assert after["clickhouse"]["state"] == "stopped"
    assert not pid_running(kafka_pid) and not pid_running(clickhouse_pid)
    run_cli(cli_env, "down")  # stopping a stopped stack is fine

    # a restart sees the same data in both services
    run_cli(cli_env, "up")
    client = connect(settings, database=settings.clickhouse_database)
    assert client.query("SELECT sum(x) FROM kept").result_rows == [(6,)]
    client.close()
    assert len(consume_all(settings, "roundtrip", 100)) == 100
    run_cli(cli_env, "down")


def test_busy_port_is_a_clear_error(cli_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(cli_env["SPENDSTREAM_LOCAL_CLICKHOUSE_HTTP_PORT"])))
        squatter.listen()
        result = run_cli(cli_env, "up", "--no-kafka", check=False)
    assert result.returncode == 1
    assert "clickhouse: port(s) http" in result.stderr
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_external_services_are_checked_not_started(
    cli_env: dict[str, str], stack_settings: Settings
) -> None:
    env = dict(
        cli_env,
        SPENDSTREAM_KAFKA_BOOTSTRAP=stack_settings.kafka_client_config()["bootstrap.servers"],
        SPENDSTREAM_CLICKHOUSE_URL=stack_settings.clickhouse_http_url,
    )
    result = run_cli(env, "up")
    assert "kafka external, reachable" in result.stdout, result.stdout
    assert "clickhouse external, reachable" in result.stdout, result.stdout
    assert not (Path(cli_env["SPENDSTREAM_HOME"]) / "kafka").exists()
    assert not (Path(cli_env["SPENDSTREAM_HOME"]) / "clickhouse").exists()
    assert {row["state"] for row in status(env).values()} == {"external"}
    run_cli(env, "down")  # leaves the external services alone
    assert connect(stack_settings).query("SELECT 1").result_rows == [(1,)]


def test_unreachable_external_service_fails_with_its_address(cli_env: dict[str, str]) -> None:
    (nobody,) = free_ports(1)
    env = dict(
        cli_env,
        SPENDSTREAM_CLICKHOUSE_URL=f"http://127.0.0.1:{nobody}",
        SPENDSTREAM_START_TIMEOUT="2",
    )
    result = run_cli(env, "up", "--no-kafka", check=False)
    assert result.returncode == 1
    assert f"clickhouse at http://127.0.0.1:{nobody} did not answer" in result.stderr
