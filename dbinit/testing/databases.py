"""Databases for tests: one per test, made on a server and dropped after it, at head from a template.

Where they come from (:func:`choose_server`; the first that applies):

1. ``--dbinit-url``, else ``DBINIT_TEST_DATABASE_URL``, else the ini option
   ``dbinit_url``: a PostgreSQL server URL (the plugin creates and drops its
   own databases there, so the role needs CREATEDB), ``sqlite`` (or any
   ``sqlite`` URL: files in pytest's temporary folder), or ``postgresql``
   (a throwaway server, and an error if none can be started);
2. the project's own ``DATABASE_URL`` (environment, ``.env``,
   ``[tool.dbinit]``) naming SQLite: SQLite;
3. a throwaway PostgreSQL, started once per pytest process from the
   machine's ``initdb`` (the PATH's, then Debian's ``/usr/lib/postgresql``)
   or from the ``pgserver`` wheel, on 127.0.0.1 with a free port, stopped and
   removed at the end;
4. SQLite, said so in pytest's header.

A template per migrations fingerprint (the revision files', ``env.py``'s and
``alembic.ini``'s contents): the first test that needs the head upgrades a
new database once, under a lock (a PostgreSQL advisory lock, a file lock for
SQLite), and renames it into the template; every later one is
``CREATE DATABASE … TEMPLATE`` (a file copy for SQLite). Templates are kept on
a server given by URL, so the next run starts from them; a new fingerprint
replaces the project's older template.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from dbinit.errors import ConfigurationError, DatabaseUnreachable

T = TypeVar("T")
Dialect = Literal["postgresql", "sqlite"]

#: What every database the plugin makes is named with, and every template.
PREFIX = "dbinit_t_"
TEMPLATE_PREFIX = "dbinit_tpl_"


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also where an event loop is running (a thread)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


@dataclasses.dataclass(frozen=True)
class Database:
    """A database made for one test (or a template), and how to reach it.

    ``url`` is what ``DATABASE_URL`` would say (``postgresql://…``,
    ``sqlite:///…``); ``async_url`` and ``sync_url`` are SQLAlchemy URLs with
    the driver named (asyncpg / aiosqlite; psycopg / pysqlite).
    """

    name: str
    url: str
    dialect: Dialect

    @property
    def async_url(self) -> str:
        from dbinit.urls import DatabaseURL

        return DatabaseURL.parse(self.url).for_sqlalchemy(async_driver=True)

    @property
    def sync_url(self) -> str:
        from dbinit.urls import DatabaseURL

        return DatabaseURL.parse(self.url).for_sqlalchemy(async_driver=False)

    @property
    def path(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        if self.dialect != "sqlite":
            return None
        from dbinit.urls import DatabaseURL

        return DatabaseURL.parse(self.url).sqlite_path

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement on a connection of its own (committed); the rows it returns."""
        if self.dialect == "sqlite":
            import sqlite3

            with contextlib.closing(sqlite3.connect(str(self.path))) as connection, connection:
                return [tuple(row) for row in connection.execute(statement).fetchall()]
        from dbinit.urls import DatabaseURL

        dsn = DatabaseURL.parse(self.url).asyncpg_dsn()

        async def run() -> list[tuple[Any, ...]]:
            import asyncpg

            connection = await asyncpg.connect(dsn)
            try:
                return [tuple(row) for row in await connection.fetch(statement)]
            finally:
                await connection.close()

        return run_coroutine(run)

    def tables(self) -> set[str]:
        """The tables of the default schema (the version table included)."""
        if self.dialect == "sqlite":
            rows = self.sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        else:
            rows = self.sql("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = current_schema()")
        return {str(row[0]) for row in rows}


class Server:
    """Makes and drops databases; builds templates once."""

    dialect: Dialect
    description: str

    def create(self, template: str | None = None, *, more: bool = True) -> Database:
        """A new database (empty, or a clone of ``template``); ``more``: another will follow."""
        raise NotImplementedError

    def drop(self, database: Database) -> None:
        raise NotImplementedError

    def template(self, project: str, fingerprint: str, build: Callable[[Database], None]) -> str:
        """The template's name for ``fingerprint``, built with ``build`` (on an empty database) if missing."""
        database: Database | None = None

        def make() -> Database:
            nonlocal database
            database = self.create()
            try:
                build(database)
            except BaseException:
                self.drop(database)
                raise
            return database

        return self._install(project, fingerprint, make)

    def adopt(self, project: str, fingerprint: str, database: Database) -> bool:
        """Make ``database`` (at the heads) the template if there is none yet; whether it was."""
        taken = False

        def make() -> Database:
            nonlocal taken
            taken = True
            return database

        self._install(project, fingerprint, make)
        return taken

    def _install(self, project: str, fingerprint: str, make: Callable[[], Database]) -> str:
        """Under the template lock: the template's name, made into one from ``make()`` if missing."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop what this process made and still holds; stop what it started."""


class _Loop:
    """One asyncio loop in a thread of its own, for the admin session (asyncpg)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dbinit-admin", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class PostgresServer(Server):
    """Databases on a PostgreSQL server, through a small pool of admin sessions (the URL's database).

    ``CREATE DATABASE`` costs tenths of a second on a busy server: the next
    database of each kind (empty, or a template's clone) is made in the
    background while the current one is in use, and drops run in the
    background too (all awaited by :meth:`close`).
    """

    dialect: Dialect = "postgresql"

    def __init__(self, admin_url: str, worker: str, description: str, stop: Callable[[], None] | None = None):
        from dbinit.urls import DatabaseURL

        self.admin = DatabaseURL.parse(admin_url, setting="DBINIT_TEST_DATABASE_URL")
        if self.admin.is_sqlite:
            raise ConfigurationError("not a PostgreSQL URL", hint="Use sqlite for SQLite")
        self.worker = worker
        self.description = description
        self._stop = stop
        self._loop = _Loop()
        self._pool: Any = None
        self._version = 0
        self._made: set[str] = set()
        self._spares: dict[str | None, concurrent.futures.Future[str]] = {}
        self._drops: list[concurrent.futures.Future[None]] = []

    def _url(self, name: str) -> str:
        return dataclasses.replace(self.admin, database=name).asyncpg_dsn()

    async def _get_pool(self) -> Any:
        import asyncpg

        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(self.admin.asyncpg_dsn(), min_size=1, max_size=4,
                                                       timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                raise DatabaseUnreachable(
                    f"the test database server {self.admin.display_name} cannot be reached: "
                    f"{type(exc).__name__}: {exc}",
                    hint="Check --dbinit-url / DBINIT_TEST_DATABASE_URL (a server URL whose role "
                    "may CREATE DATABASE)",
                ) from None
            async with self._pool.acquire() as connection:
                self._version = int(await connection.fetchval("SHOW server_version_num"))
        return self._pool

    async def _fetch(self, statement: str, *args: Any) -> list[Any]:
        pool = await self._get_pool()
        async with pool.acquire() as connection:
            return list(await connection.fetch(statement, *args))

    def _execute(self, statement: str, *args: Any) -> list[Any]:
        return self._loop.run(self._fetch(statement, *args))

    async def _create(self, template: str | None) -> str:
        name = f"{PREFIX}{self.worker}_{uuid.uuid4().hex[:12]}"
        source = f' TEMPLATE "{template}"' if template else " TEMPLATE template0"
        self._made.add(name)
        await self._fetch(f'CREATE DATABASE "{name}"{source}')
        # a test database need not survive a crash: commits do not wait for the disk
        await self._fetch(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        return name

    def create(self, template: str | None = None, *, more: bool = True) -> Database:
        """``more``: another of the kind will be asked for (made in the background meanwhile)."""
        spare = self._spares.pop(template, None)
        name = spare.result() if spare is not None else self._loop.run(self._create(template))
        if more:
            self._spares[template] = asyncio.run_coroutine_threadsafe(self._create(template), self._loop.loop)
        return Database(name, self._url(name), "postgresql")

    def drop(self, database: Database) -> None:
        self._drops.append(asyncio.run_coroutine_threadsafe(self._drop(database.name), self._loop.loop))

    async def _drop(self, name: str) -> None:
        await self._get_pool()
        if self._version >= 130000:
            await self._fetch(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            await self._fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            await self._fetch(f'DROP DATABASE IF EXISTS "{name}"')
        self._made.discard(name)

    def _install(self, project: str, fingerprint: str, make: Callable[[], Database]) -> str:
        import asyncpg

        family = f"{TEMPLATE_PREFIX}{project[:8]}_"
        name = f"{family}{fingerprint[:20]}"
        key = int.from_bytes(hashlib.sha256(family.encode()).digest()[:8], "big", signed=True)

        async def acquire() -> Any:
            pool = await self._get_pool()
            connection = await pool.acquire()
            await connection.execute("SELECT pg_advisory_lock($1)", key)
            return connection

        async def release(connection: Any) -> None:
            try:
                await connection.execute("SELECT pg_advisory_unlock($1)", key)
            finally:
                await self._pool.release(connection)

        held = self._loop.run(acquire())
        try:
            if self._execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", name):
                return name
            made = make()
            self._execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", made.name
            )
            self._execute(f'ALTER DATABASE "{made.name}" RENAME TO "{name}"')
            self._made.discard(made.name)
            # no session may connect to a template: a stray one would stop every clone
            self._execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            for (older,) in self._execute(
                "SELECT datname FROM pg_catalog.pg_database WHERE starts_with(datname, $1) AND datname <> $2",
                family, name,
            ):
                with contextlib.suppress(asyncpg.ObjectInUseError):  # another run still clones it
                    self._execute(f'DROP DATABASE IF EXISTS "{older}"')
            return name
        finally:
            self._loop.run(release(held))

    def close(self) -> None:
        try:
            for spare in self._spares.values():
                with contextlib.suppress(Exception):  # a spare that failed was never made: nothing to drop
                    self._drops.append(
                        asyncio.run_coroutine_threadsafe(self._drop(spare.result()), self._loop.loop)
                    )
            self._spares.clear()
            for future in self._drops:
                future.result()
            self._drops.clear()
            for name in sorted(self._made):
                self._loop.run(self._drop(name))
            if self._pool is not None:
                self._loop.run(self._pool.close())
        finally:
            self._loop.close()
            if self._stop is not None:
                self._stop()


class SqliteServer(Server):
    """SQLite files in one folder (shared by pytest-xdist's workers: templates are built once)."""

    dialect: Dialect = "sqlite"

    def __init__(self, folder: Path, worker: str, description: str = "SQLite") -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.worker = worker
        self.description = description

    def _database(self, name: str) -> Database:
        return Database(name, f"sqlite:///{self.folder / name}.sqlite3", "sqlite")

    def create(self, template: str | None = None, *, more: bool = True) -> Database:
        database = self._database(f"{PREFIX}{self.worker}_{uuid.uuid4().hex[:12]}")
        if template is not None:
            shutil.copyfile(self.folder / f"{template}.sqlite3", str(database.path))
        return database

    def drop(self, database: Database) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{database.path}{suffix}")

    def _install(self, project: str, fingerprint: str, make: Callable[[], Database]) -> str:
        import fcntl

        name = f"{TEMPLATE_PREFIX}{project[:8]}_{fingerprint[:20]}"
        with (self.folder / f"{name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            target = self.folder / f"{name}.sqlite3"
            if not target.exists():
                made = make()
                os.replace(str(made.path), target)
        return name


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postgres_bindirs() -> list[Path]:
    """Where ``initdb`` and ``pg_ctl`` are: the PATH's, Debian's (newest first)."""
    found: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    found += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    unique: list[Path] = []
    for bindir in found:
        if bindir not in unique and (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            unique.append(bindir)
    return unique


def _pgserver_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pgserver") is not None


def can_start_postgres() -> bool:
    return bool(postgres_bindirs()) or _pgserver_available()


@contextlib.contextmanager
def _quiet_imports() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR is not set (pgserver's import)
        warnings.simplefilter("ignore")
        yield


def start_postgres(worker: str) -> tuple[str, str, Callable[[], None]]:
    """A throwaway PostgreSQL: (admin URL, description, stop). From initdb, else the pgserver wheel.

    As root, PostgreSQL refuses to run: the server then runs as ``nobody``
    (the machine's binaries) or as pgserver's own user (the wheel).
    """
    errors: list[str] = []
    for bindir in postgres_bindirs():
        try:
            return _start_from(bindir, worker)
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            errors.append(f"{bindir}: {exc}")
    if _pgserver_available():
        with _quiet_imports():
            import pgserver

        data = Path(tempfile.mkdtemp(prefix=f"dbinit-pg-{worker}-"))
        server = pgserver.get_server(data, cleanup_mode="delete")

        def stop() -> None:
            server.cleanup()
            shutil.rmtree(data, ignore_errors=True)

        return server.get_uri(), "a throwaway PostgreSQL (the pgserver wheel)", stop
    raise ConfigurationError(
        "no PostgreSQL can be started for the tests" + (f": {'; '.join(errors)}" if errors else ""),
        hint="Install PostgreSQL (initdb) or the pgserver wheel, or give a server with --dbinit-url / "
        "DBINIT_TEST_DATABASE_URL, or use --dbinit-url sqlite",
    )


def _start_from(bindir: Path, worker: str) -> tuple[str, str, Callable[[], None]]:
    base = Path(tempfile.mkdtemp(prefix=f"dbinit-pg-{worker}-"))
    data = base / "data"
    user: str | None = None
    if os.geteuid() == 0:
        import pwd

        user = "nobody"
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        base.chmod(0o700)

    def run(binary: str, *args: str) -> None:
        with (base / f"{binary}.log").open("w") as out:
            done = subprocess.run(
                [str(bindir / binary), *args], stdout=out, stderr=subprocess.STDOUT, user=user,
                timeout=120, check=False, stdin=subprocess.DEVNULL, cwd=base,
            )
        if done.returncode != 0:
            raise RuntimeError(f"{binary} failed: {(base / f'{binary}.log').read_text()[-2000:]}")

    try:
        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=utf8", "--no-sync")
        port = _free_port()
        options = f"-h 127.0.0.1 -p {port} -k {base} -F -c full_page_writes=off -c max_connections=200"
        log = str(base / "server.log")
        run("pg_ctl", "-D", str(data), "-w", "-t", "60", "-l", log, "-o", options, "start")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise

    def stop() -> None:
        try:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(base, ignore_errors=True)

    version = bindir.parent.name if bindir.parent.name[:1].isdigit() else str(bindir)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", f"a throwaway PostgreSQL ({version})", stop


@dataclasses.dataclass(frozen=True)
class Choice:
    """Which database the tests use, and why (for pytest's header)."""

    kind: Literal["url", "sqlite", "throwaway"]
    url: str = ""
    why: str = ""


def choose(given: str | None, project_url: str | None) -> Choice:
    """The rule of the module docstring, without starting anything."""
    if given:
        lowered = given.strip().lower()
        if lowered == "sqlite" or lowered.startswith("sqlite"):
            return Choice("sqlite", why="asked for")
        if lowered in ("postgresql", "postgres"):
            return Choice("throwaway", why="asked for")
        return Choice("url", url=given.strip())
    if project_url is not None and project_url.strip().lower().startswith("sqlite"):
        return Choice("sqlite", why="the project's DATABASE_URL is SQLite")
    if can_start_postgres():
        return Choice("throwaway", why="no --dbinit-url / DBINIT_TEST_DATABASE_URL")
    return Choice("sqlite", why="no PostgreSQL to start here (no initdb, no pgserver wheel) and no "
                  "--dbinit-url / DBINIT_TEST_DATABASE_URL")


def open_server(choice: Choice, worker: str, folder: Path) -> Server:
    if choice.kind == "sqlite":
        return SqliteServer(folder, worker, f"SQLite ({choice.why})")
    if choice.kind == "throwaway":
        url, description, stop = start_postgres(worker)
        try:
            return PostgresServer(url, worker, description, stop)
        except BaseException:
            stop()
            raise
    from dbinit.urls import DatabaseURL

    shown = DatabaseURL.parse(choice.url, setting="DBINIT_TEST_DATABASE_URL")
    if shown.is_sqlite:
        return SqliteServer(folder, worker, "SQLite")
    return PostgresServer(choice.url, worker, f"the PostgreSQL server {shown.display_name}")


def fingerprint(paths: list[Path], extra: str = "") -> str:
    """A digest of the files' names and contents (and ``extra``)."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        digest.update(str(path.name).encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()
