"""`spendstream migrate` against the real ClickHouse: applies, no-op on rerun, refuses edits."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from streams.cli import main
from streams.clickhouse import Target, connect
from streams.errors import MigrationError
from streams.migrate import Migrator, clickhouse_dir, load_migrations
from streams.settings import Settings, env_name


@pytest.fixture
def database(clickhouse_settings: Settings) -> Any:
    name = f"mig_{uuid.uuid4().hex[:8]}"
    client = connect(clickhouse_settings)
    yield dataclasses.replace(clickhouse_settings, clickhouse_database=name), client
    client.command(f"DROP DATABASE IF EXISTS `{name}`")
    client.close()


def _env(settings: Settings) -> dict[str, str]:
    return {
        env_name("clickhouse_url"): settings.clickhouse_http_url,
        env_name("clickhouse_database"): settings.clickhouse_database,
    }


def test_migrate_twice_is_a_no_op_and_records_checksums(database: Any) -> None:
    settings, client = database
    runner = CliRunner()
    first = runner.invoke(main, ["migrate"], env=_env(settings))
    assert first.exit_code == 0, first.output
    names = [m.name for m in load_migrations()]
    assert first.output.splitlines() == [f"applied {name}" for name in names]
    tables = {
        row[0]
        for row in client.query(
            "SELECT name FROM system.tables WHERE database = {db:String}",
            parameters={"db": settings.clickhouse_database},
        ).result_rows
    }
    assert {"token_events", "event_ids", "spend_hourly", "spend_daily"} <= tables
    second = runner.invoke(main, ["migrate"], env=_env(settings))
    assert second.exit_code == 0, second.output
    assert second.output.strip() == f"up to date ({len(names)} migrations)"
    recorded = client.query(
        f"SELECT name, checksum FROM `{settings.clickhouse_database}`.schema_migrations "
        "ORDER BY name"
    ).result_rows
    assert recorded == [(m.name, m.checksum) for m in load_migrations()]


def test_an_edited_applied_migration_is_refused(database: Any, tmp_path: Path) -> None:
    settings, client = database
    folder = tmp_path / "migrations"
    shutil.copytree(clickhouse_dir() / "migrations", folder)
    migrator = Migrator(client, Target.from_settings(settings))
    assert migrator.migrate(load_migrations(folder))
    first = sorted(folder.iterdir())[0]
    first.write_text(first.read_text().replace("UInt32 COMMENT", "UInt64 COMMENT"))
    with pytest.raises(MigrationError, match="changed after it was applied") as caught:
        migrator.migrate(load_migrations(folder))
    assert first.name in str(caught.value)
    (folder / "0099_new.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrator.migrate(load_migrations(folder))
    assert "0099_new.sql" not in migrator.recorded()  # a refused run applies nothing


def test_changed_retention_and_horizon_are_applied_as_ttls(database: Any) -> None:
    settings, client = database
    runner = CliRunner()
    assert runner.invoke(main, ["migrate"], env=_env(settings)).exit_code == 0
    env = {**_env(settings), env_name("retention_days"): "30", env_name("dedup_horizon_hours"): "6"}
    changed = runner.invoke(main, ["migrate"], env=env)
    assert changed.exit_code == 0, changed.output
    assert "token_events: TTL toDateTime(event_time) + toIntervalDay(400) -> " in changed.output
    assert "event_ids: TTL ingested_at + toIntervalHour(24) -> ingested_at + toIntervalHour(6)" in (
        changed.output
    )
    engine = client.command(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} "
        "AND name = 'spend_hourly'",
        parameters={"db": settings.clickhouse_database},
    )
    assert "TTL hour + toIntervalDay(30)" in engine
    again = runner.invoke(main, ["migrate"], env=env)
    assert again.output.startswith("up to date")
