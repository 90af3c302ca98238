"""A password never appears in a log line, an error message or a report.

A URL with a password (one that needs percent-encoding) is fed to every
failure path of the command line; each test asserts the exit code, a useful
message, and that the password appears nowhere in stdout + stderr, neither in
clear nor percent-encoded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.plugins.databases import (
    SECRET,
    PostgresServer,
    Result,
    TestDatabase,
    add_revision,
    run_dbinit,
)

HEAD = "8d3f6b2a9c11"
#: needs percent-encoding ('@', '%', ':', '/'), and holds SECRET so that any
#: leak of the whole password also leaks SECRET
PASSWORD = f"p@ss%w:rd/1{SECRET}"
WRONG = f"wr0ng:p@ss/{SECRET}%x"
ENCODED = quote(PASSWORD, safe="")
CLOSED = "127.0.0.1:1"


def forms(password: str) -> list[str]:
    return [SECRET, password, quote(password, safe=""), quote(password), quote(password).lower()]


def assert_no_password(result: Result, password: str = PASSWORD) -> None:
    for form in forms(password):
        assert form not in result.output, f"password form {form!r} leaked:\n{result.output}"


def json_error(result: Result, code: int) -> dict[str, object]:
    """The one JSON object a failing command prints with --format json."""
    assert result.returncode == code, result.output
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["exit_code"] == code
    assert f"Error: {document['message']}" in result.stderr
    return document


def log_events(result: Result) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


@dataclasses.dataclass(frozen=True)
class PasswordDatabase:
    """A fresh database owned by a role that logs in with PASSWORD."""

    role: str
    url: str
    database: TestDatabase
    server: PostgresServer

    def url_with(self, *, password: str | None = None, database: str | None = None,
                 username: str | None = None) -> str:
        parsed = dataclasses.replace(
            self.database.parsed,
            username=username or self.role,
            password=password if password is not None else PASSWORD,
            database=database or self.database.parsed.database,
        )
        return parsed.for_sqlalchemy(async_driver=True)


@pytest.fixture
def pw_database(pg_database: TestDatabase, postgres_server: PostgresServer) -> Iterator[PasswordDatabase]:
    role = f"dbinit_pw_{uuid.uuid4().hex[:10]}"
    name = pg_database.parsed.database
    pg_database.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    pg_database.sql(f'ALTER DATABASE "{name}" OWNER TO {role}')
    try:
        parsed = dataclasses.replace(pg_database.parsed, username=role, password=PASSWORD)
        yield PasswordDatabase(role, parsed.for_sqlalchemy(async_driver=True), pg_database,
                               postgres_server)
    finally:
        pg_database.sql(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        pg_database.sql(f"DROP OWNED BY {role}")
        pg_database.sql(f"DROP ROLE {role}")


def server_checks_passwords(url: str) -> bool:
    """Does the server refuse a wrong password? (A trust-auth server ignores it.)"""
    import asyncpg

    from dbinit.urls import DatabaseURL

    async def attempt() -> bool:
        try:
            connection = await asyncpg.connect(DatabaseURL.parse(url).asyncpg_dsn(), timeout=10)
        except asyncpg.InvalidPasswordError:
            return True
        await connection.close()
        return False

    return asyncio.run(attempt())


# -- configuration errors (exit 2) --------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"postgresql://orders:{ENCODED}@db.internal:notaport/orders", "invalid port (not a number"),
        (f"postgresql+asyncpg://orders:{ENCODED}@db.internal:5432", "names no database"),
        (f"postgresql://orders:{ENCODED}@db.internal:5432/", "names no database"),
        (f"postgresql://orders:{ENCODED}@/orders", "has no host"),
        (f"mysql://orders:{ENCODED}@db.internal/orders", "unsupported scheme 'mysql'"),
        (f"postgresql+pymysql://orders:{ENCODED}@db.internal/orders", "unsupported PostgreSQL driver"),
        (f"orders:{ENCODED}@db.internal/orders", "is not a URL"),
        (f"sqlite://orders:{ENCODED}@db.internal/orders", "has a host in a sqlite URL"),
        (f"postgresql://orders:{ENCODED}@db.internal/orders?sslmode=bogus", "invalid sslmode 'bogus'"),
        (f"postgresql://orders:{ENCODED}@db.internal/orders?target_session_attrs=nonsense",
         "invalid target_session_attrs 'nonsense'"),
        (f"postgresql://orders:{ENCODED}@db.internal/orders?connect_timeout=abc",
         "invalid connect_timeout 'abc'"),
        (f"postgresql://orders:{ENCODED}@db.internal/orders?sslmod=require", "unknown parameter 'sslmod'"),
        (f"postgresql://orders:{ENCODED}@db1:5432,db2:x/orders", "invalid port of host 2 of 2"),
        (f"postgresql://orders:{ENCODED}@[::1/orders", "unclosed '['"),
        (f"postgresql://orders:{ENCODED}@[::1:5432", "unclosed '['"),
        (f"postgresql://orders:{ENCODED}@db1,,db2/orders", "empty host 2 of 3"),
    ],
    ids=["port", "no-database", "empty-database", "no-host", "mysql", "driver", "no-scheme",
         "sqlite-host", "sslmode", "target-session-attrs", "connect-timeout", "unknown-parameter",
         "multi-host-port", "ipv6-unclosed", "ipv6-unclosed-port", "empty-host"],
)
def test_malformed_url(project: Path, url: str, expected: str) -> None:
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=url)
    document = json_error(result, 2)
    assert document["error"] == "ConfigurationError"
    assert str(document["message"]).startswith("DATABASE_URL ")
    assert expected in str(document["message"])
    assert document["hint"]  # what to do
    assert_no_password(result)


def test_malformed_url_given_as_a_flag(project: Path) -> None:
    result = run_dbinit("migrate", "--database-url", f"postgresql://u:{ENCODED}@db:5432", cwd=project)
    assert result.returncode == 2, result.output
    assert "Error: DATABASE_URL names no database" in result.stderr
    assert_no_password(result)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://u:admin:{SECRET}/x@db:5432/orders", f"admin:{SECRET}/x"),
        (f"postgresql://u:{ENCODED.lower()}@db:5432", ENCODED.lower()),
        (f"postgresql://u@db:5432?password={SECRET}", SECRET),
        (f"postgresql://u:{SECRET}&x@db:5432/orders?{SECRET}", SECRET),
        (f"postgresql://u:{SECRET}@db:5432/orders?target_session_attrs={SECRET}", SECRET),
        (f"postgresql://u:{SECRET}#1@db:5432/orders", f"{SECRET}#1"),
    ],
    ids=["unencoded", "lowercase-hex", "query-parameter", "ampersand", "as-a-value", "hash"],
)
def test_malformed_url_written_unusually(project: Path, url: str, shown: str) -> None:
    result = run_dbinit("verify", cwd=project, DATABASE_URL=url)
    assert result.returncode == 2, result.output
    assert SECRET not in result.output
    assert shown not in result.output


def test_unknown_strategy(project: Path) -> None:
    url = f"postgresql://orders:{ENCODED}@{CLOSED}/orders"
    result = run_dbinit("migrate", "--strategy", "yolo", "--format", "json", cwd=project,
                        DATABASE_URL=url)
    document = json_error(result, 2)
    assert document["message"] == "--strategy: unknown migration strategy 'yolo'"
    assert "recreate" in str(document["hint"]) and "upgrade" in str(document["hint"])
    assert_no_password(result)

    by_setting = run_dbinit("migrate", cwd=project, DATABASE_URL=url, DBINIT_STRATEGY="yolo")
    assert by_setting.returncode == 2, by_setting.output
    assert "DBINIT_STRATEGY: unknown migration strategy 'yolo'" in by_setting.stderr
    assert_no_password(by_setting)


# -- unreachable (exit 3) -----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "--format", "json"],
        ["verify"],
        ["migrate", "--format", "json"],
        ["migrate", "--plan", "--format", "json"],
        ["showmigrations", "--format", "json"],
        ["check", "--format", "json"],
    ],
    ids=" ".join,
)
def test_unreachable_server(project: Path, args: list[str]) -> None:
    url = f"postgresql+asyncpg://orders:{ENCODED}@{CLOSED}/orders"
    result = run_dbinit(*args, cwd=project, DATABASE_URL=url, DBINIT_CONNECT_TIMEOUT="5")
    assert result.returncode == 3, result.output
    assert f"cannot connect to {CLOSED}/orders: connection refused" in result.stderr
    assert "dbinit wait" in result.stderr  # the hint
    if "json" in args:
        assert json_error(result, 3)["error"] == "DatabaseUnreachable"
    assert_no_password(result)


def test_unreachable_server_url_from_file(project: Path, tmp_path: Path) -> None:
    secret = tmp_path / "database-url"
    secret.write_text(f"postgresql://orders:{ENCODED}@{CLOSED}/orders\n")
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL_FILE=str(secret))
    assert "connection refused" in str(json_error(result, 3)["message"])
    assert_no_password(result)


def test_wait_times_out_on_a_closed_port(project: Path) -> None:
    url = f"postgresql://orders:{ENCODED}@{CLOSED}/orders"
    result = run_dbinit("wait", "--timeout", "1", cwd=project, DATABASE_URL=url)
    assert result.returncode == 3, result.output
    assert "Error: cannot connect to 127.0.0.1:1/orders: connection refused (gave up after" in result.stderr
    retries = [e for e in log_events(result) if e["event"] == "Database not reachable yet"]
    assert retries and all("connection refused" in str(e["reason"]) for e in retries)
    assert_no_password(result)


# -- a real server ------------------------------------------------------------------


def test_the_password_role_works(pw_database: PasswordDatabase, project: Path) -> None:
    """The fixture's URL (with the percent-encoded password) reaches the database."""
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=pw_database.url)
    assert result.returncode == 0, result.output
    assert json.loads(result.stdout)["applied"][-1] == HEAD
    owners = pw_database.database.sql(
        "SELECT tableowner FROM pg_tables WHERE tablename = 'alembic_version'")
    assert owners == [(pw_database.role,)]
    assert_no_password(result)


