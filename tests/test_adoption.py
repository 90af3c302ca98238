"""Adopting dbinit into a project that is not ours: the full-stack template's shape, end to end.

The README's "Adopting dbinit in an existing service" walks the same path: the
project keeps its own settings class, its ``.env`` one folder up, its
``env.py`` that builds the URL from the app's settings, and gains the Job and
the gate. On the machine's PostgreSQL, with the project's sync psycopg driver.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.databases import PostgresServer, Result, TestDatabase, clean_env, run_dbinit
from tests.plugins.fullstack import APP_SECRET, HEAD, FullStack, build
from tests.test_asgi_servers import free_port, wait_until


@pytest.fixture
def fullstack(tmp_path: Path, pg_database: TestDatabase) -> FullStack:
    return build(tmp_path / "full-stack-fastapi-template", pg_database.parsed)


def events(result: Result) -> list[dict[str, Any]]:
    """Every stderr line of a JSON-mode run, parsed (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in result.stderr.splitlines() if line.strip()]


def job(project: FullStack, *args: str, **env: str) -> Result:
    """``dbinit ARGS`` as the migration Job runs it: the app's Secret in the environment (envFrom)."""
    settings = {**project.app_env(), "DATABASE_URL": project.database.for_sqlalchemy(async_driver=True),
                **env}
    return run_dbinit(*args, cwd=project.backend, **settings)


def test_the_job_migrates_and_the_service_verifies(fullstack: FullStack, pg_database: TestDatabase) -> None:
    # the template's prestart: migrate, then the seed step, under the same lock
    migrated = job(fullstack, "migrate", "--format", "json",
                   DBINIT_AFTER_MIGRATE=f"{sys.executable} -m app.initial_data")
    assert migrated.returncode == 0, migrated.output
    document = json.loads(migrated.stdout)
    assert document["applied"] == [HEAD]
    assert document["after_migrate"]["ok"] is True
    assert pg_database.sql('SELECT email, is_superuser FROM "user"') == [("admin@example.com", True)]
    assert document["database"] == pg_database.parsed.display_name
    assert pg_database.versions() == {HEAD}
    # one log stream: env.py's fileConfig(alembic.ini) lines arrive as JSON events too
    lines = events(migrated)
    assert any(e.get("logger") == "alembic.runtime.migration" and "Running upgrade" in e["event"]
               for e in lines), migrated.stderr

    # the service: ENVIRONMENT=local is the app's own value, and starts
    verified = job(fullstack, "verify", "--format", "json")
    assert verified.returncode == 0, verified.output
    report = json.loads(verified.stdout)
    assert report["database"] == pg_database.parsed.display_name
    assert any("ENVIRONMENT='local'" in e["event"] for e in events(verified) if e["level"] == "warning")
    assert APP_SECRET not in verified.output


def test_a_forgotten_database_url_says_which_database_it_looked_at(fullstack: FullStack) -> None:
    """The template's .env has no DATABASE_URL: dbinit says it used the embedded default, and where."""
    assert job(fullstack, "migrate").returncode == 0
    result = run_dbinit("verify", "--format", "json", cwd=fullstack.backend)
    assert result.returncode == 4, result.output
    default = str(fullstack.backend / "db.sqlite3")
    assert json.loads(result.stdout)["database"] == default
    said = [e for e in events(result) if e["level"] == "warning"]
    assert any(e["event"].startswith("DATABASE_URL is not set") for e in said), result.stderr
    failed = [e for e in events(result) if e["event"] == "Database verification failed"]
    assert failed and failed[0]["database"] == default


def test_the_gate_starts_the_app_with_its_own_environment_name(
    fullstack: FullStack, pg_database: TestDatabase
) -> None:
    assert job(fullstack, "migrate").returncode == 0
    fullstack.adopt()
    port = free_port()
    env = clean_env(**fullstack.app_env(), DATABASE_URL=pg_database.url, DBINIT_READINESS_PATH="/readyz")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=fullstack.backend, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        import urllib.request

        def healthy() -> bool:
            try:
                url = f"http://127.0.0.1:{port}/api/v1/utils/health-check/"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.status == 200
            except OSError:
                return server.poll() is not None  # stop waiting for a server that exited

        assert wait_until(healthy, timeout=60)
        assert server.poll() is None, server.communicate()[0]
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Database verification successful" in output
    assert "ENVIRONMENT='local' is not one of" in output  # said once, as a warning
    assert APP_SECRET not in output


def test_an_env_py_pointed_elsewhere_is_refused_before_any_revision(
    fullstack: FullStack, pg_database: TestDatabase, postgres_server: PostgresServer
) -> None:
    """The app's settings name another database than DATABASE_URL: the lock would protect nothing."""
    other = postgres_server.create()
    try:
        fullstack.point_app_at(other)
        refused = job(fullstack, "migrate", "--format", "json")
        assert refused.returncode == 2, refused.output
        error = json.loads(refused.stdout)
        assert error["error"] == "ConfigurationError"
        assert pg_database.parsed.database in error["message"] and other in error["message"]
        assert "sqlalchemy.url" in error["hint"]
        assert pg_database.tables() == set()  # neither database was migrated
        assert TestDatabase("postgresql", postgres_server.url_for(other)).tables() == set()
        assert APP_SECRET not in refused.output
    finally:
        postgres_server.drop(other)

    # the app's missing secret: a configuration error naming the setting, before any revision
    env = fullstack.app_env()
    (fullstack.root / ".env").unlink()  # the Job has no .env: only what envFrom gives it
    del env["POSTGRES_SERVER"]
    missing = run_dbinit("migrate", "--format", "json", cwd=fullstack.backend,
                         DATABASE_URL=pg_database.url, **env)
    assert missing.returncode == 2, missing.output
    message = json.loads(missing.stdout)["message"]
    assert "the application's settings (Settings) rejected: POSTGRES_SERVER: Field required" in message
    assert pg_database.tables() == set()


@pytest.mark.parametrize(("workers", "code"), [("1", 3), ("2", 0)])
def test_fastapi_run_on_an_unmigrated_database(
    fullstack: FullStack, pg_database: TestDatabase, workers: str, code: int
) -> None:
    """The template's `fastapi run --workers 4` form: the refusal reaches the exit code with one worker.

    With several, uvicorn's supervisor stops and exits 0 (README, "One worker per pod"): pinned here
    on the template's shape, as tests/test_asgi_workers.py pins it on the example.
    """
    fullstack.adopt()
    env = clean_env(**fullstack.app_env(), DATABASE_URL=pg_database.url)
    env.pop("WEB_CONCURRENCY", None)
    argv = [sys.executable, "-m", "fastapi", "run", "app/main.py", "--host", "127.0.0.1",
            "--port", str(free_port()), "--workers", workers]
    done = subprocess.run(argv, cwd=fullstack.backend, env=env, capture_output=True, text=True,
                          timeout=90, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    assert "dbinit: database not ready, refusing to start" in output
    assert "dbinit.E002" in output
    assert pg_database.tables() == set()  # the service never migrates
