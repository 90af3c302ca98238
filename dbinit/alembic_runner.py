"""Running Alembic for ``migrate`` (the only place SQLAlchemy/Alembic load).

Works with projects made by ``alembic init`` unmodified, sync or async
template: ``DATABASE_URL`` reaches ``env.py`` as ``sqlalchemy.url`` with the
driver the template needs, and Alembic runs in a worker thread, where the
async template's ``asyncio.run`` works. Each migration runs in its own
transaction (``transaction_per_migration``) unless ``env.py`` says otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dbinit.errors import (
    ConfigurationError,
    DatabaseUnreachable,
    DbinitError,
    Interrupted,
    LockLost,
    MigrationFailed,
    is_connection_failure,
)

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory
    from structlog.typing import FilteringBoundLogger

    from dbinit.history import HistoryRow, Outcome
    from dbinit.identity import DatabaseIdentity
    from dbinit.interrupts import RunControl
    from dbinit.operations import Operations
    from dbinit.revisions.scripts import MigrationScripts
    from dbinit.settings import Settings

_ASYNC_MARKERS = (
    "async_engine_from_config",
    "create_async_engine",
    "AsyncEngine",
    "AsyncConnection",
)


def env_is_async(scripts: MigrationScripts) -> bool:
    """Whether ``env.py`` uses an async engine (the ``async`` template)."""
    if scripts.script_location is None:
        return False
    env = scripts.script_location / "env.py"
    try:
        text = env.read_text(encoding="utf-8")
    except OSError:
        return False
    return any(marker in text for marker in _ASYNC_MARKERS)


def alembic_config(
    settings: Settings, scripts: MigrationScripts, stdout: TextIO | None = None
) -> Config:
    from alembic.config import Config

    if not scripts.configured:
        raise ConfigurationError(
            "migrate needs Alembic's configuration (alembic.ini, DBINIT_ALEMBIC_INI, or "
            "[tool.alembic] in pyproject.toml), not only a versions folder",
            hint="Run where alembic.ini is or set DBINIT_ALEMBIC_INI",
        )
    files: dict[str, Any] = {"toml_file": str(scripts.pyproject)} if scripts.pyproject else {}
    ini = str(scripts.alembic_ini) if scripts.alembic_ini is not None else None
    config = Config(ini, stdout=stdout or sys.stdout, **files)
    config.output_buffer = stdout or sys.stdout
    url = settings.url.for_sqlalchemy(async_driver=env_is_async(scripts), sync_driver=sync_driver())
    # configparser interpolation: a percent-encoded password must be escaped.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if scripts.script_location is not None:
        config.set_main_option("script_location", str(scripts.script_location))
    config.attributes["dbinit.settings"] = settings
    return config


def sync_driver() -> str:
    """The PostgreSQL driver for a sync env.py: psycopg (3), or psycopg2 under SQLAlchemy 1.4."""
    import sqlalchemy

    return "psycopg" if int(sqlalchemy.__version__.split(".")[0]) >= 2 else "psycopg2"


def preflight(settings: Settings, scripts: MigrationScripts) -> None:
    """Check what ``upgrade`` will need, before a destructive step runs.

    Alembic's configuration, every revision module (Alembic imports them all:
    a syntax or import error shows here), and the SQLAlchemy dialect and driver
    for the URL. Raises :class:`ConfigurationError` (exit 2): nothing was
    changed yet.
    """
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    config = alembic_config(settings, scripts)
    try:
        script = ScriptDirectory.from_config(config)
        for _ in script.walk_revisions():
            pass
    except CommandError as exc:
        raise ConfigurationError(
            f"the migrations cannot be loaded by Alembic: {exc}",
            hint="Fix the migrations; nothing was dropped or migrated",
        ) from None
    except Exception as exc:
        raise ConfigurationError(
            f"a migration file cannot be imported: {type(exc).__name__}: {exc}",
            hint="Fix the revision file named above; nothing was dropped or migrated",
        ) from None
    url = config.get_main_option("sqlalchemy.url") or ""
    try:
        dialect = make_url(url).get_dialect()
        # SQLAlchemy 2: import_dbapi(); 1.4: dbapi()
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigurationError(
            f"the database driver for the migrations is not usable: {type(exc).__name__}: {exc}",
            hint="Install the driver env.py needs (pip install 'dbinit-alembic[sync]' for psycopg); "
            "nothing was dropped or migrated",
        ) from None


#: A plugin's migration context: (the plugin's name, its context manager).
PluginContext = tuple[str, "AbstractContextManager[object]"]


def entered(contexts: Sequence[PluginContext]) -> AbstractContextManager[None]:
    """Enter the plugins' migration contexts (``dbinit_migration_context``), the first outermost.

    See :func:`dbinit.operations.entered`; one that raises on entry is a
    configuration error (:func:`dbinit.pluginmanager.context_failure`).
    """
    from dbinit.operations import entered as enter_all
    from dbinit.pluginmanager import context_failure

    def failed(plugin: str, hook: str, exc: BaseException) -> DbinitError:
        return context_failure(plugin, f"entering its {hook}", exc)

    return enter_all(contexts, "dbinit_migration_context", failed)


def upgrade(
    settings: Settings,
    scripts: MigrationScripts,
    log: FilteringBoundLogger,
    control: RunControl | None = None,
    *,
    contexts: Sequence[PluginContext] = (),
    identity: DatabaseIdentity | None = None,
    operations: Operations | None = None,
) -> list[str]:
    """``alembic upgrade heads``; returns the applied revisions in order.

    Each revision is a ``revision`` operation of ``operations``
    (``dbinit_operation``), from its start to just before its commit.

    ``contexts`` (from :meth:`Registry.migration_contexts`) are entered around
    ``env.py``'s run, in this thread (:func:`entered`). ``identity`` is the
    database the migration lock is on: env.py's connection must be on it
    (:func:`environment_context`).

    With a :class:`RunControl`, a stop request aborts at the next migration
    boundary (rolling back the migration just run) and the migration sessions
    carry ``control.session_tag`` as ``application_name`` so that the running
    statement can be cancelled on the server. Before the first migration and
    before each one commits (Alembic's ``on_version_apply`` runs inside its
    transaction), the migration lock is confirmed afresh: a lost lock rolls the
    migration back (:class:`~dbinit.errors.LockLost`) instead of committing it
    after another job may have taken the lock.
    """
    from alembic import util as alembic_util
    from alembic.script import ScriptDirectory

    from dbinit.logbridge import alembic_logging

    config = alembic_config(settings, scripts)
    script = ScriptDirectory.from_config(config)
    applied: list[str] = []
    planned: list[str] = []
    observed = RevisionOperations(operations, planned)
    history = HistoryWriter(settings, scripts, log)

    def on_apply(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        if step.is_upgrade:
            # in the revision's transaction: committed with it, or rolled back with it
            history.applied(ctx.connection, step.up_revision_id)
        if control is not None:
            # still inside this migration's transaction: raising rolls it back
            revision = step.up_revision_id
            control.confirm_lock(f"migration {revision} rolled back", revision=revision, applied=applied)
        if step.is_upgrade:
            applied.append(step.up_revision_id)
            log.info("Migration applied", revision=step.up_revision_id, doc=step.up_revision.doc)
        observed.end()
        observed.begin_next()
        history.begin()

    def steps(rev: Any, context: Any) -> Any:
        if control is not None:
            control.confirm_lock("stopped before the first migration")
        result = script._upgrade_revs("heads", rev)
        planned.extend(step.revision.revision for step in result)
        if result:
            log.info("Running pending migrations", count=len(result))
            history.ensure(context.connection)
        observed.begin_next()
        history.begin()
        return result

    def per_migration(kwargs: dict[str, Any]) -> None:
        # default to one transaction per migration, and add our callback to
        # whatever env.py passes
        one_transaction_per_migration(kwargs)
        callbacks = alembic_util.to_tuple(kwargs.get("on_version_apply"), default=())
        kwargs["on_version_apply"] = (*callbacks, on_apply)

    # a failing revision's operation ends in the context it ran in (observers' context variables)
    environment = environment_context(
        settings, config, script, steps, as_sql=False, starting_rev=None, adjust=per_migration,
        expected=identity, on_failure=observed.end,
    )
    # built before Alembic runs: a bad parameter is a configuration error, not a failed migration
    listeners = session_listeners(settings, control, async_driver=env_is_async(scripts))
    try:
        with alembic_logging(log), entered(contexts), listening(listeners), environment:
            script.run_env()
    except Exception as exc:
        observed.end(exc)
        failing = next((r for r in planned if r not in applied), None)
        if control is not None and control.stopping:
            if isinstance(exc, (Interrupted, LockLost)):
                history.ended(failing, "interrupted", exc.message)
                raise
            remains = what_remains(settings, scripts, failing) if failing else None
            left = "" if remains is None or remains.whole else str(remains)
            what, before = _where_stopped(failing, applied, whole=not left)
            stopped = control.stop_error(what, revision=failing, applied=before, remains=left)
            history.ended(failing, "interrupted", stopped.message)
            raise stopped from None
        if isinstance(exc, DbinitError):
            history.ended(failing, "failed", exc.message)
            raise  # ours, already classified (e.g. a version table env.py configures differently)
        history.ended(failing, "failed", describe_failure(exc))
        raise migration_error(exc, failing, scripts, settings, applied) from exc
    return applied


class HistoryWriter:
    """The history rows of one ``upgrade`` (:mod:`dbinit.history`).

    An applied revision's row is inserted through Alembic's connection inside
    the revision's transaction; a failed or interrupted one's after the
    rollback, on a short connection of dbinit's own (:func:`ended`). The table
    is created, if missing, once the plan is known and not empty, in the first
    revision's transaction. The phases are read when the writer is made:
    before anything runs, so a revision that declares an unusable phase is a
    configuration error (exit 2) and nothing was migrated.
    """

    def __init__(self, settings: Settings, scripts: MigrationScripts, log: FilteringBoundLogger) -> None:
        from dbinit.history import HistoryTable, phases_of

        self.settings = settings
        self.scripts = scripts
        self.log = log
        self.table = HistoryTable.of(settings)
        self.phases = phases_of(scripts)
        self.started_at = datetime.datetime.now(datetime.UTC)
        self.started = time.perf_counter()

    def begin(self) -> None:
        """The next revision starts now."""
        self.started_at = datetime.datetime.now(datetime.UTC)
        self.started = time.perf_counter()

    def ensure(self, connection: Any) -> None:
        from dbinit.history import ensure_in_transaction

        try:
            ensure_in_transaction(connection, self.table)
        except Exception as exc:
            if is_connection_failure(exc):
                raise  # a failed migration, retryable
            raise self._unusable(exc, "cannot be created", "Nothing was migrated") from exc

    def applied(self, connection: Any, revision: str) -> None:
        from dbinit.history import record_in_transaction

        try:
            record_in_transaction(connection, self.table, self._row(revision, "applied"))
        except Exception as exc:
            if is_connection_failure(exc):
                raise  # a failed migration, retryable
            raise self._unusable(
                exc, f"cannot record migration {revision}", f"Migration {revision} was rolled back"
            ) from exc

    def _unusable(self, exc: Exception, what: str, done: str) -> ConfigurationError:
        """The history table cannot be written through Alembic's connection, and not because the
        connection was lost: final (exit 2), a retry meets the same table."""
        setting = "DBINIT_HISTORY_TABLE"
        return ConfigurationError(
            f"the history table {self.table.shown} {what}: {describe_failure(exc)}",
            hint=f"{done}. Let the migration role create and insert into it, or, if a table of "
            f"that name is not dbinit's, set {setting} to another name",
        )

    def ended(self, revision: str | None, outcome: Outcome, error: str) -> None:
        """Record that ``revision`` failed or was interrupted (its transaction rolled back).

        Never raises: a history that cannot be written is a warning, the run's
        own error stays what the job reports.
        """
        if revision is None:
            return  # nothing was cut short (before the first revision, or while one committed)
        from dbinit.command_runner import redactor_for
        from dbinit.history import HistoryUnavailable, one_line_error, record_now

        row = self._row(revision, outcome, one_line_error(error, redactor_for(self.settings)))
        try:
            record_now(self.settings, [row])
        except HistoryUnavailable as exc:
            self.log.warning(
                "Cannot record the revision in the history", revision=revision, outcome=outcome,
                table=self.table.shown, reason=str(exc),
            )

    def _row(self, revision: str, outcome: Outcome, error: str | None = None) -> HistoryRow:
        from dbinit.history import row_for

        duration = (time.perf_counter() - self.started) * 1000
        return row_for(
            self.settings, self.scripts, self.phases, revision, outcome, self.started_at, duration, error
        )


class RevisionOperations:
    """Each planned revision as a ``revision`` operation: begun when it starts, ended before its commit.

    Alembic says when a revision is applied (``on_version_apply``), not when
    one starts: revisions run one after the other, so the next one starts
    when the previous one was applied (the first, when the plan is known).
    """

    def __init__(self, operations: Operations | None, planned: list[str]) -> None:
        self.operations = operations
        self.planned = planned
        self.started = 0
        self.open: contextlib.ExitStack | None = None

    def begin_next(self) -> None:
        if self.operations is None or self.started >= len(self.planned):
            return
        stack = contextlib.ExitStack()
        revision = self.planned[self.started]
        self.started += 1
        stack.enter_context(
            self.operations.run("revision", revision=revision, index=self.started, count=len(self.planned))
        )
        self.open = stack

    def end(self, failure: BaseException | None = None) -> None:
        """End the running revision's operation (with ``failure``, the exception that ended it)."""
        stack, self.open = self.open, None
        if stack is None:
            return
        if failure is None:
            stack.close()
        else:
            stack.__exit__(type(failure), failure, failure.__traceback__)


