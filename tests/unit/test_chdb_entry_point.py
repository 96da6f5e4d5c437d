"""chdb's private entry point, on which the local ClickHouse relies: fails loudly if it breaks.

Starting the server needs nothing else running (it is a Python subprocess, up in < 1 s), so
this stays a unit test and runs on every ``pytest tests/unit``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.clickhouse import connect
from streams.local import LocalClickHouse, _chdb_server
from streams.local._common import free_ports
from streams.settings import Settings

BROKEN = "chdb upgrade broke the private server entry point; pin chdb==4.4.0 chdb-core==26.9.0"


def test_private_entry_point_exists_with_the_expected_signature() -> None:
    import chdb
    from chdb import _chdb

    query = getattr(_chdb, "query", None)
    assert callable(query), BROKEN
    signature = (query.__doc__ or "").splitlines()[0]
    for part in ("queryStr: str", "output_format: str", "path: str"):
        assert part in signature, f"{BROKEN} (signature now: {signature!r})"
    assert chdb.__version__ == "4.4.0", f"{BROKEN} (chdb is {chdb.__version__})"
    assert callable(_chdb_server.entry_point()), BROKEN


def test_missing_entry_point_fails_with_the_pinned_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chdb import _chdb

    monkeypatch.delattr(_chdb, "query")
    with pytest.raises(RuntimeError, match=r"pin chdb==4\.4\.0 chdb-core==26\.9\.0"):
        _chdb_server.entry_point()


def test_changed_signature_fails_with_the_pinned_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chdb import _chdb

    def query(sql: str) -> None:
        """query(sql: str) -> None"""

    monkeypatch.setattr(_chdb, "query", query)
    with pytest.raises(RuntimeError, match="signature changed"):
        _chdb_server.entry_point()


def test_server_script_loads_nothing_but_chdb() -> None:
    source = inspect.getsource(_chdb_server)
    assert "from streams" not in source and "import streams" not in source


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalClickHouse]:
    http, tcp = free_ports(2)
    settings = Settings.from_env(
        {},
        home=tmp_path,
        local_clickhouse_http_port=http,
        local_clickhouse_tcp_port=tcp,
        start_timeout_s=60.0,
    )
    clickhouse = LocalClickHouse(settings)
    yield clickhouse
    clickhouse.down()


def test_server_answers_over_http(server: LocalClickHouse) -> None:
    try:
        server.up()
    except Exception as exc:
        pytest.fail(f"{BROKEN}: the server did not start: {exc}")
    client = connect(server.settings)
    try:
        version = client.query("SELECT version()").result_rows[0][0]
        assert version.startswith("26.9."), f"{BROKEN} (server version {version})"
        databases = {row[0] for row in client.query("SHOW DATABASES").result_rows}
        assert server.settings.clickhouse_database in databases
    finally:
        client.close()
    assert server.down() is True
    assert not server.is_running()
