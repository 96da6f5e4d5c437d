"""Session fixtures: the real Kafka and ClickHouse, started by the same code as the CLI.

Each test session gets its own temporary home and free loopback ports (parallel runs of other
developers never collide) but shares the Kafka jar cache. Services start lazily: a Kafka-only
test never pays for ClickHouse, a unit run starts nothing. With ``SPENDSTREAM_KAFKA_BOOTSTRAP``
or ``SPENDSTREAM_CLICKHOUSE_URL`` set, those services are used instead (topics and the test
database are then uniquely named and removed at the end).

Fixtures: ``kafka_settings``, ``stack_settings`` (session, Settings), ``clickhouse_client``
(a clickhouse-connect client on the test database), ``new_topic(prefix, partitions=1,
config=None) -> str``, ``local_kafka`` / ``local_clickhouse`` (LocalKafka / LocalClickHouse for
restart tests; the service is brought back up after the test if it was left down).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from streams.clickhouse import connect, quote_identifier
from streams.local import LocalClickHouse, LocalKafka, secure, stack
from streams.local._common import free_ports
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics

STACK_FIXTURES = frozenset(
    {"kafka_settings", "stack_settings", "clickhouse_settings", "clickhouse_client", "new_topic",
     "local_kafka", "local_clickhouse", "secure_stack"}
)  # fmt: skip

# Stops the services (and removes the home) if the test process dies without running its
# finalizers (kill -9, CI timeout): it blocks on a pipe from this process and acts on EOF.
_WATCHDOG = """
import json, shutil, sys
from pathlib import Path
keep = "keep" in sys.stdin.read()
from streams.local import stack
from streams.settings import Settings
args = json.loads(sys.argv[1])
args["home"], args["cache_dir"] = Path(args["home"]), Path(args["cache_dir"])
stack.down(Settings.from_env({}, **args))
if not keep:
    shutil.rmtree(args["home"], ignore_errors=True)
"""

_kept_home: list[Path] = []

# A session's services whose data is thrown away need no clean shutdown (a controlled Kafka
# shutdown took ~20 s of every run's teardown).
_DISCARD_STOP_S = 3.0


class TestStack:
    """The session's services, started on first use and stopped at the end."""

    __test__ = False  # not a test class despite its name

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka_started = False
        self.clickhouse_started = False
        self.topics: list[str] = []
        self._watchdog: subprocess.Popen[bytes] | None = None

    def kafka(self) -> Settings:
        if not self.kafka_started:
            self._start_watchdog()
            stack.up_kafka(self.settings)
            self.kafka_started = True
        return self.settings

    def clickhouse(self) -> Settings:
        if not self.clickhouse_started:
            self._start_watchdog()
            stack.up_clickhouse(self.settings)
            if not self.settings.clickhouse_is_local:
                client = connect(self.settings)
                client.command(
                    f"CREATE DATABASE IF NOT EXISTS "
                    f"{quote_identifier(self.settings.clickhouse_database)}"
                )
                client.close()
            self.clickhouse_started = True
        return self.settings

    def _start_watchdog(self) -> None:
        if self._watchdog is not None:
            return
        s = self.settings
        args = {
            "home": str(s.home),
            "cache_dir": str(s.cache_dir),
            "kafka_bootstrap": s.kafka_bootstrap,
            "clickhouse_url": s.clickhouse_url,
            "local_kafka_port": s.local_kafka_port,
            "local_kafka_controller_port": s.local_kafka_controller_port,
            "local_clickhouse_http_port": s.local_clickhouse_http_port,
            "local_clickhouse_tcp_port": s.local_clickhouse_tcp_port,
            "local_secure": s.local_secure,
        }
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self, keep_home: bool) -> None:
        s = self.settings
        fast = None if keep_home else _DISCARD_STOP_S
        if self.clickhouse_started:
            if s.clickhouse_is_local:
                LocalClickHouse(s).down(timeout=fast)
            else:
                with contextlib.suppress(Exception):
                    client = connect(s)
                    client.command(
                        f"DROP DATABASE IF EXISTS {quote_identifier(s.clickhouse_database)}"
                    )
                    client.close()
        if self.kafka_started:
            if s.kafka_is_local:
                LocalKafka(s).down(timeout=fast)
            elif self.topics:
                with contextlib.suppress(Exception):
                    for future in (
                        AdminClient(s.kafka_client_config())
                        .delete_topics(self.topics, operation_timeout=30)
                        .values()
                    ):
                        future.result()
        if self._watchdog is not None:
            assert self._watchdog.stdin is not None
            if keep_home:
                self._watchdog.stdin.write(b"keep")
            self._watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(timeout=30)


@pytest.fixture(scope="session")
def _test_stack(request: pytest.FixtureRequest) -> Iterator[TestStack]:
    home = Path(tempfile.mkdtemp(prefix="spendstream-test-"))
    kafka_port, controller_port, http_port, tcp_port = free_ports(4)
    overrides: dict[str, Any] = {
        "home": home,
        "local_kafka_port": kafka_port,
        "local_kafka_controller_port": controller_port,
        "local_clickhouse_http_port": http_port,
        "local_clickhouse_tcp_port": tcp_port,
    }
    settings = Settings.from_env(**overrides)
    if not settings.clickhouse_is_local:
        # never touch a real database on a shared server
        unique = f"{settings.clickhouse_database}_test_{uuid.uuid4().hex[:8]}"
        settings = dataclasses.replace(settings, clickhouse_database=unique)
    test_stack = TestStack(settings)
    try:
        yield test_stack
    finally:
        keep = bool(request.session.testsfailed)  # the services' logs, for the failure report
        test_stack.stop(keep_home=keep)
        if keep:
            _kept_home.append(home)
        else:
            shutil.rmtree(home, ignore_errors=True)


