"""The version table read exactly as Alembic reads it, and settings that never reach SQL unescaped.

Real databases (PostgreSQL through the fixtures, SQLite files) and the real
command line (``python -m dbinit verify --format json``). Alembic is the
oracle, run in this process on the same database: ``get_current_heads()``
(what it reads), ``current --check-heads`` and ``upgrade heads`` (whether it
thinks the database is at head and can start from it). dbinit must read the
same rows and call the database ready exactly when Alembic does -- except
where a stated policy says otherwise (``DBINIT_ALLOW_AHEAD``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbinit.database import MAX_REVISION_SHOWN, ProbeOptions, open_probe
from tests.plugins.databases import TestDatabase, add_revision, clean_env, run_dbinit

BASE, MIDDLE, HEAD = "374752db316e", "5c9a1e7b2f40", "8d3f6b2a9c11"
NEWER = "a4eadf000001"  # shaped like this project's ids: a newer release's revision
Row = str | int | None


# -- helpers ---------------------------------------------------------------------------


def verify(project: Path, url: str, **env: str) -> tuple[int, dict[str, Any], str]:
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=url, **env)
    assert "Traceback" not in result.stderr, result.output
    assert result.stdout.strip(), result.output
    return result.returncode, json.loads(result.stdout), result.stderr


def entries(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["checks"]}


async def _pg(dsn: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await connection.fetch(statement, *args)]
    finally:
        await connection.close()


def pg(database: TestDatabase, statement: str, *args: object) -> list[tuple[object, ...]]:
    """One statement with parameters on the test's PostgreSQL database."""
    return asyncio.run(_pg(database.parsed.asyncpg_dsn(), statement, *args))


def sqlite_path(database: TestDatabase) -> Path:
    path = database.parsed.sqlite_path
    assert path is not None
    return path


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def set_scs(database: TestDatabase, value: str) -> None:
    """standard_conforming_strings for every new session on the test's database."""
    name = ident(database.parsed.database)
    database.sql(f"ALTER DATABASE {name} SET standard_conforming_strings = {value}")


def rewrite_version_table(database: TestDatabase, rows: list[Row], column: str = "VARCHAR") -> None:
    """Replace alembic_version by a table without constraints holding exactly ``rows``."""
    ddl = ["DROP TABLE IF EXISTS alembic_version", f"CREATE TABLE alembic_version (version_num {column})"]
    if database.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(sqlite_path(database))) as connection, connection:
            for statement in ddl:
                connection.execute(statement)
            connection.executemany("INSERT INTO alembic_version VALUES (?)", [(r,) for r in rows])
        return
    for statement in ddl:
        pg(database, statement)
    for row in rows:
        pg(database, "INSERT INTO alembic_version VALUES ($1)", row)


# -- Alembic, the oracle ------------------------------------------------------------------


@contextlib.contextmanager
def alembic(project: Path, database: TestDatabase) -> Iterator[tuple[Any, Any, Any]]:
    """(config, script directory, sync connection) for ``database``, as Alembic opens them."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool

    config = Config(str(project / "alembic.ini"))
    saved = list(sys.path)
    try:
        script = ScriptDirectory.from_config(config)
    finally:
        sys.path[:] = saved  # prepend_sys_path
    engine = create_engine(database.parsed.for_sqlalchemy(async_driver=False), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            yield config, script, connection
    finally:
        engine.dispose()


def alembic_heads(project: Path, database: TestDatabase, **opts: str) -> tuple[object, ...]:
    """``MigrationContext.get_current_heads()``: the rows as Alembic reads them."""
    from alembic.runtime.migration import MigrationContext

    with alembic(project, database) as (_, _, connection):
        return tuple(MigrationContext.configure(connection, opts=opts).get_current_heads())


def alembic_upgrade(project: Path, database: TestDatabase, target: str = "heads") -> str | None:
    """``alembic upgrade TARGET`` as env.py runs it (sync); the error, or None."""
    from alembic.runtime.environment import EnvironmentContext

    with alembic(project, database) as (config, script, connection):
        environment = EnvironmentContext(
            config, script, fn=lambda rev, _: script._upgrade_revs(target, rev), destination_rev=target
        )
        try:
            environment.configure(connection=connection, transaction_per_migration=True)
            with environment.begin_transaction():
                environment.run_migrations()
            connection.commit()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


@dataclasses.dataclass(frozen=True)
class AlembicVerdict:
    heads: tuple[object, ...]
    at_heads: bool  # `alembic current --check-heads`
    upgrade_error: str | None
    upgraded: bool  # `alembic upgrade heads` changed the version table

    @property
    def ready(self) -> bool:
        """Alembic's view of "ready": at its heads, and an upgrade that has nothing to do."""
        return self.at_heads and self.upgrade_error is None and not self.upgraded


