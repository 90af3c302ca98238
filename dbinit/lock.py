"""The migration lock: one migrator at a time, never stale.

PostgreSQL: a session-level advisory lock on a dedicated connection (never
Alembic's own, whose transaction handling it would disturb). It dies with the
session, so a killed job cannot leave it behind; the server is told to notice
a vanished client (``client_connection_check_interval``, TCP keepalives). The
wait is bounded here, by polling ``pg_try_advisory_lock`` against a deadline,
and the holder (its ``application_name``) is logged while waiting.

Dying with the session cuts both ways: if the session ends while the job
migrates, another job may take the lock. So, while it is held, the lock is
*kept*: its session turns off the idle timeouts a database or role may set
(``idle_session_timeout``, ``idle_in_transaction_session_timeout``); a
heartbeat on it every :data:`HEARTBEAT_SECONDS` keeps proxies from seeing it
idle and checks, on that same session, that the lock is still granted; the
connection's close is noticed at once. A loss is reported to the run's
:class:`~dbinit.interrupts.RunControl`, which stops the migration; the
migration thread also asks for a fresh check before each commit
(:meth:`HeldLock.probe_for`).

SQLite: an exclusive ``flock`` on a file beside the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbinit.database import PostgresProbe, connect_session
from dbinit.errors import DbinitError, LockTimeout

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from dbinit.database import Probe
    from dbinit.interrupts import RunControl
    from dbinit.operations import Operations
    from dbinit.settings import Settings

POLL_SECONDS = 0.25
REPORT_EVERY_SECONDS = 5.0
#: A statement on the lock's session this often while the lock is held: well
#: under any proxy's or load balancer's idle cut-off, and the most a loss can go
#: unnoticed (plus CONFIRM_TIMEOUT) when the connection goes silent rather than closed.
HEARTBEAT_SECONDS = 2.0
#: How long a heartbeat or a before-commit check waits for the lock's session to answer.
CONFIRM_TIMEOUT = 5.0

_HELD_QUERY = """
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks
                WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
                  AND classid = $1 AND objid = $2 AND objsubid = 1)
"""

_HOLDER_QUERY = """
SELECT a.application_name, a.pid, coalesce(host(a.client_addr), 'local') AS client,
       round(extract(epoch FROM now() - a.backend_start)) AS seconds
  FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1 AND l.objid = $2
   AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
"""


def _failure(exc: BaseException) -> str:
    """What went wrong on the lock's connection, in a few words (no URL, no password)."""
    if isinstance(exc, TimeoutError):
        return f"no answer on its connection within {CONFIRM_TIMEOUT:g}s"
    return f"its connection failed: {type(exc).__name__}: {exc}"


