"""Every way a gated service can fail at startup, under a real uvicorn, in both lifespan modes.

uvicorn's default ``--lifespan auto`` takes an app that raises without sending
``lifespan.startup.failed`` for one that does not support the lifespan, and
serves. So for each way in (``wrap`` of a plain ASGI app, a FastAPI or
Starlette ``lifespan``, ``middleware`` + ``lifespan``) and each failure
(configuration, permission, not ready, a plugin bug) the server must exit
non-zero without ever answering a request, and say why, without the password.
Then: a privilege revoked while the service runs gives a cached 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbinit.urls import DatabaseURL
from tests.plugins.databases import (
    EXAMPLE,
    ROOT,
    SECRET,
    PostgresServer,
    _pg_sql,
    clean_env,
    run_dbinit,
)
from tests.plugins.pgproxy import free_port, pg_proxy

#: What any failing server may take from start to exit (they take about a second).
EXIT_WITHIN = 30.0
APP_STARTED = "APP OWN LIFESPAN STARTED"

APPS = {
    "wrap": '''
from dbinit.asgi import DatabaseGate

async def service(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                print("APP OWN LIFESPAN STARTED", flush=True)
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served"})

app = DatabaseGate().wrap(service)
''',
    "starlette": '''
import contextlib
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from dbinit.asgi import DatabaseGate

@contextlib.asynccontextmanager
async def own(app):
    print("APP OWN LIFESPAN STARTED", flush=True)
    yield

async def home(request):
    return PlainTextResponse("served")

app = Starlette(routes=[Route("/", home)], lifespan=DatabaseGate().lifespan(own))
''',
    "fastapi": '''
import contextlib
from fastapi import FastAPI
from dbinit.asgi import DatabaseGate

@contextlib.asynccontextmanager
async def own(app):
    print("APP OWN LIFESPAN STARTED", flush=True)
    yield

app = FastAPI(lifespan=DatabaseGate().lifespan(own))

@app.get("/")
async def home():
    return "served"
''',
    "fastapi+middleware": '''
import contextlib
from fastapi import FastAPI
from dbinit.asgi import DatabaseGate

@contextlib.asynccontextmanager
async def own(app):
    print("APP OWN LIFESPAN STARTED", flush=True)
    yield

gate = DatabaseGate()
app = FastAPI(lifespan=gate.lifespan(own))
app.add_middleware(gate.middleware)

@app.get("/")
async def home():
    return "served"
''',
}
#: Starlette's Router sends its own traceback text in startup.failed; the middleware makes it one line.
ONE_LINE = {"wrap", "fastapi+middleware"}

PLUGIN = '''
from dbinit import hookimpl
from dbinit.checks import Check

def explode(facts):
    raise RuntimeError("plugin exploded")

@hookimpl
def dbinit_checks():
    return [Check(id="gateboom.E001", name="explodes", func=explode, requires_database=False)]
'''


@dataclasses.dataclass(frozen=True)
class Databases:
    """One migrated and one empty database, and a login role with no grant on the version table."""

    server: PostgresServer
    migrated: str
    empty: str
    role: str

    def url(self, database: str, *, user: str | None = None) -> str:
        parsed = DatabaseURL.parse(self.server.url_for(database, password=SECRET))
        if user is not None:
            parsed = dataclasses.replace(parsed, username=user)
        return parsed.for_sqlalchemy(async_driver=True)

    def admin_sql(self, database: str, statement: str) -> None:
        dsn = dataclasses.replace(self.server.admin, database=database).asyncpg_dsn()
        asyncio.run(_pg_sql(dsn, statement))


@pytest.fixture(scope="module")
def databases(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Databases]:
    import shutil

    project = tmp_path_factory.mktemp("migrate") / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.sqlite3*", "__pycache__", ".env"))
    migrated, empty = postgres_server.create(), postgres_server.create()
    role = f"dbinit_gate_{uuid.uuid4().hex[:10]}"
    admin = postgres_server.admin.asyncpg_dsn()
    try:
        asyncio.run(_pg_sql(admin, f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'"))
        result = run_dbinit("migrate", cwd=project, DATABASE_URL=postgres_server.url_for(migrated))
        assert result.returncode == 0, result.output
        yield Databases(postgres_server, migrated, empty, role)
    finally:
        postgres_server.drop(migrated)
        postgres_server.drop(empty)  # the role's privileges went with the databases
        asyncio.run(_pg_sql(admin, f"DROP ROLE IF EXISTS {role}"))


#: How the startup.failed message names each kind of failure ("dbinit: <what>, refusing to start").
WHATS = ("configuration error", "database unreachable", "database not ready", "a bug in a plugin")


@dataclasses.dataclass(frozen=True)
class Case:
    env: dict[str, str]
    says: tuple[str, ...]  # what the output must name
    what: str  # the kind of failure, one of WHATS: the only one the output may name
    bug: bool = False  # a bug: its traceback is logged once


def make_case(name: str, dbs: Databases, tmp_path: Path) -> Case:
    migrated = dbs.url(dbs.migrated)
    config = "configuration error"
    if name == "malformed-url":
        return Case({"DATABASE_URL": f"postgresql://u:{SECRET}@host:notaport/db"}, ("invalid port",), config)
    if name == "missing-url-file":
        missing = tmp_path / "secret" / "database-url"
        return Case({"DATABASE_URL_FILE": str(missing)}, ("DATABASE_URL_FILE", "cannot be read"), config)
    if name == "bad-timeout":
        return Case(
            {"DBINIT_STARTUP_TIMEOUT": "abc", "DATABASE_URL": migrated}, ("DBINIT_STARTUP_TIMEOUT",), config
        )
    if name == "bad-log-level":  # a settings error on a database that would verify
        return Case(
            {"DBINIT_LOG_LEVEL": "verbose", "DATABASE_URL": migrated},
            ("invalid setting DBINIT_LOG_LEVEL", "'debug', 'info', 'warning' or 'error'"),
            config,
        )
    if name == "no-grant":
        return Case(
            {"DATABASE_URL": dbs.url(dbs.migrated, user=dbs.role)},
            ("permission denied for table alembic_version", f"GRANT SELECT ON alembic_version TO {dbs.role}"),
            "database unreachable",
        )
    if name == "unmigrated":
        return Case(
            {"DATABASE_URL": dbs.url(dbs.empty)}, ("dbinit.E002", "migration job"), "database not ready"
        )
    if name == "plugin-raises":
        plugins = tmp_path / "plugins"
        plugins.mkdir()
        (plugins / "gate_boom_plugin.py").write_text(PLUGIN)
        return Case(
            {
                "DATABASE_URL": migrated,
                "DBINIT_PLUGINS": "gate_boom_plugin",
                "PYTHONPATH": os.pathsep.join((str(ROOT), str(plugins))),
            },
            ("a bug in a plugin", "gate_boom_plugin", "RuntimeError: plugin exploded"),
            "a bug in a plugin",
            bug=True,
        )
    raise AssertionError(name)


CASES = [
    "malformed-url", "missing-url-file", "bad-timeout", "bad-log-level", "no-grant", "unmigrated",
    "plugin-raises",
]
# auto (the mode that serves after a bare exception): every way in with every case, but
# FastAPI's lifespan is Starlette's Router code, so it gets three. on: two per way in,
# chosen so that every case also runs under on.
MATRIX = (
    [("auto", way, case) for way in ("wrap", "starlette", "fastapi+middleware") for case in CASES]
    + [("auto", "fastapi", case) for case in ("bad-log-level", "no-grant", "plugin-raises")]
    + [
        ("on", "wrap", "missing-url-file"),
        ("on", "wrap", "plugin-raises"),
        ("on", "starlette", "bad-timeout"),
        ("on", "starlette", "no-grant"),
        ("on", "fastapi", "bad-log-level"),
        ("on", "fastapi", "unmigrated"),
        ("on", "fastapi+middleware", "malformed-url"),
        ("on", "fastapi+middleware", "plugin-raises"),
    ]
)


def http_status(port: int, path: str = "/") -> int | None:
    """The status the server answered, or None if nothing listens."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