def alembic_verdict(project: Path, database: TestDatabase) -> AlembicVerdict:
    """What Alembic thinks of the database (its upgrade runs last: it may migrate)."""
    heads = alembic_heads(project, database)
    with alembic(project, database) as (_, script, _):
        at_heads = set(heads) == set(script.get_heads())
    error = alembic_upgrade(project, database)
    return AlembicVerdict(heads, at_heads, error, alembic_heads(project, database) != heads)


def shown_as_current(rows: tuple[object, ...]) -> str | None:
    """``current_revision`` for rows Alembic read: the strings, sorted, each capped."""
    texts = sorted(r for r in rows if isinstance(r, str))
    capped = [t if len(t) <= MAX_REVISION_SHOWN else t[:MAX_REVISION_SHOWN] + "…" for t in texts]
    return ",".join(capped) if texts else None


# -- B: every version-row state, against Alembic -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class State:
    rows: list[Row]
    code: int  # verify's exit code
    failing: str | None  # the check that fails (None: verified)
    says: str  # in that check's message (or, verified, in E004's)
    schema_at: str = HEAD  # the revision the schema was really migrated to
    column: str = "VARCHAR"
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: dbinit's stated policy differs from Alembic here (DBINIT_ALLOW_AHEAD)
    policy: bool = False


STATES = {
    "at-head": State([HEAD], 0, None, f"Current revision {HEAD} is known"),
    "no-rows": State([], 4, "dbinit.E004", "is empty: the database has no current revision"),
    "trailing-space": State([HEAD + " "], 4, "dbinit.E004", f"'{HEAD} ' (leading or trailing whitespace)"),
    "two-ids-in-one-row": State(
        [f"{MIDDLE} {HEAD}"], 4, "dbinit.E004", "(whitespace inside: Alembic stores one revision per row)"
    ),
    "ancestor-beside-head": State([BASE, HEAD], 4, "dbinit.E004", f"overlap ({BASE} comes before {HEAD})"),
    "ancestor-beside-behind": State(
        [BASE, MIDDLE], 4, "dbinit.E004", f"overlap ({BASE} comes before {MIDDLE})", schema_at=MIDDLE
    ),
    "null": State([None], 4, "dbinit.E004", "NULL (Alembic reads it as no revision at all)"),
    "null-beside-head": State([None, HEAD], 4, "dbinit.E004", "NULL (Alembic reads it as no revision"),
    "empty-string": State([""], 4, "dbinit.E004", "'' (empty)"),
    "backslash": State(["a\\b"], 4, "dbinit.E004", "'a\\b' is not in this image's migrations"),
    "tab": State(["8d3f\t6b2a9c11"], 4, "dbinit.E004", "'8d3f\\t6b2a9c11' (whitespace inside"),
    "newline": State([HEAD + "\nx"], 4, "dbinit.E004", "(whitespace inside"),
    "control-character": State([HEAD + "\x01"], 4, "dbinit.E004", "(control characters)"),
    "one-megabyte": State(["f" * 1_000_000], 4, "dbinit.E004", "(1000000 characters, longer than any"),
    "garbage": State(["garbage"], 4, "dbinit.E004", "is not shaped like this project's revision ids"),
    "garbage-allow-ahead": State(
        ["garbage"], 4, "dbinit.E004", "not taken for a newer release", env={"DBINIT_ALLOW_AHEAD": "true"}
    ),
    "abbreviation": State([HEAD[:4]], 4, "dbinit.E004", f"'8d3f' (an abbreviation of {HEAD}"),
    "illegal-character": State(["8d3f-6b2a"], 4, "dbinit.E004", "which Alembic does not allow"),
    "integer-column": State([5], 4, "dbinit.E004", "5 (a number, not a string", column="INTEGER"),
    "duplicate-head": State([HEAD, HEAD], 0, None, "is known"),
    "duplicate-behind": State([MIDDLE, MIDDLE], 4, "dbinit.E005", "pending (8d3f6b2a9c11)", schema_at=MIDDLE),
    "behind": State([MIDDLE], 4, "dbinit.E005", "1 migration(s) pending", schema_at=MIDDLE),
    "ahead": State([NEWER], 4, "dbinit.E004", f"Current revision {NEWER} is not in this image's"),
    "ahead-allowed": State(
        [NEWER], 0, None, "accepted as a database ahead", env={"DBINIT_ALLOW_AHEAD": "true"}, policy=True
    ),
}


