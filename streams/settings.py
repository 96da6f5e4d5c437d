"""Typed settings read once from ``SPENDSTREAM_*`` variables, every error reported together.

Each field names its variable; the CLI exposes the same names as ``envvar`` of its flags so
that ``--help`` shows which variable a flag sets.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.errors import SettingsError

PREFIX = "SPENDSTREAM_"


class Secret:
    """A string that never shows itself in logs, reprs or error messages."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def _str(raw: str) -> str:
    return raw


def _int(raw: str) -> int:
    return int(raw)


def _port(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a TCP port (1-65535)")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"{value} must be > 0")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{value} must be > 0")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{raw!r} is not a boolean (true/false)")


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _secret(raw: str) -> Secret:
    return Secret(raw)


def _timezone(raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # "America" is a directory
        raise ValueError(f"unknown time zone {raw!r}") from exc
    return raw


def _choice(*allowed: str) -> Callable[[str], str]:
    """One of ``allowed`` (upper-case names), accepted in any case: `info` means INFO."""

    def parse(raw: str) -> str:
        if raw.upper() not in allowed:
            raise ValueError(f"{raw!r} is not one of {', '.join(allowed)}")
        return raw.upper()

    return parse


def _default_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "spendstream"


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spendstream"


def _field(env: str, parse: Callable[[str], Any], default: Any, help: str) -> Any:
    metadata = {"env": PREFIX + env, "parse": parse, "help": help}
    if callable(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything spendstream reads from its environment."""

    # Kafka: an external cluster when set, else the embedded local broker.
    kafka_bootstrap: str | None = _field(
        "KAFKA_BOOTSTRAP", _str, None, "external Kafka bootstrap servers; unset: local broker"
    )
    kafka_security_protocol: str = _field(
        "KAFKA_SECURITY_PROTOCOL",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "PLAINTEXT",
        "Kafka security protocol",
    )
    kafka_sasl_mechanism: str | None = _field(
        "KAFKA_SASL_MECHANISM",
        _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        None,
        "SASL mechanism",
    )
    kafka_sasl_username: str | None = _field("KAFKA_SASL_USERNAME", _str, None, "SASL user")
    kafka_sasl_password: Secret | None = _field(
        "KAFKA_SASL_PASSWORD", _secret, None, "SASL password"
    )
    kafka_tls_ca: Path | None = _field("KAFKA_TLS_CA", _path, None, "CA bundle (PEM)")
    kafka_tls_cert: Path | None = _field("KAFKA_TLS_CERT", _path, None, "client cert (PEM)")
    kafka_tls_key: Path | None = _field("KAFKA_TLS_KEY", _path, None, "client key (PEM)")
    kafka_check_timeout_s: float = _field(
        "KAFKA_CHECK_TIMEOUT",
        _positive_float,
        10.0,
        "seconds a start-up check waits for Kafka (bad credentials fail at once)",
    )
    topic_events: str = _field("TOPIC_EVENTS", _str, "spendstream.events", "token events topic")
    topic_deadletter: str = _field(
        "TOPIC_DEADLETTER", _str, "spendstream.deadletter", "dead-letter topic"
    )
    topic_alerts: str = _field("TOPIC_ALERTS", _str, "spendstream.alerts", "breach alerts topic")
    topic_budgets: str = _field("TOPIC_BUDGETS", _str, "spendstream.budgets", "budgets topic")
    topic_enforcement: str = _field(
        "TOPIC_ENFORCEMENT", _str, "spendstream.enforcement", "block-state topic"
    )
    topic_rollups: str = _field(
        "TOPIC_ROLLUPS", _str, "spendstream.rollups.1m", "1-minute rollups topic"
    )
    event_partitions: int = _field(
        "EVENT_PARTITIONS", _positive_int, 6, "partitions of the events topic when we create it"
    )

    # ClickHouse: an external server when set, else the embedded local server.
    clickhouse_url: str | None = _field(
        "CLICKHOUSE_URL", _str, None, "external ClickHouse HTTP URL; unset: local server"
    )
    clickhouse_user: str = _field("CLICKHOUSE_USER", _str, "default", "ClickHouse user")
    clickhouse_password: Secret | None = _field(
        "CLICKHOUSE_PASSWORD", _secret, None, "ClickHouse password"
    )
    clickhouse_reports_user: str | None = _field(
        "CLICKHOUSE_REPORTS_USER", _str, None, "read-only user of `spendstream report`"
    )
    clickhouse_reports_password: Secret | None = _field(
        "CLICKHOUSE_REPORTS_PASSWORD", _secret, None, "password of the reports user"
    )
    clickhouse_database: str = _field("CLICKHOUSE_DATABASE", _str, "spendstream", "database")
    clickhouse_cluster: str | None = _field(
        "CLICKHOUSE_CLUSTER", _str, None, "cluster name: migrations run ON CLUSTER"
    )
    retention_days: int = _field(
        "RETENTION_DAYS", _positive_int, 400, "days token_events are kept (TTL)"
    )

    # The ClickHouse sink.
    sink_group: str = _field("SINK_GROUP", _str, "spendstream-sink", "sink consumer group id")
    sink_instance_id: str | None = _field(
        "SINK_INSTANCE_ID",
        _str,
        None,
        "sink: static group member id (a restart keeps its partitions); unset: "
        "<hostname>-sink-<n>, n the lowest slot free on this host",
    )
    sink_session_timeout_s: float = _field(
        "SINK_SESSION_TIMEOUT_S",
        _positive_float,
        10.0,
        "sink: a member silent this long loses its partitions to the others",
    )
    sink_batch_rows: int = _field(
        "SINK_BATCH_ROWS", _positive_int, 100_000, "sink: insert when this many rows are buffered"
    )
    sink_flush_seconds: float = _field(
        "SINK_FLUSH_SECONDS", _positive_float, 1.0, "sink: insert at least this often"
    )
    sink_drain_seconds: float = _field(
        "SINK_DRAIN_SECONDS", _positive_float, 20.0, "sink: bound on the SIGTERM drain"
    )
    dedup_horizon_hours: int = _field(
        "DEDUP_HORIZON_HOURS", _positive_int, 24, "re-sent event_ids dropped within this horizon"
    )

    # The faust worker (streams/worker/).
    worker_id: str = _field(
        "WORKER_ID", _str, "spendstream-worker", "worker group id; prefixes its internal topics"
    )
    allowed_lateness_s: int = _field(
        "ALLOWED_LATENESS_S",
        _positive_int,
        300,
        "worker: later events are counted in budgets but rolled up as late rows",
    )
    worker_flush_seconds: float = _field(
        "WORKER_FLUSH_SECONDS", _positive_float, 1.0, "worker: state checkpoint interval"
    )
    worker_sink_checks: bool = _field(
        "WORKER_SINK_CHECKS",
        _bool,
        True,
        "worker: read budget baselines and the dedup of events older than its id memory "
        "from ClickHouse once the sink has committed past them (off: no sink runs; budgets "
        "count from when the worker first sees them, old events are not deduplicated)",
    )
    worker_dedup_memory_s: int = _field(
        "WORKER_DEDUP_MEMORY_S",
        _positive_int,
        600,
        "worker: ids of events this recent are kept in memory (16 bytes each); older "
        "events are checked against ClickHouse",
    )
    worker_session_idle_s: int = _field(
        "WORKER_SESSION_IDLE_S",
        _positive_int,
        7200,
        "worker: a session's runaway-detection state is dropped after this long without an "
        "event (partition clock)",
    )
    worker_fetch_mib: int = _field(
        "WORKER_FETCH_MIB", _positive_int, 8, "worker: most MiB one fetch takes per partition"
    )
    replication_factor: int = _field(
        "REPLICATION_FACTOR", _positive_int, 1, "replicas of topics the worker creates"
    )

    # The embedded local stack.
    home: Path = _field("HOME", _path, _default_home, "data and logs of the local stack")
    cache_dir: Path = _field("CACHE_DIR", _path, _default_cache, "downloaded Kafka jars")
    local_kafka_port: int = _field("LOCAL_KAFKA_PORT", _port, 19092, "local broker port")
    local_kafka_controller_port: int = _field(
        "LOCAL_KAFKA_CONTROLLER_PORT", _port, 19093, "local KRaft controller port"
    )
    local_clickhouse_http_port: int = _field(
        "LOCAL_CLICKHOUSE_HTTP_PORT", _port, 18123, "local ClickHouse HTTP port"
    )
    local_clickhouse_tcp_port: int = _field(
        "LOCAL_CLICKHOUSE_TCP_PORT", _port, 19000, "local ClickHouse native port"
    )
    local_kafka_heap: str = _field("LOCAL_KAFKA_HEAP", _str, "1g", "local broker JVM heap")
    local_secure: bool = _field(
        "LOCAL_SECURE",
        _bool,
        False,
        "local stack: Kafka SASL_SSL/SCRAM with ACLs, ClickHouse password users",
    )
    start_timeout_s: float = _field(
        "START_TIMEOUT", _positive_float, 90.0, "seconds to wait for a local service"
    )

    prices_overlay: Path | None = _field(
        "PRICES_OVERLAY", _path, None, "your price overlay (negotiated rates, by org), JSON"
    )
    timezone: str = _field("TIMEZONE", _timezone, "UTC", "default time zone of reports")
    log_level: str = _field(
        "LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "log level"
    )
    metrics_port: int = _field(
        "METRICS_PORT", _int, 0, "Prometheus metrics (and /healthz) port; 0 disables"
    )
    metrics_host: str = _field(
        "METRICS_HOST", _str, "127.0.0.1", "address the metrics port binds (0.0.0.0: all)"
    )
    worker_stall_s: float = _field(
        "WORKER_STALL_S",
        _positive_float,
        120.0,
        "worker: /healthz fails when a partition with records to read made no progress this long",
    )

    @property
    def kafka_is_local(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def clickhouse_is_local(self) -> bool:
        return self.clickhouse_url is None

    def __repr__(self) -> str:  # dataclass repr would still be safe; keep it explicit
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"Settings({shown})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``SPENDSTREAM_*`` variable; raise one SettingsError naming all problems.

        ``overrides`` (already typed, e.g. from CLI flags) win over the environment; a value of
        ``None`` in overrides means "not given".
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        known = {f.metadata["env"] for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
                continue
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except (ValueError, TypeError) as exc:
                shown = "***" if f.metadata["parse"] is _secret else repr(raw)
                problems.append(f"{f.metadata['env']}={shown}: {exc}")
        unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
        problems.extend(f"{name}: unknown setting" for name in unknown)
        problems.extend(_cross_checks(values))
        if problems:
            raise SettingsError(problems)
        return cls(**values)

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) connection and security properties."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap or f"127.0.0.1:{self.local_kafka_port}",
            "security.protocol": self.kafka_security_protocol.lower(),
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username or ""
            config["sasl.password"] = (
                self.kafka_sasl_password.reveal() if self.kafka_sasl_password else ""
            )
        if self.kafka_tls_ca:
            config["ssl.ca.location"] = str(self.kafka_tls_ca)
        if self.kafka_tls_cert:
            config["ssl.certificate.location"] = str(self.kafka_tls_cert)
        if self.kafka_tls_key:
            config["ssl.key.location"] = str(self.kafka_tls_key)
        return config

    def with_topic_prefix(self, prefix: str) -> Settings:
        """These settings with every topic named ``<prefix>.<what it carries>``: the topics of
        one load-test run, benchmark or test of their own, beside any others on the broker."""
        return dataclasses.replace(
            self,
            topic_events=f"{prefix}.events",
            topic_deadletter=f"{prefix}.deadletter",
            topic_alerts=f"{prefix}.alerts",
            topic_rollups=f"{prefix}.rollups",
            topic_budgets=f"{prefix}.budgets",
            topic_enforcement=f"{prefix}.enforcement",
        )

    def for_reports(self) -> Settings:
        """These settings with the read-only reports user as the ClickHouse user, when set."""
        if not self.clickhouse_reports_user:
            return self
        return dataclasses.replace(
            self,
            clickhouse_user=self.clickhouse_reports_user,
            clickhouse_password=self.clickhouse_reports_password,
        )

    @property
    def clickhouse_http_url(self) -> str:
        return self.clickhouse_url or f"http://127.0.0.1:{self.local_clickhouse_http_port}"


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    problems = []
    protocol = values.get("kafka_security_protocol", "PLAINTEXT")
    if protocol.startswith("SASL") and not values.get("kafka_sasl_mechanism"):
        problems.append(f"{PREFIX}KAFKA_SASL_MECHANISM: required with {protocol}")
    if values.get("kafka_sasl_mechanism") and not (
        values.get("kafka_sasl_username") and values.get("kafka_sasl_password")
    ):
        problems.append(
            f"{PREFIX}KAFKA_SASL_USERNAME/PASSWORD: both required with a SASL mechanism"
        )
    if bool(values.get("kafka_tls_cert")) != bool(values.get("kafka_tls_key")):
        problems.append(f"{PREFIX}KAFKA_TLS_CERT/KEY: give both or neither")
    for name in ("kafka_tls_ca", "kafka_tls_cert", "kafka_tls_key"):
        path = values.get(name)
        if path is not None and not Path(path).is_file():
            problems.append(f"{PREFIX}{name.upper()}: no such file {path}")
    lateness = values.get("allowed_lateness_s", 300)
    memory = values.get("worker_dedup_memory_s", 600)
    if memory < lateness + 65:
        problems.append(
            f"{PREFIX}WORKER_DEDUP_MEMORY_S: must be at least the allowed lateness + 65 s"
            f" ({lateness + 65})"
        )
    if values.get("clickhouse_reports_password") and not values.get("clickhouse_reports_user"):
        problems.append(f"{PREFIX}CLICKHOUSE_REPORTS_PASSWORD: set without a reports user")
    url = values.get("clickhouse_url")
    if url is not None and not url.startswith(("http://", "https://")):
        problems.append(f"{PREFIX}CLICKHOUSE_URL: must start with http:// or https://")
    return problems


def env_name(field_name: str) -> str:
    """The variable behind a settings field, for CLI ``envvar=`` declarations."""
    for f in dataclasses.fields(Settings):
        if f.name == field_name:
            return str(f.metadata["env"])
    raise KeyError(field_name)


def load_settings(**overrides: Any) -> Settings:
    """Settings of a command: the environment plus its flags, and logging set up from them.

    Raises SettingsError listing every problem; the command line prints it as one error.
    """
    settings = Settings.from_env(**overrides)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return settings