@dataclasses.dataclass
class Run:
    returncode: int
    output: str
    seconds: float
    answers: list[int]


def run_failing_server(app_dir: Path, lifespan: str, env: dict[str, str]) -> Run:
    """Start uvicorn, knock on its port until it exits; what it answered and said."""
    port = free_port()
    log = app_dir / f"uvicorn-{port}.log"
    started = time.monotonic()
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "gate_app:app", "--lifespan", lifespan,
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=app_dir, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        answers = []
        try:
            while process.poll() is None and time.monotonic() - started < EXIT_WITHIN:
                status = http_status(port)
                if status is not None:  # it serves: the test has failed, no need to wait
                    answers.append(status)
                    break
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
    return Run(process.returncode, log.read_text(), time.monotonic() - started, answers)


@pytest.mark.parametrize(("lifespan", "way", "case"), MATRIX, ids=["-".join(m) for m in MATRIX])
def test_startup_failure_stops_the_server(
    lifespan: str, way: str, case: str, databases: Databases, project: Path, tmp_path: Path
) -> None:
    failure = make_case(case, databases, tmp_path)
    (project / "gate_app.py").write_text(textwrap.dedent(APPS[way]))
    env = clean_env(**{"DBINIT_STARTUP_TIMEOUT": "0.5", "DBINIT_READINESS_PATH": "/readyz", **failure.env})
    run = run_failing_server(project, lifespan, env)
    output = run.output
    print(f"{lifespan}-{way}-{case}: exit {run.returncode} after {run.seconds:.2f}s")

    assert run.returncode != 0, output
    assert run.seconds < EXIT_WITHIN, output
    assert run.answers == [], f"the server answered {run.answers} before it exited:\n{output}"
    assert APP_STARTED not in output  # the app's own startup never ran
    # uvicorn heard startup.failed: not "lifespan unsupported" (auto), not a bare exception (on)
    assert "Application startup failed. Exiting." in output, output
    assert "appears unsupported" not in output, output
    assert "Exception in 'lifespan' protocol" not in output, output
    assert "refusing to start" in output, output
    # named as what it is, and as nothing else: a settings error is never "database not ready"
    assert f"dbinit: {failure.what}" in output, output
    for other in set(WHATS) - {failure.what}:
        assert f"dbinit: {other}" not in output, output
    for words in failure.says:
        assert words in output, output
    assert SECRET not in output, output
    # tracebacks: a bug's once (dbinit's log), none for an expected failure; Starlette's
    # Router adds its own (of StartupFailed, never of the cause) without the middleware
    tracebacks = output.count("Traceback (most recent call last)")
    assert tracebacks == int(failure.bug) + (way not in ONE_LINE), output
    assert "During handling of the above exception" not in output, output
    assert "The above exception was the direct cause" not in output, output
    if failure.bug:
        assert "bug" in output


