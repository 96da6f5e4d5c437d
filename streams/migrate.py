"""ClickHouse schema: numbered append-only migrations, their rendering, and ``spendstream migrate``.

Migration files (``clickhouse/migrations/NNNN_name.sql``) are templates: ``${database}``,
``${on_cluster}``, ``${retention_days}`` and ``${dedup_horizon_hours}`` are filled from settings,
so one set of files serves a single server and a sharded cluster. What is recorded (and
compared on every run) is the checksum of the FILE, not of its rendering: changing a setting is
not an edit, changing a file that was applied is refused.

Cluster mode (``SPENDSTREAM_CLICKHOUSE_CLUSTER``) rewrites each statement: ``ON CLUSTER``, the
Replicated variant of every MergeTree engine, ``replicated_deduplication_window`` for the
non-replicated one, and for each table marked ``-- cluster: distributed [by KEY]`` a Distributed
table ``<name>_all`` over it, which is what the sink inserts into and the reports read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import click

from streams.clickhouse import DISTRIBUTED_SUFFIX, Target, connect
from streams.errors import MigrationError
from streams.settings import load_settings

MIGRATIONS_TABLE = "schema_migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENGINE = re.compile(r"ENGINE\s*=\s*(\w*)MergeTree\b(?:\s*\(([^()]*)\))?")
_CREATE_TABLE = re.compile(
    r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+`?(\w+)`?\.`?(\w+)`?", re.IGNORECASE
)
_DIRECTIVE = re.compile(r"^--\s*cluster:\s*distributed(?:\s+by\s+(.+?))?\s*$", re.MULTILINE)

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS ${database}.schema_migrations ${on_cluster}
(
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY name
"""


