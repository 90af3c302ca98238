"""Managed-PostgreSQL URLs: libpq parameters and multi-host URLs, verify AND migrate.

Every URL form ``verify`` accepts must work for ``migrate`` with both
``alembic init`` templates (async: asyncpg; generic: psycopg 3) and for the
migration lock. Each project gets a revision that records what its own
session (and the lock's) looks like on the server — TLS, TLS version,
``application_name``, ``search_path``, server port — so the tests see what
reached Alembic's driver, not only that migrate exited 0.

Two servers: the machine's (no TLS) and a throwaway one that accepts TLS
connections only (``tls_server``: its pg_hba rejects a connection without TLS).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.register_assert_rewrite("tests.plugins.faults")

from dbinit.urls import DatabaseURL  # noqa: E402
from tests.plugins.databases import (  # noqa: E402
    SECRET,
    Result,
    TestDatabase,
    add_revision,
    clean_env,
    run_dbinit,
)
from tests.plugins.faults import TlsServer, assert_no_password  # noqa: E402

pytest_plugins = ["tests.plugins.faults"]

BREAD = "b7ead0000001"  # the alembic-init project's revision
SEEN = "5ee000000001"  # records what the migration session sees
PASSWORD = f"p@ss%w:rd/1{SECRET}"
ENCODED = quote(PASSWORD, safe="")
CLOSED = "127.0.0.1:1"

SEEN_BODY = """op.execute(
    "CREATE TABLE public.session_seen AS "
    "SELECT a.pid = pg_backend_pid() AS mine, a.application_name, "
    "coalesce(s.ssl, false) AS ssl, s.version, "
    "current_setting('search_path') AS search_path, inet_server_port() AS port "
    "FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s ON s.pid = a.pid "
    "WHERE a.datname = current_database() AND a.application_name LIKE 'dbinit-%'"
)"""


# -- projects made by `alembic init` (made once per template, copied per test) -------------


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    made = {}
    for template in ("async", "generic"):
        project = tmp_path_factory.mktemp("templates") / template
        project.mkdir()
        alembic = [sys.executable, "-m", "alembic"]
        for args in (
            ["init", "-t", template, "migrations"],
            ["revision", "-m", "create bread", "--rev-id", BREAD],
        ):
            subprocess.run([*alembic, *args], cwd=project, env=clean_env(), check=True, capture_output=True)
        revision = next((project / "migrations" / "versions").glob(f"{BREAD}_*.py"))
        revision.write_text(
            revision.read_text().replace(
                '    """Upgrade schema."""\n    pass',
                '    """Upgrade schema."""\n'
                '    op.create_table("bread", sa.Column("id", sa.Integer, primary_key=True))',
                1,
            )
        )
        add_revision(project, SEEN, BREAD, body=SEEN_BODY)
        made[template] = project
    return made


@pytest.fixture(params=["async", "generic"])
def template_project(request: pytest.FixtureRequest, templates: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh copy of an `alembic init` project (async: asyncpg; generic: psycopg)."""
    target = tmp_path / request.param
    shutil.copytree(templates[request.param], target)
    return target


def migrate_then_verify(project: Path, url: str, **env: str) -> Result:
    """``migrate`` (both revisions applied), then ``verify`` passes; returns migrate's result."""
    migrated = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=url, **env)
    assert migrated.returncode == 0, migrated.output
    assert json.loads(migrated.stdout)["applied"] == [BREAD, SEEN]
    verified = run_dbinit("verify", "--format", "json", cwd=project, DATABASE_URL=url, **env)
    assert verified.returncode == 0, verified.output
    assert json.loads(verified.stdout)["current_revision"] == SEEN
    return migrated


