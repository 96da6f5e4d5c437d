"""A real Apache Kafka broker for development and tests: KRaft, single node, 127.0.0.1 only.

Kafka is not on PyPI or in Debian, so the pinned release is resolved from Maven Central with
``mvn`` into a jar cache outside the repo (shared by every home, test run and CI) and run with
the system ``java``. ``auto.create.topics.enable`` is off, as on a managed cluster, so code that
forgets ``streams.topics.ensure_topics`` fails here rather than in production; ``stack.up``
creates the standard topics.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from streams.errors import LocalStackError
from streams.local import secure as _secure
from streams.local._common import (
    ServiceStatus,
    exit_note,
    failure,
    file_lock,
    pid_alive,
    read_pid,
    require_free_ports,
    spawn,
    terminate,
)
from streams.local.secure import LocalSecrets
from streams.settings import Settings, env_name

KAFKA_VERSION = "4.0.2"
LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
# Kafka 4.0.x ships slf4j-api 1.7: only log4j's slf4j 1.x binding gives it logs.
ARTIFACTS: tuple[tuple[str, str, str], ...] = (
    ("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
    ("org.apache.kafka", "kafka-tools", KAFKA_VERSION),
    ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
)
STOP_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 900.0


def render_pom() -> str:
    """A throwaway pom whose only purpose is ``dependency:copy-dependencies``."""
    deps = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in ARTIFACTS
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.spendstream</groupId>
  <artifactId>local-kafka</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{DEPENDENCY_PLUGIN_VERSION}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def render_server_properties(
    settings: Settings, data_dir: Path, tls: LocalSecrets | None = None
) -> str:
    """Single-node KRaft broker+controller; every listener on loopback.

    With ``tls`` (the secure stack): clients get only SASL_SSL with SCRAM-SHA-512 and the
    StandardAuthorizer's ACLs; the controller listener takes only mutual TLS with a
    certificate of the stack's CA (the broker's own), so no listener is unauthenticated.
    """
    port = settings.local_kafka_port
    ctrl = settings.local_kafka_controller_port
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{ctrl}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{ctrl}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "metadata.log.dir": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # A restart must wait out the previous incarnation's session (default 9 s); a short
        # session keeps ``down`` + ``up`` fast while surviving GC pauses on a busy machine.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "2500",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "log.retention.hours": "168",
        "log.segment.bytes": str(256 * 1024 * 1024),
        "num.network.threads": "3",
        "num.io.threads": "4",
    }
    if tls is not None:
        lines.update(
            {
                "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{ctrl}",
                "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
                "inter.broker.listener.name": "SASL_SSL",
                "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL",
                "sasl.enabled.mechanisms": _secure.MECHANISM,
                "sasl.mechanism.inter.broker.protocol": _secure.MECHANISM,
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(tls.broker_keystore),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(tls.ca_path),
                "ssl.client.auth": "none",
                "listener.name.controller.ssl.client.auth": "required",
                "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "allow.everyone.if.no.acl.found": "false",
                "super.users": ";".join(
                    (
                        f"User:{_secure.KAFKA_ADMIN}",
                        f"User:{_secure.KAFKA_BROKER}",
                        f"User:CN={_secure.BROKER_CN}",
                    )
                ),
            }
        )
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def render_log4j2() -> str:
    """Broker logs to stdout, which ``spawn`` appends to the log file with JVM messages."""
    return """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.network.name = kafka.network.RequestChannel$
logger.network.level = warn
logger.controller.name = org.apache.kafka.controller
logger.controller.level = info
logger.state.name = state.change.logger
logger.state.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
"""


def new_cluster_id() -> str:
    """A Kafka Uuid string (base64url of 16 random bytes), as ``kafka-storage random-uuid``."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _listener_ports(server_properties: Path) -> tuple[int, int] | None:
    """(broker, controller) ports of the config the running broker was started with."""
    try:
        text = server_properties.read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("listeners="):
            ports = [int(part.rsplit(":", 1)[1]) for part in line.split("=", 1)[1].split(",")]
            return ports[0], ports[1]
    return None


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise LocalStackError(
            "kafka: no `java` found (Java 17+ is needed for the local broker); "
            "install it, e.g. `apt-get install -y openjdk-17-jre-headless`"
        )
    return found


