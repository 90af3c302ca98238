"""The migration lock: one migrator at a time, never stale.

PostgreSQL: a session-level advisory lock on a dedicated connection (never
Alembic's own, whose transaction handling it would disturb). It dies with the
session, so a killed job cannot leave it behind; the server is told to notice
a vanished client (``client_connection_check_interval``, TCP keepalives). The
wait is bounded here, by polling ``pg_try_advisory_lock`` against a deadline,
and the holder (its ``application_name``) is logged while waiting.

SQLite: an exclusive ``flock`` on a file beside the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbinit.database import connect_errors, connect_failure
from dbinit.errors import LockTimeout

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.interrupts import RunControl
    from dbinit.settings import Settings

POLL_SECONDS = 0.25
REPORT_EVERY_SECONDS = 5.0

_HOLDER_QUERY = """
SELECT a.application_name, a.pid, coalesce(host(a.client_addr), 'local') AS client,
       round(extract(epoch FROM now() - a.backend_start)) AS seconds
  FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1 AND l.objid = $2
   AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
"""


def lock_key(schema: str, version_table: str) -> int:
    """A signed 64-bit advisory lock key for this database's version table."""
    digest = hashlib.sha256(f"dbinit:{schema}.{version_table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _database_lock_key(connection: Any, settings: Settings) -> int:
    """The lock key of this database's version table (schema resolved on the server)."""
    schema = settings.db_schema or await connection.fetchval("SELECT current_schema()")
    return lock_key(schema, settings.version_table)


async def _holder_of(connection: Any, key: int) -> str | None:
    """Who holds the advisory lock ``key`` (application name, pid, client), if anyone."""
    row = await connection.fetchrow(_HOLDER_QUERY, (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)
    if row is None:
        return None
    return f"{row['application_name'] or '?'} (pid {row['pid']}, {row['client']})"


def holder_name(settings: Settings, target: str = "head") -> str:
    """What others see as the lock holder: service, pod (host) name, target."""
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"dbinit-migrate:{settings.service}@{host}->{target}"[:63]


@dataclasses.dataclass(frozen=True)
class HeldLock:
    holder: str
    waited_seconds: float
    connection: Any = None  # the asyncpg connection holding the lock (PostgreSQL)

    async def cancel_sessions(self, application_name: str) -> int:
        """Server-side cancel of the statements run by sessions with that name."""
        if self.connection is None or self.connection.is_closed():
            return 0
        rows = await self.connection.fetch(
            "SELECT pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity "
            "WHERE application_name = $1 AND pid <> pg_backend_pid() AND state = 'active'",
            application_name,
        )
        return len(rows)


@contextlib.asynccontextmanager
async def migration_lock(
    settings: Settings,
    log: FilteringBoundLogger,
    *,
    target: str = "head",
    control: RunControl | None = None,
) -> AsyncIterator[HeldLock]:
    """Hold the migration lock for the body; raises :class:`LockTimeout` (exit 6).

    ``target`` (the revision being migrated to) is part of the holder's name;
    a stop request (``control``) ends the wait with :class:`Interrupted`.
    """
    if settings.url.is_sqlite:
        async with _sqlite_lock(settings, log, holder_name(settings, target), control) as held:
            yield held
    else:
        async with _postgres_lock(settings, log, holder_name(settings, target), control) as held:
            yield held


@contextlib.asynccontextmanager
async def _postgres_lock(
    settings: Settings, log: FilteringBoundLogger, me: str, control: RunControl | None
) -> AsyncIterator[HeldLock]:
    import asyncpg

    arguments = settings.url.asyncpg_connect_kwargs(
        timeout=settings.connect_timeout,
        server_settings={
            "application_name": me,
            "tcp_keepalives_idle": "30",
            "tcp_keepalives_interval": "10",
            "tcp_keepalives_count": "3",
        },
    )
    try:
        connection = await asyncpg.connect(**arguments)
    except connect_errors() as exc:
        raise connect_failure(exc, settings.url) from None
    try:
        if connection.get_server_version().major >= 14:
            await connection.execute("SET client_connection_check_interval = '5s'")
        key = await _database_lock_key(connection, settings)
        started = time.monotonic()
        deadline = started + settings.lock_timeout
        next_report = started
        holder = "unknown"
        while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", key):
            if control is not None:
                control.raise_if_stopping("stopped while waiting for the migration lock")
            now = time.monotonic()
            holder = await _holder_of(connection, key) or holder
            if now >= deadline:
                raise LockTimeout(
                    f"migration lock not acquired within {settings.lock_timeout:g}s: "
                    f"held by {holder}",
                    hint="Another migration job is running. Let it finish (its logs say what it "
                    "does), or raise DBINIT_LOCK_TIMEOUT.",
                )
            if now >= next_report:
                log.info(
                    "Waiting for the migration lock",
                    holder=holder,
                    waited_s=round(now - started, 1),
                    timeout_s=settings.lock_timeout,
                )
                next_report = now + REPORT_EVERY_SECONDS
            await asyncio.sleep(POLL_SECONDS)
        waited = time.monotonic() - started
        log.info("Migration lock acquired", holder=me, waited_s=round(waited, 2))
        try:
            yield HeldLock(me, waited, connection)
        finally:
            if not connection.is_closed():
                await connection.execute("SELECT pg_advisory_unlock($1)", key)
                log.info("Migration lock released")
    finally:
        await connection.close(timeout=2)


@contextlib.asynccontextmanager
async def _sqlite_lock(
    settings: Settings, log: FilteringBoundLogger, me: str, control: RunControl | None
) -> AsyncIterator[HeldLock]:
    import fcntl

    path = settings.url.sqlite_path
    if path is None:
        yield HeldLock(me, 0.0)
        return
    lock_path = Path(str(path) + ".dbinit-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        started = time.monotonic()
        deadline = started + settings.lock_timeout
        next_report = started
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if control is not None:
                    control.raise_if_stopping("stopped while waiting for the migration lock")
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                now = time.monotonic()
                if now >= deadline:
                    raise LockTimeout(
                        f"migration lock not acquired within {settings.lock_timeout:g}s: "
                        f"held by {holder}",
                        hint="Another migration is running on this SQLite file; let it finish "
                        "or raise DBINIT_LOCK_TIMEOUT.",
                    ) from None
                if now >= next_report:
                    log.info("Waiting for the migration lock", holder=holder)
                    next_report = now + REPORT_EVERY_SECONDS
                await asyncio.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{me} (pid {os.getpid()})".encode(), 0)
        waited = time.monotonic() - started
        log.info("Migration lock acquired", holder=me, waited_s=round(waited, 2))
        try:
            yield HeldLock(me, waited)
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            log.info("Migration lock released")
    finally:
        os.close(fd)


async def current_holder(settings: Settings) -> str | None:
    """Who holds the migration lock now (None if nobody); for ``wait``'s messages."""
    if settings.url.is_sqlite:
        return _sqlite_holder(settings)
    import asyncpg

    arguments = settings.url.asyncpg_connect_kwargs(
        timeout=settings.connect_timeout,
        server_settings={"application_name": f"dbinit-wait:{settings.service}"[:63]},
    )
    try:
        connection = await asyncpg.connect(**arguments)
    except connect_errors():
        return None
    try:
        return await _holder_of(connection, await _database_lock_key(connection, settings))
    finally:
        await connection.close(timeout=2)


def _sqlite_holder(settings: Settings) -> str | None:
    import fcntl

    path = settings.url.sqlite_path
    if path is None:
        return None
    lock_path = Path(str(path) + ".dbinit-lock")
    if not lock_path.exists():
        return None
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