def seen(database: TestDatabase) -> dict[str, tuple[object, ...]]:
    """What the migration session ("mine") and the lock session looked like: name -> row."""
    rows = database.sql(
        "SELECT mine, application_name, ssl, version, search_path, port FROM public.session_seen"
    )
    by_role = {("migration" if r[0] else "lock" if str(r[1]).startswith("dbinit-migrate:") else str(r[1])): r
               for r in rows}
    assert set(by_role) >= {"migration", "lock"}, rows
    return by_role


# -- the machine's server (no TLS) -----------------------------------------------------------


def _with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query if query else url


def _tcp(database: TestDatabase) -> tuple[str, int]:
    parsed = database.parsed
    if parsed.host is None or parsed.host.startswith("/"):
        pytest.skip("the test server is reached through a unix socket: no TCP host to list")
    return parsed.host, parsed.port or 5432


@pytest.mark.parametrize(
    "query",
    [
        "sslmode=prefer",
        "sslmode=allow",
        "sslmode=disable",
        "connect_timeout=10",
        "target_session_attrs=read-write",
        "application_name=from-the-url",
        "sslmode=prefer&connect_timeout=10&target_session_attrs=primary&application_name=cloud"
        "&channel_binding=prefer&gssencmode=disable&client_encoding=UTF8",
    ],
)
def test_libpq_parameters_work_for_verify_and_migrate(
    template_project: Path, pg_database: TestDatabase, query: str
) -> None:
    url = _with_query(pg_database.url, query)
    before = run_dbinit("verify", "--format", "json", cwd=template_project, DATABASE_URL=url)
    assert before.returncode == 4, before.output  # connects; the database is empty
    migrate_then_verify(template_project, url)
    assert pg_database.versions() == {SEEN}
    assert "bread" in pg_database.tables()
    sessions = seen(pg_database)
    # no TLS on this server: sslmode prefer/allow fell back, disable never tried
    assert not any(row[2] for row in sessions.values())
    # dbinit names its sessions (SIGTERM finds the migration session by its tag): the
    # URL's application_name never replaces those names
    assert str(sessions["migration"][1]).startswith("dbinit-run:")
    assert str(sessions["lock"][1]).startswith("dbinit-migrate:")


def test_multi_host_url_first_host_refuses(template_project: Path, pg_database: TestDatabase) -> None:
    host, port = _tcp(pg_database)
    parsed = pg_database.parsed
    url = f"postgresql://{parsed.username}@{CLOSED},{host}:{port}/{parsed.database}"
    before = run_dbinit("verify", cwd=template_project, DATABASE_URL=url)
    assert before.returncode == 4, before.output
    migrate_then_verify(template_project, url)
    assert pg_database.versions() == {SEEN}
    sessions = seen(pg_database)
    assert sessions["migration"][5] == port and sessions["lock"][5] == port


def test_multi_host_url_in_sqlalchemy_form(template_project: Path, pg_database: TestDatabase) -> None:
    host, port = _tcp(pg_database)
    parsed = pg_database.parsed
    url = f"postgresql+asyncpg://{parsed.username}@/{parsed.database}?host={CLOSED}&host={host}:{port}"
    migrate_then_verify(template_project, url)
    assert pg_database.versions() == {SEEN}


def test_options_search_path(template_project: Path, pg_database: TestDatabase) -> None:
    pg_database.sql("CREATE SCHEMA app")
    url = _with_query(pg_database.url, "options=-c%20search_path%3Dapp")
    migrate_then_verify(template_project, url)
    sessions = seen(pg_database)
    assert sessions["migration"][4] == "app"
    tables = pg_database.sql("SELECT schemaname, tablename FROM pg_tables WHERE tablename IN "
                             "('alembic_version', 'bread') ORDER BY tablename")
    assert tables == [("app", "alembic_version"), ("app", "bread")]
    assert pg_database.sql("SELECT version_num FROM app.alembic_version") == [(SEEN,)]
    # the migration lock is keyed by the schema the sessions resolve: a second job agrees
    again = run_dbinit("migrate", "--format", "json", cwd=template_project, DATABASE_URL=url)
    assert again.returncode == 0, again.output
    assert json.loads(again.stdout)["action"] == "up_to_date"


