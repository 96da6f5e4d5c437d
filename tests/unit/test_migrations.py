"""Migrations: file rules, rendering (single server and cluster), planning. Nothing running."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.clickhouse import Target
from streams.errors import MigrationError
from streams.migrate import (
    Migration,
    bookkeeping_statements,
    load_migrations,
    plan,
    render,
    split_statements,
)

MIGRATIONS = load_migrations()
CLUSTER = Target(database="spend", cluster="main", retention_days=90, dedup_horizon_hours=48)


def all_statements(target: Target) -> list[str]:
    return [s for m in MIGRATIONS for s in render(m.template, target)]


def code(statement: str) -> str:
    return "\n".join(line for line in statement.splitlines() if not line.startswith("--"))


def test_files_are_numbered_in_order_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_every_create_is_idempotent_and_never_populates() -> None:
    for statement in all_statements(Target()):
        body = code(statement).upper()
        assert "POPULATE" not in body
        if body.lstrip().startswith("CREATE"):
            assert "IF NOT EXISTS" in body, statement


def test_every_order_by_and_partition_by_has_a_comment_right_above() -> None:
    for migration in MIGRATIONS:
        lines = migration.template.splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^\s*(ORDER|PARTITION) BY", line):
                assert lines[i - 1].lstrip().startswith("--"), f"{migration.name}:{i + 1}"


def test_every_table_receiving_inserts_has_a_dedup_window() -> None:
    for statement in all_statements(Target()):
        if "ENGINE = " in statement and "MergeTree" in statement:
            assert "non_replicated_deduplication_window" in statement, statement[:200]


def test_views_come_after_their_source_and_target_tables() -> None:
    created: list[str] = []
    for statement in all_statements(Target()):
        body = code(statement)
        table = re.search(r"CREATE TABLE IF NOT EXISTS `spendstream`\.(\w+)", body)
        if table:
            created.append(table.group(1))
        view = re.search(r"TO `spendstream`\.(\w+)[\s\S]*FROM `spendstream`\.(\w+)", body)
        if "MATERIALIZED VIEW" in body:
            assert view, body
            assert view.group(1) in created and view.group(2) in created


def test_render_fills_settings() -> None:
    sql = "\n".join(all_statements(Target(retention_days=90, dedup_horizon_hours=48)))
    assert "INTERVAL 90 DAY" in sql and "INTERVAL 48 HOUR" in sql
    assert "${" not in sql and "ON CLUSTER" not in sql


def test_cluster_rendering() -> None:
    statements = all_statements(CLUSTER)
    for statement in statements:
        body = code(statement)
        if body.lstrip().startswith("CREATE"):
            assert "ON CLUSTER `main`" in body, body[:120]
        assert "non_replicated" not in body
        assert not re.search(r"ENGINE = (Aggregating|Replacing|Summing)?MergeTree\b", body)
    joined = "\n".join(statements)
    assert (
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', "
        "'{replica}')" in joined
    )
    assert "ReplicatedAggregatingMergeTree(" in joined
    assert "replicated_deduplication_window = 1000" in joined
    # deterministic sharding: a retried block splits over shards the same way
    assert (
        "CREATE TABLE IF NOT EXISTS `spend`.`token_events_all` ON CLUSTER `main` AS "
        "`spend`.`token_events` ENGINE = Distributed('main', 'spend', 'token_events', "
        "cityHash64(event_id))" in statements
    )
    for table in ("event_ids", "spend_hourly", "spend_daily"):
        assert any(f"`spend`.`{table}_all`" in s and "Distributed(" in s for s in statements)
    assert CLUSTER.table("token_events") == "`spend`.`token_events_all`"
    assert Target().table("token_events") == "`spendstream`.`token_events`"
    assert (
        bookkeeping_statements(CLUSTER)[0]
        == "CREATE DATABASE IF NOT EXISTS `spend` ON CLUSTER `main`"
    )


def test_replicated_engine_keeps_its_arguments() -> None:
    template = (
        "CREATE TABLE IF NOT EXISTS ${database}.t ${on_cluster} (v UInt8)\n"
        "ENGINE = ReplacingMergeTree(v)\nORDER BY v"
    )
    (statement,) = render(template, CLUSTER)
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', "
        "'{replica}', v)" in statement
    )


def test_split_statements_respects_quotes_and_comments() -> None:
    sql = "-- a; comment\nSELECT 'a;b' ;\n/* x; */ SELECT `c;d`;\n-- trailing only\n"
    assert split_statements(sql) == ["-- a; comment\nSELECT 'a;b'", "/* x; */ SELECT `c;d`"]


def test_bad_identifiers_and_placeholders_are_refused() -> None:
    with pytest.raises(MigrationError):
        Target(database="x; DROP")
    with pytest.raises(MigrationError):
        render("SELECT ${nope}", Target())


def test_plan_refuses_edited_removed_and_inserted_migrations() -> None:
    a, b, c = (Migration(i, f"000{i}_m.sql", f"SELECT {i}") for i in (1, 2, 3))
    assert plan([a, b, c], {a.name: a.checksum}).pending == [b, c]
    assert plan([a, b, c], {m.name: m.checksum for m in (a, b, c)}).pending == []
    edited = Migration(1, a.name, "SELECT 100")
    with pytest.raises(MigrationError, match=r"0001_m\.sql changed after it was applied"):
        plan([edited, b], {a.name: a.checksum})
    with pytest.raises(MigrationError, match="its file is gone"):
        plan([b], {a.name: a.checksum, b.name: b.checksum})
    with pytest.raises(MigrationError, match="sorts before the applied"):
        plan([a, b, c], {a.name: a.checksum, c.name: c.checksum})


def test_checksum_ignores_line_endings_only() -> None:
    assert Migration(1, "x", "a\r\nb").checksum == Migration(1, "x", "a\nb").checksum
    assert Migration(1, "x", "a\nb").checksum != Migration(1, "x", "a\nc").checksum


def test_stray_and_duplicate_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0001_b.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="share number"):
        load_migrations(tmp_path)
    (tmp_path / "0001_b.sql").unlink()
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(MigrationError, match="NNNN_lowercase_name"):
        load_migrations(tmp_path)


def test_desired_ttls_come_from_the_rendered_migrations() -> None:
    from streams.migrate import _normalise_ttl, desired_ttls

    ttls = desired_ttls(MIGRATIONS, CLUSTER)
    assert ttls["token_events"] == "toDateTime(event_time) + INTERVAL 90 DAY"
    assert ttls["event_ids"] == "ingested_at + INTERVAL 48 HOUR"
    assert _normalise_ttl(ttls["event_ids"]) == "ingested_at + toIntervalHour(48)"
    assert "schema_migrations" not in ttls
