"""Pure parts of the local stack: rendered configs (loopback only, ports), process plumbing, CLI."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.clickhouse import quote_identifier
from streams.errors import LocalStackError
from streams.local import LocalClickHouse, LocalKafka, _common, stack
from streams.local._chdb_server import KEEPALIVE_MARKER, keepalive_kill_sql, keepalive_sql
from streams.local.cli import local
from streams.local.clickhouse import render_config
from streams.local.kafka import (
    KAFKA_VERSION,
    new_cluster_id,
    render_log4j2,
    render_pom,
    render_server_properties,
)
from streams.settings import Settings


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": tmp_path / "home",
        "cache_dir": tmp_path / "cache",
        "local_kafka_port": 31092,
        "local_kafka_controller_port": 31093,
        "local_clickhouse_http_port": 31123,
        "local_clickhouse_tcp_port": 31900,
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")


def test_kafka_config_binds_loopback_only_on_the_configured_ports(tmp_path: Path) -> None:
    props = properties(render_server_properties(settings(tmp_path), tmp_path / "data"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:31092,CONTROLLER://127.0.0.1:31093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:31092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:31093"
    assert "controller.quorum.voters" not in props  # refused by 4.0 with --standalone format
    listeners = props["listeners"].split(",") + props["advertised.listeners"].split(",")
    assert {re.fullmatch(r"\w+://([^:]+):\d+", item).group(1) for item in listeners} == {  # type: ignore[union-attr]
        "127.0.0.1"
    }
    assert "0.0.0.0" not in json.dumps(props)
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path / "data")


def test_kafka_config_fits_a_single_node(tmp_path: Path) -> None:
    props = properties(render_server_properties(settings(tmp_path), tmp_path / "data"))
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert int(props["broker.session.timeout.ms"]) < 9000  # fast restarts


def test_pom_pins_kafka_and_the_slf4j1_log_binding() -> None:
    root = ElementTree.fromstring(render_pom())
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    deps = {
        (d.findtext("m:artifactId", namespaces=ns), d.findtext("m:version", namespaces=ns))
        for d in root.iterfind("m:dependencies/m:dependency", ns)
    }
    assert ("kafka_2.13", KAFKA_VERSION) in deps
    assert ("kafka-tools", KAFKA_VERSION) in deps
    assert ("log4j-slf4j-impl", "2.24.3") in deps  # Kafka 4.0.x ships slf4j-api 1.7
    assert ("log4j-core", "2.24.3") in deps
    assert not any(a == "log4j-slf4j2-impl" for a, _ in deps)


def test_log4j_config_writes_to_stdout() -> None:
    text = render_log4j2()
    assert "appender.out.type = Console" in text
    assert "rootLogger.appenderRef.out.ref = OUT" in text


def test_cluster_ids_look_like_kafka_uuids() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid)
        assert not cid.startswith("-")


def test_clickhouse_config_binds_loopback_only_on_the_configured_ports(tmp_path: Path) -> None:
    root = ElementTree.fromstring(render_config(settings(tmp_path)))
    assert [e.text for e in root.iter("listen_host")] == ["127.0.0.1"]
    assert root.findtext("http_port") == "31123"
    assert root.findtext("tcp_port") == "31900"
    for other in ("mysql_port", "postgresql_port", "interserver_http_port"):
        assert root.find(other) is None


def test_keepalive_kill_does_not_match_its_own_text() -> None:
    assert KEEPALIVE_MARKER in keepalive_sql()
    assert KEEPALIVE_MARKER not in keepalive_kill_sql()
    head, tail = re.search(r"concat\('%(\w+)', '(\w+)%'\)", keepalive_kill_sql()).groups()  # type: ignore[union-attr]
    assert head + tail == KEEPALIVE_MARKER


def test_identifiers_are_quoted() -> None:
    assert quote_identifier("spendstream") == "`spendstream`"
    assert quote_identifier("a`b") == "`a\\`b`"


def test_pid_alive_checks_the_command_line(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker-config")
    pid = _common.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)", marker],
        cwd=tmp_path,
        log_path=tmp_path / "sleep.log",
    )
    try:
        assert _common.pid_alive(pid, marker)
        assert not _common.pid_alive(os.getpid(), marker)  # a recycled pid is not ours
        assert _common.terminate(pid, marker, timeout=5) == "stopped"
        assert not _common.pid_alive(pid, marker)
        assert _common.exit_note(pid) == " (killed by SIGTERM)"
    finally:
        _common.terminate(pid, marker, timeout=1)
    assert _common.terminate(pid, marker, timeout=1) == "not running"


def test_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    marker = str(tmp_path / "stubborn")
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ok', flush=True); time.sleep(60)"
    )
    pid = _common.spawn(
        [sys.executable, "-c", code, marker], cwd=tmp_path, log_path=tmp_path / "s.log"
    )
    deadline = time.monotonic() + 10
    while "ok" not in (tmp_path / "s.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _common.terminate(pid, marker, timeout=0.5) == "killed"


def test_a_process_not_started_here_is_found_by_pid_and_marker(tmp_path: Path) -> None:
    marker = str(tmp_path / "outsider")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        time.sleep(0.2)
        assert _common.pid_alive(proc.pid, marker)
        assert not _common.pid_alive(proc.pid, marker + "-other")
    finally:
        proc.kill()
        proc.wait()
    assert not _common.pid_alive(proc.pid, marker)


def test_busy_port_is_detected() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not _common.port_free(port)
        with pytest.raises(LocalStackError, match=rf"kafka: port\(s\) broker {port}"):
            _common.require_free_ports("kafka", {"broker": port})
    assert _common.port_free(port)


def test_free_ports_are_distinct() -> None:
    ports = _common.free_ports(4)
    assert len(set(ports)) == 4


def test_failure_names_the_service_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("line 1\nERROR boom\n")
    exc = _common.failure("kafka", "it broke", log)
    assert str(exc).startswith(f"kafka: it broke; read {log}")
    assert "ERROR boom" in str(exc)


def test_file_lock_is_reentrant_across_calls(tmp_path: Path) -> None:
    for _ in range(2):
        with _common.file_lock(tmp_path / "lock"):
            pass


def test_external_services_are_never_started(tmp_path: Path) -> None:
    s = settings(
        tmp_path, kafka_bootstrap="kafka.example:9092", clickhouse_url="https://ch.example:8443"
    )
    with pytest.raises(LocalStackError, match="kafka is external"):
        LocalKafka(s).up()
    with pytest.raises(LocalStackError, match="clickhouse is external"):
        LocalClickHouse(s).up()
    states = {st.name: (st.state, st.endpoint) for st in stack.status(s)}
    assert states == {
        "kafka": ("external", "kafka.example:9092"),
        "clickhouse": ("external", "https://ch.example:8443"),
    }
    stack.down(s)  # leaves them alone, starts nothing
    assert not (tmp_path / "home").exists()


def test_local_clickhouse_refuses_credentials_it_cannot_honour(tmp_path: Path) -> None:
    s = settings(tmp_path, clickhouse_user="app")
    with pytest.raises(LocalStackError, match="passwordless `default` user"):
        LocalClickHouse(s).up()


def test_stopped_stack_status(tmp_path: Path) -> None:
    s = settings(tmp_path)
    statuses = {st.name: st for st in stack.status(s)}
    assert statuses["kafka"].state == "stopped"
    assert statuses["kafka"].endpoint == "127.0.0.1:31092"
    assert statuses["kafka"].log_path == tmp_path / "home" / "kafka" / "kafka.log"
    assert statuses["clickhouse"].state == "stopped"
    assert statuses["clickhouse"].data_path == tmp_path / "home" / "clickhouse" / "data"
    assert LocalKafka(s).down() is False
    assert LocalClickHouse(s).down() is False


def test_cli_flags_name_their_variables() -> None:
    result = CliRunner().invoke(local, ["up", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for variable in (
        "SPENDSTREAM_HOME",
        "SPENDSTREAM_CACHE_DIR",
        "SPENDSTREAM_LOCAL_KAFKA_PORT",
        "SPENDSTREAM_LOCAL_KAFKA_CONTROLLER_PORT",
        "SPENDSTREAM_LOCAL_CLICKHOUSE_HTTP_PORT",
        "SPENDSTREAM_LOCAL_CLICKHOUSE_TCP_PORT",
        "SPENDSTREAM_LOCAL_KAFKA_HEAP",
        "SPENDSTREAM_START_TIMEOUT",
    ):
        assert variable in result.output


def test_cli_status_json_of_a_stopped_stack(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        local,
        ["status", "--json", "--home", str(tmp_path), "--kafka-port", "31092"],
        env={"SPENDSTREAM_KAFKA_BOOTSTRAP": "", "SPENDSTREAM_CLICKHOUSE_URL": ""},
    )
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["kafka"]["state"] == "stopped"
    assert rows["kafka"]["endpoint"] == "127.0.0.1:31092"
    assert rows["kafka"]["log_path"] == str(tmp_path / "kafka" / "kafka.log")


def test_cli_errors_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        local,
        ["up", "--no-kafka", "--home", str(tmp_path)],
        env={"SPENDSTREAM_CLICKHOUSE_USER": "app"},
    )
    assert result.exit_code == 1
    assert "Error: clickhouse: the local server only has" in result.output


def test_install_without_maven_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streams.local.kafka.shutil.which", lambda name: None)
    with pytest.raises(LocalStackError, match=r"`mvn` is needed .* `apt-get install -y maven`"):
        LocalKafka(settings(tmp_path)).install()


def test_install_runs_once_per_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = LocalKafka(settings(tmp_path))
    kafka.jars_dir.mkdir(parents=True)
    (kafka.jars_dir / f"kafka_2.13-{KAFKA_VERSION}.jar").touch()
    (kafka.cache_root / ".installed").write_text(kafka._fingerprint())

    def no_maven(*args: object, **kwargs: object) -> None:
        raise AssertionError("Maven must not run when the cache is complete")

    monkeypatch.setattr("streams.local.kafka.subprocess.run", no_maven)
    assert kafka.install() == kafka.jars_dir
    assert kafka.installed()
    (kafka.cache_root / ".installed").write_text("other-pins")
    assert not kafka.installed()  # a change of pinned artifacts reinstalls