def test_wrong_password(pw_database: PasswordDatabase, project: Path) -> None:
    url = pw_database.url_with(password=WRONG)
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=url)
    if server_checks_passwords(url):
        assert result.returncode == 3, result.output
        assert "authentication failed" in result.stderr
        assert "Check the user and password in DATABASE_URL" in result.stderr
    else:
        # trust authentication: the server never asks for the password, so the wrong one
        # connects and the (empty) database fails verification instead
        assert result.returncode == 4, result.output
        assert "[dbinit.E002]" in json.loads(result.stdout)["message"]
    assert_no_password(result, WRONG)
    assert_no_password(result)


def test_unknown_role_is_an_authentication_failure(pw_database: PasswordDatabase, project: Path) -> None:
    url = pw_database.url_with(username="dbinit_no_such_role", password=WRONG)
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=url)
    document = json_error(result, 3)
    assert "authentication failed" in str(document["message"])
    assert "dbinit_no_such_role" in str(document["message"])
    assert document["hint"] == "Check the user and password in DATABASE_URL (the Secret)"
    assert_no_password(result, WRONG)


def test_unknown_database(pw_database: PasswordDatabase, project: Path) -> None:
    url = pw_database.url_with(database="dbinit_no_such_database")
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=url)
    document = json_error(result, 3)
    assert "dbinit_no_such_database" in str(document["message"])
    assert "database does not exist" in str(document["message"])
    assert "Create the database" in str(document["hint"])
    assert_no_password(result)