def _lock_ids(key: int) -> tuple[int, int]:
    """(classid, objid) of a single-bigint advisory lock as ``pg_locks`` shows it."""
    return (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF


def lock_key(schema: str, version_table: str) -> int:
    """A signed 64-bit advisory lock key for this database's version table."""
    digest = hashlib.sha256(f"dbinit:{schema}.{version_table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _database_lock_key(connection: Any, settings: Settings) -> int:
    """The lock key of this database's version table (schema resolved on the server)."""
    schema = settings.version_schema or await connection.fetchval("SELECT current_schema()")
    return lock_key(schema, settings.version_table)


async def _holder_of(connection: Any, key: int) -> str | None:
    """Who holds the advisory lock ``key`` (application name, pid, client), if anyone."""
    row = await connection.fetchrow(_HOLDER_QUERY, *_lock_ids(key))
    if row is None:
        return None
    return f"{row['application_name'] or '?'} (pid {row['pid']}, {row['client']})"


def holder_name(settings: Settings, target: str = "head") -> str:
    """What others see as the lock holder: service, pod (host) name, target."""
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"dbinit-migrate:{settings.service}@{host}->{target}"[:63]


@dataclasses.dataclass(eq=False)
class HeldLock:
    """The held migration lock; on PostgreSQL, its session and what is known of its health."""

    holder: str
    waited_seconds: float
    connection: Any = None  # the asyncpg connection holding the lock (PostgreSQL)
    key: int = 0
    #: called (on the event loop) the first time the lock is seen lost
    on_lost: Callable[[str], None] | None = dataclasses.field(default=None, repr=False)
    #: how the lock was seen lost, once it was
    lost: str | None = dataclasses.field(default=None, init=False)
    # one statement at a time on the lock's connection (heartbeat, checks, cancels, unlock)
    _busy: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock, init=False, repr=False)

    def mark_lost(self, detail: str) -> None:
        if self.lost is not None:
            return
        self.lost = detail
        if self.on_lost is not None:
            self.on_lost(detail)

    async def confirm(self) -> str | None:
        """One round trip on the lock's own session: None while it holds the lock, else how not."""
        if self.connection is None or self.lost is not None:
            return self.lost
        async with self._busy:
            # seen lost while this waited for the connection: do not ask a dead one again
            detail = self.lost or await self._ask_held()
        if detail is not None:
            self.mark_lost(detail)
        return self.lost

    async def _ask_held(self) -> str | None:
        import asyncpg

        if self.connection.is_closed():
            return "its connection closed"
        try:
            held = await self.connection.fetchval(
                _HELD_QUERY, *_lock_ids(self.key), timeout=CONFIRM_TIMEOUT
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return _failure(exc)
        return None if held else "the server no longer lists the lock as held by its session"

    def probe_for(self, loop: asyncio.AbstractEventLoop) -> Callable[[], str | None]:
        """A fresh :meth:`confirm` callable from another thread (the migration's), bounded.

        Called on ``loop``'s thread; the probe runs the check there and waits for it.
        """
        limit = 2 * CONFIRM_TIMEOUT  # a heartbeat may be using the connection first
        loop_thread = threading.get_ident()  # made on the loop, for use off it

        def probe() -> str | None:
            if threading.get_ident() == loop_thread:
                raise RuntimeError("the lock probe blocks: call it from the migration thread")
            future = asyncio.run_coroutine_threadsafe(self.confirm(), loop)
            try:
                return future.result(timeout=limit)
            except TimeoutError:
                future.cancel()
                return f"the lock could not be confirmed within {limit:g}s"

        return probe

    async def fetchrow(self, query: str, *args: object) -> Any:
        """One read on the lock's session, in turn with the heartbeat (PostgreSQL; bounded)."""
        async with self._busy:
            return await self.connection.fetchrow(query, *args, timeout=CONFIRM_TIMEOUT)

    async def fetch(self, query: str, *args: object) -> list[Any]:
        """One read of several rows on the lock's session, in turn with the heartbeat (bounded)."""
        async with self._busy:
            return list(await self.connection.fetch(query, *args, timeout=CONFIRM_TIMEOUT))

    async def unlock(self) -> bool:
        """``pg_advisory_unlock`` on the lock's session (False: it did not hold it); bounded."""
        async with self._busy:
            return bool(
                await self.connection.fetchval(
                    "SELECT pg_advisory_unlock($1)", self.key, timeout=CONFIRM_TIMEOUT
                )
            )

    async def cancel_sessions(self, application_name: str) -> int:
        """Server-side cancel of the statements run by sessions with that name."""
        if self.connection is None or self.connection.is_closed():
            return 0
        async with self._busy:
            rows = await self.connection.fetch(
                "SELECT pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity "
                "WHERE application_name = $1 AND pid <> pg_backend_pid() AND state = 'active'",
                application_name,
            )
        return len(rows)


async def end_sessions(settings: Settings, application_name: str) -> int:
    """``pg_terminate_backend`` of the sessions with that name, from a new short connection.

    For a lost lock: the lock's own connection is gone or silent, and the
    migration's session must end now, whatever it is doing (running a
    statement, or idle in its transaction while the revision's Python code
    runs), so that its transaction rolls back on the server and nothing more
    of it can commit. Raises :func:`dbinit.database.connect_session`'s error, or asyncpg's.
    """
    connection = await connect_session(
        settings.url, f"dbinit-stop:{settings.service}", settings.connect_timeout
    )
    try:
        rows = await connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
            "WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
            timeout=CONFIRM_TIMEOUT,
        )
    finally:
        await connection.close(timeout=2)
    return sum(1 for row in rows if row[0])


@contextlib.asynccontextmanager
async def migration_lock(
    settings: Settings,
    log: FilteringBoundLogger,
    *,
    target: str = "head",
    control: RunControl | None = None,
    operations: Operations | None = None,
) -> AsyncIterator[HeldLock]:
    """Hold the migration lock for the body; raises :class:`LockTimeout` (exit 6).

    ``target`` (the revision being migrated to) is part of the holder's name;
    a stop request (``control``) ends the wait with :class:`Interrupted`. The
    wait (until the lock is taken or the wait fails) is the ``lock_wait``
    operation of ``operations`` (``dbinit_operation``).
    """
    waiting: contextlib.AbstractContextManager[None] = (
        operations.run("lock_wait", service=settings.service, database=settings.url.display_name)
        if operations is not None else contextlib.nullcontext()
    )
    if settings.url.is_sqlite:
        async with _sqlite_lock(settings, log, holder_name(settings, target), control, waiting) as held:
            yield held
    else:
        async with _postgres_lock(settings, log, holder_name(settings, target), control, waiting) as held:
            yield held


@contextlib.asynccontextmanager
async def _postgres_lock(
    settings: Settings,
    log: FilteringBoundLogger,
    me: str,
    control: RunControl | None,
    waiting: contextlib.AbstractContextManager[None],
) -> AsyncIterator[HeldLock]:
    connection = await _connect(settings, me)
    try:
        await _keep_session(connection)
        key = await _database_lock_key(connection, settings)
        with waiting:
            waited = await _acquire(connection, key, settings, log, control)
        log.info("Migration lock acquired", holder=me, waited_s=round(waited, 2))
        async with _kept(HeldLock(me, waited, connection, key), log, control) as held:
            yield held
    finally:
        await _close(connection, log)


async def _connect(settings: Settings, me: str) -> Any:
    return await connect_session(
        settings.url,
        me,
        settings.connect_timeout,
        tcp_keepalives_idle="30",
        tcp_keepalives_interval="10",
        tcp_keepalives_count="3",
    )


async def _keep_session(connection: Any) -> None:
    """The lock's session outlives the idle timeouts a database or role may set.

    Set in the session, so it overrides ``ALTER DATABASE/ROLE ... SET``. Both
    settings are user-settable; ``idle_session_timeout`` (and
    ``client_connection_check_interval``) exist from PostgreSQL 14.
    """
    await connection.execute("SET idle_in_transaction_session_timeout = 0")
    if connection.get_server_version().major >= 14:
        await connection.execute(
            "SET idle_session_timeout = 0; SET client_connection_check_interval = '5s'"
        )


async def _acquire(
    connection: Any, key: int, settings: Settings, log: FilteringBoundLogger, control: RunControl | None
) -> float:
    """Poll ``pg_try_advisory_lock`` until held (the seconds waited) or the lock timeout."""
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
                f"migration lock not acquired within {settings.lock_timeout:g}s: held by {holder}",
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
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def _kept(
    held: HeldLock, log: FilteringBoundLogger, control: RunControl | None
) -> AsyncIterator[HeldLock]:
    """Keep the lock for the body: heartbeat, close listener, the thread's probe; then release."""

    def lost(detail: str) -> None:
        log.error("Migration lock lost", holder=held.holder, reason=detail)
        if control is not None:
            control.lock_lost(detail)

    def closed(_connection: object) -> None:
        held.mark_lost("its connection closed")

    held.on_lost = lost
    held.connection.add_termination_listener(closed)
    stop = asyncio.Event()
    heartbeat = asyncio.ensure_future(_heartbeat(held, stop))
    if control is not None:
        control.lock_probe = held.probe_for(asyncio.get_running_loop())
    try:
        yield held
    finally:
        if control is not None:
            control.lock_probe = None
        stop.set()
        await heartbeat  # ends within CONFIRM_TIMEOUT: a beat in flight is let finish, not cancelled
        held.connection.remove_termination_listener(closed)
        await _release(held, log)


async def _heartbeat(held: HeldLock, stop: asyncio.Event) -> None:
    """Every HEARTBEAT_SECONDS, until ``stop`` or a loss: a statement on the lock's session."""
    while not stop.is_set() and await held.confirm() is None:
        with contextlib.suppress(TimeoutError):  # the interval passed without a stop: beat again
            await asyncio.wait_for(stop.wait(), HEARTBEAT_SECONDS)


async def _release(held: HeldLock, log: FilteringBoundLogger) -> None:
    """Unlock; never raises (it runs in a ``finally``, maybe over the error a loss caused).

    A session that is gone took the lock with it; one that does not answer is
    dropped, and the server frees its lock when it notices.
    """
    import asyncpg

    connection = held.connection
    if held.lost is not None or connection.is_closed():
        connection.terminate()
        log.warning("Migration lock not released: its session is gone", reason=held.lost or "closed")
        return
    try:
        released = await held.unlock()
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        connection.terminate()
        log.warning(
            "Migration lock not released: its session failed; the server frees the lock with it",
            reason=_failure(exc),
        )
        return
    if released:
        log.info("Migration lock released")
    else:
        log.warning("Migration lock was no longer held at release")


async def _close(connection: Any, log: FilteringBoundLogger) -> None:
    """Close the lock's connection; never raises (it runs in a ``finally``)."""
    import asyncpg

    try:
        await connection.close(timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        connection.terminate()  # asyncpg has aborted it already; this makes sure
        log.warning("Migration lock connection not closed cleanly", reason=_failure(exc))


@contextlib.asynccontextmanager
async def _sqlite_lock(
    settings: Settings,
    log: FilteringBoundLogger,
    me: str,
    control: RunControl | None,
    waiting: contextlib.AbstractContextManager[None],
) -> AsyncIterator[HeldLock]:
    path = settings.url.sqlite_path
    if path is None:
        with waiting:
            pass
        yield HeldLock(me, 0.0)
        return
    lock_path = Path(str(path) + ".dbinit-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with waiting:
            started = await _flock(fd, settings, log, control)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{me} (pid {os.getpid()})".encode(), 0)
        waited = time.monotonic() - started
        log.info("Migration lock acquired", holder=me, waited_s=round(waited, 2))
        try:
            yield HeldLock(me, waited)
        finally:
            import fcntl

            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            log.info("Migration lock released")
    finally:
        os.close(fd)


async def _flock(fd: int, settings: Settings, log: FilteringBoundLogger, control: RunControl | None) -> float:
    """Take the SQLite lock file's ``flock``, polling until the lock timeout; returns when the wait began."""
    import fcntl

    started = time.monotonic()
    deadline = started + settings.lock_timeout
    next_report = started
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return started
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


async def current_holder(settings: Settings, probe: Probe | None = None) -> str | None:
    """Who holds the migration lock now (None if nobody); for ``wait``'s messages.

    ``probe``: ask on that open session (``wait``'s verification) instead of a
    connection of its own; a dropped connection then raises
    :class:`~dbinit.errors.DatabaseUnreachable`.
    """
    if settings.url.is_sqlite:
        return _sqlite_holder(settings)
    if isinstance(probe, PostgresProbe):
        return await probe.ask(lambda connection: _holder_on(connection, settings))
    try:
        connection = await connect_session(
            settings.url, f"dbinit-wait:{settings.service}", settings.connect_timeout
        )
    except DbinitError:
        return None  # only for a message: wait says what it can
    try:
        return await _holder_of(connection, await _database_lock_key(connection, settings))
    finally:
        await connection.close(timeout=2)


async def _holder_on(connection: Any, settings: Settings) -> str | None:
    return await _holder_of(connection, await _database_lock_key(connection, settings))


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
