"""The migration lock and the migration are on the same database (issue 11, item 1).

Projects' ``env.py`` often builds its URL from the application's own settings and
ignores the ``sqlalchemy.url`` dbinit hands it: dbinit would lock and verify one
database while Alembic migrates another. ``migrate`` compares the two sessions by
server identity before the first revision runs and refuses (exit 2) when they differ.

Every project is made by ``alembic init`` (generic and async templates) and
``alembic revision``; its ``env.py`` is then changed the way such projects do
(``APP_DATABASE_URL`` instead of ``sqlalchemy.url``). Real ``python -m dbinit``
processes, real PostgreSQL (the test server and ``scram_server``, which checks
passwords), real SQLite files.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.register_assert_rewrite("tests.plugins.faults")

from tests.plugins.databases import (  # noqa: E402
    PostgresServer,
    Result,
    TestDatabase,
    alembic_project,
    run_dbinit,
)
from tests.plugins.faults import ScramServer, assert_no_password  # noqa: E402

pytest_plugins = ["tests.plugins.faults"]

REVISION = "b7ead0000001"
ENV_PASSWORD = "envpy-0nly-P4ss"  # known to env.py only, never to dbinit (so never redacted by it)


def connect_elsewhere(project: Path) -> str:
    """Make env.py take its URL from the application's setting (``APP_DATABASE_URL``), as many do.

    Returns the original env.py (to put back: "the fixed env.py").
    """
    env = project / "migrations" / "env.py"
    original = env.read_text()
    section = "config.get_section(config.config_ini_section, {})"
    assert section in original
    env.write_text("import os\n" + original.replace(
        section, '{**config.get_section(config.config_ini_section, {}), '
        '"sqlalchemy.url": os.environ["APP_DATABASE_URL"]}'))
    return original


def migrate_json(project: Path, url: str, **env: str) -> tuple[Result, dict[str, object]]:
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=url, **env)
    assert "Traceback" not in result.output, result.output
    return result, json.loads(result.stdout)


def assert_refused(result: Result, document: dict[str, object]) -> str:
    """Exit 2, a ConfigurationError in the JSON error object, the lock released; the message."""
    assert result.returncode == 2, result.output
    assert document["ok"] is False and document["error"] == "ConfigurationError", document
    assert document["exit_code"] == 2
    assert "config.get_main_option('sqlalchemy.url')" in str(document["hint"])
    assert "nothing was migrated" in str(document["hint"])
    assert "Migration lock released" in result.stderr
    assert "Migration applied" not in result.stderr
    return str(document["message"])


def nothing_migrated(*databases: TestDatabase) -> None:
    for database in databases:
        assert database.tables() == set(), database.url


def driver_url(server: PostgresServer, name: str, driver: str, *, user: str = "postgres",
               password: str | None = None, host: str | None = None) -> str:
    auth = user + (f":{quote(password, safe='')}" if password is not None else "")
    where = host or f"{server.admin.host}:{server.admin.port or 5432}"
    return f"postgresql+{driver}://{auth}@{where}/{name}"


@pytest.fixture
def scram_databases(scram_server: ScramServer) -> Iterator[tuple[PostgresServer, TestDatabase, TestDatabase]]:
    """Two fresh databases on the password-checking server: dbinit's and the one env.py migrates."""
    server = PostgresServer(scram_server.url(password=scram_server.password))
    names = [server.create(), server.create()]
    try:
        ours, theirs = (TestDatabase("postgresql", server.url_for(n)) for n in names)
        yield server, ours, theirs
    finally:
        for name in names:
            server.drop(name)


@pytest.fixture
def other_pg_database(postgres_server: PostgresServer) -> Iterator[TestDatabase]:
    name = postgres_server.create()
    try:
        yield TestDatabase("postgresql", postgres_server.url_for(name))
    finally:
        postgres_server.drop(name)


# -- another database on the same server ---------------------------------------------------