def _where_stopped(failing: str | None, applied: list[str], *, whole: bool) -> tuple[str, list[str]]:
    """What a stop cut short, and the revisions known committed before it.

    ``applied`` counts a revision once its ``on_version_apply`` passed, just
    before its commit: a stop that broke the commit itself leaves that one
    uncertain, and says so. ``whole``: the cut-short revision rolled back as a whole.
    """
    if failing is not None:
        return f"migration {failing} cancelled" + (" and rolled back" if whole else ""), applied
    if applied:
        last = applied[-1]
        return (
            f"stopped while migration {last} committed (alembic_version says whether it did)",
            applied[:-1],
        )
    return "stopped before the first migration", applied


def one_transaction_per_migration(kwargs: dict[str, Any]) -> None:
    """``context.configure``'s default in dbinit, online and offline: each revision in its own transaction.

    Unless env.py says otherwise: ``migrate --sql`` then prints the transactions
    ``migrate`` runs.
    """
    kwargs.setdefault("transaction_per_migration", True)


def environment_context(
    settings: Settings,
    config: Config,
    script: ScriptDirectory,
    fn: Callable[[Any, Any], Any],
    *,
    as_sql: bool,
    starting_rev: str | Sequence[str] | None,
    adjust: Callable[[dict[str, Any]], None] | None = None,
    expected: DatabaseIdentity | None = None,
    on_failure: Callable[[BaseException], None] | None = None,
) -> EnvironmentContext:
    """Alembic's environment for ``upgrade heads``, with dbinit's version table.

    env.py is not ours to edit, so its ``context.configure(...)`` call is
    wrapped. Online, the connection env.py hands Alembic must be on the
    database the migration lock is on (``expected``, read on the lock's
    session): an env.py that builds its own URL from the application's
    settings may connect elsewhere, and the lock would protect nothing; that
    is a configuration error before any revision runs
    (:func:`check_same_database`). Offline (``--sql``) there is no connection
    and nothing to compare. Then the version table dbinit verifies (``DBINIT_VERSION_TABLE``, in
    ``DBINIT_SCHEMA``) is passed to Alembic unless env.py names one itself; if
    env.py names a different one, that is a configuration error before any
    migration runs (otherwise migrate would write one table and verify
    another, forever). ``adjust`` edits the other keyword arguments.
    ``on_failure`` is called with what env.py's ``context.run_migrations()``
    raised, where it raised (in an async env.py, inside its event loop's
    task: the context the revisions ran in), before it propagates.
    (Alembic's module proxy calls the instance's attribute, so a subclass
    would not be seen.)
    """
    from alembic.runtime.environment import EnvironmentContext

    environment = EnvironmentContext(
        config, script, fn=fn, as_sql=as_sql, starting_rev=starting_rev, destination_rev="heads", tag=None
    )
    configure = environment.configure
    ours = {"version_table": (settings.version_table, "DBINIT_VERSION_TABLE")}
    if settings.version_schema:
        ours["version_table_schema"] = (
            settings.version_schema,
            "DBINIT_VERSION_TABLE_SCHEMA" if settings.version_table_schema else "DBINIT_SCHEMA",
        )

    def configure_for_dbinit(*args: Any, **kwargs: Any) -> None:
        if expected is not None and not as_sql and kwargs.get("connection") is not None:
            check_same_database(expected, kwargs["connection"])
        for key, (value, setting) in ours.items():
            given = kwargs.get(key)
            if given is not None and given != value:
                raise ConfigurationError(
                    f"env.py configures Alembic with {key}={str(given)[:63]!r}, but dbinit verifies "
                    f"{setting}={value!r}: migrate would write one version table and verify another",
                    hint=f"Set {setting}={str(given)[:63]} (or remove {key} from env.py)",
                )
            kwargs[key] = value
        if "version_table_schema" not in ours and kwargs.get("version_table_schema"):
            raise ConfigurationError(
                f"env.py configures Alembic with version_table_schema="
                f"{str(kwargs['version_table_schema'])[:63]!r}, but neither DBINIT_VERSION_TABLE_SCHEMA "
                "nor DBINIT_SCHEMA is set: dbinit would verify the version table on the search_path",
                hint=f"Set DBINIT_VERSION_TABLE_SCHEMA={str(kwargs['version_table_schema'])[:63]}",
            )
        if adjust is not None:
            adjust(kwargs)
        configure(*args, **kwargs)

    environment.configure = configure_for_dbinit  # type: ignore[method-assign]
    if on_failure is not None:
        run_migrations = environment.run_migrations

        def run_migrations_for_dbinit(**kwargs: Any) -> None:
            try:
                run_migrations(**kwargs)
            except BaseException as exc:
                on_failure(exc)
                raise

        environment.run_migrations = run_migrations_for_dbinit  # type: ignore[method-assign]
    return environment