@pytest.mark.parametrize("name", STATES)
def test_version_rows_are_read_and_judged_as_alembic_does(
    project: Path, database: TestDatabase, name: str
) -> None:
    state = STATES[name]
    assert alembic_upgrade(project, database, state.schema_at) is None
    rewrite_version_table(database, state.rows, state.column)

    code, report, _ = verify(project, database.url, **state.env)
    checks = entries(report)
    assert code == state.code, report
    if state.failing is None:
        assert report["ok"] is True
        assert state.says in checks["dbinit.E004"]["message"]
    else:
        failed = checks[state.failing]
        assert failed["status"] == "failed", report
        assert report["message"] == f"{failed['message']} [{state.failing}]"
        assert state.says in failed["message"], failed["message"]
        assert failed["hint"]
    # NULL or empty rows are never "no revision recorded", let alone an empty database
    assert checks["dbinit.E002"]["status"] == "passed"
    if any(r is None or r == "" for r in state.rows):
        assert "is empty" not in report["message"]
    # whatever is in the table, a message quotes at most 80 characters of it
    assert all(len(c["message"]) < 600 and len(c["hint"]) < 600 for c in report["checks"])

    # dbinit read exactly the rows Alembic reads (nothing trimmed, split or left escaped)
    heads = alembic_heads(project, database)
    assert sorted(heads, key=repr) == sorted(state.rows, key=repr)
    assert report["current_revision"] == shown_as_current(heads)

    # ... and calls the database ready exactly when Alembic does
    verdict = alembic_verdict(project, database)
    if state.policy:  # DBINIT_ALLOW_AHEAD: ready for dbinit, unknown to Alembic
        assert report["ok"] and not verdict.ready
        assert "Can't locate revision" in str(verdict.upgrade_error)
    else:
        assert report["ok"] == verdict.ready, verdict


@pytest.mark.parametrize("row", ["garbage", HEAD + " ", "f" * 1_000_000])
@pytest.mark.parametrize("allow_ahead", ["false", "true"])
def test_migrate_does_not_take_a_bad_row_for_a_newer_release(
    project: Path, database: TestDatabase, row: str, allow_ahead: str
) -> None:
    assert alembic_upgrade(project, database) is None
    rewrite_version_table(database, [row])
    result = run_dbinit("migrate", cwd=project, DATABASE_URL=database.url, DBINIT_ALLOW_AHEAD=allow_ahead)
    assert result.returncode == 2, result.output[:2000]  # final: no retry fixes it
    error = next(line for line in result.stderr.splitlines() if line.startswith("Error: "))
    assert len(error) < 600
    if allow_ahead == "true":
        assert "does not verify as ahead of it" in error
    assert alembic_heads(project, database) == (row,)  # untouched


