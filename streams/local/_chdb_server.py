"""Serve ClickHouse over HTTP/TCP from the chdb-core wheel: the ONLY code on chdb's private API.

There is no ClickHouse server on PyPI and Debian's is from 2018; chdb-core carries the 26.9
engine, whose clickhouse-local can open the real listeners, but only through the private
one-shot entry point ``chdb._chdb.query``. chdb and chdb-core are pinned exactly for that
reason and ``tests/unit/test_chdb_entry_point.py`` fails loudly if an upgrade breaks it.

Run as a script (``python -P _chdb_server.py RUN_DIR DATA_DIR``) so that only the standard
library and chdb are loaded: ``import chdb`` first (its probe connection also reads
``./config.xml``), then change into RUN_DIR, whose ``config.xml`` sets the ports and the
loopback bind address, then block in a keep-alive query while the listeners serve. Stop it
with ``KILL QUERY`` on the keep-alive (see ``keepalive_kill_sql``) or SIGTERM.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

PINNED = "chdb==4.4.0 chdb-core==26.9.0"
BROKEN = "chdb upgrade broke the private server entry point; pin chdb==4.4.0 chdb-core==26.9.0"
KEEPALIVE_MARKER = "spendstream_keepalive"


def keepalive_sql() -> str:
    """A query that sleeps for years and returns nothing; a KILL takes effect within 0.25 s."""
    return (
        f"SELECT sleepEachRow(0.25) AS {KEEPALIVE_MARKER} FROM numbers(1000000000) "
        "SETTINGS max_block_size = 1, function_sleep_max_microseconds_per_block = 0 "
        "FORMAT Null"
    )


def server_sql() -> str:
    return f"SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; {keepalive_sql()}"


def keepalive_kill_sql() -> str:
    """KILL the keep-alive; the marker is split so this statement does not match itself."""
    head, tail = KEEPALIVE_MARKER[:6], KEEPALIVE_MARKER[6:]
    return f"KILL QUERY WHERE query LIKE concat('%{head}', '{tail}%') SYNC"


def entry_point() -> Callable[..., Any]:
    """``chdb._chdb.query`` after checking it still looks as it did when pinned.

    Raises RuntimeError naming the pinned versions when it is missing or changed.
    """
    try:
        import chdb  # noqa: F401  (the import sets up the engine the private module needs)
        from chdb import _chdb
    except ImportError as exc:
        raise RuntimeError(f"{BROKEN} (cannot import chdb._chdb: {exc})") from exc
    query = getattr(_chdb, "query", None)
    if not callable(query):
        raise RuntimeError(f"{BROKEN} (chdb._chdb.query is missing)")
    doc = (query.__doc__ or "").splitlines()[0] if query.__doc__ else ""
    for needed in ("queryStr", "output_format", "path"):
        if needed not in doc:
            raise RuntimeError(f"{BROKEN} (chdb._chdb.query signature changed: {doc!r})")
    return query


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: _chdb_server.py RUN_DIR DATA_DIR", file=sys.stderr)
        return 2
    run_dir, data_dir = argv
    try:
        query = entry_point()
    except RuntimeError as exc:
        print(f"FATAL: {exc}", file=sys.stderr, flush=True)
        return 3
    os.chdir(run_dir)
    print(f"chdb server: serving data in {data_dir} ({PINNED})", flush=True)
    # TSV becomes the server's default output format; clickhouse-connect's handshake needs it.
    query(server_sql(), "TSV", path=data_dir)
    # Reached when the keep-alive is killed (a clean stop) or the listeners failed to open;
    # ClickHouse has already printed the reason to stderr (the log) in the second case.
    print("chdb server: keep-alive ended, exiting", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