def check_same_database(expected: DatabaseIdentity, connection: Any) -> None:
    """Raise :class:`ConfigurationError` unless ``connection`` (env.py's) is on dbinit's database.

    ``connection`` is the SQLAlchemy ``Connection`` env.py passes to
    ``context.configure`` (the async template's is the sync facade inside
    ``run_sync``); an ``Engine`` (which Alembic refuses itself) is connected
    for the question.
    """
    from sqlalchemy.engine import Engine

    from dbinit.identity import difference

    if isinstance(connection, Engine):
        with connection.connect() as connected:
            theirs = connection_identity(connected)
    else:
        theirs = connection_identity(connection)
    found = difference(expected, theirs)
    if found is not None:
        message, hint = found
        raise ConfigurationError(message, hint=hint)


def connection_identity(connection: Any) -> DatabaseIdentity:
    """Which database a SQLAlchemy connection is on (:mod:`dbinit.identity`), any driver.

    The question is asked in a transaction of its own, rolled back, unless
    env.py already began one (then it is a read inside it): Alembic sees the
    connection as env.py left it.
    """
    from dbinit.identity import IDENTITY_QUERY, OtherDatabase, PostgresIdentity, SqliteIdentity

    url = connection.engine.url
    dialect = connection.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        return OtherDatabase(dialect, _sqlalchemy_display(url))
    own = None if connection.in_transaction() else connection.begin()
    try:
        if dialect == "sqlite":
            rows = connection.exec_driver_sql("PRAGMA database_list").fetchall()
            main = next((str(row[2] or "") for row in rows if row[1] == "main"), "")
            return SqliteIdentity.of(main)
        row = connection.exec_driver_sql(IDENTITY_QUERY).one()
    finally:
        if own is not None:
            own.rollback()
    return PostgresIdentity(
        database=str(row.database),
        user=str(row.role),
        database_oid=int(row.database_oid),
        server_started_us=int(row.started_us),
        port=int(row.port),
        display=_sqlalchemy_display(url),
    )