def test_database_not_ready(pw_database: PasswordDatabase, project: Path) -> None:
    for fmt in ("json", "text"):
        result = run_dbinit("verify", "--format", fmt, cwd=project, DATABASE_URL=pw_database.url)
        assert result.returncode == 4, result.output
        if fmt == "json":
            report = json.loads(result.stdout)
            assert report["ok"] is False
            assert "[dbinit.E002]" in report["message"]
            assert report["database"].endswith(f"/{pw_database.database.parsed.database}")
        else:
            assert "[FAIL] dbinit.E002 database_not_empty: Database is empty" in result.stdout
        assert any(e["event"] == "Database verification failed" for e in log_events(result))
        assert_no_password(result)


def test_migration_failure(pw_database: PasswordDatabase, project: Path) -> None:
    add_revision(project, "badbadbad001", HEAD, body='op.execute("SELECT * FROM no_such_table")')
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=pw_database.url)
    document = json_error(result, 5)
    assert document["error"] == "MigrationFailed"
    assert "migration badbadbad001 (badbadbad001_revision.py) failed" in str(document["message"])
    assert "no_such_table" in str(document["message"])
    assert pw_database.database.versions() == {HEAD}  # the earlier ones stay applied
    assert_no_password(result)


def test_recreate_refused_in_production(pw_database: PasswordDatabase, project: Path) -> None:
    pw_database.database.sql("CREATE TABLE keep_me (id integer)")
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=pw_database.url,
                        ENVIRONMENT="production", DB_FORCE_RECREATE="true")
    document = json_error(result, 7)
    assert document["error"] == "Refused"
    assert "refused with ENVIRONMENT=production" in str(document["message"])
    assert "DBINIT_ALLOW_DESTRUCTIVE=true" in str(document["hint"])
    assert pw_database.database.tables() == {"keep_me"}
    assert_no_password(result)