@pytest.mark.parametrize(("template", "driver"), [("generic", "psycopg"), ("async", "asyncpg")])
def test_env_py_migrating_another_database_is_refused_before_any_revision(
    tmp_path: Path, scram_server: ScramServer,
    scram_databases: tuple[PostgresServer, TestDatabase, TestDatabase], template: str, driver: str,
) -> None:
    server, ours, theirs = scram_databases
    project = alembic_project(tmp_path, template)
    original = connect_elsewhere(project)
    elsewhere = driver_url(server, theirs.parsed.database, driver, password=scram_server.password)
    result, document = migrate_json(project, ours.url, APP_DATABASE_URL=elsewhere)
    message = assert_refused(result, document)
    assert f"env.py migrates the PostgreSQL database {theirs.parsed.database!r}" in message
    assert f"verifies the PostgreSQL database {ours.parsed.database!r}" in message
    assert f"127.0.0.1:{scram_server.port}/{theirs.parsed.database}" in message
    assert "another PostgreSQL server" not in message
    assert_no_password(result.output, scram_server.password)
    nothing_migrated(ours, theirs)  # no table, no alembic_version, in either database

    # the fixed env.py, right after: the lock was released, the migration runs
    (project / "migrations" / "env.py").write_text(original)
    fixed, report = migrate_json(project, ours.url, APP_DATABASE_URL=elsewhere)
    assert fixed.returncode == 0, fixed.output
    assert report["applied"] == [REVISION]
    assert ours.tables() == {"bread", "alembic_version", "dbinit_history"}
    nothing_migrated(theirs)


def test_the_same_database_on_another_server_is_refused(
    tmp_path: Path, postgres_server: PostgresServer,
    scram_databases: tuple[PostgresServer, TestDatabase, TestDatabase],
) -> None:
    """Same database name, same role, another PostgreSQL server: the names match, the servers do not."""
    _, ours, _ = scram_databases
    name = ours.parsed.database
    project = alembic_project(tmp_path, "generic")
    connect_elsewhere(project)
    twin = TestDatabase("postgresql", postgres_server.url_for(name))
    admin = TestDatabase("postgresql", postgres_server.url_for(postgres_server.admin.database))
    admin.sql(f'CREATE DATABASE "{name}"')
    try:
        result, document = migrate_json(project, ours.url,
                                        APP_DATABASE_URL=twin.url.replace("+asyncpg", "+psycopg"))
        message = assert_refused(result, document)
        assert f"{name!r} ({twin.parsed.display_name}) on another PostgreSQL server" in message
        nothing_migrated(ours, twin)
    finally:
        postgres_server.drop(name)


# -- the same database, by other names ------------------------------------------------------


@pytest.mark.parametrize("spelling", ["localhost", "multi-host"])
def test_the_same_database_by_another_host_name_is_accepted(
    tmp_path: Path, postgres_server: PostgresServer, pg_database: TestDatabase, spelling: str
) -> None:
    """env.py says 'localhost' where DATABASE_URL says 127.0.0.1 (or lists a dead host first)."""
    project = alembic_project(tmp_path, "generic")
    connect_elsewhere(project)
    name = pg_database.parsed.database
    port = postgres_server.admin.port or 5432
    if spelling == "localhost":
        ours, env_py = pg_database.url, driver_url(postgres_server, name, "psycopg", host=f"localhost:{port}")
    else:
        ours = f"postgresql://postgres@127.0.0.1:1,{postgres_server.admin.host}:{port}/{name}"
        env_py = driver_url(postgres_server, name, "psycopg")
    result, document = migrate_json(project, ours, APP_DATABASE_URL=env_py)
    assert result.returncode == 0, result.output
    assert document["applied"] == [REVISION]
    assert pg_database.versions() == {REVISION}
    assert "bread" in pg_database.tables()


# -- another role --------------------------------------------------------------------------