def _sqlalchemy_display(url: Any) -> str:
    """host(s):port/database of a SQLAlchemy URL (as :attr:`DatabaseURL.display_name`; no password)."""
    if url.get_backend_name() == "sqlite":
        return str(url.database or ":memory:")
    if url.host:
        hosts = [f"{f'[{url.host}]' if ':' in url.host else url.host}:{url.port or 5432}"]
    else:  # the multi-host form: ?host=h1:p1&host=h2:p2
        given = url.query.get("host") or ()
        hosts = [given] if isinstance(given, str) else list(given)
    return f"{','.join(hosts) or 'localhost:5432'}/{url.database or ''}"


Listener = tuple[Any, str, Callable[..., Any]]


def session_listeners(
    settings: Settings, control: RunControl | None, *, async_driver: bool
) -> list[Listener]:
    """How dbinit sets up every session Alembic opens (SQLAlchemy class-level events).

    PostgreSQL: the connect arguments (``do_connect``): ``sqlalchemy.url`` is a
    clean URL (:meth:`DatabaseURL.for_sqlalchemy`) and the libpq parameters of
    ``DATABASE_URL`` (TLS, ``target_session_attrs``, ``options``, timeouts…) are
    added to the driver's arguments here, translated once by
    :meth:`DatabaseURL.sqlalchemy_connect_params`, for connections to dbinit's
    URL only: an ``env.py`` that connects elsewhere is left alone.
    Then, on every new session (``Pool`` ``connect``): ``application_name``
    lets a signal cancel the running statement (dbinit's tag wins over the
    URL's); ``DBINIT_STATEMENT_TIMEOUT`` / ``DBINIT_DDL_LOCK_TIMEOUT``
    become ``statement_timeout`` / ``lock_timeout``, so a migration cannot
    block production traffic indefinitely behind a lock (set only here, after
    the migration lock is held: a ``lock_timeout`` would also cut the advisory
    lock wait); ``client_connection_check_interval`` and TCP keepalives make
    the server end a killed job's session (and its locks) within seconds.
    Once the run is stopping (a signal, a lost migration lock), no new session
    is opened.

    SQLite: the driver's own transaction handling commits DDL at once; dbinit
    takes over (SQLAlchemy's documented recipe: no implicit transactions,
    ``BEGIN`` when SQLAlchemy begins), so a revision's DDL rolls back with it.
    """
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    if settings.url.is_sqlite:

        def sqlite_connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None

        def sqlite_begin(connection: Any) -> None:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN")

        return [(Pool, "connect", sqlite_connect), (Engine, "begin", sqlite_begin)]

    statements = [
        "SET tcp_keepalives_idle = 30",
        "SET tcp_keepalives_interval = 10",
        "SET tcp_keepalives_count = 3",
        # PostgreSQL 14+: notice a vanished client even while a statement runs
        "SELECT set_config('client_connection_check_interval', '5s', false) "
        "WHERE current_setting('server_version_num')::int >= 140000",
    ]
    tag = control.session_tag if control is not None else None
    if tag is not None:
        statements.append(f"SET application_name = '{tag}'")
    if settings.statement_timeout:
        statements.append(f"SET statement_timeout = '{_milliseconds(settings.statement_timeout)}ms'")
    if settings.ddl_lock_timeout:
        statements.append(f"SET lock_timeout = '{_milliseconds(settings.ddl_lock_timeout)}ms'")

    def postgres_connect(dbapi_connection: Any, record: Any) -> None:
        if control is not None:
            control.raise_if_stopping("stopped before opening a migration session")
        cursor = dbapi_connection.cursor()
        for statement in statements:
            cursor.execute(statement)
        cursor.close()
        dbapi_connection.commit()

    return [
        (Engine, "do_connect", connect_arguments(settings, tag, async_driver=async_driver)),
        (Pool, "connect", postgres_connect),
    ]