@dataclasses.dataclass
class SecureStack:
    """The session's secure local stack (SASL_SSL + SCRAM + ACLs, ClickHouse password users).

    ``services``, ``sdk`` and ``reports`` are the Settings of each role; ``env(role)`` is a
    subprocess environment with that role's env file; ``passwords`` every secret it made.
    """

    settings: Settings
    secrets: secure.LocalSecrets

    @property
    def services(self) -> Settings:
        return self.secrets.settings_for(self.settings, "services")

    @property
    def sdk(self) -> Settings:
        return self.secrets.settings_for(self.settings, "sdk")

    @property
    def reports(self) -> Settings:
        return self.secrets.settings_for(self.settings, "reports")

    @property
    def passwords(self) -> list[str]:
        return [p.reveal() for p in self.secrets.passwords.values()]

    def env(self, role: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")}
        env.update(secure.read_env_file(self.secrets.env_path(role)))
        env["SPENDSTREAM_CACHE_DIR"] = str(self.settings.cache_dir)
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def secure_stack(request: pytest.FixtureRequest) -> Iterator[SecureStack]:
    """A second local stack, secure, on its own free ports and home (started on first use).

    Always local, whatever SPENDSTREAM_* the session was given: it tests our broker setup.
    """
    home = Path(tempfile.mkdtemp(prefix="spendstream-secure-"))
    kafka_port, controller_port, http_port, tcp_port = free_ports(4)
    base = Settings.from_env({})
    settings = Settings.from_env(
        {},
        home=home,
        cache_dir=Settings.from_env().cache_dir,
        local_kafka_port=kafka_port,
        local_kafka_controller_port=controller_port,
        local_clickhouse_http_port=http_port,
        local_clickhouse_tcp_port=tcp_port,
        local_secure=True,
        start_timeout_s=base.start_timeout_s * 2,  # TLS + SCRAM: a slower first start
    )
    test_stack = TestStack(settings)
    try:
        test_stack.kafka()
        test_stack.clickhouse()
        found = secure.load(settings)
        assert found is not None
        yield SecureStack(settings, found)
    finally:
        keep = bool(request.session.testsfailed)
        test_stack.stop(keep_home=keep)
        if keep:
            _kept_home.append(home)
        else:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_settings(_test_stack: TestStack) -> Settings:
    """Settings of a running Kafka (the session's local broker, or the external one)."""
    return _test_stack.kafka()


@pytest.fixture(scope="session")
def stack_settings(_test_stack: TestStack) -> Settings:
    """Settings of a running Kafka and ClickHouse (with the test database created)."""
    _test_stack.kafka()
    return _test_stack.clickhouse()


@pytest.fixture(scope="session")
def clickhouse_settings(_test_stack: TestStack) -> Settings:
    """Settings of a running ClickHouse only (Kafka not started)."""
    return _test_stack.clickhouse()


@pytest.fixture
def clickhouse_client(clickhouse_settings: Settings) -> Iterator[Any]:
    """A clickhouse-connect client on the test database."""
    client = connect(clickhouse_settings, database=clickhouse_settings.clickhouse_database)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def new_topic(kafka_settings: Settings, _test_stack: TestStack) -> Callable[..., str]:
    """``new_topic(prefix, partitions=1, config=None) -> name``: a fresh, unique topic."""

    def create(prefix: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
        ensure_topics(kafka_settings, [TopicSpec(name, partitions, dict(config or {}))])
        _test_stack.topics.append(name)
        _wait_for_leaders(kafka_settings, name, partitions)
        return name

    return create


def _wait_for_leaders(settings: Settings, topic: str, partitions: int, timeout: float = 30) -> None:
    client = AdminClient(settings.kafka_client_config())
    deadline = time.monotonic() + timeout
    while True:
        meta = client.list_topics(topic, timeout=10).topics.get(topic)
        if (
            meta is not None
            and meta.error is None
            and len(meta.partitions) == partitions
            and all(p.leader >= 0 for p in meta.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic}: partitions without a leader after {timeout}s")
        time.sleep(0.1)


@pytest.fixture
def local_kafka(kafka_settings: Settings) -> Iterator[LocalKafka]:
    """The session's LocalKafka, for tests that stop and restart the broker."""
    if not kafka_settings.kafka_is_local:
        pytest.skip("needs the local broker (SPENDSTREAM_KAFKA_BOOTSTRAP is set)")
    kafka = LocalKafka(kafka_settings)
    yield kafka
    if not kafka.is_running():
        kafka.up()  # a failed restart test must not take the broker from the tests after it


@pytest.fixture
def local_clickhouse(clickhouse_settings: Settings) -> Iterator[LocalClickHouse]:
    """The session's LocalClickHouse, for tests that stop and restart the server."""
    if not clickhouse_settings.clickhouse_is_local:
        pytest.skip("needs the local ClickHouse (SPENDSTREAM_CLICKHOUSE_URL is set)")
    clickhouse = LocalClickHouse(clickhouse_settings)
    yield clickhouse
    if not clickhouse.is_running():
        clickhouse.up()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the real services are integration tests, marked or not."""
    for item in items:
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for home in _kept_home:
        terminalreporter.write_line(f"spendstream test stack kept for its logs: {home}")