def test_a_different_role_on_the_same_database_is_refused(
    tmp_path: Path, scram_server: ScramServer,
    scram_databases: tuple[PostgresServer, TestDatabase, TestDatabase],
) -> None:
    """The tables would be owned by env.py's role; its identity is read by an unprivileged role."""
    server, ours, _ = scram_databases
    role = f"app_{uuid.uuid4().hex[:8]}"
    ours.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{ENV_PASSWORD}'")
    try:
        project = alembic_project(tmp_path, "generic")
        connect_elsewhere(project)
        elsewhere = driver_url(server, ours.parsed.database, "psycopg", user=role, password=ENV_PASSWORD)
        result, document = migrate_json(project, ours.url, APP_DATABASE_URL=elsewhere)
        message = assert_refused(result, document)
        assert f"as the role {role!r}, but DATABASE_URL logs in as 'postgres'" in message
        assert f"would be owned by {role!r}" in message
        assert f"DATABASE_URL's user to {role!r}" in str(document["hint"])
        assert_no_password(result.output, ENV_PASSWORD)
        assert_no_password(result.output, scram_server.password)
        nothing_migrated(ours)
    finally:
        ours.sql(f"DROP ROLE {role}")


# -- SQLite ----------------------------------------------------------------------------------


def test_sqlite_lock_with_env_py_migrating_postgresql_is_refused(
    tmp_path: Path, sqlite_database: TestDatabase, pg_database: TestDatabase
) -> None:
    project = alembic_project(tmp_path, "generic")
    connect_elsewhere(project)
    result, document = migrate_json(project, sqlite_database.url,
                                    APP_DATABASE_URL=pg_database.url.replace("+asyncpg", "+psycopg"))
    message = assert_refused(result, document)
    assert f"env.py migrates the PostgreSQL database {pg_database.parsed.database!r}" in message
    assert f"verifies the SQLite file {sqlite_database.parsed.sqlite_path}" in message
    nothing_migrated(pg_database)
    assert not sqlite_database.parsed.sqlite_path.exists() or sqlite_database.tables() == set()


def test_two_sqlite_files_are_refused(tmp_path: Path, sqlite_database: TestDatabase) -> None:
    project = alembic_project(tmp_path, "generic")
    connect_elsewhere(project)
    other = TestDatabase("sqlite", f"sqlite:///{tmp_path / 'other.sqlite3'}")
    result, document = migrate_json(project, sqlite_database.url, APP_DATABASE_URL=other.url)
    message = assert_refused(result, document)
    assert f"env.py migrates the SQLite file {tmp_path / 'other.sqlite3'}" in message
    assert f"verifies the SQLite file {sqlite_database.parsed.sqlite_path}" in message
    for database in (sqlite_database, other):
        assert not database.parsed.sqlite_path.exists() or database.tables() == set()


def test_the_same_sqlite_file_by_a_relative_path_is_accepted(tmp_path: Path) -> None:
    project = alembic_project(tmp_path, "generic")
    connect_elsewhere(project)
    database = TestDatabase("sqlite", f"sqlite:///{project / 'app.sqlite3'}")
    result, document = migrate_json(project, database.url, APP_DATABASE_URL="sqlite:///./app.sqlite3")
    assert result.returncode == 0, result.output
    assert document["applied"] == [REVISION]
    assert database.versions() == {REVISION}


# -- offline: no connection, nothing to compare ---------------------------------------------


def test_offline_sql_is_not_checked(tmp_path: Path, pg_database: TestDatabase,
                                    other_pg_database: TestDatabase) -> None:
    project = alembic_project(tmp_path, "generic")
    connect_elsewhere(project)
    result = run_dbinit("migrate", "--sql", cwd=project, DATABASE_URL=pg_database.url,
                        APP_DATABASE_URL=other_pg_database.url.replace("+asyncpg", "+psycopg"))
    assert result.returncode == 0, result.output
    assert "CREATE TABLE bread" in result.stdout
    nothing_migrated(pg_database, other_pg_database)
