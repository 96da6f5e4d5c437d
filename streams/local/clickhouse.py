"""A real ClickHouse (26.9, from the pinned chdb-core wheel) serving HTTP/TCP on 127.0.0.1.

The server is a detached Python process running ``_chdb_server.py`` (the one module on chdb's
private API); everything else, including this module, talks to it over HTTP like to any
ClickHouse, so code and tests behave the same against an external server. The local server
has only ClickHouse's passwordless ``default`` user, unless started secure
(``SPENDSTREAM_LOCAL_SECURE``): then a writer and a read-only reports user with passwords, and
``default`` keeps only the right the server's own login needs (see ``render_users``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from streams.clickhouse import ensure_database, ping, quote_identifier
from streams.errors import AuthError, LocalStackError
from streams.local import _chdb_server
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
    wait_dead,
)
from streams.local.secure import LocalSecrets
from streams.settings import Secret, Settings, env_name

SERVER_SCRIPT = Path(_chdb_server.__file__).resolve()
CLEAN_STOP_TIMEOUT_S = 15.0
TERM_TIMEOUT_S = 10.0


def render_config(settings: Settings, users: bool = False) -> str:
    """The ``config.xml`` clickhouse-local reads from its working directory: loopback only.

    ``users``: read the users (``users.xml`` beside it) instead of the built-in passwordless
    ``default`` with every right.
    """
    users_config = "\n    <users_config>users.xml</users_config>" if users else ""
    return f"""<clickhouse>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{settings.local_clickhouse_http_port}</http_port>
    <tcp_port>{settings.local_clickhouse_tcp_port}</tcp_port>
    <!-- a stop waits for idle keep-alive connections (pooled clients): keep that short -->
    <keep_alive_timeout>2</keep_alive_timeout>{users_config}
</clickhouse>
"""


def _sha256(secret: Secret) -> str:
    return hashlib.sha256(secret.reveal().encode()).hexdigest()


def render_users(settings: Settings, tls: LocalSecrets) -> str:
    """Users of the secure local server: a writer, a SELECT-only reports user, and ``default``
    cut down to the one right the server's own login needs.

    clickhouse-local logs itself in as the passwordless ``default`` from a loopback address,
    so neither a password nor a network rule can keep HTTP clients out of that user; instead
    it may only open the listeners (SYSTEM LISTEN) and sees no database. Passwords are stored
    as SHA-256, never in clear.
    """
    db = escape(quote_identifier(settings.clickhouse_database))
    writer = tls.password(f"clickhouse.{_secure.CLICKHOUSE_WRITER}")
    reports = tls.password(f"clickhouse.{_secure.CLICKHOUSE_REPORTS}")
    loopback = "<networks><ip>127.0.0.1</ip><ip>::1</ip></networks>"
    return f"""<clickhouse>
  <profiles>
    <default/>
    <!-- readonly 2: no writes or DDL, but per-query settings (clients send some) -->
    <reports><readonly>2</readonly></reports>
  </profiles>
  <quotas><default/></quotas>
  <users>
    <default>
      <password></password>
      {loopback}
      <profile>default</profile>
      <quota>default</quota>
      <grants><query>GRANT SYSTEM LISTEN ON *.*</query></grants>
    </default>
    <{_secure.CLICKHOUSE_WRITER}>
      <password_sha256_hex>{_sha256(writer)}</password_sha256_hex>
      {loopback}
      <profile>default</profile>
      <quota>default</quota>
      <grants>
        <query>GRANT ALL ON {db}.*</query>
        <query>GRANT TABLE ENGINE ON *</query>
        <query>GRANT CREATE TEMPORARY TABLE ON *.*</query>
        <!-- `spendstream local down` stops the server by killing its keep-alive query -->
        <query>GRANT SELECT ON system.processes</query>
        <query>GRANT KILL QUERY ON *.*</query>
      </grants>
    </{_secure.CLICKHOUSE_WRITER}>
    <{_secure.CLICKHOUSE_REPORTS}>
      <password_sha256_hex>{_sha256(reports)}</password_sha256_hex>
      {loopback}
      <profile>reports</profile>
      <quota>default</quota>
      <grants><query>GRANT SELECT ON {db}.*</query></grants>
    </{_secure.CLICKHOUSE_REPORTS}>
  </users>