@pytest.mark.parametrize("revision", ["a\\b", "tab\there", "new\nline", "quote'd"])
def test_a_revision_id_alembic_allows_verifies_after_dbinit_migrates_it(
    project: Path, database: TestDatabase, revision: str
) -> None:
    # COPY's text output writes a backslash as \\ and a tab as \t: read back unescaped
    path = add_revision(project, revision, HEAD)
    path.rename(path.with_name("c0de00000001_odd.py"))  # a newline cannot be in a file name Alembic reads
    if "'" in revision:
        # Alembic itself writes version_num as literal_column("'%s'"): a quote breaks its SQL
        assert run_dbinit("migrate", cwd=project, DATABASE_URL=database.url).returncode == 5
        return
    migrated = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=database.url)
    assert migrated.returncode == 0, migrated.output
    assert alembic_heads(project, database) == (revision,)

    code, report, _ = verify(project, database.url)
    assert code == 0, report
    assert report["current_revision"] == revision
    assert report["head_revisions"] == [revision]
    assert alembic_verdict(project, database).ready


# -- C: an object named like the version table that is not one ------------------------------------


OBJECTS = {
    "sequence": ("CREATE SEQUENCE alembic_version", "is a sequence, not a table"),
    "view": (
        "CREATE VIEW alembic_version AS SELECT 1 AS x",
        "is a view without a version_num column (its columns: x)",
    ),
    "table": (
        "CREATE TABLE alembic_version (id integer)",
        "is a table without a version_num column (its columns: id)",
    ),
    "index": ("CREATE INDEX alembic_version ON products (name)", "is an index, not a table"),
    "type": ("CREATE TYPE alembic_version AS (x integer)", "is a composite type, not a table"),
}
SQLITE_OBJECTS = ("view", "table")


@pytest.mark.parametrize("kind", OBJECTS)
def test_an_object_named_like_the_version_table_is_not_ready_never_a_traceback(
    project: Path, database: TestDatabase, kind: str
) -> None:
    if database.backend == "sqlite" and kind not in SQLITE_OBJECTS:
        pytest.skip("SQLite has no such object")
    assert alembic_upgrade(project, database) is None
    ddl, says = OBJECTS[kind]
    database.sql("DROP TABLE alembic_version")
    database.sql(ddl)

    code, report, _ = verify(project, database.url)
    assert code == 4, report
    entry = entries(report)["dbinit.E003"]
    assert entry["status"] == "failed"
    schema = "main" if database.backend == "sqlite" else "public"
    assert entry["message"] == f"'alembic_version' in schema '{schema}' {says}"
    assert "DBINIT_VERSION_TABLE" in entry["hint"] and "Rename or drop" in entry["hint"]
    assert report["message"].endswith("[dbinit.E003]")
    # the readiness probe's prepared statement falls back the same way
    options = ProbeOptions(None, "alembic_version", 5, 5, "dbinit-test", long_lived=True)
    state = asyncio.run(_read_once(database.parsed, options))
    assert (state.version_table_exists, state.version_table_problem) == (False, says)
    # Alembic cannot work with it either
    assert alembic_upgrade(project, database) is not None

    # `wait --until-verified` keeps waiting on it (exit 4 at its timeout, not 1)
    waited = run_dbinit("wait", "--until-verified", "--timeout", "1", cwd=project, DATABASE_URL=database.url)
    assert waited.returncode == 4, waited.output
    assert "Traceback" not in waited.stderr
    assert says in waited.stderr


def test_a_sequence_in_an_empty_schema_is_named(project: Path, pg_database: TestDatabase) -> None:
    pg_database.sql("CREATE SEQUENCE alembic_version")
    code, report, _ = verify(project, pg_database.url)
    assert code == 4, report
    assert report["message"] == (
        "Database is empty (no tables in schema 'public'), and 'alembic_version' there is a "
        "sequence, not a table [dbinit.E002]"
    )
    assert "Rename or drop" in report["hint"]