def test_sslmode_require_against_a_server_without_tls(project: Path, pg_database: TestDatabase) -> None:
    parsed = pg_database.parsed
    host, port = _tcp(pg_database)
    url = f"postgresql://{parsed.username}:{ENCODED}@{host}:{port}/{parsed.database}?sslmode=require"
    for command in ("verify", "migrate"):
        result = run_dbinit(command, "--format", "json", cwd=project, DATABASE_URL=url)
        assert result.returncode == 3, result.output
        document = json.loads(result.stdout)
        assert "the server does not support SSL, and sslmode requires it" in document["message"]
        assert "sslmode=prefer" in document["hint"]
        assert_no_password(result.output, PASSWORD)
    assert pg_database.tables() == set()


def test_migrate_refuses_a_read_only_target(project: Path, pg_database: TestDatabase) -> None:
    url = _with_query(pg_database.url, "target_session_attrs=read-only")
    verified = run_dbinit("verify", cwd=project, DATABASE_URL=url)
    assert verified.returncode == 4, verified.output  # verify may read a replica
    refused = run_dbinit("migrate", cwd=project, DATABASE_URL=url)
    assert refused.returncode == 2, refused.output
    assert "migrate needs a writable server" in refused.stderr
    assert "target_session_attrs=read-only" in refused.stderr
    assert pg_database.tables() == set()


# -- malformed parameters: exit 2 at parse time, the parameter named, no password ------------


MALFORMED = [
    ("sslmode=bogus", "invalid sslmode 'bogus': is not one of disable, allow, prefer"),
    ("ssl=maybe", "invalid ssl 'maybe'"),
    ("target_session_attrs=nonsense", "invalid target_session_attrs 'nonsense'"),
    ("connect_timeout=abc", "invalid connect_timeout 'abc': is not a whole number of seconds"),
    ("options=-c+search_path=x", "invalid options"),
    ("channel_binding=require", "channel_binding 'require': require cannot be honoured by asyncpg"),
    ("sslrootcert=system&sslmode=require", "sslrootcert=system with sslmode=require"),
    ("sslmode=require&ssl=require", "gives sslmode twice"),
    ("keepalives=1", "has the parameter keepalives, which dbinit does not support"),
    ("statement_timeout=5", "unknown parameter 'statement_timeout'"),
    ("nonsense", "query parameter without a value: 'nonsense'"),
]
MALFORMED_HOSTS = [
    ("db1:5432,db2:fivefour", "invalid port of host 2 of 2"),
    ("[::1", "unclosed '[' in the host"),
    ("[::1:5432", "unclosed '[' in the host"),
    ("db1,,db2", "empty host 2 of 3"),
    ("db1:5432,", "empty host 2 of 2"),
]


@pytest.mark.parametrize("command", ["verify", "migrate"])
@pytest.mark.parametrize(("query", "expected"), MALFORMED, ids=[q for q, _ in MALFORMED])
def test_malformed_parameter(project: Path, command: str, query: str, expected: str) -> None:
    url = f"postgresql://orders:{ENCODED}@{CLOSED}/orders?{query}"
    result = run_dbinit(command, "--format", "json", cwd=project, DATABASE_URL=url)
    assert result.returncode == 2, result.output
    document = json.loads(result.stdout)
    assert document["error"] == "ConfigurationError"
    assert expected in document["message"], document["message"]
    assert document["message"].startswith("DATABASE_URL ")
    assert document["hint"]
    assert_no_password(result.output, PASSWORD)


