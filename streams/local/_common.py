"""Process plumbing shared by the local Kafka and ClickHouse: pid files, liveness, stop, locks.

The services run detached (their own session) so that they outlive ``spendstream local up``;
every later command finds them again through a pid file, and checks the pid's command line so
that a recycled pid is never mistaken for (or killed as) our server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from streams.errors import LocalStackError

# Popen objects of the services this process started, so that they are reaped (a dead child
# that is never waited for stays a zombie and would look alive to ``os.kill(pid, 0)``).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """What ``spendstream local status`` shows for one service."""

    name: str
    state: str  # "running", "stopped", "external", "unreachable"
    endpoint: str
    pid: int | None = None
    log_path: Path | None = None
    data_path: Path | None = None
    detail: str = ""


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line contains ``marker`` (our config path)."""
    child = _children.get(pid)
    if child is not None:
        # Our own child: no command line check (it reads empty while exec is under way).
        return child.poll() is None  # once reaped, kept in _children for exit_code()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in {"Z", "X"}:
        return False
    return marker.encode() in cmdline


def spawn(
    argv: Sequence[str], *, cwd: Path, log_path: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start a detached process (own session), stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting =====\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=dict(env) if env is not None else None,
            )
        except OSError as exc:
            raise LocalStackError(f"cannot run {argv[0]}: {exc}") from exc
    _children[proc.pid] = proc
    return proc.pid


def exit_code(pid: int) -> int | None:
    """Exit code of a child this process started, once it has exited."""
    child = _children.get(pid)
    return None if child is None else child.poll()


def exit_note(pid: int) -> str:
    """ " (exit code N)" or " (killed by SIGX)" for a child of this process, else ""."""
    code = exit_code(pid)
    if code is None:
        return ""
    if code < 0:
        return f" (killed by {signal.Signals(-code).name})"
    return f" (exit code {code})"


def wait_dead(pid: int, marker: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid, marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, marker: str, timeout: float) -> str:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; returns how it ended."""
    if not pid_alive(pid, marker):
        return "not running"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_dead(pid, marker, timeout):
        return "stopped"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if wait_dead(pid, marker, 10.0):
        return "killed"
    raise LocalStackError(f"process {pid} survived SIGKILL")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports free right now (for tests and parallel stacks)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def require_free_ports(service: str, ports: Mapping[str, int]) -> None:
    busy = [f"{name} {port}" for name, port in ports.items() if not port_free(port)]
    if busy:
        raise LocalStackError(
            f"{service}: port(s) {', '.join(busy)} on 127.0.0.1 already in use by another "
            "process; stop it or choose other ports (see `spendstream local up --help`)"
        )


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock across processes (two `up`s at once, parallel installs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for error messages that point at the cause."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16_384))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def failure(service: str, what: str, log_path: Path) -> LocalStackError:
    """A LocalStackError naming the service, the log to read and its last lines."""
    last = tail(log_path)
    shown = f"\n--- last lines of {log_path} ---\n{last}" if last else ""
    return LocalStackError(f"{service}: {what}; read {log_path}{shown}")