def test_wait_until_verified_waits_through_a_sequence_until_it_is_fixed(
    project: Path, pg_database: TestDatabase
) -> None:
    assert alembic_upgrade(project, pg_database) is None
    pg_database.sql("ALTER TABLE alembic_version RENAME TO alembic_version_saved")
    pg_database.sql("CREATE SEQUENCE alembic_version")
    waiting = subprocess.Popen(
        [sys.executable, "-m", "dbinit", "wait", "--until-verified", "--timeout", "60"],
        cwd=project,
        env=clean_env(DATABASE_URL=pg_database.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        assert waiting.poll() is None, waiting.communicate()  # still waiting, not dead
        pg_database.sql("DROP SEQUENCE alembic_version")
        pg_database.sql("ALTER TABLE alembic_version_saved RENAME TO alembic_version")
        stdout, stderr = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, stderr
    assert "Database is ready." in stdout
    reasons = [json.loads(line).get("reason", "") for line in stderr.splitlines() if line.startswith("{")]
    assert any("is a sequence, not a table" in reason for reason in reasons), reasons


# -- A: no setting reaches SQL unescaped ------------------------------------------------------------


#: Each ran SQL through dbinit's old quoting (quotes doubled, not backslashes) with
#: standard_conforming_strings off; {table} is a fresh name, {sleep} seconds to sleep.
PAYLOADS = {
    # closes the first literal, swallows the rest of the statement up to the second
    # one in a dollar quote, ends the COPY and runs its own statements
    "copy-breakout": "\\' || pg_sleep(0)::text || $a$ AS s) TO STDOUT; COMMIT; BEGIN READ WRITE; "
    "CREATE TABLE public.{table} (); COMMIT; --",
    "sleep-in-expression": "\\' || pg_sleep({sleep})::text || $a$ AS s) TO STDOUT --",
    "simple": "\\'; CREATE TABLE public.{table} (); --",
    "statements-with-newline": "\\'); COMMIT; BEGIN READ WRITE; CREATE TABLE public.{table} ();\n--",
}
SLEEP = 20


@pytest.fixture(params=["database", "url-options"])
def scs_off(request: pytest.FixtureRequest, pg_database: TestDatabase) -> str:
    """A URL whose sessions have standard_conforming_strings off (set on the database, or in the URL)."""
    if request.param == "database":
        set_scs(pg_database, "off")
        url = pg_database.url
    else:
        url = pg_database.url + "?options=-c%20standard_conforming_strings%3Doff"
    return url


def _scs(url: str) -> str:
    import asyncpg

    from dbinit.urls import DatabaseURL

    async def show() -> str:  # connected as dbinit connects: the URL's options included
        connection = await asyncpg.connect(**DatabaseURL.parse(url).asyncpg_connect_kwargs(timeout=10))
        try:
            return str(await connection.fetchval("SHOW standard_conforming_strings"))
        finally:
            await connection.close()

    rows = [(asyncio.run(show()),)]
    return str(rows[0][0])


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_crafted_schema_or_version_table_cannot_run_sql(
    project: Path, pg_database: TestDatabase, scs_off: str, payload: str
) -> None:
    assert _scs(scs_off) == "off"
    assert alembic_upgrade(project, pg_database) is None
    table = f"pwned_{uuid.uuid4().hex[:8]}"
    value = PAYLOADS[payload].format(table=table, sleep=SLEEP)

    started = time.monotonic()
    if len(value.encode()) > 63:  # no PostgreSQL name is that long: refused before any SQL
        for setting in ("DBINIT_SCHEMA", "DBINIT_VERSION_TABLE"):
            code, report, _ = verify(project, scs_off, **{setting: value})
            assert code == 2 and "longer than 63 bytes" in report["message"], report
        value = value[:63]
    # a schema of that name does not exist: empty (it reaches both statements)
    code, report, _ = verify(project, scs_off, DBINIT_SCHEMA=value)
    assert code == 4, report
    assert report["message"] == f"Database is empty (no tables in schema {value!r}) [dbinit.E002]"
    # nor a version table of that name (it reaches the fallback statement's literal)
    code, report, _ = verify(project, scs_off, DBINIT_VERSION_TABLE=value)
    assert code == 4, report
    assert report["message"].startswith(f"Table {value!r} is missing from schema 'public'")
    waited = run_dbinit("wait", "--timeout", "5", cwd=project, DATABASE_URL=scs_off, DBINIT_SCHEMA=value)
    assert waited.returncode == 0, waited.output
    assert time.monotonic() - started < SLEEP, "pg_sleep ran"
    assert pg_database.sql(f"SELECT count(*) FROM pg_tables WHERE tablename = '{table}'") == [(0,)]


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("DBINIT_VERSION_TABLE", "", "invalid setting DBINIT_VERSION_TABLE: String should have at least 1"),
        ("DBINIT_SCHEMA", "sch\udcffema", "invalid setting DBINIT_SCHEMA: Input should be a valid string"),
    ],
)
def test_a_name_no_database_can_hold_is_a_configuration_error(
    project: Path, database: TestDatabase, setting: str, value: str, says: str
) -> None:
    for command in ("verify", "wait"):
        result = run_dbinit(command, cwd=project, DATABASE_URL=database.url, **{setting: value})
        assert result.returncode == 2, result.output
        assert f"Error: {says}" in result.stderr