def test_revoked_privilege_while_serving_is_a_cached_503(
    databases: Databases, project: Path
) -> None:
    """REVOKE SELECT on the version table from a running service's role: readiness says so."""
    role = f"dbinit_gate_{uuid.uuid4().hex[:10]}"
    dbs = databases
    dbs.admin_sql(dbs.migrated, f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
    try:
        dbs.admin_sql(dbs.migrated, f"GRANT SELECT ON alembic_version TO {role}")
        (project / "gate_app.py").write_text(textwrap.dedent(APPS["wrap"]))
        with pg_proxy(dbs.url(dbs.migrated)) as proxy:
            port = free_port()
            env = clean_env(
                DATABASE_URL=proxy.url_for(dbs.url(dbs.migrated, user=role)),
                DBINIT_READINESS_PATH="/readyz",
                DBINIT_READINESS_CACHE="1.0",
                DBINIT_READINESS_DETAILS="true",  # the reason and the GRANT to run, in the body
            )
            log = project / "uvicorn.log"
            with log.open("w") as sink:
                process = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "gate_app:app", "--host", "127.0.0.1",
                     "--port", str(port)],
                    cwd=project, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                )
                try:
                    assert wait_for(lambda: ready(port) == 200 or process.poll() is not None, 30)
                    assert process.poll() is None, log.read_text()
                    dbs.admin_sql(dbs.migrated, f"REVOKE SELECT ON alembic_version FROM {role}")
                    assert wait_for(lambda: ready(port) == 503, 10), log.read_text()

                    # cached: a burst inside one period costs at most one re-check
                    before, started = proxy.statements, time.monotonic()
                    answers = [readiness(port) for _ in range(20)]
                    burst, spent = proxy.statements - before, time.monotonic() - started
                    assert spent < 1.0  # the burst fits in one cache period
                    assert burst <= 1, (burst, proxy.messages)
                    assert {status for status, _, _ in answers} == {503}
                    _, content_type, body = answers[-1]
                    assert content_type == "application/json"
                    assert body["ok"] is False and body["action"] == "failed"
                    assert body["status"] == "unreachable" and body["failed"] == []
                    assert "permission denied for table alembic_version" in str(body["message"])
                    assert f"GRANT SELECT ON alembic_version TO {role}" in str(body["hint"])
                    time.sleep(1.2)
                    assert readiness(port)[0] == 503  # re-checked, still failing: not logged again

                    dbs.admin_sql(dbs.migrated, f"GRANT SELECT ON alembic_version TO {role}")
                    assert wait_for(lambda: ready(port) == 200, 10), log.read_text()
                    assert http_status(port, "/") == 200
                    process.send_signal(signal.SIGINT)
                    process.wait(30)
                finally:
                    if process.poll() is None:
                        process.kill()
                        process.wait(10)
    finally:
        dbs.admin_sql(dbs.migrated, f"DROP OWNED BY {role}")
        dbs.admin_sql(dbs.migrated, f"DROP ROLE {role}")
    output = log.read_text()
    assert process.returncode == 0, output
    assert output.count("Database readiness lost") == 1, output  # a change of state, logged once
    assert output.count("Database readiness restored") == 1, output
    assert "Traceback" not in output, output
    assert '"GET /readyz HTTP/1.1" 500' not in output, output
    assert SECRET not in output, output


def test_verify_command_without_select_grant_exits_3(databases: Databases, project: Path) -> None:
    """The one-shot read (the command line's) classifies the missing privilege the same way."""
    result = run_dbinit(
        "verify", cwd=project, DATABASE_URL=databases.url(databases.migrated, user=databases.role)
    )
    assert result.returncode == 3, result.output
    assert "permission denied for table alembic_version" in result.output
    assert f"GRANT SELECT ON alembic_version TO {databases.role}" in result.output
    assert "Traceback" not in result.output
    assert SECRET not in result.output


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def readiness(port: int) -> tuple[int, str, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), json.loads(response.read())
    finally:
        connection.close()


def ready(port: int) -> int | None:
    return http_status(port, "/readyz")