def connect_arguments(
    settings: Settings, application_name: str | None, *, async_driver: bool
) -> Callable[[Any, Any, list[Any], dict[str, Any]], None]:
    """A ``do_connect`` listener adding the translated URL parameters to dbinit's connections.

    A connection is dbinit's when the driver is the one dbinit named and its
    arguments are what the dialect makes of dbinit's ``sqlalchemy.url`` (host(s),
    port(s), user, password, database): a URL that ``env.py`` builds itself, or
    changes, gets nothing. Arguments ``env.py`` passes (``connect_args``) win over
    the URL's; dbinit's ``application_name`` tag wins over both.
    """
    from sqlalchemy.engine import make_url

    url = settings.url
    driver = url.sqlalchemy_driver(async_driver=async_driver, sync_driver=sync_driver())
    ours = make_url(url.for_sqlalchemy(async_driver=async_driver, sync_driver=sync_driver()))
    extras = url.sqlalchemy_connect_params(
        driver, timeout=settings.connect_timeout, application_name=application_name
    )

    def do_connect(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        if dialect.name != "postgresql" or dialect.driver != driver:
            return
        expected_args, expected = dialect.create_connect_args(ours)
        if list(cargs) != list(expected_args) or any(cparams.get(k) != v for k, v in expected.items()):
            return
        for key, value in extras.items():
            if key == "server_settings":
                value = {**value, **cparams.get(key, {})}
                if application_name is not None:
                    value["application_name"] = application_name
                cparams[key] = value
            elif key == "application_name" and application_name is not None:
                cparams[key] = value
            else:
                cparams.setdefault(key, value)

    return do_connect


@contextlib.contextmanager
def listening(listeners: list[Listener]) -> Iterator[None]:
    """Install class-level SQLAlchemy listeners for the body (Alembic's run)."""
    from sqlalchemy import event

    for target, name, function in listeners:
        event.listen(target, name, function)
    try:
        yield
    finally:
        for target, name, function in listeners:
            event.remove(target, name, function)


def _milliseconds(seconds: float) -> int:
    """At least 1 ms: 0 would switch the timeout off."""
    return max(1, round(seconds * 1000))


def offline_sql(
    settings: Settings,
    scripts: MigrationScripts,
    stdout: TextIO,
    from_revision: str | None,
    contexts: Sequence[PluginContext] = (),
    log: FilteringBoundLogger | None = None,
) -> None:
    """Print the SQL of ``upgrade heads`` (from ``from_revision`` or the base), inside ``contexts``.

    Only the SQL goes to ``stdout``; Alembic's log lines go where dbinit's
    own go (``log``; stderr on the command line), as in :func:`upgrade`.
    """
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from dbinit.logbridge import alembic_logging
    from dbinit.logs import get_logger

    config = alembic_config(settings, scripts, stdout=stdout)
    script = ScriptDirectory.from_config(config)

    def steps(rev: Any, context: Any) -> Any:
        return script._upgrade_revs("heads", rev)

    try:
        with alembic_logging(log or get_logger(settings.service)), entered(contexts), environment_context(
            settings, config, script, steps, as_sql=True, starting_rev=from_revision,
            adjust=one_transaction_per_migration,
        ):
            script.run_env()
    except CommandError as exc:
        raise ConfigurationError(f"cannot render offline SQL: {exc}") from None
    except DbinitError:
        raise
    except Exception as exc:  # env.py (or what it imports) failed: said as upgrade says it
        raise ConfigurationError(
            f"env.py failed while rendering offline SQL: {describe_failure(exc)}",
            hint="Check env.py and what it imports (the application's settings and the "
            "variables they need in this environment)",
        ) from exc


#: A revision that commits part of its work itself (Alembic's autocommit_block,
#: or a COMMIT statement): what ran before the failure is not rolled back.
_COMMITS_ITSELF = re.compile(r"autocommit_block\s*\(|[\"'](?:\s*END\s*;)?\s*COMMIT\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Leftovers:
    """What a failed or cancelled revision left behind; ``str()`` says it plainly."""

    revision: str
    commits_itself: bool
    invalid_indexes: tuple[str, ...]

    @property
    def whole(self) -> bool:
        """Whether the revision was rolled back as a whole."""
        return not self.commits_itself and not self.invalid_indexes

    def __str__(self) -> str:
        if self.commits_itself:
            said = (
                f"Migration {self.revision} commits part of its work itself (autocommit_block or "
                "COMMIT): what it did before that point stays in the database although the version "
                "table still names the previous revision; make that part idempotent (IF NOT EXISTS) "
                "or undo it."
            )
        else:
            said = f"Migration {self.revision} was rolled back as a whole."
        if self.invalid_indexes:
            said += (
                " INVALID indexes left by an interrupted CREATE INDEX CONCURRENTLY: "
                f"{', '.join(self.invalid_indexes)} (DROP INDEX CONCURRENTLY them before the next run)."
            )
        return said


def what_remains(settings: Settings, scripts: MigrationScripts, revision: str) -> Leftovers:
    """What a failed or cancelled revision left behind.

    Its own transaction rolls back, unless the revision commits part of its
    work itself (read from its file); a cancelled or failed ``CREATE INDEX
    CONCURRENTLY`` leaves an INVALID index (asked of the database).
    """
    found = scripts.graph.revisions.get(revision)
    text = ""
    if found is not None and found.path is not None:
        try:
            text = found.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""  # the file went away: nothing to read the revision's intent from
    return Leftovers(revision, bool(_COMMITS_ITSELF.search(text)), tuple(invalid_indexes(settings)))


def invalid_indexes(settings: Settings) -> list[str]:
    """INVALID indexes in the target schema (PostgreSQL); a short connection of its own."""
    if settings.url.is_sqlite:
        return []
    import asyncio

    import asyncpg

    from dbinit.database import connect_session

    async def read() -> list[str]:
        connection = await connect_session(
            settings.url, f"dbinit-inspect:{settings.service}", settings.connect_timeout
        )
        try:
            rows = await connection.fetch(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_index i "
                "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE NOT i.indisvalid AND n.nspname = coalesce($1, current_schema()) ORDER BY 1",
                settings.db_schema,
                timeout=settings.verify_timeout,
            )
        finally:
            await connection.close(timeout=2)
        return [str(row[0]) for row in rows]

    try:
        return asyncio.run(read())
    except (DbinitError, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # a failure path already: say that this could not be checked, do not hide the first error
        return [f"(not checked: {type(exc).__name__})"]


def migration_error(
    exc: BaseException,
    revision: str | None,
    scripts: MigrationScripts,
    settings: Settings,
    applied: Sequence[str] = (),
) -> DbinitError:
    """The error for a failed ``upgrade``: who failed, and whether a Job should retry.

    A revision failed while running: :class:`MigrationFailed` (exit 5, naming
    it). Before the first revision ran -- env.py failed to import or raised, a
    driver is missing -- nothing was migrated and a retry cannot help:
    :class:`ConfigurationError` (exit 2, final); unless env.py's engine could
    not reach the database: :class:`DatabaseUnreachable` (exit 3, retryable).
    """
    reason = describe_failure(exc)
    if revision is not None:
        path = scripts.graph.revisions.get(revision)
        where = f" ({Path(path.path).name})" if path is not None and path.path else ""
        return MigrationFailed(
            f"migration {revision}{where} failed: {reason}",
            revision=revision,
            hint=f"{what_remains(settings, scripts, revision)} Fix it and run the job again; "
            "earlier migrations of this run stay applied.",
        )
    if applied:
        return MigrationFailed(
            f"Alembic failed after the migrations ran ({', '.join(applied)} applied): {reason}",
            hint="Check what env.py does after run_migrations(); the applied migrations stay",
        )
    if is_connection_failure(exc):
        return DatabaseUnreachable(
            f"env.py could not connect to the database: {reason}",
            hint="Nothing was migrated. Is the database reachable from the job? A retry reconnects",
        )
    return ConfigurationError(
        f"env.py failed before the first migration ran: {reason}",
        hint="Nothing was migrated; a retry will not help. Check env.py and what it imports "
        "(the application's settings and the secrets they need in the job's environment). An env.py "
        "that needs the application around it (Flask's current_app) gets it from a plugin's "
        "dbinit_migration_context hook; or migrate with the project's own command (--strategy command)",
    )


def describe_failure(exc: BaseException) -> str:
    """One line: what failed, said so that the one who reads a Job's log can fix it.

    The application's settings (a pydantic ``ValidationError``, e.g. from
    pydantic-settings' ``Settings()`` imported by env.py): which fields they
    rejected and why, never an input value (it may be a secret). A variable
    read with ``os.environ[...]`` that is not set: its name. A database
    error: the driver's error (not SQLAlchemy's wrapper) and the statement,
    shortened. Anything else: its type and message.
    """
    for cause in _chain(exc):
        rejected = _settings_rejection(cause)
        if rejected is not None:
            # a wrapper's own message may quote pydantic's text, input values included: not shown
            return rejected if cause is exc else f"{type(exc).__name__}, from {rejected}"
    missing = _missing_environment_variable(exc)
    if missing is not None:
        return missing
    orig = getattr(exc, "orig", None)
    if orig is None:
        return f"{type(exc).__name__}: {exc}"
    # SQLAlchemy's asyncpg adapter wraps the driver's error: name the real one
    named = orig.__cause__ if type(orig).__name__ == "Error" and orig.__cause__ else orig
    reason = f"{type(named).__name__}: {(str(orig).strip().splitlines() or [''])[0]}"
    statement = getattr(exc, "statement", None)
    if statement:
        short = " ".join(str(statement).split())
        reason += f" [SQL: {short[:200]}{'…' if len(short) > 200 else ''}]"
    return reason


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it (``raise ... from``, or raised while handling), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


#: How many rejected settings a message lists before "and N more".
MAX_SETTINGS_SHOWN = 10


def _settings_rejection(exc: BaseException) -> str | None:
    """A pydantic ``ValidationError`` (any model; told by its type, pydantic is not imported here).

    Rendered from ``errors(include_input=False, include_url=False)``: the input
    values stay out, and a message that repeats one (a custom validator's
    ``ValueError(f"... {value}")``) has it replaced by ``***``.
    """
    kind = type(exc)
    package = kind.__module__.split(".")[0]
    if kind.__name__ != "ValidationError" or package not in ("pydantic", "pydantic_core"):
        return None
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return None
    try:
        shown = errors(include_input=False, include_url=False)
        inputs = [error.get("input") for error in errors(include_url=False)]
    except TypeError:  # pydantic 1: errors() takes no arguments and carries no input
        shown = errors()
        inputs = [None] * len(shown)
    model = getattr(exc, "model", None)  # pydantic 1
    title = getattr(exc, "title", None) or getattr(model, "__name__", None) or "Settings"
    parts: list[str] = []
    for error, given in zip(shown[:MAX_SETTINGS_SHOWN], inputs, strict=False):
        where = ".".join(str(piece) for piece in error.get("loc", ())) or "(the model)"
        message = str(error.get("msg", "invalid"))
        if isinstance(given, str) and len(given) >= 3:
            message = message.replace(given, "***")
        parts.append(f"{where}: {message}")
    more = len(shown) - MAX_SETTINGS_SHOWN
    listed = "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    return (
        f"the application's settings ({str(title)[:80]}) rejected: {listed} (provide them to the "
        "migration Job as the application gets them, e.g. envFrom the application's Secret)"
    )


def _missing_environment_variable(exc: BaseException) -> str | None:
    """A ``KeyError`` raised by ``os.environ[...]`` itself: the variable's name, and who read it."""
    if type(exc) is not KeyError or len(exc.args) != 1 or exc.__traceback__ is None:
        return None
    entry = exc.__traceback__
    caller = None
    while entry.tb_next is not None:
        caller, entry = entry, entry.tb_next
    frame = entry.tb_frame
    if frame.f_globals.get("__name__") != "os" or frame.f_code.co_name != "__getitem__":
        return None
    name = str(exc.args[0])
    where = ""
    if caller is not None:
        filename = caller.tb_frame.f_code.co_filename
        relative = os.path.relpath(filename) if os.path.isabs(filename) else filename
        shown = filename if relative.startswith("..") else relative
        where = f" (os.environ[{name!r}] in {shown}, line {caller.tb_lineno})"
    return (
        f"env.py needs the environment variable {name}, which is not set{where}: set it in the "
        "migration Job's environment as the application gets it (e.g. envFrom the application's "
        "Secret or ConfigMap)"
    )
