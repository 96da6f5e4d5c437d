"""A real ClickHouse (26.9, from the pinned chdb-core wheel) serving HTTP/TCP on 127.0.0.1.

The server is a detached Python process running ``_chdb_server.py`` (the one module on chdb's
private API); everything else, including this module, talks to it over HTTP like to any
ClickHouse, so code and tests behave the same against an external server. The local server
has only ClickHouse's passwordless ``default`` user: set ``SPENDSTREAM_CLICKHOUSE_URL`` to use a
server with real users.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

from streams.clickhouse import ensure_database, ping
from streams.errors import LocalStackError
from streams.local import _chdb_server
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
from streams.settings import Settings, env_name

SERVER_SCRIPT = Path(_chdb_server.__file__).resolve()
CLEAN_STOP_TIMEOUT_S = 15.0
TERM_TIMEOUT_S = 10.0


def render_config(settings: Settings) -> str:
    """The ``config.xml`` clickhouse-local reads from its working directory: loopback only."""
    return f"""<clickhouse>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{settings.local_clickhouse_http_port}</http_port>
    <tcp_port>{settings.local_clickhouse_tcp_port}</tcp_port>
    <!-- a stop waits for idle keep-alive connections (pooled clients): keep that short -->
    <keep_alive_timeout>2</keep_alive_timeout>
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
        if self.settings.clickhouse_user != "default" or self.settings.clickhouse_password:
            raise LocalStackError(
                "clickhouse: the local server only has the passwordless `default` user; unset "
                f"{env_name('clickhouse_user')}/{env_name('clickhouse_password')} or set "
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
                self._wait_ready(pid)
            try:
                ensure_database(self.settings)
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
        self.config_path.write_text(render_config(self.settings))
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
                ping(self.settings)
                return
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise failure(
                        "clickhouse",
                        f"the server (pid {pid}) did not answer on {self.url} within "
                        f"{self.settings.start_timeout_s:.0f}s ({type(exc).__name__})",
                        self.log_path,
                    ) from exc
            time.sleep(0.1)

    def down(self) -> bool:
        """Stop cleanly (KILL QUERY on the keep-alive), else SIGTERM, then SIGKILL.

        Returns False when it was not running.
        """
        self._require_local()
        with file_lock(self.lock_path):
            pid = self.pid()
            if pid is None:
                self.pid_path.unlink(missing_ok=True)
                return False
            self._kill_keepalive()
            if not wait_dead(pid, self._marker, CLEAN_STOP_TIMEOUT_S):
                terminate(pid, self._marker, TERM_TIMEOUT_S)
            self.pid_path.unlink(missing_ok=True)
            return True

    def _kill_keepalive(self) -> None:
        request = urllib.request.Request(  # noqa: S310 (fixed http://127.0.0.1 URL)
            self.url + "/", data=_chdb_server.keepalive_kill_sql().encode(), method="POST"
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
