"""``dbinit wait`` in a big rollout: "too many clients" is retried, a poll costs one connection.

A hundred init containers polling one PostgreSQL with a low ``max_connections``
(bench/rollout.py measures it) meet two things tested here on real servers:
the server refusing a login with SQLSTATE 53300 ("sorry, too many clients
already", or "remaining connection slots are reserved"), which ``wait`` must
take as "unreachable for now" and keep polling, not a permanent failure; and
the number of sessions each poll opens, which is what fills the slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

pytest.register_assert_rewrite("tests.plugins.faults")

from dbinit.lock import lock_key  # noqa: E402
from tests.plugins.databases import TestDatabase, run_dbinit  # noqa: E402
from tests.plugins.faults import Spawner, eventually, pg_watch, throwaway_postgres  # noqa: E402

pytest_plugins = ["tests.plugins.faults"]

#: Slots for ordinary roles on the tiny server: max_connections minus the superusers' reserve.
APP_SLOTS = 3
REFUSED = re.compile(r"too many clients|remaining connection slots are reserved")


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[int]:
    """A throwaway PostgreSQL with room for three sessions of an ordinary role, ``app``."""
    with throwaway_postgres(
        "dbinit-tiny-",
        ["--auth=trust"],
        server_options=f"-c max_connections={APP_SLOTS + 1} -c superuser_reserved_connections=1",
    ) as (port, _):
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as admin:
            admin.execute("CREATE ROLE app LOGIN")
        yield port


@pytest.fixture
def app_database(tiny_server: int) -> Iterator[str]:
    """A fresh database owned by ``app``; its URL (as ``app``, no password: trust)."""
    admin_dsn = f"postgresql://postgres@127.0.0.1:{tiny_server}/postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS rollout WITH (FORCE)")
        admin.execute("CREATE DATABASE rollout OWNER app")
    yield f"postgresql://app@127.0.0.1:{tiny_server}/rollout"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS rollout WITH (FORCE)")


@contextlib.contextmanager
def every_slot_taken(url: str) -> Iterator[list[psycopg.Connection]]:
    """All of ``app``'s slots held open; one more login of ``app`` is refused with 53300."""
    held = [psycopg.connect(url, autocommit=True) for _ in range(APP_SLOTS)]
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError) as refused:
            asyncio.run(asyncpg.connect(url))
        assert refused.value.sqlstate == "53300", refused.value
        yield held
    finally:
        for connection in held:
            connection.close()


@pytest.mark.parametrize(
    ("args", "done"),
    [
        (("wait", "--until-verified"), "Database is ready."),
        (("wait",), "Database is accepting connections"),
    ],
    ids=["until-verified", "reachable"],
)
def test_a_waiter_refused_with_too_many_clients_keeps_waiting_and_succeeds(
    project: Path, app_database: str, spawn: Spawner, args: tuple[str, ...], done: str
) -> None:
    migrated = run_dbinit("migrate", cwd=project, DATABASE_URL=app_database)
    assert migrated.returncode == 0, migrated.output
    with every_slot_taken(app_database):
        waiter = spawn(*args, "--timeout", "120", cwd=project, DATABASE_URL=app_database)
        # refused at least twice: it went on polling after the first "too many clients"
        eventually(lambda: len(REFUSED.findall(waiter.stderr())) >= 2, within=60,
                   what="the waiter retrying after a refused login")  # fmt: skip
        assert waiter.running(), waiter.stderr()
    result = waiter.finish(within=60)
    assert result.returncode == 0, result.output
    assert done in result.stdout
    assert "server not accepting connections yet" in result.stderr  # said as "unreachable for now"


def test_a_waiter_refused_by_a_full_server_times_out_as_unreachable(project: Path, app_database: str) -> None:
    """Refused until the deadline: ``wait`` exits 3 (unreachable, retryable), never 1."""
    with every_slot_taken(app_database):
        result = run_dbinit("wait", "--timeout", "1", cwd=project, DATABASE_URL=app_database)
    assert result.returncode == 3, result.output
    assert REFUSED.search(result.stderr), result.stderr
    assert "gave up after" in result.stderr


def test_each_poll_of_wait_until_verified_opens_one_session(project: Path, pg_database: TestDatabase) -> None:
    """While the Job holds the migration lock, a poll verifies and names the holder on one session."""
    name = pg_database.parsed.database
    with pg_watch(pg_database.url) as watch:
        if int(watch.rows("SHOW server_version_num")[0][0]) < 140000:
            pytest.skip("pg_stat_database.sessions is PostgreSQL 14+")

        def sessions_opened() -> int:
            return int(watch.rows("SELECT sessions FROM pg_stat_database WHERE datname = %s", name)[0][0])

        watch.rows("SET application_name = 'dbinit-migrate:the-job'")
        watch.rows("SELECT pg_advisory_lock(%s)", lock_key("public", "alembic_version"))
        before = sessions_opened()
        result = run_dbinit("wait", "--until-verified", "--timeout", "3", cwd=project,
                            DATABASE_URL=pg_database.url)  # fmt: skip
        assert result.returncode == 4, result.output
        assert "migration in progress (held by dbinit-migrate:the-job" in result.stderr
        found = re.search(r"database not ready after 3s \((\d+) attempts\)", result.stderr)
        assert found, result.stderr
        attempts = int(found.group(1))
        assert attempts >= 3, result.stderr
        # a backend's statistics are counted before it leaves pg_stat_activity
        eventually(lambda: not [s for s in watch.sessions("dbinit-") if s[1] != "dbinit-migrate:the-job"],
                   within=10, what="the waiter's sessions ended")  # fmt: skip
        opened = sessions_opened() - before
        assert opened == attempts, f"{opened} sessions for {attempts} polls"
