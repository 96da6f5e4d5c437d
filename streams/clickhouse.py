"""The one ClickHouse client factory, and where spendstream's tables are (``Target``).

Every room that talks to ClickHouse (migrations, the sink, reports, budget baselines, the local
stack's health check) gets its client from ``connect``, so a local server and a production
server or cluster are reached the same way. clickhouse-connect is imported only when a client is
made: the SDK and the light commands install without it.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from streams.errors import AuthError, ClickHouseUnavailable, MigrationError, missing_extra
from streams.settings import Settings, env_name

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

#: on a cluster, the Distributed table over a local one is named ``<table>_all``
DISTRIBUTED_SUFFIX = "_all"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where spendstream's tables are and how migrations are rendered: database, cluster, TTLs."""

    database: str = "spendstream"
    cluster: str | None = None
    retention_days: int = 400
    dedup_horizon_hours: int = 24

    def __post_init__(self) -> None:
        for what, value in (("database", self.database), ("cluster", self.cluster)):
            if value is not None and not _IDENTIFIER.match(value):
                raise MigrationError(f"{what} name {value!r} is not a plain identifier")

    @classmethod
    def from_settings(cls, settings: Settings) -> Target:
        return cls(
            database=settings.clickhouse_database,
            cluster=settings.clickhouse_cluster,
            retention_days=settings.retention_days,
            dedup_horizon_hours=settings.dedup_horizon_hours,
        )

    def table(self, name: str) -> str:
        """The qualified table to insert into or read from: the Distributed one on a cluster."""
        suffix = DISTRIBUTED_SUFFIX if self.cluster else ""
        return f"`{self.database}`.`{name}{suffix}`"


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


#: ClickHouse error codes that retrying cannot fix: the login or the user's rights
AUTH_ERROR_CODES = {"516": "AUTHENTICATION_FAILED", "497": "ACCESS_DENIED", "192": "UNKNOWN_USER"}


def auth_error(settings: Settings, exc: Exception) -> AuthError | None:
    """Our AuthError for a ClickHouse error that says the login or a right is missing."""
    text = str(exc)
    for code, name in AUTH_ERROR_CODES.items():
        if f"Code: {code}." in text or f"({name})" in text:
            # settings.for_reports() logs in as the reports user: name its settings
            reports = bool(settings.clickhouse_reports_user) and (
                settings.clickhouse_user == settings.clickhouse_reports_user
            )
            user, password = (
                ("clickhouse_reports_user", "clickhouse_reports_password")
                if reports
                else ("clickhouse_user", "clickhouse_password")
            )
            return AuthError(
                f"ClickHouse at {settings.clickhouse_http_url} refused user "
                f"{settings.clickhouse_user!r} ({name}): check {env_name(user)} "
                f"and {env_name(password)}"
            )
    return None


def connect(settings: Settings, database: str | None = None, **kwargs: Any) -> Client:
    """A clickhouse-connect client for the server ``settings`` point at (local or external).

    A wrong user or password raises AuthError (clickhouse-connect queries on connect).
    """
    try:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import DatabaseError
    except ImportError as exc:
        raise missing_extra("sink", "clickhouse-connect") from exc

    url = urlsplit(settings.clickhouse_http_url)
    secure = url.scheme == "https"
    password = settings.clickhouse_password.reveal() if settings.clickhouse_password else ""
    try:
        return clickhouse_connect.get_client(
            host=url.hostname or "127.0.0.1",
            port=url.port or (8443 if secure else 8123),
            username=settings.clickhouse_user,
            password=password,
            secure=secure,
            database=database or "",
            **kwargs,
        )
    except DatabaseError as exc:
        refused = auth_error(settings, exc)
        if refused is not None:
            raise refused from exc
        raise


def ping(settings: Settings) -> str:
    """The server version, or an exception if it does not answer ``SELECT 1``."""
    client = connect(settings, connect_timeout=2, send_receive_timeout=5)
    try:
        client.query("SELECT 1")
        return str(client.server_version)
    finally:
        client.close()


def check_reachable(settings: Settings, timeout: float = 10.0) -> str:
    """``SELECT 1`` against whatever ClickHouse ``settings`` point at; returns its version."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ping(settings)
        except AuthError:
            raise  # waiting will not fix credentials
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise ClickHouseUnavailable(
                    f"clickhouse at {settings.clickhouse_http_url} did not answer within "
                    f"{timeout:.0f}s: {type(exc).__name__}: {exc}"
                ) from exc
            time.sleep(0.2)


def ensure_database(settings: Settings) -> None:
    client = connect(settings)
    try:
        client.command(
            f"CREATE DATABASE IF NOT EXISTS {quote_identifier(settings.clickhouse_database)}"
        )
    finally:
        client.close()