def quiet_admin(config: dict[str, str]) -> AdminClient:
    """An AdminClient that does not print librdkafka's connection errors while we poll."""
    return AdminClient({**config, "log_level": "0"})


def wait_for_metadata(config: dict[str, str], timeout: float) -> int:
    """Poll metadata until a broker answers; returns the number of brokers seen."""
    client = quiet_admin(config)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            metadata = client.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        except KafkaException as exc:
            last = exc
            time.sleep(0.2)
            continue
        if metadata.brokers:
            return len(metadata.brokers)
        time.sleep(0.2)
    raise TimeoutError(str(last) if last else "no broker in metadata")


def check_reachable(settings: Settings, timeout: float = 10.0) -> int:
    """Metadata round trip against whatever Kafka ``settings`` point at."""
    try:
        return wait_for_metadata(settings.kafka_client_config(), timeout)
    except TimeoutError as exc:
        raise LocalStackError(
            f"kafka at {settings.kafka_client_config()['bootstrap.servers']} did not answer "
            f"metadata requests within {timeout:.0f}s: {exc}"
        ) from exc


def sdk_acls(settings: Settings) -> list[AclBinding]:
    """The SDK user's whole grant: write events, read block states (plus its view's group)."""
    principal = f"User:{_secure.KAFKA_SDK}"

    def allow(kind: ResourceType, name: str, operation: AclOperation) -> AclBinding:
        return AclBinding(
            kind, name, ResourcePatternType.LITERAL, principal, "*", operation,
            AclPermissionType.ALLOW,
        )  # fmt: skip

    return [
        allow(ResourceType.TOPIC, settings.topic_events, AclOperation.WRITE),
        allow(ResourceType.TOPIC, settings.topic_events, AclOperation.DESCRIBE),
        allow(ResourceType.TOPIC, settings.topic_enforcement, AclOperation.READ),
        allow(ResourceType.TOPIC, settings.topic_enforcement, AclOperation.DESCRIBE),
        # streams.enforcement follows the topic with assign() under this group id
        allow(ResourceType.GROUP, view_group(settings.topic_enforcement), AclOperation.READ),
    ]


def view_group(topic: str) -> str:
    """The group id a CompactedView of ``topic`` uses (it assigns, it never commits)."""
    return f"spendstream-view-{topic}"


def ensure_acls(admin_settings: Settings, bindings: list[AclBinding], timeout: float) -> None:
    """Create ACL bindings (idempotent: Kafka keeps one copy of an identical binding)."""
    client = quiet_admin(admin_settings.kafka_client_config())
    try:
        for binding, future in client.create_acls(bindings, request_timeout=timeout).items():
            try:
                future.result()
            except KafkaException as exc:
                raise LocalStackError(f"kafka: cannot create ACL {binding}: {exc}") from exc
    except KafkaException as exc:
        raise LocalStackError(f"kafka: cannot create ACLs: {exc}") from exc