ODD_SCHEMA = "o'dd \\ \"schéma\" \\' $a$\tx"
ODD_TABLE = "ver'sion \\ \"täble\" \\'\nend"


@pytest.mark.parametrize("scs", ["on", "off"])
def test_legal_odd_schema_and_version_table_names_work(
    project: Path, pg_database: TestDatabase, scs: str
) -> None:
    set_scs(pg_database, scs)
    schema, table = ident(ODD_SCHEMA), ident(ODD_TABLE)
    pg_database.sql(f"CREATE SCHEMA {schema}")
    pg_database.sql(f"CREATE TABLE {schema}.products (id integer)")
    pg_database.sql(f"CREATE TABLE {schema}.{table} (version_num varchar(32) NOT NULL)")
    pg(pg_database, f"INSERT INTO {schema}.{table} VALUES ($1)", HEAD)
    assert _scs(pg_database.url) == scs
    settings = {"DBINIT_SCHEMA": ODD_SCHEMA, "DBINIT_VERSION_TABLE": ODD_TABLE}

    code, report, _ = verify(project, pg_database.url, **settings)
    assert code == 0, report
    assert report["current_revision"] == HEAD
    assert report["table_count"] == 2
    assert entries(report)["dbinit.E002"]["message"] == f"2 tables in schema {ODD_SCHEMA!r}"
    assert alembic_heads(project, pg_database, version_table=ODD_TABLE, version_table_schema=ODD_SCHEMA) == (
        HEAD,
    )

    # the readiness probe's prepared statement (extended protocol) reads the same
    for long_lived in (False, True):
        options = ProbeOptions(ODD_SCHEMA, ODD_TABLE, 5, 5, "dbinit-test", long_lived=long_lived)

        async def read(options: ProbeOptions = options) -> Any:
            probe = await open_probe(pg_database.parsed, options)
            try:
                return await probe.read_state()
            finally:
                await probe.close()

        state = asyncio.run(read())
        assert (state.schema, state.versions, state.table_count) == (ODD_SCHEMA, (HEAD,), 2)

    # the same names, missing: the fallback statement quotes them too
    missing = {"DBINIT_SCHEMA": ODD_SCHEMA + "2", "DBINIT_VERSION_TABLE": ODD_TABLE}
    code, report, _ = verify(project, pg_database.url, **missing)
    assert code == 4 and report["message"].endswith("[dbinit.E002]"), report