@pytest.mark.parametrize(("hosts", "expected"), MALFORMED_HOSTS, ids=[h for h, _ in MALFORMED_HOSTS])
def test_malformed_hosts(project: Path, hosts: str, expected: str) -> None:
    url = f"postgresql://orders:{ENCODED}@{hosts}/orders"
    result = run_dbinit("migrate", "--format", "json", cwd=project, DATABASE_URL=url)
    assert result.returncode == 2, result.output  # was 1 (a traceback) for the brackets
    assert expected in json.loads(result.stdout)["message"]
    assert "Traceback" not in result.stderr
    assert_no_password(result.output, PASSWORD)


def test_missing_certificate_file_is_a_configuration_error(project: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.crt"
    url = f"postgresql://orders:{ENCODED}@{CLOSED}/orders?sslmode=verify-ca&sslrootcert={missing}"
    for command in ("verify", "migrate"):
        result = run_dbinit(command, "--format", "json", cwd=project, DATABASE_URL=url)
        assert result.returncode == 2, result.output
        assert f"sslrootcert={missing}, which is not a readable file" in json.loads(result.stdout)["message"]
        assert_no_password(result.output, PASSWORD)


def test_verify_ca_without_any_root_certificate(project: Path, tmp_path: Path) -> None:
    """No sslrootcert and no ~/.postgresql/root.crt: asyncpg refuses before connecting (exit 2)."""
    url = f"postgresql://orders:{ENCODED}@{CLOSED}/orders?sslmode=verify-ca"
    env = clean_env(DATABASE_URL=url, HOME=str(tmp_path))
    result = run_dbinit("verify", "--format", "json", cwd=project, env=env)
    assert result.returncode == 2, result.output
    assert "root.crt" in json.loads(result.stdout)["message"]
    assert_no_password(result.output, PASSWORD)


# -- the connect event: dbinit's URL only ------------------------------------------------------


@pytest.mark.parametrize("async_driver", [True, False], ids=["asyncpg", "psycopg"])
def test_connect_event_only_touches_dbinit_url(async_driver: bool) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    from dbinit.alembic_runner import connect_arguments
    from dbinit.settings import load_settings

    raw = f"postgresql://u:{ENCODED}@db1:5432,db2:5433/orders?sslmode=verify-full&sslrootcert=system"
    settings = load_settings(database_url=raw, connect_timeout=7)
    listener = connect_arguments(settings, "dbinit-run:1:abc", async_driver=async_driver)
    ours = settings.url.for_sqlalchemy(async_driver=async_driver)
    other = ours.replace("/orders", "/elsewhere")

    def arguments(url: str) -> tuple[list[object], dict[str, object]]:
        engine = create_async_engine(url).sync_engine if async_driver else create_engine(url)
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        listener(engine.dialect, None, cargs, cparams)
        return cargs, cparams

    _, cparams = arguments(ours)
    if async_driver:
        assert cparams["host"] == ["db1", "db2"] and cparams["port"] == [5432, 5433]
        assert cparams["timeout"] == 7
        assert cparams["server_settings"] == {"application_name": "dbinit-run:1:abc"}
        assert cparams["ssl"].verify_mode.name == "CERT_REQUIRED"
        assert cparams["ssl"].check_hostname
    else:
        assert (cparams["host"], cparams["port"]) == ("db1,db2", "5432,5433")
        assert cparams["sslmode"] == "verify-full" and cparams["sslrootcert"] == "system"
        assert cparams["connect_timeout"] == "7"
        assert cparams["application_name"] == "dbinit-run:1:abc"
    assert cparams["password"] == PASSWORD

    # an env.py that connects elsewhere (here: another database) gets nothing of ours
    _, untouched = arguments(other)
    assert not {"ssl", "sslmode", "timeout", "server_settings", "connect_timeout"} & set(untouched)


# -- a server that accepts TLS connections only ------------------------------------------------


@pytest.fixture
def tls_database(tls_server: TlsServer) -> Iterator[str]:
    """A fresh database on the TLS server; yields its name."""
    import asyncpg

    name = f"dbinit_tls_{uuid.uuid4().hex[:10]}"

    async def run(statement: str) -> None:
        connection = await asyncpg.connect(tls_server.admin_dsn)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _tls_seen(server: TlsServer, database: str) -> dict[str, tuple[object, ...]]:
    url = server.url(database, "sslmode=require")
    return seen(TestDatabase("postgresql", url))


@pytest.mark.parametrize(
    ("query", "tls_version"),
    [
        ("sslmode=require", "TLSv1.3"),
        ("sslmode=verify-ca&sslrootcert={ca}", "TLSv1.3"),
        ("sslmode=verify-full&sslrootcert={ca}&ssl_max_protocol_version=TLSv1.2", "TLSv1.2"),
        ("ssl=verify-full&sslrootcert={ca}&ssl_min_protocol_version=TLSv1.3", "TLSv1.3"),
    ],
    ids=["require", "verify-ca", "verify-full-tls1.2", "ssl-alias"],
)
def test_tls_for_verify_and_migrate(
    template_project: Path, tls_server: TlsServer, tls_database: str, query: str, tls_version: str
) -> None:
    url = tls_server.url(tls_database, query.format(ca=tls_server.ca_file))
    before = run_dbinit("verify", cwd=template_project, DATABASE_URL=url)
    assert before.returncode == 4, before.output
    migrate_then_verify(template_project, url)
    sessions = _tls_seen(tls_server, tls_database)
    # the Alembic session and the lock's both used TLS, at the version the URL asked for
    # (TLSv1.2 is not what either driver picks by itself: the parameter reached both)
    for role in ("migration", "lock"):
        assert sessions[role][2] is True, sessions
        assert sessions[role][3] == tls_version, sessions


def test_tls_multi_host_with_system_roots(
    template_project: Path, tls_server: TlsServer, tls_database: str
) -> None:
    """sslrootcert=system (the system's CAs: here SSL_CERT_FILE names the test CA), two hosts."""
    hosts = f"{CLOSED},127.0.0.1:{tls_server.port}"
    url = tls_server.url(tls_database, "sslmode=verify-full&sslrootcert=system", hosts=hosts)
    migrate_then_verify(template_project, url, SSL_CERT_FILE=str(tls_server.ca_file))
    sessions = _tls_seen(tls_server, tls_database)
    assert sessions["migration"][2] is True and sessions["lock"][2] is True
    assert sessions["migration"][5] == tls_server.port


@pytest.mark.parametrize(
    ("query", "message", "hint"),
    [
        ("sslmode=disable", "no encryption", "accepts only TLS connections"),
        ("sslmode=verify-ca&sslrootcert={other}", "TLS certificate verification failed", "sslrootcert"),
        ("sslmode=verify-full&sslrootcert=system", "TLS certificate verification failed", "sslrootcert"),
    ],
    ids=["disable", "wrong-ca", "system-roots"],
)
def test_tls_refusals(
    project: Path, tls_server: TlsServer, tls_database: str, query: str, message: str, hint: str
) -> None:
    url = tls_server.url(tls_database, query.format(other=tls_server.other_ca_file))
    url = url.replace("postgres@", f"postgres:{ENCODED}@", 1)
    for command in ("verify", "migrate"):
        result = run_dbinit(command, "--format", "json", cwd=project, DATABASE_URL=url)
        assert result.returncode == 3, result.output
        document = json.loads(result.stdout)
        assert message in document["message"], document
        assert hint in document["hint"], document
        assert_no_password(result.output, PASSWORD)


def test_url_parsing_of_the_tls_server_url(tls_server: TlsServer) -> None:
    """The fixture's URL is what dbinit hands on (a sanity check of the test itself)."""
    url = DatabaseURL.parse(tls_server.url("x", f"sslmode=verify-ca&sslrootcert={tls_server.ca_file}"))
    assert url.params == {"sslmode": "verify-ca", "sslrootcert": str(tls_server.ca_file)}