# -- the paths added for hostile input (issue 9) ------------------------------------------


@pytest.mark.parametrize("value", [f"postgresql://orders:{PASSWORD}@db.internal/orders", PASSWORD, ENCODED])
def test_url_file_holding_the_secret_itself(project: Path, value: str) -> None:
    result = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL_FILE=value)
    document = json_error(result, 2)
    assert "looks like a URL or a secret, not a path" in str(document["message"])
    assert_no_password(result)


def test_url_file_not_utf8(project: Path, tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    url_file.write_bytes(f"postgresql://orders:{ENCODED}".encode() + b"\xff@db.internal/orders")
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL_FILE=str(url_file))
    assert "is not UTF-8 text" in str(json_error(result, 2)["message"])
    assert_no_password(result)


def test_connection_limit_below_two(pw_database: PasswordDatabase, project: Path) -> None:
    pw_database.database.sql(f"ALTER ROLE {pw_database.role} CONNECTION LIMIT 1")
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=pw_database.url)
    assert "migrate needs 2 connections at once" in str(json_error(result, 2)["message"])
    assert_no_password(result)


def test_env_py_with_another_version_table(pw_database: PasswordDatabase, project: Path) -> None:
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=pw_database.url,
                        DBINIT_VERSION_TABLE="orders_version", DBINIT_SCHEMA="public")
    assert result.returncode == 0, result.output  # reaches Alembic: same table written and verified
    assert pw_database.database.sql("SELECT version_num FROM orders_version") == [(HEAD,)]
    assert_no_password(result)


def test_recreate_with_an_unimportable_revision(pw_database: PasswordDatabase, project: Path) -> None:
    pw_database.database.sql("CREATE TABLE keep_me (id integer)")
    path = add_revision(project, "badbadbad002", HEAD)
    path.write_text(
        path.read_text().replace("import sqlalchemy as sa", "import a_package_that_is_not_installed")
    )
    result = run_dbinit("migrate", "--format", "json", "--force-recreate", cwd=project,
                        DATABASE_URL=pw_database.url)
    assert "a migration file cannot be imported" in str(json_error(result, 2)["message"])
    assert pw_database.database.tables() == {"keep_me"}
    assert_no_password(result)


def test_failed_revision_that_commits_part_of_its_work(pw_database: PasswordDatabase, project: Path) -> None:
    add_revision(project, "badbadbad003", HEAD,
                 body='op.execute("COMMIT")\nop.execute("SELECT * FROM no_such_table")')
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=pw_database.url)
    document = json_error(result, 5)
    assert "commits part of its work itself" in str(document["hint"])
    assert_no_password(result)