</clickhouse>
"""


def _config_ports(config_path: Path) -> tuple[int, int] | None:
    """(http, tcp) ports of the config the running server was started with."""
    try:
        root = ElementTree.parse(config_path).getroot()  # noqa: S314 (our own file)
    except (FileNotFoundError, ElementTree.ParseError):
        return None
    http, tcp = root.findtext("http_port"), root.findtext("tcp_port")
    if http is None or tcp is None:
        return None
    return int(http), int(tcp)


class LocalClickHouse:
    """The embedded ClickHouse of one ``settings.home``: up, down, status."""

    name = "clickhouse"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.home / "clickhouse"
        self.run_dir = self.root / "run"
        self.data_dir = self.root / "data"
        self.config_path = self.run_dir / "config.xml"
        self.log_path = self.root / "clickhouse.log"
        self.pid_path = self.root / "clickhouse.pid"
        self.lock_path = self.root / ".lock"
        self.users_path = self.run_dir / "users.xml"
        self.secrets: LocalSecrets | None = None

    @property
    def client_settings(self) -> Settings:
        """Settings this class connects with: the writer user when secure."""
        if not self.settings.local_secure:
            return self.settings
        if self.secrets is None:
            self.secrets = _secure.ensure(self.settings)
        return self.secrets.settings_for(self.settings, "services")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.local_clickhouse_http_port}"

    @property
    def _marker(self) -> str:
        return str(self.run_dir)

    def _require_local(self) -> None:
        if not self.settings.clickhouse_is_local:
            raise LocalStackError(
                f"clickhouse is external ({env_name('clickhouse_url')} is set): nothing local "
                "to start or stop"
            )
        if not self.settings.local_secure and (
            self.settings.clickhouse_user != "default" or self.settings.clickhouse_password
        ):
            raise LocalStackError(
                "clickhouse: the local server only has the passwordless `default` user; unset "
                f"{env_name('clickhouse_user')}/{env_name('clickhouse_password')}, start it "
                f"with --secure ({env_name('local_secure')}) for password users, or set "
                f"{env_name('clickhouse_url')} to a server with users"
            )

    def pid(self) -> int | None:
        pid = read_pid(self.pid_path)
        if pid is not None and pid_alive(pid, self._marker):
            return pid
        return None

    def is_running(self) -> bool:
        return self.pid() is not None

    def up(self) -> bool:
        """Start the server, or reuse the one running; True when this call started it.

        Returns once it answers ``SELECT 1`` and the settings' database exists.
        """
        self._require_local()
        with file_lock(self.lock_path):
            pid = self.pid()
            started = pid is None
            if pid is None:
                pid = self._start()
                try:
                    self._wait_ready(pid)
                except LocalStackError:
                    # never leave a half-started server behind a failed `up`
                    terminate(pid, self._marker, TERM_TIMEOUT_S)
                    self.pid_path.unlink(missing_ok=True)
                    raise
            else:
                running = _config_ports(self.config_path)
                wanted = (
                    self.settings.local_clickhouse_http_port,
                    self.settings.local_clickhouse_tcp_port,
                )
                if running is not None and running != wanted:
                    raise LocalStackError(
                        f"clickhouse: already running (pid {pid}) on ports {running}, not "
                        f"{wanted}; run `spendstream local down` first"
                    )
                if self.users_path.is_file() != self.settings.local_secure:
                    mode = "with" if self.users_path.is_file() else "without"
                    raise LocalStackError(
                        f"clickhouse: already running (pid {pid}) {mode} password users; run "
                        "`spendstream local down` first"
                    )
                self._wait_ready(pid)
            try:
                ensure_database(self.client_settings)
            except Exception as exc:
                raise failure(
                    "clickhouse",
                    f"cannot create database {self.settings.clickhouse_database}: {exc}",
                    self.log_path,
                ) from exc
            return started

    def _start(self) -> int:
        require_free_ports(
            "clickhouse",
            {
                "http": self.settings.local_clickhouse_http_port,
                "tcp": self.settings.local_clickhouse_tcp_port,
            },
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secure = self.settings.local_secure
        self.config_path.write_text(render_config(self.settings, users=secure))
        if secure:
            self.client_settings  # noqa: B018 (makes the passwords once)
            assert self.secrets is not None
            fd = os.open(self.users_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(render_users(self.settings, self.secrets))
        else:
            self.users_path.unlink(missing_ok=True)
        # -P: do not put streams/local on sys.path (its kafka.py would shadow the package).
        argv = [sys.executable, "-P", str(SERVER_SCRIPT), str(self.run_dir), str(self.data_dir)]
        pid = spawn(argv, cwd=self.run_dir, log_path=self.log_path)
        self.pid_path.write_text(f"{pid}\n")
        return pid

    def _wait_ready(self, pid: int) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while True:
            if not pid_alive(pid, self._marker):
                self.pid_path.unlink(missing_ok=True)
                raise failure(
                    "clickhouse",
                    f"the server (pid {pid}) exited while starting{exit_note(pid)}",
                    self.log_path,
                )
            try:
                # A plain connect first: clickhouse-connect logs a warning per refused attempt.
                socket.create_connection(
                    ("127.0.0.1", self.settings.local_clickhouse_http_port), 1
                ).close()
                ping(self.client_settings)
                return
            except AuthError as exc:  # another server on the port, or a stale users.xml
                raise failure("clickhouse", str(exc), self.log_path) from exc
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise failure(
                        "clickhouse",
                        f"the server (pid {pid}) did not answer on {self.url} within "
                        f"{self.settings.start_timeout_s:.0f}s ({type(exc).__name__})",
                        self.log_path,
                    ) from exc
            time.sleep(0.1)

    def down(self, timeout: float | None = None) -> bool:
        """Stop cleanly (KILL QUERY on the keep-alive), else SIGTERM, then SIGKILL.

        With ``timeout``, SIGTERM at once and SIGKILL after it (data that is thrown away).
        Returns False when it was not running.
        """
        self._require_local()
        with file_lock(self.lock_path):
            pid = self.pid()
            if pid is None:
                self.pid_path.unlink(missing_ok=True)
                return False
            if timeout is not None:
                terminate(pid, self._marker, timeout)
            else:
                self._kill_keepalive()
                if not wait_dead(pid, self._marker, CLEAN_STOP_TIMEOUT_S):
                    terminate(pid, self._marker, TERM_TIMEOUT_S)
            self.pid_path.unlink(missing_ok=True)
            return True

    def _kill_keepalive(self) -> None:
        headers = {}
        # a server with users (started secure, whatever the settings say now): as the writer,
        # the one user that may see and kill the server's own keep-alive query
        tls = _secure.load(self.settings) if self.users_path.is_file() else None
        if tls is not None:
            headers = {
                "X-ClickHouse-User": _secure.CLICKHOUSE_WRITER,
                "X-ClickHouse-Key": tls.password(
                    f"clickhouse.{_secure.CLICKHOUSE_WRITER}"
                ).reveal(),
            }
        request = urllib.request.Request(  # noqa: S310 (fixed http://127.0.0.1 URL)
            self.url + "/",
            data=_chdb_server.keepalive_kill_sql().encode(),
            headers=headers,
            method="POST",
        )
        # The server may close the connection while answering: it is going away.
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            urllib.request.urlopen(request, timeout=10).read()  # noqa: S310

    def status(self) -> ServiceStatus:
        if not self.settings.clickhouse_is_local:
            return ServiceStatus(self.name, "external", self.settings.clickhouse_http_url)
        pid = self.pid()
        return ServiceStatus(
            self.name,
            "running" if pid is not None else "stopped",
            f"{self.url} (tcp {self.settings.local_clickhouse_tcp_port})",
            pid=pid,
            log_path=self.log_path,
            data_path=self.data_dir,
        )
