"""Running Alembic for ``migrate`` (the only place SQLAlchemy/Alembic load).

Works with projects made by ``alembic init`` unmodified, sync or async
template: ``DATABASE_URL`` reaches ``env.py`` as ``sqlalchemy.url`` with the
driver the template needs, and Alembic runs in a worker thread, where the
async template's ``asyncio.run`` works. Each migration runs in its own
transaction (``transaction_per_migration``) unless ``env.py`` says otherwise.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dbinit.errors import ConfigurationError, Interrupted, LockLost, MigrationFailed

if TYPE_CHECKING:
    from alembic.config import Config
    from structlog.typing import FilteringBoundLogger

    from dbinit.interrupts import RunControl
    from dbinit.scripts import MigrationScripts
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

    if scripts.alembic_ini is None:
        raise ConfigurationError(
            "migrate needs alembic.ini (DBINIT_ALEMBIC_INI), not only a versions folder",
            hint="Run where alembic.ini is or set DBINIT_ALEMBIC_INI",
        )
    config = Config(str(scripts.alembic_ini), stdout=stdout or sys.stdout)
    config.output_buffer = stdout or sys.stdout
    url = settings.url.for_sqlalchemy(async_driver=env_is_async(scripts))
    # configparser interpolation: a percent-encoded password must be escaped.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if scripts.script_location is not None:
        config.set_main_option("script_location", str(scripts.script_location))
    config.attributes["dbinit.settings"] = settings
    return config


def upgrade(
    settings: Settings,
    scripts: MigrationScripts,
    log: FilteringBoundLogger,
    control: RunControl | None = None,
) -> list[str]:
    """``alembic upgrade heads``; returns the applied revisions in order.

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
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    config = alembic_config(settings, scripts)
    script = ScriptDirectory.from_config(config)
    applied: list[str] = []
    planned: list[str] = []

    def on_apply(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        if control is not None:
            # still inside this migration's transaction: raising rolls it back
            revision = step.up_revision_id
            control.confirm_lock(f"migration {revision} rolled back", revision=revision, applied=applied)
        if step.is_upgrade:
            applied.append(step.up_revision_id)
            log.info("Migration applied", revision=step.up_revision_id, doc=step.up_revision.doc)

    def steps(rev: Any, context: Any) -> Any:
        if control is not None:
            control.confirm_lock("stopped before the first migration")
        result = script._upgrade_revs("heads", rev)
        planned.extend(step.revision.revision for step in result)
        if result:
            log.info("Running pending migrations", count=len(result))
        return result

    environment = EnvironmentContext(
        config, script, fn=steps, as_sql=False, starting_rev=None, destination_rev="heads", tag=None
    )
    configure = environment.configure

    def configure_per_migration(*args: Any, **kwargs: Any) -> None:
        # env.py is not ours to edit: default to one transaction per migration and
        # add our callback to whatever env.py passes. (Alembic's module proxy calls
        # the instance's attribute, so a subclass would not be seen.)
        kwargs.setdefault("transaction_per_migration", True)
        callbacks = alembic_util.to_tuple(kwargs.get("on_version_apply"), default=())
        kwargs["on_version_apply"] = (*callbacks, on_apply)
        configure(*args, **kwargs)

    environment.configure = configure_per_migration  # type: ignore[method-assign]
    try:
        with session_settings(settings, control), environment:
            script.run_env()
    except Exception as exc:
        failing = next((r for r in planned if r not in applied), None)
        if control is not None and control.stopping:
            if isinstance(exc, (Interrupted, LockLost)):
                raise
            what, before = _where_stopped(failing, applied)
            raise control.stop_error(what, revision=failing, applied=before) from None
        raise migration_error(exc, failing, scripts) from exc
    return applied


def _where_stopped(failing: str | None, applied: list[str]) -> tuple[str, list[str]]:
    """What a stop cut short, and the revisions known committed before it.

    ``applied`` counts a revision once its ``on_version_apply`` passed, just
    before its commit: a stop that broke the commit itself leaves that one
    uncertain, and says so.
    """
    if failing is not None:
        return f"migration {failing} cancelled and rolled back", applied
    if applied:
        last = applied[-1]
        return (
            f"stopped while migration {last} committed (alembic_version says whether it did)",
            applied[:-1],
        )
    return "stopped before the first migration", applied


@contextlib.contextmanager
def session_settings(settings: Settings, control: RunControl | None) -> Iterator[None]:
    """Set up every session Alembic opens (SQLAlchemy class-level events).

    PostgreSQL: ``application_name`` lets a signal cancel the running
    statement; ``DBINIT_STATEMENT_TIMEOUT`` / ``DBINIT_DDL_LOCK_TIMEOUT``
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
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    if settings.url.is_sqlite:

        def sqlite_connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None

        def sqlite_begin(connection: Any) -> None:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN")

        listeners = [(Pool, "connect", sqlite_connect), (Engine, "begin", sqlite_begin)]
    else:
        statements = [
            "SET tcp_keepalives_idle = 30",
            "SET tcp_keepalives_interval = 10",
            "SET tcp_keepalives_count = 3",
            # PostgreSQL 14+: notice a vanished client even while a statement runs
            "SELECT set_config('client_connection_check_interval', '5s', false) "
            "WHERE current_setting('server_version_num')::int >= 140000",
        ]
        if control is not None:
            statements.append(f"SET application_name = '{control.session_tag}'")
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

        listeners = [(Pool, "connect", postgres_connect)]
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
    settings: Settings, scripts: MigrationScripts, stdout: TextIO, from_revision: str | None
) -> None:
    """Print the SQL of ``upgrade heads`` (from ``from_revision`` or the base)."""
    from alembic import command
    from alembic.util import CommandError

    config = alembic_config(settings, scripts, stdout=stdout)
    target = f"{from_revision}:heads" if from_revision else "heads"
    try:
        command.upgrade(config, target, sql=True)
    except CommandError as exc:
        raise ConfigurationError(f"cannot render offline SQL: {exc}") from None


def migration_error(
    exc: BaseException, revision: str | None, scripts: MigrationScripts
) -> MigrationFailed:
    """A :class:`MigrationFailed` naming the revision and the database's error."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        # SQLAlchemy's asyncpg adapter wraps the driver's error: name the real one
        named = orig.__cause__ if type(orig).__name__ == "Error" and orig.__cause__ else orig
        reason = f"{type(named).__name__}: {str(orig).strip().splitlines()[0]}"
        statement = getattr(exc, "statement", None)
        if statement:
            short = " ".join(str(statement).split())
            reason += f" [SQL: {short[:200]}{'…' if len(short) > 200 else ''}]"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    if revision is not None:
        path = scripts.graph.revisions.get(revision)
        where = f" ({Path(path.path).name})" if path is not None and path.path else ""
        return MigrationFailed(
            f"migration {revision}{where} failed: {reason}",
            revision=revision,
            hint="The failed migration was rolled back where the database allows it; fix it "
            "and run the job again. Earlier migrations of this run stay applied.",
        )
    return MigrationFailed(
        f"Alembic failed before running a migration: {reason}",
        hint="Check env.py and the database URL it builds",
    )