def clickhouse_dir() -> Path:
    """``clickhouse/`` in a source checkout, else the copy packaged inside ``streams``."""
    packaged = Path(__file__).resolve().parent / "_clickhouse"
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parent.parent / "clickhouse"
    if repo.is_dir():
        return repo
    raise MigrationError(f"clickhouse/ not found in {packaged} or {repo}")


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name, e.g. 0001_token_events.sql
    template: str

    @property
    def checksum(self) -> str:
        """sha256 of the file with normalised line ends (a CRLF checkout is not an edit)."""
        text = self.template.replace("\r\n", "\n")
        return hashlib.sha256(text.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Every ``NNNN_name.sql`` in order; refuses stray files and duplicate numbers."""
    folder = directory or clickhouse_dir() / "migrations"
    found: list[Migration] = []
    seen: dict[int, str] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in seen:
            raise MigrationError(f"{path.name} and {seen[version]} share number {version:04d}")
        seen[version] = path.name
        found.append(Migration(version, path.name, path.read_text()))
    return sorted(found, key=lambda m: m.version)


def split_statements(sql: str) -> list[str]:
    """Statements separated by ``;`` outside quotes and comments; comments stay attached."""
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end == -1 else end
            current.append(sql[i:end])
            i = end
            continue
        if ch == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end == -1 else end + 2
            current.append(sql[i:end])
            i = end
            continue
        if ch in "'`\"":
            j = i + 1
            while j < n and sql[j] != ch:
                j += 2 if sql[j] == "\\" else 1
            current.append(sql[i : j + 1])
            i = j + 1
            continue
        if ch == ";":
            statements.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    lines = [line.split("--", 1)[0].strip() for line in statement.splitlines()]
    return any(lines)


def render(template: str, target: Target) -> list[str]:
    """The statements of one migration for ``target`` (cluster rewrites included)."""
    values = {
        "database": f"`{target.database}`",
        "on_cluster": f"ON CLUSTER `{target.cluster}`" if target.cluster else "",
        "retention_days": str(int(target.retention_days)),
        "dedup_horizon_hours": str(int(target.dedup_horizon_hours)),
    }
    try:
        sql = string.Template(template).substitute(values)
    except (KeyError, ValueError) as exc:
        raise MigrationError(f"unknown or malformed placeholder in migration: {exc}") from exc
    rendered: list[str] = []
    for statement in split_statements(sql):
        rendered.extend(_for_cluster(statement, target) if target.cluster else [statement])
    return rendered


def _for_cluster(statement: str, target: Target) -> list[str]:
    """Replicated engine, replicated dedup window, and the Distributed table when marked."""
    cluster = target.cluster
    assert cluster is not None

    def replicated(match: re.Match[str]) -> str:
        args = ["'/clickhouse/tables/{shard}/{database}/{table}'", "'{replica}'"]
        if match.group(2) and match.group(2).strip():
            args.append(match.group(2).strip())
        return f"ENGINE = Replicated{match.group(1)}MergeTree({', '.join(args)})"

    out = _ENGINE.sub(replicated, statement)
    out = out.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
    result = [out]
    directive = _DIRECTIVE.search(statement)
    created = _CREATE_TABLE.search(statement)
    if directive and created:
        database, table = created.groups()
        key = f", {directive.group(1)}" if directive.group(1) else ""
        result.append(
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}{DISTRIBUTED_SUFFIX}` "
            f"ON CLUSTER `{cluster}` AS `{database}`.`{table}` "
            f"ENGINE = Distributed('{cluster}', '{database}', '{table}'{key})"
        )
    return result


def bookkeeping_statements(target: Target) -> list[str]:
    """The database and the table that records applied migrations."""
    on_cluster = f" ON CLUSTER `{target.cluster}`" if target.cluster else ""
    return [
        f"CREATE DATABASE IF NOT EXISTS `{target.database}`{on_cluster}",
        *render(_BOOKKEEPING, target),
    ]


class Client(Protocol):
    """The part of clickhouse-connect's client that migrations use."""

    # settings keyword-only: clickhouse-connect's third positional parameter is ``data``
    def command(self, cmd: str, parameters: Any = None, *, settings: Any = None) -> Any: ...

    def query(self, query: str, parameters: Any = None, settings: Any = None) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Plan:
    applied: list[Migration]
    pending: list[Migration]


def plan(migrations: Sequence[Migration], recorded: dict[str, str]) -> Plan:
    """Split ``migrations`` into applied and pending; refuse edits, removals and insertions."""
    by_name = {m.name: m for m in migrations}
    problems: list[str] = []
    for name, checksum in sorted(recorded.items()):
        migration = by_name.get(name)
        if migration is None:
            problems.append(f"{name} was applied but its file is gone (migrations are append-only)")
        elif migration.checksum != checksum:
            problems.append(
                f"{name} changed after it was applied (recorded sha256 {checksum[:12]}, file "
                f"{migration.checksum[:12]}): add a new migration instead of editing this one"
            )
    applied = [m for m in migrations if m.name in recorded]
    pending = [m for m in migrations if m.name not in recorded]
    if applied and pending and pending[0].version < applied[-1].version:
        problems.append(
            f"{pending[0].name} sorts before the applied {applied[-1].name}: number new "
            "migrations after the last applied one"
        )
    if problems:
        raise MigrationError("refusing to migrate:\n  - " + "\n  - ".join(problems))
    return Plan(applied, pending)


class Migrator:
    """Applies pending migrations in order and records each one after all its statements ran.

    Statements are idempotent (``IF NOT EXISTS``), so a migration interrupted half-way is
    simply run again.
    """

    def __init__(self, client: Client, target: Target) -> None:
        self.client = client
        self.target = target

    def recorded(self) -> dict[str, str]:
        for statement in bookkeeping_statements(self.target):
            self._run(statement, "bookkeeping")
        result = self.client.query(
            f"SELECT name, any(checksum) FROM `{self.target.database}`.`{MIGRATIONS_TABLE}` "
            "GROUP BY name"
        )
        return {str(name): str(checksum) for name, checksum in result.result_rows}

    def migrate(self, migrations: Iterable[Migration] | None = None) -> list[str]:
        """Apply what is pending; returns the names applied (empty: nothing to do)."""
        migrations = list(migrations or load_migrations())
        todo = plan(migrations, self.recorded()).pending
        for migration in todo:
            for statement in render(migration.template, self.target):
                self._run(statement, migration.name)
            self.client.command(
                f"INSERT INTO `{self.target.database}`.`{MIGRATIONS_TABLE}` (name, checksum) "
                "VALUES ({name:String}, {checksum:String})",
                parameters={"name": migration.name, "checksum": migration.checksum},
            )
        return [m.name for m in todo]

    def reconcile_ttls(self, migrations: Iterable[Migration] | None = None) -> list[str]:
        """Bring each table's TTL to the settings (retention, dedup horizon); what changed.

        TTL values are rendered from settings, so changing a setting changes no file: this
        applies the new value with ``MODIFY TTL`` (existing parts are not rewritten now; they
        expire at their next merge).
        """
        wanted = desired_ttls(list(migrations or load_migrations()), self.target)
        rows = self.client.query(
            "SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
            parameters={"db": self.target.database},
        ).result_rows
        current = {str(name): _current_ttl(str(engine)) for name, engine in rows}
        changed = []
        on_cluster = f" ON CLUSTER `{self.target.cluster}`" if self.target.cluster else ""
        for table, expression in sorted(wanted.items()):
            if table in current and current[table] != _normalise_ttl(expression):
                self.client.command(
                    f"ALTER TABLE `{self.target.database}`.`{table}`{on_cluster} "
                    f"MODIFY TTL {expression}",
                    settings={"materialize_ttl_after_modify": 0},
                )
                changed.append(f"{table}: TTL {current[table]} -> {_normalise_ttl(expression)}")
        return changed

    def _run(self, statement: str, where: str) -> None:
        try:
            self.client.command(statement)
        except Exception as exc:
            code = [line for line in statement.splitlines() if not line.startswith("--")]
            head = code[0].strip()[:80] if code else ""
            raise MigrationError(f"{where}: {type(exc).__name__}: {exc} (in: {head})") from exc


_TTL = re.compile(r"\nTTL (.+?)\s*(?:\n|$)")
_ENGINE_TTL = re.compile(r" TTL (.+?)(?: SETTINGS |$)")
_INTERVAL = re.compile(r"INTERVAL (\d+) (DAY|HOUR)")


def desired_ttls(migrations: Sequence[Migration], target: Target) -> dict[str, str]:
    """Table -> TTL expression of its last CREATE in ``migrations``, rendered for ``target``."""
    found: dict[str, str] = {}
    single = dataclasses.replace(target, cluster=None)
    for migration in migrations:
        for statement in render(migration.template, single):
            created, ttl = _CREATE_TABLE.search(statement), _TTL.search(statement)
            if created and ttl:
                found[created.group(2)] = ttl.group(1).strip()
    return found


def _normalise_ttl(expression: str) -> str:
    """The form ClickHouse shows in ``engine_full`` (``toIntervalDay(400)``)."""
    return _INTERVAL.sub(lambda m: f"toInterval{m.group(2).title()}({m.group(1)})", expression)


def _current_ttl(engine_full: str) -> str | None:
    match = _ENGINE_TTL.search(engine_full)
    return match.group(1).strip() if match else None


@click.command("migrate")
@click.option("--print-sql", is_flag=True, help="Print the rendered SQL; connect to nothing.")
@click.option("--cluster", envvar="SPENDSTREAM_CLICKHOUSE_CLUSTER", help="Render ON CLUSTER.")
def migrate_command(print_sql: bool, cluster: str | None) -> None:
    """Apply pending ClickHouse migrations in order (a no-op when none is pending)."""
    settings = load_settings(clickhouse_cluster=cluster)
    target = Target.from_settings(settings)
    migrations = load_migrations()
    if print_sql:
        for statement in bookkeeping_statements(target):
            click.echo(statement + ";\n")
        for migration in migrations:
            click.echo(f"-- {migration.name} (sha256 {migration.checksum[:12]})")
            for statement in render(migration.template, target):
                click.echo(statement + ";\n")
        return
    client = connect(settings)
    try:
        migrator = Migrator(client, target)
        applied = migrator.migrate(migrations)
        ttls = migrator.reconcile_ttls(migrations)
    finally:
        client.close()
    for name in applied:
        click.echo(f"applied {name}")
    for change in ttls:
        click.echo(change)
    if not applied and not ttls:
        click.echo(f"up to date ({len(migrations)} migrations)")