def test_an_odd_version_table_name_on_sqlite(project: Path, sqlite_database: TestDatabase) -> None:
    table = ident(ODD_TABLE)
    sqlite_database.sql("CREATE TABLE products (id integer)")
    sqlite_database.sql(f"CREATE TABLE {table} (version_num varchar(32) NOT NULL)")
    sqlite_database.sql(f"INSERT INTO {table} VALUES ('{HEAD}')")
    code, report, _ = verify(project, sqlite_database.url, DBINIT_VERSION_TABLE=ODD_TABLE)
    assert code == 0, report
    assert report["current_revision"] == HEAD
    assert alembic_heads(project, sqlite_database, version_table=ODD_TABLE) == (HEAD,)


# -- D: a WAL-mode SQLite file is read without writing ------------------------------------------


def listing(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def wal_database(project: Path, folder: Path) -> Path:
    """A migrated SQLite file switched to WAL mode (closed: no -wal, no -shm)."""
    folder.mkdir()
    path = folder / "db.sqlite3"
    assert run_dbinit("migrate", cwd=project, DATABASE_URL=f"sqlite:///{path}").returncode == 0
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode=wal").fetchone() == ("wal",)
    assert sorted(p.name for p in folder.iterdir()) == ["db.sqlite3", "db.sqlite3.dbinit-lock"]
    return path


def test_a_closed_wal_database_is_verified_without_creating_files(project: Path, tmp_path: Path) -> None:
    path = wal_database(project, tmp_path / "data")
    # what a plain mode=ro open does to it (the old behaviour)
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(path, copy / "db.sqlite3")
    with contextlib.closing(sqlite3.connect((copy / "db.sqlite3").as_uri() + "?mode=ro", uri=True)) as c:
        c.execute("SELECT count(*) FROM sqlite_master").fetchone()
    assert {"db.sqlite3-wal", "db.sqlite3-shm"} <= set(listing(copy))

    before, mtime = listing(path.parent), path.stat().st_mtime_ns
    code, report, _ = verify(project, f"sqlite:///{path}")
    assert code == 0, report
    assert report["current_revision"] == HEAD
    assert listing(path.parent) == before
    assert path.stat().st_mtime_ns == mtime


def test_a_wal_database_with_a_writer_shows_its_committed_transactions(project: Path, tmp_path: Path) -> None:
    path = wal_database(project, tmp_path / "data")
    add_revision(project, NEWER, HEAD)
    writer = sqlite3.connect(path)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")  # the commit stays in the -wal
        writer.execute("UPDATE alembic_version SET version_num = ?", (NEWER,))
        writer.commit()
        before = listing(path.parent)
        assert {"db.sqlite3-wal", "db.sqlite3-shm"} <= set(before)
        wal = before["db.sqlite3-wal"]

        code, report, _ = verify(project, f"sqlite:///{path}")
        assert code == 0, report
        assert report["current_revision"] == NEWER  # immutable=1 would read the file alone: HEAD
        after = listing(path.parent)
        assert set(after) == set(before)
        assert after["db.sqlite3-wal"] == wal
        assert after["db.sqlite3"] == before["db.sqlite3"]
        writer.execute("UPDATE alembic_version SET version_num = ?", (NEWER,))  # still a writer
        writer.commit()
    finally:
        writer.close()


def test_a_wal_file_without_its_shm_is_not_read_by_creating_one(project: Path, tmp_path: Path) -> None:
    path = wal_database(project, tmp_path / "data")
    writer = sqlite3.connect(path)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE alembic_version SET version_num = ?", (MIDDLE,))
        writer.commit()
        orphan = tmp_path / "orphan"
        orphan.mkdir()
        for name in ("db.sqlite3", "db.sqlite3-wal"):
            shutil.copy(path.parent / name, orphan / name)
    finally:
        writer.close()
    result = run_dbinit("verify", cwd=project, DATABASE_URL=f"sqlite:///{orphan / 'db.sqlite3'}")
    assert result.returncode == 3, result.output
    assert "has a -wal file but no -shm" in result.stderr
    assert sorted(listing(orphan)) == ["db.sqlite3", "db.sqlite3-wal"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_wal_database_in_a_read_only_folder(project: Path, tmp_path: Path) -> None:
    path = wal_database(project, tmp_path / "data")
    path.parent.chmod(0o555)
    try:
        code, report, _ = verify(project, f"sqlite:///{path}")
    finally:
        path.parent.chmod(0o755)
    assert code == 0, report


def test_reads_next_to_a_checkpointing_writer_are_never_torn(project: Path, tmp_path: Path) -> None:
    """A writer commits, checkpoints and deletes its -wal in a loop; every read is whole."""
    path = wal_database(project, tmp_path / "data")
    values = (HEAD, MIDDLE)
    stop = threading.Event()

    def write() -> None:
        turn = 0
        while not stop.is_set():
            with contextlib.closing(sqlite3.connect(path, timeout=10)) as connection, connection:
                connection.execute("UPDATE alembic_version SET version_num = ?", (values[turn % 2],))
                connection.execute("CREATE TABLE IF NOT EXISTS churn (x)")
                connection.executemany("INSERT INTO churn VALUES (?)", [(b"x" * 3000,)] * 50)
                connection.execute("DELETE FROM churn")
            turn += 1  # closing the last connection checkpoints and deletes the -wal

    from dbinit.errors import DatabaseUnreachable
    from dbinit.urls import DatabaseURL

    options = ProbeOptions(None, "alembic_version", 5, 5, "dbinit-test")
    url = DatabaseURL.parse(f"sqlite:///{path}")
    writer = threading.Thread(target=write)
    writer.start()
    seen: set[tuple[str, ...]] = set()
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                state = asyncio.run(_read_once(url, options))
            except DatabaseUnreachable as exc:  # allowed: a retryable "changed during every read"
                assert "changed during every read" in exc.message or "-shm" in exc.message, exc
                continue
            assert state.versions in ((HEAD,), (MIDDLE,)), state
            assert state.table_count in (6, 7), state  # bakery 4, alembic_version, dbinit_history (+ churn)
            seen.add(state.versions)
    finally:
        stop.set()
        writer.join()
    assert seen


async def _read_once(url: Any, options: ProbeOptions) -> Any:
    probe = await open_probe(url, options)
    try:
        return await probe.read_state()
    finally:
        await probe.close()


# -- E: a FIFO named like a revision file ----------------------------------------------------------


def test_a_fifo_in_the_versions_folder_is_named_not_waited_on(
    project: Path, sqlite_database: TestDatabase
) -> None:
    fifo = project / "migrations" / "versions" / "zz_pipe.py"
    os.mkfifo(fifo)
    result = run_dbinit(
        "verify", "--format", "json", cwd=project, DATABASE_URL=sqlite_database.url, timeout=60
    )
    assert result.returncode == 2, result.output
    document = json.loads(result.stdout)
    assert document["message"] == (
        f"migration file {str(fifo)!r} is a FIFO (named pipe), not a regular file: Alembic would "
        "try to import it (and a FIFO blocks forever)"
    )
    assert "Remove it from the versions folder" in document["hint"]
    assert "Traceback" not in result.stderr


def test_alembic_itself_blocks_on_that_fifo(project: Path) -> None:
    """Why dbinit refuses the FIFO rather than skipping it: the migration job would hang on it."""
    os.mkfifo(project / "migrations" / "versions" / "zz_pipe.py")
    code = (
        "from alembic.config import Config\n"
        "from alembic.script import ScriptDirectory\n"
        "print('imported', flush=True)\n"
        "list(ScriptDirectory.from_config(Config('alembic.ini')).walk_revisions())\n"
        "print('returned', flush=True)\n"
    )
    alembic_process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=project, stdout=subprocess.PIPE, text=True, env=clean_env()
    )
    try:
        assert alembic_process.stdout is not None
        assert alembic_process.stdout.readline() == "imported\n"
        time.sleep(2)
        assert alembic_process.poll() is None  # blocked opening the FIFO
    finally:
        alembic_process.kill()
        alembic_process.communicate()
