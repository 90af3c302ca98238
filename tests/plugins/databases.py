"""Real databases for the test suite (a pytest plugin, loaded from pyproject).

PostgreSQL: ``DBINIT_TEST_POSTGRES_URL`` (CI sets it to the machine's server,
e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``); without it the
session starts a throwaway server with the ``pgserver`` wheel (it brings its
own binaries and works as root), and removes it at the end. Every test that
asks for a database gets a fresh one, dropped afterwards.

SQLite: a file in the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbinit.urls import DatabaseURL

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "bakery"
SECRET = "s3cr3t-Pa55word"


@dataclasses.dataclass(frozen=True)
class TestDatabase:
    __test__ = False
    """A database made for one test."""

    backend: str
    url: str  # the URL to give dbinit

    @property
    def parsed(self) -> DatabaseURL:
        return DatabaseURL.parse(self.url)

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        """Run one statement (read or write) and return its rows."""
        if self.backend == "sqlite":
            import sqlite3

            path = self.parsed.sqlite_path
            assert path is not None
            with sqlite3.connect(path) as connection:
                return [tuple(r) for r in connection.execute(statement).fetchall()]
        return asyncio.run(_pg_sql(self.parsed.asyncpg_dsn(), statement))

    def tables(self) -> set[str]:
        if self.backend == "sqlite":
            rows = self.sql("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            rows = self.sql("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        return {str(r[0]) for r in rows}

    def versions(self) -> set[str]:
        return {str(r[0]) for r in self.sql("SELECT version_num FROM alembic_version")}


async def _pg_sql(dsn: str, statement: str) -> list[tuple[object, ...]]:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            return [tuple(r) for r in await connection.fetch(statement)]
        await connection.execute(statement)
        return []
    finally:
        await connection.close()


class PostgresServer:
    """Makes and drops databases on one server."""

    def __init__(self, admin_url: str) -> None:
        self.admin = DatabaseURL.parse(admin_url)

    def url_for(self, name: str, *, password: str | None = None) -> str:
        """A ``postgresql+asyncpg://`` URL for database ``name``."""
        parsed = dataclasses.replace(self.admin, database=name)
        if password is not None:
            parsed = dataclasses.replace(parsed, password=password)
        return parsed.for_sqlalchemy(async_driver=True)

    def create(self) -> str:
        name = f"dbinit_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_pg_sql(self.admin.asyncpg_dsn(), f'CREATE DATABASE "{name}"'))
        return name

    def drop(self, name: str) -> None:
        asyncio.run(
            _pg_sql(self.admin.asyncpg_dsn(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    url = os.environ.get("DBINIT_TEST_POSTGRES_URL")
    if url:
        yield PostgresServer(url)
        return
    import pgserver

    data = Path(tempfile.mkdtemp(prefix="dbinit-pg-"))
    server = pgserver.get_server(data, cleanup_mode="delete")
    try:
        yield PostgresServer(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[TestDatabase]:
    name = postgres_server.create()
    try:
        yield TestDatabase("postgresql", postgres_server.url_for(name))
    finally:
        postgres_server.drop(name)


@pytest.fixture
def sqlite_database(tmp_path: Path) -> TestDatabase:
    return TestDatabase("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> TestDatabase:
    """Each test that uses it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_database")
    return request.getfixturevalue("pg_database")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the example service, free to modify."""
    target = tmp_path / "project"
    shutil.copytree(
        EXAMPLE, target, ignore=shutil.ignore_patterns("*.sqlite3*", "__pycache__", ".env")
    )
    return target


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a dbinit subprocess: no stray dbinit settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DBINIT_", "DATABASE_URL"))
        and k not in ("SERVICE_NAME", "ENVIRONMENT", "DB_FORCE_RECREATE")
    }
    env["DBINIT_LOG_FORMAT"] = "json"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_dbinit(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120, **settings: str
) -> Result:
    """Run ``python -m dbinit ARGS`` as a user would, and collect its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "dbinit", *args],
        cwd=cwd,
        env=clean_env(**settings) if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def add_revision(
    project: Path, rev_id: str, down: str | None, body: str = "pass", module: str = "", **extra: str
) -> Path:
    """Write a revision file in Alembic's own shape; ``module`` lines are added at module level (e.g. the
    phase declarations)."""
    versions = project / "migrations" / "versions"
    lines = [
        f'"""revision {rev_id}',
        "",
        f"Revision ID: {rev_id}",
        f"Revises: {down or ''}",
        "Create Date: 2026-11-25 00:00:00",
        "",
        '"""',
        "from typing import Sequence, Union",
        "",
        "from alembic import op",
        "import sqlalchemy as sa",
        "",
        "",
        "# revision identifiers, used by Alembic.",
        f"revision: str = {rev_id!r}",
        f"down_revision: Union[str, Sequence[str], None] = {down!r}",
        f"branch_labels: Union[str, Sequence[str], None] = {extra.get('branch_labels', 'None')}",
        f"depends_on: Union[str, Sequence[str], None] = {extra.get('depends_on', 'None')}",
        "",
        "",
        "def upgrade() -> None:",
        *(f"    {line}" for line in body.splitlines()),
        "",
        "",
        "def downgrade() -> None:",
        "    pass",
        "",
    ]
    path = versions / f"{rev_id}_revision.py"
    path.write_text("\n".join(lines) + ("\n" + module + "\n" if module else ""))
    return path


def alembic_project(tmp_path: Path, template: str = "generic", rev_id: str = "b7ead0000001") -> Path:
    """A project made by ``alembic init -t TEMPLATE`` and one ``alembic revision`` (``rev_id``),
    whose upgrade creates the table ``bread``."""
    project = tmp_path / f"project-{template}"
    project.mkdir()
    alembic = [sys.executable, "-m", "alembic"]
    for args in (("init", "-t", template, "migrations"),
                 ("revision", "-m", "create bread", "--rev-id", rev_id)):
        subprocess.run([*alembic, *args], cwd=project, env=clean_env(), check=True, capture_output=True,
                       timeout=120)
    revision = next((project / "migrations" / "versions").glob(f"{rev_id}_*.py"))
    body = '    op.create_table("bread", sa.Column("id", sa.Integer, primary_key=True))'
    revision.write_text(revision.read_text().replace(
        '    """Upgrade schema."""\n    pass', '    """Upgrade schema."""\n' + body, 1))
    return project