class LocalKafka:
    """The embedded broker of one ``settings.home``: install, up, down, status."""

    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache_root = settings.cache_dir / f"kafka-{KAFKA_VERSION}"
        self.jars_dir = self.cache_root / "jars"
        self.root = settings.home / "kafka"
        self.data_dir = self.root / "data"
        self.config_path = self.root / "server.properties"
        self.log4j_path = self.root / "log4j2.properties"
        self.log_path = self.root / "kafka.log"
        self.pid_path = self.root / "kafka.pid"
        self.lock_path = self.root / ".lock"
        #: "secure" or "plaintext": how the storage was formatted (SCRAM users or none)
        self.mode_path = self.root / "security"
        self.secrets: LocalSecrets | None = None

    @property
    def mode(self) -> str:
        return "secure" if self.settings.local_secure else "plaintext"

    @property
    def client_settings(self) -> Settings:
        """Settings this class and ``stack`` connect with: the admin user when secure."""
        if not self.settings.local_secure:
            return self.settings
        if self.secrets is None:
            self.secrets = _secure.ensure(self.settings)
        return self.secrets.settings_for(self.settings, "services")

    def _check_mode(self) -> None:
        """A home keeps the mode it was formatted with: SCRAM users exist only from format."""
        if not (self.data_dir / "meta.properties").is_file():
            return
        try:
            formatted = self.mode_path.read_text().strip()
        except FileNotFoundError:
            formatted = "plaintext"
        if formatted != self.mode:
            flag = "--secure" if formatted == "secure" else "--no-secure"
            raise LocalStackError(
                f"kafka: the broker in {self.root} was created {formatted}; pass {flag} "
                f"({env_name('local_secure')}) or use another {env_name('home')}"
            )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.settings.local_kafka_port}"

    # -- install -------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        return hashlib.sha256(render_pom().encode()).hexdigest()[:16]

    def installed(self) -> bool:
        marker = self.cache_root / ".installed"
        return (
            marker.is_file()
            and marker.read_text().strip() == self._fingerprint()
            and (self.jars_dir / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
        )

    def install(self) -> Path:
        """Resolve the pinned jars once into the shared cache; returns the jar folder."""
        if self.installed():
            return self.jars_dir
        self.cache_root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.cache_root / ".install.lock"):
            if self.installed():  # another process finished it while we waited
                return self.jars_dir
            mvn = shutil.which("mvn")
            if not mvn:
                raise LocalStackError(
                    f"kafka: `mvn` is needed once to download Kafka {KAFKA_VERSION} from Maven "
                    "Central; install it, e.g. `apt-get install -y maven`"
                )
            log = self.cache_root / "install.log"
            work = Path(tempfile.mkdtemp(prefix=".install-", dir=self.cache_root))
            try:
                (work / "pom.xml").write_text(render_pom())
                out = work / "jars"
                cmd = [
                    mvn, "-q", "-B", "-f", str(work / "pom.xml"),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={out}", "-DincludeScope=runtime",
                ]  # fmt: skip
                with log.open("wb") as handle:
                    try:
                        result = subprocess.run(
                            cmd,
                            cwd=work,
                            stdout=handle,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            timeout=INSTALL_TIMEOUT_S,
                            check=False,
                        )
                    except subprocess.TimeoutExpired as exc:
                        raise failure(
                            "kafka", f"Maven did not finish in {INSTALL_TIMEOUT_S:.0f}s", log
                        ) from exc
                if result.returncode != 0:
                    raise failure(
                        "kafka",
                        f"Maven could not resolve Kafka {KAFKA_VERSION} (exit {result.returncode})",
                        log,
                    )
                if not (out / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
                    raise failure("kafka", "Maven finished but the Kafka jar is missing", log)
                if self.jars_dir.exists():
                    shutil.rmtree(self.jars_dir)
                os.replace(out, self.jars_dir)
                (self.cache_root / ".installed").write_text(self._fingerprint() + "\n")
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return self.jars_dir

    # -- lifecycle -----------------------------------------------------------------------
    def _require_local(self) -> None:
        if not self.settings.kafka_is_local:
            raise LocalStackError(
                f"kafka is external ({env_name('kafka_bootstrap')} is set): nothing local to "
                "start or stop"
            )

    def pid(self) -> int | None:
        pid = read_pid(self.pid_path)
        if pid is not None and pid_alive(pid, str(self.config_path)):
            return pid
        return None

    def is_running(self) -> bool:
        return self.pid() is not None

    def up(self) -> bool:
        """Start the broker, or reuse the one running; True when this call started it.

        Returns once the broker answers metadata requests.
        """
        self._require_local()
        jars = self.install()
        with file_lock(self.lock_path):
            self._check_mode()
            pid = self.pid()
            if pid is not None:
                running = _listener_ports(self.config_path)
                wanted = (self.settings.local_kafka_port, self.settings.local_kafka_controller_port)
                if running is not None and running != wanted:
                    raise LocalStackError(
                        f"kafka: already running (pid {pid}) on ports {running}, not {wanted}; "
                        "run `spendstream local down` first"
                    )
                self._wait_ready(pid)
                return False
            self._start(jars)
            return True

    def _start(self, jars: Path) -> None:
        require_free_ports(
            "kafka",
            {
                "broker": self.settings.local_kafka_port,
                "controller": self.settings.local_kafka_controller_port,
            },
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_settings  # noqa: B018 (makes the secure stack's CA and passwords once)
        self.config_path.write_text(
            render_server_properties(self.settings, self.data_dir, self.secrets)
        )
        self.log4j_path.write_text(render_log4j2())
        java = _java()
        classpath = f"{jars}/*"
        log4j = f"-Dlog4j2.configurationFile={self.log4j_path}"
        if not (self.data_dir / "meta.properties").is_file():
            self._format(java, classpath, log4j)
        jaas = (
            [f"-Djava.security.auth.login.config={self.secrets.broker_jaas}"]
            if self.secrets is not None
            else []
        )
        argv = [
            java,
            *jaas,
            f"-Xmx{self.settings.local_kafka_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            log4j,
            "-cp",
            classpath,
            "kafka.Kafka",
            str(self.config_path),
        ]
        pid = spawn(argv, cwd=self.root, log_path=self.log_path)
        self.pid_path.write_text(f"{pid}\n")
        try:
            self._wait_ready(pid)
        except LocalStackError:
            # never leave a half-started broker behind a failed `up`
            terminate(pid, str(self.config_path), STOP_TIMEOUT_S)
            self.pid_path.unlink(missing_ok=True)
            raise

    def _format(self, java: str, classpath: str, log4j: str) -> None:
        cmd = [
            java, log4j, "-cp", classpath, "kafka.tools.StorageTool", "format",
            "-t", new_cluster_id(), "-c", str(self.config_path), "--standalone",
        ]  # fmt: skip
        if self.secrets is not None:
            # SCRAM users must exist before the first start: nobody could log in to add them
            for user in (_secure.KAFKA_ADMIN, _secure.KAFKA_SDK, _secure.KAFKA_BROKER):
                password = self.secrets.password(f"kafka.{user}").reveal()
                cmd += ["--add-scram", f"{_secure.MECHANISM}=[name={user},password={password}]"]
        with self.log_path.open("ab") as handle:
            handle.write(b"\n===== formatting storage =====\n")
            handle.flush()
            result = subprocess.run(
                cmd,
                cwd=self.root,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise failure("kafka", "formatting the KRaft storage failed", self.log_path)
        self.mode_path.write_text(self.mode + "\n")

    def _wait_ready(self, pid: int) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        client = quiet_admin(self.client_settings.kafka_client_config())
        while True:
            if not pid_alive(pid, str(self.config_path)):
                self.pid_path.unlink(missing_ok=True)
                raise failure(
                    "kafka",
                    f"the broker (pid {pid}) exited while starting{exit_note(pid)}",
                    self.log_path,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise failure(
                    "kafka",
                    f"the broker (pid {pid}) did not answer metadata requests on "
                    f"{self.bootstrap} within {self.settings.start_timeout_s:.0f}s",
                    self.log_path,
                )
            try:
                if client.list_topics(timeout=min(1.0, remaining)).brokers:
                    return
            except KafkaException:
                pass
            time.sleep(0.1)

    def down(self, timeout: float | None = None) -> bool:
        """Stop the broker (SIGTERM: controlled shutdown; SIGKILL after ``timeout`` seconds,
        STOP_TIMEOUT_S unless given).

        Returns False when it was not running.
        """
        self._require_local()
        with file_lock(self.lock_path):
            pid = self.pid()
            if pid is None:
                self.pid_path.unlink(missing_ok=True)
                return False
            terminate(pid, str(self.config_path), STOP_TIMEOUT_S if timeout is None else timeout)
            self.pid_path.unlink(missing_ok=True)
            return True

    def status(self) -> ServiceStatus:
        if not self.settings.kafka_is_local:
            return ServiceStatus(
                self.name, "external", self.settings.kafka_client_config()["bootstrap.servers"]
            )
        pid = self.pid()
        return ServiceStatus(
            self.name,
            "running" if pid is not None else "stopped",
            self.bootstrap,
            pid=pid,
            log_path=self.log_path,
            data_path=self.data_dir,
        )
